"""The one training skeleton (engine/run.py): every task's train() goes through it with the recipe's
regulariser, clipping, early stopping, time budget and resume; one result schema."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_cellclass.engine import run as run_mod
from napari_cellclass.engine.progress import Progress, run_sync
from napari_cellclass.engine.training import FitResult, move_to
from napari_cellclass.tasks.base import TaskOptions, task_function


@pytest.fixture
def spy_fit(monkeypatch):
    """Replace the loop with one batch through the task's loss, recording what the skeleton passed."""
    calls: list[dict] = []

    def fake_fit(model, batches, **kw):
        calls.append(dict(kw, model=model, batches=batches))
        batch = move_to(next(iter(batches)), kw["policy"])
        model.train()
        loss = float(kw["loss_fn"](model, batch, 0).detach())
        row = {"epoch": 1, "loss": loss}
        yield Progress(1, 1, "epoch", "epoch 1/1 done", row)
        return FitResult(epochs_run=1, best_epoch=1, best_metrics=row, history=[row])

    monkeypatch.setattr(run_mod, "fit", fake_fit)
    return calls


def _data(task: str, root: Path) -> tuple[Path, dict]:
    """Tiny generated data and options per task (quick models, small inputs)."""
    if task == "hpa":
        from napari_cellclass.synth.hpa import write_dataset

        return write_dataset(root / "d", n=8, seed=1, size=32), {"size": 32}
    if task == "wbc":
        return task_function("wbc", "synth")(root / "d", 4, 0), {}
    if task == "chromosome":
        return task_function("chromosome", "synth")(root / "d", 2, 0), {"extra": {"input_size": [32, 34]}}
    if task == "detect":
        return task_function("detect", "synth")(root / "d", 4, 3), {"arch": "fasterrcnn_tiny"}
    return task_function("karyotype", "synth")(root / "d", 2, 0), {"extra": {"patch": 64, "per_spread": 1}}


@pytest.mark.parametrize("task", ["hpa", "wbc", "chromosome", "detect", "karyotype"])
def test_every_task_trains_through_the_skeleton_with_the_recipe(task, tmp_path, spy_fit, one_thread):
    data, kw = _data(task, tmp_path)
    extra = {"l1": 1e-3, "grad_clip": 2.5, "early_stopping": 3, "val_fraction": 0.5, **kw.pop("extra", {})}
    opts = TaskOptions(out=tmp_path / "run", quick=True, epochs=1, batch_size=2, device="cpu", extra=extra, **kw)
    res = run_sync(task_function(task, "train")(data, opts))
    (call,) = spy_fit
    # the recipe reaches the loop for every task (detect used to drop the regulariser)
    assert call["regularizer"] is not None and float(call["regularizer"](call["model"]).detach()) > 0
    assert call["grad_clip"] == 2.5 and call["early_stopping_patience"] == 3
    assert call["checkpoint_path"] == tmp_path / "run" / "model.safetensors"
    assert call["resume_path"] == tmp_path / "run" / "resume.pt" and call["start_epoch"] == 0
    assert isinstance(call["optimizer"], torch.optim.Optimizer) and call["epochs"] == 1
    # one result schema
    assert set(run_mod.RESULT_KEYS) <= set(res)
    assert res["task"] == task and res["run"] == str(tmp_path / "run") and res["epochs_run"] == 1
    assert "l1=0.001" in res["recipe"] and res["stopped_by_time_budget"] is False


def test_detect_regulariser_changes_the_training_loss(tmp_path, one_thread):
    """The L1 term is part of what detection minimises (it used to be dropped): same seed, same first
    batch, the loss with ``l1`` is larger by the penalty."""
    data, _ = _data("detect", tmp_path)

    def first_loss(l1):
        opts = TaskOptions(out=tmp_path / f"run{l1}", quick=True, epochs=1, batch_size=2, device="cpu",
                           arch="fasterrcnn_tiny", extra={"l1": l1, "time_budget_s": 1e-6, "validate": False})
        losses = []
        run_sync(task_function("detect", "train")(data, opts),
                 lambda p: losses.append(p.metrics["loss"]) if p.stage == "train" else None)
        return losses[0]

    assert first_loss(0.05) > first_loss(0.0) + 1.0


def test_time_budget_holds_for_a_classification_task_too(tmp_path, one_thread):
    """``time_budget_s`` is the skeleton's: it stops HPA after one batch and keeps a checkpoint."""
    from napari_cellclass.engine.checkpoint import read_meta
    from napari_cellclass.synth.hpa import write_dataset

    data = write_dataset(tmp_path / "d", n=8, seed=1, size=32)
    opts = TaskOptions(out=tmp_path / "run", quick=True, epochs=3, batch_size=2, size=32, device="cpu",
                       extra={"time_budget_s": 1e-6})
    stages = []
    res = run_sync(task_function("hpa", "train")(data, opts), lambda p: stages.append(p.stage))
    assert res["stopped_by_time_budget"] and "epoch" not in stages and stages.count("train") == 1
    assert "time budget" in read_meta(res["checkpoint"]).metrics["note"]


def test_resume_through_the_skeleton(tmp_path, one_thread):
    """A 1-epoch run resumed to 2 epochs keeps its first epoch and adds one (any task: HPA here)."""
    from napari_cellclass.synth.hpa import write_dataset

    data = write_dataset(tmp_path / "d", n=8, seed=1, size=32)

    def opts(epochs, resume):
        return TaskOptions(out=tmp_path / "run", quick=True, epochs=epochs, batch_size=4, size=32, device="cpu",
                           resume=resume)

    first = run_sync(task_function("hpa", "train")(data, opts(1, False)))
    second = run_sync(task_function("hpa", "train")(data, opts(2, True)))
    assert second["history"][0] == first["history"][0] and len(second["history"]) == 2
    assert torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["epoch"] == 2
