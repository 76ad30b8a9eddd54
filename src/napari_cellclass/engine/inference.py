"""Batched inference as a generator: the one path from arrays to model outputs.

Batching, ``inference_mode``, channels-last, the policy's inference autocast
(CUDA AMP; bf16 on CPUs with native bf16: the fast path of docs/performance.md,
off with ``CELLCLASS_FAST=0``) with an fp32 re-check of near-tied rows, BatchNorm
folded into convolutions (fast path only), opt-in
``torch.compile``, and a cancellation check between batches.  Pre- and post-processing are the task's; this module
only owns moving data through the network efficiently.
"""
from __future__ import annotations

import time
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from .device import DevicePolicy
from .progress import CancelToken, Job, Progress, check_cancel


def predict_batches(
    model: torch.nn.Module,
    items: Sequence[Any],
    *,
    policy: DevicePolicy,
    preprocess: Callable[[Any], torch.Tensor],
    batch_size: int = 16,
    forward: Callable[[torch.nn.Module, torch.Tensor], Any] | None = None,
    postprocess: Callable[[Any], Any] | None = None,
    cancel: CancelToken | None = None,
    stage: str = "predict",
) -> Job[list[Any]]:
    """Run ``model`` over ``items``; return one output per item (in order).

    ``preprocess`` turns one item into a CHW tensor (all the same shape within a
    batch); ``forward`` defaults to ``model(x)``; ``postprocess`` receives the
    batch output moved to CPU float32 and must return a sequence of per-item
    results (default: the rows of the output tensor).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    LAST_RECHECK.update(rows=0, rechecked=0, low_rows=0)
    model = policy.prepare_model(model, inference=True)
    model.eval()
    if policy.fast_inference and forward is None:
        model = folded(model)
    runner = compiled(model) if policy.compile_inference else model
    key = None
    results: list[Any] = []
    n = len(items)
    for start in range(0, n, batch_size):
        check_cancel(cancel)
        chunk = items[start : start + batch_size]
        x = torch.stack([preprocess(it) for it in chunk])
        _check_finite(x, "the input (after preprocessing) holds NaN or infinite values")
        if policy.device.type == "cuda":
            x = x.pin_memory()
        x = policy.prepare_input(x, inference=True)
        if key is None:
            key = _dtype_key(model, x, policy)
        full = len(chunk) == batch_size
        low = _low_precision(key, full, policy)
        t0 = time.process_time()
        with torch.inference_mode(), policy.inference_autocast() if low else nullcontext():
            out = forward(runner, x) if forward is not None else runner(x)
        _record_trial(key, low, (time.process_time() - t0) / len(chunk), full)
        LAST_RECHECK["low_rows"] += len(chunk) if low else 0
        if low and policy.recheck_margin > 0:
            out = _recheck_near_ties(out, x, runner, forward, policy.recheck_margin)
        out = _to_cpu_float(out)
        _check_finite(out, "the model produced NaN or infinite outputs (damaged weights or an input far "
                           "outside the training range); no result is given")
        results.extend(postprocess(out) if postprocess is not None else list(out))
        yield Progress(step=min(start + batch_size, n), total=n, stage=stage)
    return results


#: rows seen and rows recomputed in fp32 by the last :func:`predict_batches` call (benchmarks read it)
LAST_RECHECK: dict[str, Any] = {"rows": 0, "rechecked": 0, "low_rows": 0}
#: CPU bf16 decisions per (architecture, parameters, input shape): None = still measuring
_CPU_LOW: dict[tuple, bool | None] = {}
_TRIALS: dict[tuple, dict[str, float]] = {}


def _dtype_key(model: torch.nn.Module, x: torch.Tensor, policy: DevicePolicy) -> tuple | None:
    """What the bf16-or-fp32 choice depends on; None where it is not measured (GPU AMP, fp32)."""
    if policy.inference_dtype is None or policy.device.type != "cpu":
        return None
    return (type(model).__name__, sum(p.numel() for p in model.parameters()), tuple(x.shape[1:]))


def _low_precision(key: tuple | None, full_batch: bool, policy: DevicePolicy) -> bool:
    """Run this batch in the policy's low precision?  On CPUs bf16 must first measure faster.

    bf16 pays on large convolutions (2.1x on ResNet-50 at 512 px here) but costs more
    than it saves on small networks (0.6x on the 96 px chromosome classifier), so the
    first full batch of a model and input size runs in bf16, the next in fp32 (both
    are results, not extra work), and the faster is kept for the rest of the process.
    """
    if policy.inference_dtype is None:
        return False
    if key is None:
        return True  # CUDA AMP: always a win
    decided = _CPU_LOW.get(key)
    if decided is not None:
        return decided
    if not full_batch:  # a short last batch does not time well: it takes part in no trial
        return True
    return "low" not in _TRIALS.get(key, {})


def _record_trial(key: tuple | None, low: bool, seconds_per_item: float, full_batch: bool) -> None:
    if key is None or _CPU_LOW.get(key) is not None or not full_batch:
        return
    trial = _TRIALS.setdefault(key, {})
    trial["low" if low else "fp32"] = seconds_per_item
    if "low" in trial and "fp32" in trial:
        _CPU_LOW[key] = trial["low"] < 0.9 * trial["fp32"]  # bf16 only where it is clearly faster
        _TRIALS.pop(key, None)


def _recheck_near_ties(out: Any, x: torch.Tensor, runner: Any, forward: Any, margin: float) -> Any:
    """Recompute in fp32 the rows whose two best scores are too close for low precision to order.

    bf16/fp16 move a network's logits by up to ~0.1 (measured on the built-ins), so
    a row whose top-2 logits are closer than ``margin`` (probabilities: ``margin / 4``)
    could rank its classes differently from fp32; recomputing those few rows
    (3-6 % on the built-ins) makes the fast path give fp32's top-1 class.
    """
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] >= 2 and out.is_floating_point()):
        return out
    o = out.float()
    LAST_RECHECK["rows"] += o.shape[0]
    top2 = o.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    is_prob = bool(((o >= 0) & (o <= 1)).all()) and bool(((o.sum(1) - 1).abs() < 1e-2).all())
    redo = gap < (margin / 4 if is_prob else margin)
    if not bool(redo.any()):
        return o
    with torch.inference_mode(), torch.autocast(device_type=x.device.type, enabled=False):
        exact = forward(runner, x[redo]) if forward is not None else runner(x[redo])
        o[redo] = exact.float().to(o.device)
    LAST_RECHECK["rechecked"] += int(redo.sum())
    return o


_FOLDED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, ...], torch.nn.Module]]" = (
    weakref.WeakKeyDictionary())


def folded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (in eval mode) with each BatchNorm folded into the convolution before it.

    Inference then skips a pass over every activation map: 1.2x on ResNet-50 at
    512 px on this CPU, in fp32 and bf16 alike, and the same outputs up to float
    rounding (tested).  Uses torch.fx; a model it cannot trace, or without a
    Conv-BN pair, is returned as it is.  The copy is cached per model and rebuilt
    when any weight changed in place (optimiser step, ``load_state_dict``), read
    from the tensors' version counters, so evaluation during training is never stale.
    """
    if model.training or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    version = tuple(t._version for t in model.state_dict(keep_vars=True).values())
    hit = _FOLDED.get(model)
    if hit is not None and hit[0] == version:
        return hit[1]
    try:
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model, inplace=False).eval()
    except Exception:  # not traceable (data-dependent control flow): run it unfused
        fused = model
    _FOLDED[model] = (version, fused)
    return fused


_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def compiled(model: torch.nn.Module) -> Any:
    """``torch.compile(model)``, once per model object (compiling takes seconds to minutes)."""
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model, dynamic=True)
    return _COMPILED[model]


def _check_finite(out: Any, message: str) -> None:
    """NaN/Inf is an error, never a number: NaN probabilities would read as a confident class."""
    from ..errors import InputError

    if isinstance(out, torch.Tensor):
        if out.is_floating_point() and out.numel() and not bool(torch.isfinite(out).all()):
            raise InputError(message)
    elif isinstance(out, dict):
        for v in out.values():
            _check_finite(v, message)
    elif isinstance(out, (list, tuple)):
        for v in out:
            _check_finite(v, message)


def _to_cpu_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu()
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_cpu_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_cpu_float(v) for v in out)
    return out
