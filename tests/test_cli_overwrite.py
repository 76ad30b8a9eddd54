"""No silent replacement (issue 24 item 6): ``predict``, ``karyotype`` and ``train`` never
replace an earlier result unless ``--overwrite`` is given.

Policy (docs/cli.md): ``predict``/``karyotype`` write into a new or empty ``--out``; a
folder holding files is refused before any work, in one line naming what is there (exit 2,
nothing replaced).  ``train`` refuses a run folder holding a model (any task) or an
interrupted run unless ``--overwrite`` (start afresh) or ``--resume`` (continue it).
Batch mode (``--shard``) resumes its own folder, as before.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cellclass import cli
from napari_cellclass.engine import atomic
from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.engine.progress import Progress
from napari_cellclass.models.registry import build_model
from napari_cellclass.tasks import base


def _checkpoint(path: Path, task: str, in_channels: int = 4, classes: int = 28) -> Path:
    model = build_model("tiny_cnn", in_channels=in_channels, num_classes=classes, width=4)
    meta = CheckpointMeta(task=task, arch="tiny_cnn", class_names=[f"c{i}" for i in range(classes)],
                          in_channels=in_channels, input_size=[16, 16],
                          arch_config={"in_channels": in_channels, "num_classes": classes, "width": 4})
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, meta)


def _hpa_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for c in ("red", "green", "blue", "yellow"):
        Image.fromarray(rng.integers(0, 255, (32, 32)).astype(np.uint8)).save(folder / f"s1_{c}.png")
    return folder


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- predict

@pytest.fixture
def hpa(tmp_path):
    return _checkpoint(tmp_path / "m.safetensors", "hpa"), _hpa_inputs(tmp_path / "in")


def _predict(model, inputs, out, *extra):
    return cli.main(["predict", "hpa", str(model), str(inputs), "--out", str(out), "--device", "cpu", "--quiet",
                     *extra])


def test_a_second_predict_into_the_same_out_is_refused_and_replaces_nothing(tmp_path, hpa, capsys):
    model, inputs = hpa
    out = tmp_path / "o"
    assert _predict(model, inputs, out) == 0
    capsys.readouterr()
    before = _state(out)
    assert "predictions.csv" in before
    code = _predict(model, inputs, out)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--overwrite" in line and "--out" in line and "predictions" in line and str(out) in line
    assert _state(out) == before  # byte for byte, not even rewritten


def test_overwrite_replaces_the_earlier_result(tmp_path, hpa, capsys):
    model, inputs = hpa
    out = tmp_path / "o"
    assert _predict(model, inputs, out) == 0
    before = _state(out)
    assert _predict(model, inputs, out, "--overwrite") == 0
    after = _state(out)
    assert set(after) == set(before)
    assert all(after[n][1] != before[n][1] or after[n][0] != before[n][0] for n in ("predictions.csv",))


def test_an_out_holding_other_files_is_refused_an_empty_one_is_used(tmp_path, hpa, capsys):
    model, inputs = hpa
    out = tmp_path / "notes"
    out.mkdir()
    (out / "my_notes.txt").write_text("keep me")
    assert _predict(model, inputs, out) == 2
    assert "my_notes.txt" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("")  # hidden files do not count as results
    assert _predict(model, inputs, empty) == 0
    assert (empty / "predictions.csv").is_file()


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, hpa, capsys):
    model, inputs = hpa
    out = tmp_path / "o.txt"
    out.write_text("mine")
    assert _predict(model, inputs, out) == 2
    assert "must be a folder" in _one_error_line(capsys.readouterr().err)
    assert out.read_text() == "mine"


def test_batch_mode_resumes_its_own_folder(tmp_path, hpa, capsys):
    model, inputs = hpa
    out = tmp_path / "b"
    assert _predict(model, inputs, out, "--shard", "0/1") == 0
    capsys.readouterr()
    assert _predict(model, inputs, out, "--shard", "0/1") == 0  # batch.json binds it: a re-run resumes


def test_karyotype_refuses_an_out_holding_results_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "k"
    out.mkdir()
    (out / "summary.csv").write_text("spread\n")
    called = []
    monkeypatch.setattr(cli, "_resolve_models", lambda args: None)
    monkeypatch.setattr(base, "task_function", lambda task, what: called.append((task, what)))
    code = cli.main(["karyotype", str(tmp_path / "spread.png"), "--model", str(tmp_path / "m.safetensors"),
                     "--out", str(out), "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "summary.csv" in line and "--overwrite" in line
    assert not called and (out / "summary.csv").read_text() == "spread\n"


# ----------------------------------------------------------------------------- train

@pytest.fixture
def fake_train(monkeypatch):
    """A task whose training saves model.safetensors after each of two epochs (as the real ones do)."""
    mod = types.ModuleType("fake_overwrite_task")
    runs = []

    def train(data, opts):
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        for epoch in range(2):
            yield Progress(epoch, 2, "train")
            _checkpoint(out / "model.safetensors", "fakeo", in_channels=3, classes=2)
        runs.append(opts)
        return {"checkpoint": str(out / "model.safetensors")}

    mod.train = train
    monkeypatch.setitem(sys.modules, "fake_overwrite_task", mod)
    monkeypatch.setitem(base.TASKS, "fakeo", "fake_overwrite_task")
    return runs


def _train(tmp_path, out, *extra):
    return cli.main(["train", "fakeo", str(tmp_path), "--out", str(out), "--quiet", *extra])


def test_train_into_a_same_task_run_is_refused_without_overwrite(tmp_path, fake_train, capsys):
    run = tmp_path / "run"
    assert _train(tmp_path, run) == 0  # a new folder; the run rewrites its own checkpoint each epoch
    capsys.readouterr()
    before = _state(run)
    code = _train(tmp_path, run)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "model.safetensors" in line and "'fakeo'" in line
    assert "--overwrite" in line and "--resume" in line
    assert _state(run) == before and len(fake_train) == 1
    assert _train(tmp_path, run, "--overwrite") == 0
    assert _state(run)["model.safetensors"][1] != before["model.safetensors"][1]
    assert _train(tmp_path, run, "--resume") == 0  # continuing is what --resume asks for
    assert len(fake_train) == 3


@pytest.mark.parametrize("content", ["junk", "other-task", "resume"])
def test_train_into_a_folder_holding_any_model_is_refused(tmp_path, fake_train, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    if content == "junk":
        target = run / "weights.safetensors"
        target.write_bytes(b"not a checkpoint")
    elif content == "other-task":
        target = _checkpoint(run / "model.safetensors", "wbc", in_channels=3, classes=2)
    else:
        target = run / "resume.pt"
        target.write_bytes(b"state")
    before = target.read_bytes()
    code = _train(tmp_path, run)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and target.name in line and "--overwrite" in line
    assert target.read_bytes() == before and not fake_train


def test_the_backstop_refuses_a_write_over_an_earlier_file(tmp_path):
    """Inside ``keep_earlier_results``: a file there before may not be replaced; own writes may."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.csv").write_text("earlier")
    outside = tmp_path / "cache.bin"
    outside.write_text("x")
    with atomic.keep_earlier_results(folder):
        with pytest.raises(atomic.ResultExistsError, match="--overwrite") as info:
            with atomic.atomic_path(folder / "old.csv") as tmp:
                tmp.write_text("new")
        assert info.value.path == folder / "old.csv"
        for text in ("a", "b"):  # written in this block: may be rewritten (a checkpoint per epoch)
            with atomic.atomic_path(folder / "new.csv") as tmp:
                tmp.write_text(text)
        with atomic.atomic_path(outside) as tmp:  # outside --out (a cache): not guarded
            tmp.write_text("y")
    assert (folder / "old.csv").read_text() == "earlier" and (folder / "new.csv").read_text() == "b"
    assert sorted(p.name for p in folder.iterdir()) == ["new.csv", "old.csv"]
    with atomic.keep_earlier_results(folder, enabled=False):
        with atomic.atomic_path(folder / "old.csv") as tmp:
            tmp.write_text("replaced")
    assert (folder / "old.csv").read_text() == "replaced"


def test_the_refusal_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "--overwrite" in text and "nothing was replaced" in text


def test_karyotype_resumes_its_own_bound_folder(tmp_path, capsys, monkeypatch):
    """``OUT/karyotype_run.json`` binds the folder to one model and settings: a re-run resumes it."""
    from napari_cellclass.tasks.karyotype import RUN_FILE

    out = tmp_path / "k"
    out.mkdir()
    (out / RUN_FILE).write_text("{}")
    (out / "karyotypes.csv").write_text("spread\n")
    spread = tmp_path / "spread.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(spread)
    ran = []

    def predict(model, inputs, opts):
        ran.append(list(inputs))
        yield from ()
        return {"n_spreads": 1}

    monkeypatch.setattr(cli, "_resolve_models", lambda args: None)
    monkeypatch.setattr(base, "task_function", lambda task, what: predict)
    code = cli.main(["karyotype", str(spread), "--model", str(tmp_path / "m.safetensors"), "--out", str(out),
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert ran == [[spread]]


def test_evaluate_out_never_replaces_an_earlier_metrics_file(tmp_path, capsys, monkeypatch):
    def evaluate(model, data, opts):
        yield from ()
        return {"accuracy": 0.5}

    monkeypatch.setattr(cli, "_resolve_models", lambda args: None)
    monkeypatch.setattr(base, "task_function", lambda task, what: evaluate)
    out = tmp_path / "metrics.json"
    out.write_text('{"accuracy": 0.9}\n')
    argv = ["evaluate", "wbc", "model", str(tmp_path), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "metrics.json" in line and "--overwrite" in line and out.read_text() == '{"accuracy": 0.9}\n'
    assert cli.main([*argv, "--overwrite"]) == 0
    assert '"accuracy": 0.5' in out.read_text()
