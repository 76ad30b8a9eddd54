"""Preprocessing as named, registered transforms declared in the checkpoint.

A checkpoint says how its network input is made: ``meta.preprocess = {"name":
"chromosome_canvas", "params": {...}}`` (older checkpoints are read through
:func:`napari_cellclass.engine.checkpoint.declared_preprocess`, which derives the
same spec from their free-form ``normalization``).  :func:`get_transform` turns the
declaration into a transform object; training (dataset sample preparation),
evaluate, predict, classify and explain all go through that one object, so an
explanation is computed on exactly the tensor the classifier sees.

A transform is called as ``tf(image, box=None, **context) -> (C, H, W) float32``;
``box`` = ``(y0, x0, y1, x1)`` picks one object out of a larger image the way the
task's classify does.  ``aligned`` says whether the tensor is the box region
resized (True: a saliency map can be laid back onto the image) or a re-drawn view
(False: the chromosome canvas is rotated, straightened and padded).

Register a new one with ``@register_transform("name")`` on a class whose
``__init__`` takes the declared params as keyword arguments.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .engine.checkpoint import CheckpointMeta, declared_preprocess
from .errors import CheckpointError, InputError

_REGISTRY: dict[str, type] = {}


def register_transform(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` usable in a checkpoint's ``preprocess`` declaration."""
    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a transform named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def registered_transforms() -> list[str]:
    return sorted(_REGISTRY)


def get_transform(meta_or_spec: CheckpointMeta | dict[str, Any]) -> Transform:
    """The transform a checkpoint declares (or a ``{"name", "params"}`` spec)."""
    spec = declared_preprocess(meta_or_spec) if isinstance(meta_or_spec, CheckpointMeta) else meta_or_spec
    name = spec.get("name")
    if name not in _REGISTRY:
        raise CheckpointError(
            f"the model's preprocessing {name!r} is not a registered transform (known: "
            f"{', '.join(registered_transforms())}); it is not a classifier this function can feed")
    try:
        return _REGISTRY[name](**dict(spec.get("params") or {}))
    except TypeError as exc:
        raise CheckpointError(f"preprocessing {name!r}: the checkpoint's params do not fit ({exc})") from None


class Transform:
    """Base: one image (plus optional box and context) -> one (C, H, W) network input."""

    name = "?"
    aligned = True

    def __call__(self, image: Any, box: Sequence[float] | None = None, **context: Any) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, image: Any, box: Sequence[float] | None = None, **context: Any) -> torch.Tensor:
        """``1 x C x H x W``: what a single forward pass (Grad-CAM) takes."""
        return self(image, box, **context)[None]


def _box_crop(a: np.ndarray, box: Sequence[float] | None, channel_first: bool = False) -> np.ndarray:
    if box is None:
        return a
    y0, x0, y1, x1 = (round(float(v)) for v in box)
    h, w = (a.shape[-2:] if channel_first else a.shape[:2])
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise InputError(f"box {tuple(box)} is empty or outside the image of shape {a.shape}")
    return a[..., y0:y1, x0:x1] if channel_first else a[y0:y1, x0:x1]


# ----------------------------------------------------------------------------- generic
def to_chw(image: np.ndarray, in_channels: int) -> np.ndarray:
    """``H x W``, ``H x W x C`` or ``C x H x W`` -> ``C x H x W`` with ``in_channels`` channels."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if a.shape[-1] in (1, 2, 3, 4) and a.shape[0] not in (1, 2, 3, 4) or a.shape[0] != in_channels and a.shape[-1] == in_channels:
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
    """Integers by their dtype's maximum; floats above 1.5 by their maximum; else as they are."""
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32)
    peak = float(np.nanmax(a)) if a.size else 0.0
    return a / peak if peak > 1.5 else a


@register_transform("generic")
class Generic(Transform):
    """Models that declare nothing special: channels fixed, scaled to 0..1, resized, mean/std."""

    def __init__(self, in_channels: int = 3, size: Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.in_channels = int(in_channels)
        self.size = [int(s) for s in (size or [])]
        self.mean, self.std = mean, std

    def __call__(self, image, box=None, **context) -> torch.Tensor:
        a = scale01(to_chw(image, self.in_channels))
        a = _box_crop(a, box, channel_first=True)
        x = torch.from_numpy(np.ascontiguousarray(a))[None]
        if len(self.size) == 2 and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False)
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)) / torch.tensor(
                self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return x[0]


# ----------------------------------------------------------------------------- chromosomes
class Oriented:
    """A crop already through :func:`orient_crop` (upright, background removed), kept to be
    measured and canvassed without orienting it twice."""

    __slots__ = ("x",)

    def __init__(self, x: np.ndarray):
        self.x = x


def orient_all(crops: Sequence, cancel=None, straighten: bool = False) -> list[Oriented]:
    """Each crop upright with its background removed (and laid out straight when ``straighten``)."""
    from .engine.progress import check_cancel
    from .io.chromosome_dataset import orient_crop
    from .karyotype.straighten import straighten as lay_straight

    out = []
    for i, c in enumerate(crops):
        if i % 200 == 0:
            check_cancel(cancel)
        if isinstance(c, Oriented):
            out.append(c)
            continue
        img, mask = c if isinstance(c, tuple) else (c, None)
        x = orient_crop(img, mask)
        out.append(Oriented(lay_straight(x) if straighten else x))
    return out


def crop_lengths(crops: Sequence, straighten: bool = False) -> np.ndarray:
    """Long-axis length (pixels) of each crop's chromosome, measured as the network's input sees it."""
    return np.asarray([o.x.shape[0] for o in orient_all(crops, straighten=straighten)], np.float64)


def reference_length(lengths: Sequence[float]) -> float:
    """The scale of one cell or spread: the median chromosome length in it."""
    lengths = np.asarray(lengths, np.float64)
    if lengths.size == 0:
        raise InputError("no chromosomes to measure the spread's scale from")
    return float(np.median(lengths))


@register_transform("chromosome_canvas")
class ChromosomeCanvas(Transform):
    """One gray chromosome crop -> (1, H, W): polarity to bright-on-dark, background removed,
    long axis vertical (optionally straightened), centred on a canvas and resized.

    The canvas is ``pad_to`` source pixels (absolute) or ``pad_rel`` times the
    median chromosome length of the crop's spread (relative; ``ref_length`` or the
    median of ``context``, else of the crops themselves).
    """

    aligned = False

    def __init__(self, size: Sequence[int] = (448, 456), pad_to: float | None = None,
                 pad_rel: float | None = None, straighten: bool = False, canvas: str | None = None):
        self.size = [int(size[0]), int(size[1])]
        self.pad_to = pad_to
        self.pad_rel = float(pad_rel) if pad_rel else None
        self.straighten = bool(straighten)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "canvas": "relative" if self.pad_rel else "absolute", "pad_to": self.pad_to,
                "pad_rel": self.pad_rel, "straighten": self.straighten}

    def orient(self, crops: Sequence, cancel=None) -> list[Oriented]:
        return orient_all(crops, cancel, straighten=self.straighten)

    def pads(self, upright: Sequence[Oriented], ref_length: float | Sequence[float] | None = None,
             context: Sequence | None = None) -> list[float | None]:
        """The canvas height (source pixels) of each oriented crop."""
        if not self.pad_rel:
            return [self.pad_to] * len(upright)
        if ref_length is None:
            ref_length = reference_length(crop_lengths(upright if context is None else context,
                                                       straighten=self.straighten))
        refs = np.broadcast_to(np.asarray(ref_length, np.float64), (len(upright),))
        return list(float(self.pad_rel) * refs)

    @staticmethod
    def canvas(x: np.ndarray | Oriented, size: Sequence[int], pad: float | None) -> np.ndarray:
        """An oriented crop centred on its canvas and resized: (H, W) float32 in 0..1."""
        from .io.chromosome_dataset import canvas_crop

        return canvas_crop(x.x if isinstance(x, Oriented) else x, size, pad)

    def tensors(self, crops: Sequence, ref_length=None, context=None, cancel=None) -> Callable[[int], torch.Tensor]:
        """``i -> (1, H, W)`` for many crops of one spread, orienting each crop once."""
        upright = self.orient(crops, cancel)
        pads = self.pads(upright, ref_length, context)
        return lambda i: torch.from_numpy(self.canvas(upright[i], self.size, pads[i]))[None]

    def __call__(self, image, box=None, ref_length=None, context=None, mask=None, **_) -> torch.Tensor:
        crop = _box_crop(np.asarray(image), box)
        if mask is not None:
            crop = (crop, _box_crop(np.asarray(mask), box))
        return self.tensors([crop], ref_length, context)(0)


# ----------------------------------------------------------------------------- HPA
def as_rgby(image: Any) -> np.ndarray:
    """(4, H, W) from a (4, H, W) or (H, W, 4) array or a list of four 2-D arrays; clear errors otherwise."""
    if isinstance(image, (list, tuple)):
        missing = [c for c, a in zip(("red", "green", "blue", "yellow"), list(image) + [None] * 4) if a is None]
        if len(image) != 4 or missing:
            raise InputError("the HPA model needs four channels (red, green, blue, yellow); missing: "
                             + (", ".join(missing) if missing else f"got {len(image)} arrays"))
        arrays = [np.asarray(a) for a in image]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 2:
            raise InputError(f"the four channels must be 2-D images of one size, got {[a.shape for a in arrays]}")
        return np.stack(arrays)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4 and arr.shape[0] != 4:
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3 or arr.shape[0] != 4:
        raise InputError(f"expected a (4, H, W) red/green/blue/yellow array, got shape {arr.shape}; "
                         "the HPA model needs four channels")
    return arr


@register_transform("hpa_rgby")
class HPAField(Transform):
    """RGBY field or cell -> (4, S, S): scaled by the dtype's range, area-resized, per-channel mean/std."""

    def __init__(self, size: int = 512, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.size = int(size[-1] if isinstance(size, (list, tuple)) else size)
        self.mean = torch.tensor(list(mean or [0.0] * 4), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std or [1.0] * 4), dtype=torch.float32)[:, None, None]

    def unit(self, image: Any) -> np.ndarray:
        """(4, H, W) float32 in 0..1 (the field before resizing)."""
        from .io.hpa_dataset import to_unit_float

        return to_unit_float(as_rgby(image))

    def resize(self, unit: np.ndarray | torch.Tensor) -> torch.Tensor:
        from .io.hpa_dataset import resize

        return resize(unit, self.size)

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.mean) / self.std

    def views(self, unit: np.ndarray, how: str = "resize") -> list[torch.Tensor]:
        """Unit-scaled (4, S, S) views of one field: the resized field, or its tiles (not normalised)."""
        if how not in ("resize", "tile"):
            raise InputError(f"field handling must be 'resize' or 'tile', got {how!r}")
        x = torch.from_numpy(np.ascontiguousarray(unit))
        h, w = x.shape[-2:]
        size = self.size
        if how == "tile" and max(h, w) > size:
            ny, nx = int(np.ceil(h / size)), int(np.ceil(w / size))
            ys = np.linspace(0, max(0, h - size), ny).astype(int)
            xs = np.linspace(0, max(0, w - size), nx).astype(int)
            return [self.resize(x[:, y:y + size, x0:x0 + size]) for y in ys for x0 in xs]
        return [self.resize(x)]

    def __call__(self, image, box=None, **_) -> torch.Tensor:
        unit = self.unit(image)
        if box is not None:
            unit = np.ascontiguousarray(_box_crop(unit, box, channel_first=True))
        return self.normalize(self.resize(unit))


# ----------------------------------------------------------------------------- white blood cells
@register_transform("wbc_crop")
class WBCCrop(Transform):
    """Stained RGB smear (or a ready crop) -> (3, S, S), ImageNet-normalised.

    ``crop="fixed"``: a ``window_px`` square around the box centre (the smear
    models, trained at a fixed pixel scale); ``crop="box"``: a square of
    ``crop_context`` times the box's longer side.  Without a box the image is one
    cell: resized whole (box models) or its centre window (fixed models).  Pixels are
    scaled by 255 and normalised with the ImageNet mean/std (fixed for this transform).
    """

    def __init__(self, size: int = 128, crop: str = "box", window_px: float | None = None,
                 crop_context: float | None = None):
        from .io import wbc_dataset as D

        self.size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.crop = str(crop)
        self.window = float(window_px or D.FIXED_WINDOW)
        self.context = float(crop_context or D.CONTEXT)
        self.aligned = self.crop != "fixed"

    def crops(self, image: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """(N, S, S, 3) uint8 model crops of an RGB image; ``boxes`` None = the image is one cell."""
        from .io import wbc_dataset as D

        if boxes is None:
            if self.crop == "fixed":
                return self.crops(image, np.array([[0, 0, image.shape[0], image.shape[1]]], float))
            return D.crop_cell(image, None, self.size)[None]
        if not len(boxes):
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        if self.crop == "fixed":
            return np.stack([D.crop_fixed(image, D.box_centre(b), self.window, self.size) for b in boxes])
        return np.stack([D.crop_cell(image, b, self.size, self.context) for b in boxes])

    def input_window(self, image_hw: Sequence[int], box: Sequence[float] | None) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) in image pixels of the square the network sees for ``box`` (may reach past
        the image's edges, where the crop is padded): lets a map on the model input go back onto the image."""
        from .io import wbc_dataset as D

        h, w = int(image_hw[0]), int(image_hw[1])
        if box is None:
            if self.crop != "fixed":
                return (0, 0, h, w)
            box = (0, 0, h, w)
        y0, x0, y1, x1 = (float(v) for v in box)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        side = self.window if self.crop == "fixed" else max(y1 - y0, x1 - x0, 2.0) * self.context
        s = max(2, int(round(side)))
        top, left = int(round(cy - s / 2)), int(round(cx - s / 2))
        return (top, left, top + s, left + s)

    @staticmethod
    def to_tensor(crops: np.ndarray) -> torch.Tensor:
        from .io.wbc_dataset import to_tensor

        return to_tensor(crops)

    def __call__(self, image, box=None, **_) -> torch.Tensor:
        from .io.wbc_dataset import require_stained_rgb

        img = require_stained_rgb(np.asarray(getattr(image, "data", image)))
        boxes = None if box is None else np.asarray([box], float)
        return self.to_tensor(self.crops(img, boxes))[0]
