"""The `cellclass` command: dispatch, clear errors, honest 'not implemented'."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from napari_cellclass import cli
from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.engine.progress import Progress
from napari_cellclass.models.registry import build_model
from napari_cellclass.tasks import base


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "napari_cellclass.cli", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip()


def test_unknown_task_exits_2(capsys):
    assert cli.main(["train", "nosuchtask", "data"]) == 2
    assert "unknown task 'nosuchtask'" in capsys.readouterr().err


@pytest.fixture
def fake_task(monkeypatch):
    """A task module providing only `train`, to check dispatch and the not-implemented path."""
    mod = types.ModuleType("fake_task")
    calls = {}

    def train(data, opts):
        calls["data"], calls["opts"] = data, opts
        yield Progress(1, 2, "train")
        yield Progress(2, 2, "train")
        return {"checkpoint": "x.safetensors", "epochs": opts.epochs}

    mod.train = train
    monkeypatch.setitem(sys.modules, "fake_task", mod)
    monkeypatch.setitem(base.TASKS, "fake", "fake_task")
    return calls


def test_train_dispatch_and_options(fake_task, capsys, tmp_path):
    rc = cli.main(["train", "fake", str(tmp_path), "--epochs", "3", "--set", "loss=focal",
                   "--set", "gamma=2.5", "--set", "tiles=1,2", "--quiet"])
    assert rc == 0
    opts = fake_task["opts"]
    assert opts.epochs == 3 and opts.extra == {"loss": "focal", "gamma": 2.5, "tiles": [1, 2]}
    assert json.loads(capsys.readouterr().out)["epochs"] == 3


def test_missing_subcommand_is_not_implemented(fake_task, capsys, tmp_path):
    rc = cli.main(["evaluate", "fake", str(tmp_path / "m.safetensors"), str(tmp_path)])
    assert rc == 2
    assert "not implemented" in capsys.readouterr().err


def test_bad_set_syntax(fake_task, capsys, tmp_path):
    assert cli.main(["train", "fake", str(tmp_path), "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_info_prints_device_and_metadata(tmp_path, capsys):
    meta = CheckpointMeta(task="wbc", arch="tiny_cnn", arch_config={"num_classes": 2}, class_names=["a", "b"],
                          in_channels=3, input_size=[8, 8])
    p = save_checkpoint(tmp_path / "m", build_model("tiny_cnn", num_classes=2), meta)
    assert cli.main(["info", str(p), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: cpu")
    assert json.loads(out.split("\n", 1)[1])["task"] == "wbc"


def test_info_on_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert cli.main(["info", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_cancel_exit_code(fake_task, monkeypatch, tmp_path, capsys):
    from napari_cellclass.errors import Cancelled

    def train(data, opts):
        yield Progress(1, 2, "train")
        raise Cancelled("cancelled by the user")

    sys.modules["fake_task"].train = train
    assert cli.main(["train", "fake", str(tmp_path), "--quiet"]) == 130
