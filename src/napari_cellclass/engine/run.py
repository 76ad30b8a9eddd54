"""The one training skeleton every task's ``train()`` runs through.

A task says only what is its own: the model, the batches, the loss, the
validation metrics and the checkpoint metadata, returned as a :class:`TrainSpec`
from a generator (so it can report progress while it loads data).  Everything
else is decided here, once, for every task:

* the run folder (``opts.out`` or ``runs/<task>-<time>``) and its ``resume.pt``;
* seeding (``torch.manual_seed(opts.seed)`` before the task builds anything);
* the recipe: optimiser, learning-rate schedule, regulariser (L1), gradient
  clipping, early stopping and the wall-clock budget (``--set time_budget_s=S``);
* resuming an interrupted run (``--resume``), also under torchrun;
* one result schema (:data:`RESULT_KEYS` plus the task's own keys).

The loop itself (device placement, AMP, cancellation, best checkpoint, the
distributed gradient sum) stays in :func:`napari_cellclass.engine.training.fit`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import CheckpointMeta, save_checkpoint
from .device import DevicePolicy, resolve_device
from .progress import Job, Progress
from .training import EvalFn, FitResult, LossFn, fit, restore_resume_state

#: keys every task's training summary has (tasks add their own beside them)
RESULT_KEYS = ("task", "checkpoint", "run", "best_metrics", "history", "epochs_run", "stopped_early",
               "stopped_by_time_budget", "device", "seconds", "recipe")


@dataclass
class RunContext:
    """What the skeleton has decided before the task builds its pieces."""

    task: str
    opts: Any
    out: Path
    policy: DevicePolicy
    t0: float

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def resume_path(self) -> Path:
        return self.out / "resume.pt"


@dataclass
class TrainSpec:
    """A task's own part of a training run.

    ``make_meta(best_metrics, history)`` describes the checkpoint; ``summary``
    holds the task's extra result keys (or is called with the :class:`FitResult`
    to make them); ``optimizer`` defaults to the recipe's optimiser over the
    model's trainable parameters (give one when a loss has parameters too).
    """

    model: torch.nn.Module
    batches: Iterable[Any]
    loss_fn: LossFn
    recipe: Any  # napari_cellclass.recipes.Recipe
    make_meta: Callable[[dict[str, float], list[dict[str, float]]], CheckpointMeta]
    evaluate: EvalFn | None = None
    monitor: str = "loss"
    mode: str = "min"
    optimizer: torch.optim.Optimizer | None = None
    summary: dict[str, Any] | Callable[[FitResult | None], dict[str, Any]] = field(default_factory=dict)


def run_folder(task: str, opts: Any, name: str | None = None) -> Path:
    """``opts.out``, or a new ``runs/<name>-<time>`` folder; created."""
    out = Path(opts.out) if getattr(opts, "out", None) else Path("runs") / f"{name or task}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_no_earlier_run(out: str | Path | None, task: str, *, resume: bool = False, overwrite: bool = False) -> None:
    """``train``: refuse a run folder holding a model (any task) or an interrupted run, unless asked.

    ``--overwrite`` starts afresh there; ``--resume`` continues it (another task's run is
    refused by :func:`~napari_cellclass.engine.checkpoint.check_run_folder`).
    """
    from ..errors import CellClassError
    from .atomic import ResultExistsError
    from .checkpoint import read_meta

    if out is None or overwrite or resume or not Path(out).is_dir():
        return
    out = Path(out)
    found = sorted(out.glob("*.safetensors")) + [p for p in (out / "resume.pt",) if p.exists()]
    if not found:
        return
    first = found[0]
    if first.suffix == ".pt":
        what = "an interrupted training run (resume.pt)"
    else:
        try:
            what = f"a trained {read_meta(first).task!r} model ({first.name})"
        except CellClassError:
            what = f"a model file ({first.name})"
    raise ResultExistsError(f"the run folder already holds {what}; training {task!r} here would replace it, so "
                            "nothing was done. Pass --overwrite to start afresh, --resume to continue it, or "
                            "choose another --out", first)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (the tasks seed their own numpy/torch generators from ``opts.seed``)."""
    torch.manual_seed(int(seed))


BuildFn = Callable[[RunContext], Generator[Progress, None, TrainSpec]]


def train_run(task: str, opts: Any, build: BuildFn, *, policy: DevicePolicy | None = None,
              run_name: str | None = None) -> Job[dict[str, Any]]:
    """Run one training: folder, seed, ``build`` (the task), recipe, resume, fit, budget, summary.

    ``policy`` defaults to ``resolve_device(opts.device)``; tasks that choose AMP
    themselves pass their own.
    """
    t0 = time.monotonic()
    policy = policy or resolve_device(getattr(opts, "device", None))
    out = run_folder(task, opts, run_name)
    seed_everything(getattr(opts, "seed", 0) or 0)
    ctx = RunContext(task=task, opts=opts, out=out, policy=policy, t0=t0)
    spec = yield from build(ctx)
    recipe = spec.recipe
    optimizer = spec.optimizer or recipe.make_optimizer(spec.model.parameters())
    scheduler, per_batch = recipe.make_scheduler(optimizer, len(spec.batches), recipe.epochs)
    start_epoch, history = restore_resume_state(ctx.resume_path, spec.model, optimizer,
                                                enabled=bool(getattr(opts, "resume", False)))
    job = fit(
        spec.model, spec.batches, loss_fn=spec.loss_fn, optimizer=optimizer, epochs=recipe.epochs, policy=policy,
        evaluate=spec.evaluate, monitor=spec.monitor, mode=spec.mode, scheduler=scheduler,
        scheduler_per_batch=per_batch, checkpoint_path=ctx.checkpoint_path, make_meta=spec.make_meta,
        cancel=getattr(opts, "cancel", None), early_stopping_patience=recipe.early_stopping_patience,
        regularizer=recipe.regularizer(), resume_path=ctx.resume_path, start_epoch=start_epoch,
        history=history, grad_clip=recipe.grad_clip,
    )
    budget = _time_budget(opts)
    result, seen = yield from _within_budget(job, budget, t0)
    if result is None and distributed.is_main() and not ctx.checkpoint_path.exists():
        # not even one epoch finished inside the budget: keep what was learnt
        save_checkpoint(ctx.checkpoint_path, spec.model,
                        spec.make_meta({"note": "stopped by the time budget within the first epoch; "
                                                "not validated"}, []))
    if result is not None:
        hist, best, stopped_early = result.history, result.best_metrics, result.stopped_early
    else:
        hist, stopped_early = history + seen, False
        best = _best(hist, spec.monitor, spec.mode)
    extra = spec.summary(result) if callable(spec.summary) else dict(spec.summary)
    summary = {
        "task": task,
        "checkpoint": str(ctx.checkpoint_path),
        "run": str(out),
        "best_metrics": best,
        "history": hist,
        "epochs_run": len(hist),
        "stopped_early": stopped_early,
        "stopped_by_time_budget": result is None,
        "device": policy.describe(),
        "seconds": round(time.monotonic() - t0, 1),
        "recipe": recipe.summary(),
    }
    summary.update(extra)
    return summary


def _time_budget(opts: Any) -> float | None:
    get = getattr(opts, "get", None)
    value = get("time_budget_s") if get is not None else None
    return float(value) if value else None


def _within_budget(job: Job[FitResult], budget: float | None, t0: float
                   ) -> Generator[Progress, None, tuple[FitResult | None, list[dict[str, float]]]]:
    """Drive ``fit``; stop after the batch during which ``budget`` seconds have passed.

    Checked after every batch, so the budget also holds when one epoch is long; all
    torchrun ranks stop alike.  Returns ``(None, epochs seen)`` when stopped by the
    budget: the best checkpoint of the finished epochs is already on disk.
    """
    seen: list[dict[str, float]] = []
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value, seen
        yield p
        if p.stage == "epoch":
            seen.append(dict(p.metrics))
        if budget and distributed.any_rank(time.monotonic() - t0 > budget):
            job.close()
            return None, seen


def _best(history: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float]:
    rows = [h for h in history if monitor in h]
    if not rows:
        return {}
    return dict((max if mode == "max" else min)(rows, key=lambda h: h[monitor]))
