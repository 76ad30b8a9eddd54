"""Turn a napari/numpy image into the network input a checkpoint expects.

Generic rule used when a task module offers no ``preprocess(image, meta)`` of its
own: channels last or first are accepted; integer images are scaled by their
dtype's maximum, float images with values above 1.5 by their maximum; the image
is resized to ``meta.input_size`` and normalised with ``meta.normalization``
(``{"mean": [...], "std": [...]}``) when present.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def to_chw(image: np.ndarray, in_channels: int) -> np.ndarray:
    """``H x W``, ``H x W x C`` or ``C x H x W`` -> ``C x H x W`` with ``in_channels`` channels."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if a.shape[-1] in (1, 2, 3, 4) and a.shape[0] not in (1, 2, 3, 4):
            a = np.moveaxis(a, -1, 0)
        elif a.shape[0] != in_channels and a.shape[-1] == in_channels:
            a = np.moveaxis(a, -1, 0)
    else:
        raise InputError(f"expected a 2-D image (optionally with channels), got shape {a.shape}")
    c = a.shape[0]
    if c == in_channels:
        return a
    if in_channels == 1:
        return a[:3].mean(axis=0, keepdims=True)
    if c == 1:
        return np.repeat(a, in_channels, axis=0)
    if c == 4 and in_channels == 3:
        return a[:3]
    raise InputError(f"the image has {c} channel(s) but the model expects {in_channels}")


def scale01(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    peak = float(np.nanmax(a)) if a.size else 0.0
    return a / peak if peak > 1.5 else a


def prepare_image(image: np.ndarray, meta: Any, resize: bool = True) -> torch.Tensor:
    """``1 x C x H x W`` float tensor ready for the model described by ``meta`` (a CheckpointMeta)."""
    a = scale01(to_chw(image, int(meta.in_channels)))
    x = torch.from_numpy(np.ascontiguousarray(a))[None]
    size = list(getattr(meta, "input_size", []) or [])
    if resize and len(size) == 2 and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    norm = getattr(meta, "normalization", None) or {}
    if "mean" in norm and "std" in norm:
        mean = torch.tensor(norm["mean"], dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(norm["std"], dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def task_preprocess(task: str, image: np.ndarray, meta: Any) -> torch.Tensor:
    """Use the task module's own ``preprocess(image, meta)`` when it has one, else :func:`prepare_image`."""
    try:
        from ..tasks.base import task_module

        fn = getattr(task_module(task), "preprocess", None)
    except Exception:
        fn = None
    if fn is not None:
        x = fn(image, meta)
        x = torch.as_tensor(x, dtype=torch.float32)
        return x if x.ndim == 4 else x[None]
    return prepare_image(image, meta)
