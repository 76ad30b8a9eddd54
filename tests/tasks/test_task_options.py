"""Typed --set options: one parser for the CLI and the Train widget, misspelt keys named, task help,
and CLI errors as one line with exit code 2."""
from __future__ import annotations

import json
import sys
import types

import pytest

from napari_cellclass import cli
from napari_cellclass.engine.progress import Progress
from napari_cellclass.errors import InputError
from napari_cellclass.tasks import base
from napari_cellclass.tasks.options import TASK_OPTIONS, format_help, parse_settings


def test_values_are_typed_by_the_option_not_guessed():
    got = parse_settings("chromosome", "train", ["lam=150", "layers=3,4,6,3", "input_size=64", "straighten=yes",
                                                 "trained_on=2024", "schedule=cosine", "wd=1e-4"])
    assert got == {"lam": 150.0, "layers": [3, 4, 6, 3], "input_size": 64, "straighten": True,
                   "trained_on": "2024", "schedule": "cosine", "wd": 1e-4}
    assert isinstance(got["lam"], float)
    assert parse_settings("detect", "train", ["classes=WBC,RBC", "max-size=640"]) == {
        "classes": ["WBC", "RBC"], "max_size": 640}
    # the widget's one line uses the same parser
    assert parse_settings("wbc", "train", "loss=ce, lam=0.3; balance=none") == {
        "loss": "ce", "lam": 0.3, "balance": "none"}


@pytest.mark.parametrize("task, command, item, suggestion", [
    ("wbc", "train", "lamda=0.3", "lam"),
    ("hpa", "train", "depht=18", "depth"),
    ("chromosome", "train", "straigten=true", "straighten"),
    ("detect", "predict", "score_treshold=0.3", "score_threshold"),
    ("karyotype", "evaluate", "segmentr=classical", "segmenter"),
])
def test_misspelt_key_names_the_closest_valid_one(task, command, item, suggestion):
    with pytest.raises(InputError, match=f"unknown option '{item.split('=')[0]}'.*did you mean '{suggestion}'"):
        parse_settings(task, command, [item])


def test_bad_values_and_keys_of_another_command_are_refused():
    with pytest.raises(InputError, match="option lam: 'abc' is not a number"):
        parse_settings("wbc", "train", ["lam=abc"])
    with pytest.raises(InputError, match="option patch: '1.5' is not a whole number"):
        parse_settings("karyotype", "train", ["patch=1.5"])
    with pytest.raises(InputError, match="option lr"):
        parse_settings("hpa", "train", ["lr=fast"])
    with pytest.raises(InputError, match="unknown option 'epochs' for predict detect"):
        parse_settings("detect", "predict", ["epochs=3"])  # a training knob means nothing to predict
    with pytest.raises(InputError, match="option balance: 'sampel' is not one of sampler, weights, none; "
                                         "did you mean 'sampler'"):
        parse_settings("wbc", "train", ["balance=sampel"])
    assert parse_settings("karyotype", "predict", ["segmenter=threshold"]) == {"segmenter": "threshold"}


def test_every_task_has_a_table_with_defaults():
    assert set(TASK_OPTIONS) == set(base.TASKS)
    for task in TASK_OPTIONS:
        text = format_help(task)
        assert "time_budget_s" in text and "val_fraction (float)" in text and "[0.2]" in text


def test_cli_misspelt_set_key_is_one_line_exit_2(capsys, tmp_path):
    assert cli.main(["train", "wbc", str(tmp_path), "--set", "lamda=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'lam'" in err and "train wbc --help" in err


def test_train_help_lists_tasks_and_task_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(t in out for t in ("hpa", "wbc", "detect", "chromosome", "karyotype"))
    assert "--set options of task" not in out
    with pytest.raises(SystemExit):
        cli.main(["train", "wbc", "--help"])
    out = capsys.readouterr().out
    assert "--set options of task 'wbc'" in out
    assert "lam (float)" in out and "[0.5]" in out and "balance (str)" in out and "[sampler]" in out
    assert "predict:" in out and "training recipe" in out and "weight_decay" in out


def test_usage_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "wbc"])  # DATA missing
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "required: data" in err


def _checkpoint(folder):
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model

    meta = CheckpointMeta(task="fake2", arch="tiny_cnn", arch_config={"num_classes": 2}, class_names=["a", "b"],
                          in_channels=3, input_size=[8, 8])
    return save_checkpoint(folder / "m", build_model("tiny_cnn", num_classes=2), meta)


@pytest.fixture
def fake_task(monkeypatch):
    mod = types.ModuleType("fake_task2")
    monkeypatch.setitem(sys.modules, "fake_task2", mod)
    monkeypatch.setitem(base.TASKS, "fake2", "fake_task2")
    return mod


def test_unexpected_errors_are_one_line_exit_2(fake_task, capsys, tmp_path, monkeypatch):
    def train(data, opts):
        yield Progress(1, 2, "train")
        raise RuntimeError("boom\nsecond line")

    def evaluate(model, data, opts):
        raise IsADirectoryError(21, "Is a directory", str(tmp_path))
        yield  # pragma: no cover

    fake_task.train, fake_task.evaluate = train, evaluate
    monkeypatch.delenv("CELLCLASS_DEBUG", raising=False)
    assert cli.main(["train", "fake2", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellclass: error: RuntimeError: boom second line") and len(err.splitlines()) == 1
    model = _checkpoint(tmp_path)
    assert cli.main(["evaluate", "fake2", str(model), str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cellclass: error: Is a directory: {tmp_path}"


def test_evaluate_out_is_a_file_for_every_task(fake_task, capsys, tmp_path):
    """`evaluate --out` names the JSON file, whatever its suffix; a folder is refused before any work."""
    ran = []

    def evaluate(model, data, opts):
        ran.append(opts.out)
        yield Progress(1, 1, "evaluate")
        return {"accuracy": 0.5}

    fake_task.evaluate = evaluate
    out = tmp_path / "new" / "metrics"
    model = _checkpoint(tmp_path)
    assert cli.main(["evaluate", "fake2", str(model), str(tmp_path), "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text()) == {"accuracy": 0.5} and ran == [None]  # the task gets no --out
    capsys.readouterr()
    assert cli.main(["evaluate", "fake2", str(model), str(tmp_path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err and len(ran) == 1


def test_declared_defaults_match_what_the_tasks_read():
    """Every literal ``opts.get(KEY, DEFAULT)`` in a task reads a declared option with that default
    (the table cannot drift from the code; ``split`` has one default per command)."""
    import ast
    import re
    from pathlib import Path

    import napari_cellclass
    from napari_cellclass.tasks.options import AUTO

    root = Path(napari_cellclass.__file__).parent
    files = {"hpa": ["tasks/hpa.py"], "wbc": ["tasks/wbc.py"], "chromosome": ["tasks/chromosome.py"],
             "detect": ["tasks/detect.py", "tasks/detect_centernet.py"],
             "karyotype": ["tasks/karyotype.py", "karyotype/detector.py"]}
    checked = 0
    for task, paths in files.items():
        table = {o.name: o for o in TASK_OPTIONS[task]}
        for path in paths:
            for key, default in re.findall(r'opts\.get\("(\w+)"(?:,\s*([^()]+?))?\)', (root / path).read_text()):
                assert key in table, f"{path} reads --set {key} that task {task!r} does not declare"
                try:
                    value = ast.literal_eval(default) if default else None
                except ValueError:
                    continue  # computed defaults (quick mode, constants) are documented as text
                if key != "split" and table[key].default not in (AUTO, None) and default:
                    assert table[key].default == value, (task, key)
                    checked += 1
    assert checked > 20


def test_api_train_and_evaluate_check_their_options_like_the_cli(tmp_path):
    """Keyword options the task does not know are an error naming the closest key, not silently dropped."""
    from napari_cellclass import api
    from napari_cellclass.errors import InputError

    with pytest.raises(InputError, match="did you mean 'lambda'"):
        api.train("chromosome", tmp_path, lamda=0.3)
    with pytest.raises(InputError, match="split"):
        api.evaluate("chromosome", tmp_path / "m.safetensors", tmp_path, splt="val")
