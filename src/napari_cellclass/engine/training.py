"""The training loop every model uses, written as a generator.

Tasks supply the pieces that differ (``loss_fn`` runs one batch and returns the
loss; ``evaluate`` returns metrics; ``make_meta`` describes the checkpoint); this
loop owns the rest: device placement, mixed precision on CUDA, cancellation
between batches, best-checkpoint selection, early stopping, and atomic saves.
A cancelled run raises :class:`~napari_cellclass.errors.Cancelled` (or is closed
at a ``yield``) *before* anything is written for the current epoch, so the
previous checkpoint always survives.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from . import distributed
from .atomic import atomic_path
from .checkpoint import CheckpointMeta, save_checkpoint
from .device import DevicePolicy
from .progress import CancelToken, Job, Progress, check_cancel

LossFn = Callable[[torch.nn.Module, Any, int], torch.Tensor]
EvalFn = Callable[[torch.nn.Module, int], dict[str, float]]


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int | None
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False
    seconds: float = 0.0


def move_to(batch: Any, policy: DevicePolicy) -> Any:
    """Move tensors inside (nested) tuples/lists/dicts to the policy's device."""
    if isinstance(batch, torch.Tensor):
        return policy.prepare_input(batch) if batch.is_floating_point() else batch.to(policy.device)
    if isinstance(batch, dict):
        return {k: move_to(v, policy) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, policy) for v in batch)
    return batch


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def fit(
    model: torch.nn.Module,
    train_batches: Iterable[Any],
    *,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    policy: DevicePolicy,
    evaluate: EvalFn | None = None,
    monitor: str = "loss",
    mode: str = "min",
    scheduler: Any = None,
    scheduler_per_batch: bool = False,
    checkpoint_path: str | Path | None = None,
    make_meta: Callable[[dict[str, float], list[dict[str, float]]], CheckpointMeta] | None = None,
    cancel: CancelToken | None = None,
    early_stopping_patience: int | None = None,
    regularizer: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    resume_path: str | Path | None = None,
    start_epoch: int = 0,
    history: list[dict[str, float]] | None = None,
    grad_clip: float | None = None,
) -> Job[FitResult]:
    """Train ``model``; yield :class:`Progress` per batch; return :class:`FitResult`.

    ``monitor`` names a metric from ``evaluate`` (or "loss", the mean training
    loss) used to keep the best checkpoint; ``mode`` is "min" or "max".
    ``resume_path`` (if given) receives model+optimizer state after each epoch so
    an interrupted run can continue with :func:`load_resume_state`.
    """
    if mode not in ("min", "max"):
        raise ValueError("mode must be 'min' or 'max'")
    model = policy.prepare_model(model)
    # torchrun: this rank's share of every batch, gradients summed over ranks, rank 0 writes (engine/distributed.py)
    train_batches = distributed.shard_batches(train_batches)
    sync_params = distributed.trainable_params(model, optimizer) if distributed.active() else None
    main = distributed.is_main()
    scaler = None
    if policy.amp and policy.amp_dtype == torch.float16:
        scaler = torch.amp.GradScaler("cuda")
    n_batches = len(train_batches) if hasattr(train_batches, "__len__") else None
    total = n_batches * (epochs - start_epoch) if n_batches is not None else None
    history = list(history or [])
    best_value: float | None = None
    best_metrics: dict[str, float] = {}
    best_epoch = None
    for h in history:  # resumed: recover the best so far
        if monitor in h and _better(h[monitor], best_value, mode):
            best_value, best_metrics, best_epoch = h[monitor], dict(h), int(h.get("epoch", 0))
    saved: Path | None = Path(checkpoint_path) if checkpoint_path and best_epoch is not None else None
    if scheduler is not None and start_epoch and (n_batches is not None or not scheduler_per_batch):
        # resumed: bring the learning-rate schedule to where the interrupted run left it
        import warnings

        # a restored optimizer carries the decayed lr of the saved epoch; recursive schedules
        # (CosineAnnealingLR) would decay it again while fast-forwarding, so start from the base lr
        for group in optimizer.param_groups:
            if "initial_lr" in group:
                group["lr"] = group["initial_lr"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            for _ in range(start_epoch * (n_batches if scheduler_per_batch else 1)):
                scheduler.step()
    stale = 0
    step = 0
    t0 = time.monotonic()
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        running, count, weighted = 0.0, 0, 0.0
        for batch in train_batches:
            check_cancel(cancel)
            batch = move_to(batch, policy)
            with policy.autocast():
                loss = loss_fn(model, batch, epoch)
                if regularizer is not None:
                    loss = loss + regularizer(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if sync_params is not None:
                    distributed.sync_gradients(sync_params, train_batches.weight)
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if sync_params is not None:
                    distributed.sync_gradients(sync_params, train_batches.weight)
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            if scheduler is not None and scheduler_per_batch:
                scheduler.step()
            running += float(loss.detach())
            weighted += float(loss.detach()) * getattr(train_batches, "weight", 1.0)
            count += 1
            step += 1
            yield Progress(
                step=step,
                total=total,
                stage="train",
                message=f"epoch {epoch + 1}/{epochs}",
                metrics={"loss": running / count},
            )
        check_cancel(cancel)
        if scheduler is not None and not scheduler_per_batch:
            scheduler.step()
        if sync_params is not None:  # the full-batch mean loss, and one set of batch-norm statistics
            running = distributed.sum_floats([weighted])[0]
            distributed.average_buffers(model)
        metrics: dict[str, float] = {"epoch": epoch + 1, "loss": running / max(count, 1)}
        metrics["lr"] = float(optimizer.param_groups[0]["lr"])
        if evaluate is not None and main:
            model.eval()
            with torch.inference_mode(), policy.autocast():
                metrics.update({k: float(v) for k, v in evaluate(model, epoch).items()})
        metrics = distributed.broadcast_object(metrics)  # rank 0 validated; every rank decides alike
        check_cancel(cancel)
        history.append(metrics)
        value = metrics.get(monitor, float("nan"))
        improved = _better(value, best_value, mode) or best_epoch is None
        if improved:
            best_value, best_metrics, best_epoch, stale = value, dict(metrics), epoch + 1, 0
            if checkpoint_path is not None and make_meta is not None and main:
                saved = save_checkpoint(checkpoint_path, model, make_meta(best_metrics, history))
        else:
            stale += 1
        if resume_path is not None and main:
            save_resume_state(resume_path, model, optimizer, epoch + 1, history)
        yield Progress(
            step=step,
            total=total,
            stage="epoch",
            message=f"epoch {epoch + 1}/{epochs} done" + (" (best so far)" if improved else ""),
            metrics=metrics,
        )
        if early_stopping_patience is not None and stale >= early_stopping_patience:
            stopped_early = True
            break
    distributed.barrier()  # rank 0's files are complete before any rank returns
    if not main and checkpoint_path is not None and make_meta is not None and best_epoch is not None:
        saved = Path(checkpoint_path)  # written by rank 0
    return FitResult(
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_metrics=best_metrics,
        history=history,
        checkpoint=saved,
        stopped_early=stopped_early,
        seconds=time.monotonic() - t0,
    )


def save_resume_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
) -> None:
    """Model + optimizer state for resuming (tensors and plain containers only)."""
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def restore_resume_state(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, enabled: bool = True
) -> tuple[int, list[dict[str, float]]]:
    """Load model and optimizer state from a resume file, if asked and present.

    Returns ``(start_epoch, history)`` to pass to :func:`fit`; ``(0, [])`` when
    resuming is off or there is nothing to resume from.
    """
    if not enabled or not Path(path).is_file():
        return 0, []
    from ..errors import CheckpointError

    state = load_resume_state(path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"]), list(state["history"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError):
        raise CheckpointError(
            "this run cannot be resumed with the current model: the saved state belongs to another task, "
            "architecture or class list; choose a new --out (or --overwrite to start this folder afresh)",
            path) from None


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read a resume file without executing code (``weights_only=True``).

    Whatever torch says about a file it refuses (including its advice to pass
    ``weights_only=False``, which would allow code execution) is not shown to users.
    """
    from ..errors import CheckpointError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(
            "resume state could not be read: the file is damaged, from another program or holds objects "
            "that are not plain tensors (it is never unpickled); start a new run or use --overwrite",
            path) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "history"} <= set(state):
        raise CheckpointError("resume state is incomplete (not written by napari-cellclass)", path)
    return state
