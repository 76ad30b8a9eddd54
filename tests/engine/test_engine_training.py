"""Training loop and batched inference: learning, cancellation, atomic checkpoints, resume."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from napari_cellclass.engine.checkpoint import CheckpointMeta, build_from_checkpoint, read_meta
from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine.inference import predict_batches
from napari_cellclass.engine.progress import CancelToken, Progress, run_sync
from napari_cellclass.engine.training import fit, load_resume_state, restore_resume_state
from napari_cellclass.errors import Cancelled
from napari_cellclass.models.registry import build_model

CFG = {"in_channels": 1, "num_classes": 2, "width": 4}


def _data(n: int, seed: int):
    """Class 1 = a bright square somewhere in the image; class 0 = noise only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i] == 1:
            r, c = torch.randint(0, 11, (2,), generator=g).tolist()
            x[i, 0, r : r + 5, c : c + 5] += 0.7
    return x, y


def _setup(tmp_path, epochs=3, cancel=None, **kw):
    torch.manual_seed(0)
    x, y = _data(64, 0)
    xv, yv = _data(32, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    model = build_model("tiny_cnn", **CFG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn(m, batch, epoch):
        xb, yb = batch
        return torch.nn.functional.cross_entropy(m(xb), yb)

    def evaluate(m, epoch):
        acc = (m(xv).argmax(1) == yv).float().mean().item()
        return {"val_accuracy": acc}

    def make_meta(best, history):
        return CheckpointMeta(task="toy", arch="tiny_cnn", arch_config=CFG, class_names=["noise", "square"],
                              in_channels=1, input_size=[16, 16], metrics=best, trained_on="synthetic",
                              training={"epochs_run": len(history)})

    job = fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=epochs, policy=resolve_device("cpu"),
              evaluate=evaluate, monitor="val_accuracy", mode="max",
              checkpoint_path=tmp_path / "model.safetensors", make_meta=make_meta, cancel=cancel, **kw)
    return job, (xv, yv)


def test_fit_learns_and_saves_best(tmp_path):
    job, (xv, yv) = _setup(tmp_path, epochs=8)
    seen: list[Progress] = []
    result = run_sync(job, seen.append)
    assert result.best_metrics["val_accuracy"] >= 0.85  # chance is 0.5
    assert [p.stage for p in seen].count("epoch") == 8
    assert seen[-1].metrics["epoch"] == 8 and "loss" in seen[0].metrics
    model, meta = build_from_checkpoint(result.checkpoint, task="toy")
    acc = (model(xv).argmax(1) == yv).float().mean().item()
    assert acc == pytest.approx(meta.metrics["val_accuracy"])


def test_cancel_mid_epoch_keeps_previous_checkpoint(tmp_path):
    # a first complete run leaves a checkpoint
    run_sync(_setup(tmp_path, epochs=1)[0])
    ckpt = tmp_path / "model.safetensors"
    before = ckpt.read_bytes()
    meta_before = read_meta(ckpt)
    # a second run is cancelled in the middle of its first epoch
    token = CancelToken()
    job, _ = _setup(tmp_path, epochs=3, cancel=token)
    with pytest.raises(Cancelled):
        for p in job:
            if p.stage == "train" and p.step == 3:
                token.cancel()
    assert ckpt.read_bytes() == before
    assert read_meta(ckpt) == meta_before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cancel_raises_cancelled(tmp_path):
    token = CancelToken()
    job, _ = _setup(tmp_path, epochs=2, cancel=token)
    next(job)
    token.cancel()
    with pytest.raises(Cancelled):
        run_sync(job)


def test_closing_generator_mid_epoch_writes_nothing(tmp_path):
    job, _ = _setup(tmp_path, epochs=2)
    for p in itertools.islice(job, 3):
        pass
    job.close()  # what a GUI worker does when quit
    assert not (tmp_path / "model.safetensors").exists()
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_history(tmp_path):
    resume = tmp_path / "resume.pt"
    r1 = run_sync(_setup(tmp_path, epochs=2, resume_path=resume)[0])
    state = load_resume_state(resume)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    model = build_model("tiny_cnn", **CFG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert restore_resume_state(resume, model, opt, enabled=False) == (0, [])
    start, history = restore_resume_state(resume, model, opt)
    assert (start, history) == (2, state["history"])
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    job, _ = _setup(tmp_path, epochs=3, resume_path=resume, start_epoch=start, history=history)
    r2 = run_sync(job)
    assert r2.epochs_run == 3 and len(r1.history) == 2


def test_early_stopping(tmp_path):
    job, _ = _setup(tmp_path, epochs=30, early_stopping_patience=1)
    result = run_sync(job)
    assert result.stopped_early and result.epochs_run < 30


def test_predict_batches_matches_per_image_and_keeps_order():
    torch.manual_seed(0)
    model = build_model("tiny_cnn", **CFG).eval()
    items = [torch.rand(1, 16, 16) for _ in range(10)]
    progress = []
    out = run_sync(
        # fp32 (fast=False): this checks batching and order; the bf16 fast path has its own agreement test
        predict_batches(model, items, policy=resolve_device("cpu", fast=False), preprocess=lambda t: t,
                        batch_size=4),
        progress.append,
    )
    assert [p.step for p in progress] == [4, 8, 10]
    with torch.no_grad():
        ref = [model(t[None])[0] for t in items]
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_predict_batches_cancel():
    model = build_model("tiny_cnn", **CFG)
    token = CancelToken()
    job = predict_batches(model, [torch.rand(1, 16, 16)] * 10, policy=resolve_device("cpu"),
                          preprocess=lambda t: t, batch_size=2, cancel=token)
    next(job)
    token.cancel()
    with pytest.raises(Cancelled):
        next(job)


def test_resume_continues_the_learning_rate_schedule(tmp_path):
    """An interrupted run resumes where its schedule was, not at the schedule's start."""
    def run(epochs, start=0, resume=None):
        torch.manual_seed(0)
        x, y = _data(32, 0)
        loader = DataLoader(TensorDataset(x, y), batch_size=8)
        model = build_model("tiny_cnn", **CFG)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4 * len(loader))
        job = fit(model, loader, loss_fn=lambda m, b, e: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                  optimizer=opt, epochs=epochs, policy=resolve_device("cpu"), scheduler=sched,
                  scheduler_per_batch=True, start_epoch=start)
        return run_sync(job).history

    straight = run(4)
    resumed = run(4, start=2)
    assert [h["lr"] for h in resumed] == pytest.approx([h["lr"] for h in straight[2:]])


def test_resume_with_the_saved_optimizer_state_does_not_decay_the_schedule_twice(tmp_path):
    """Resume loads the optimizer (its lr already decayed); a recursive cosine must not start from there."""
    def run(epochs, start=0, state=None):
        torch.manual_seed(0)
        x, y = _data(32, 0)
        loader = DataLoader(TensorDataset(x, y), batch_size=8)
        model = build_model("tiny_cnn", **CFG)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6 * len(loader))
        if state is not None:
            opt.load_state_dict(state)  # what restore_resume_state does
        job = fit(model, loader, loss_fn=lambda m, b, e: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                  optimizer=opt, epochs=epochs, policy=resolve_device("cpu"), scheduler=sched,
                  scheduler_per_batch=True, start_epoch=start)
        return run_sync(job).history, opt.state_dict()

    straight, _ = run(6)
    _, state = run(3)  # interrupted after epoch 3 (the saved optimizer's lr is the decayed one)
    resumed, _ = run(6, start=3, state=state)
    assert [h["lr"] for h in resumed] == pytest.approx([h["lr"] for h in straight[3:]])
