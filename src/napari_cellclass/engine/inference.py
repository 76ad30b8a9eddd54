"""Batched inference as a generator: the one path from arrays to model outputs.

Batching, ``inference_mode``, channels-last, the policy's inference autocast
(CUDA AMP; bf16 on CPUs with native bf16: the fast path of docs/performance.md,
off with ``CELLCLASS_FAST=0``), opt-in ``torch.compile``, and a cancellation
check between batches.  Pre- and post-processing are the task's; this module
only owns moving data through the network efficiently.
"""
from __future__ import annotations

import weakref
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
    model = policy.prepare_model(model, inference=True)
    model.eval()
    runner = compiled(model) if policy.compile_inference else model
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
        with torch.inference_mode(), policy.inference_autocast():
            out = forward(runner, x) if forward is not None else runner(x)
        out = _to_cpu_float(out)
        _check_finite(out, "the model produced NaN or infinite outputs (damaged weights or an input far "
                           "outside the training range); no result is given")
        results.extend(postprocess(out) if postprocess is not None else list(out))
        yield Progress(step=min(start + batch_size, n), total=n, stage=stage)
    return results


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
