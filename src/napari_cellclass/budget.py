"""The budgets one input is held to: pixels declared, peak memory, and work.

* The pixel budget: how many values one image (or a model's declared input) may
  declare, for the readers (:mod:`napari_cellclass.io.limits`, which enforces it on every
  file) and the checkpoint checks (:mod:`napari_cellclass.engine.checkpoint`).
* The memory budget (2 GiB peak per input on CPU, ``CELLCLASS_MEMORY_BUDGET``): by decoded
  size (:func:`napari_cellclass.io.limits.check_decoded`) and by the working memory of a
  whole-image analysis (:func:`check_whole_image`), both from the header, before decoding.
* Work: pixels taken on tile by tile (:func:`max_tiled_pixels`) and objects per image
  (:data:`MAX_OBJECTS_PER_IMAGE`).

Kept here so that neither layer imports the other for it; docs/performance.md states them.
"""
from __future__ import annotations

import os

from .errors import InputError

#: Default budget: values (pixels x channels x pages) one image may declare (268 M).
DEFAULT_MAX_PIXELS = 1 << 28
#: Environment variable that raises (or lowers) the budget, e.g. ``CELLCLASS_MAX_PIXELS=2e9``.
ENV_MAX_PIXELS = "CELLCLASS_MAX_PIXELS"


def _pixels_from_env(name: str, default: int) -> int:
    """A positive pixel count from the environment variable ``name`` (``2e9`` allowed), else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise InputError(f"{name}={raw!r} is not a number of pixels") from None
    if value < 1:
        raise InputError(f"{name}={raw!r} must be a positive number of pixels")
    return value


def max_pixels() -> int:
    """The pixel budget now in force (``CELLCLASS_MAX_PIXELS`` if set, else 2**28)."""
    return _pixels_from_env(ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS)


# ----------------------------------------------------------------------------- the memory budget

#: Peak resident memory one input may cost a CPU process (2 GiB), interpreter, torch and model included.
DEFAULT_MEMORY_BUDGET = 2 * 2**30
#: Environment variable that sets it, in bytes or with a unit: ``CELLCLASS_MEMORY_BUDGET=4GiB``.
ENV_MEMORY_BUDGET = "CELLCLASS_MEMORY_BUDGET"
#: Part of the budget taken before any image: Python, torch, numpy, a loaded model (measured ~0.7 GiB).
RESERVED_BYTES = 768 * 2**20
#: Working bytes per pixel of an analysis that holds the whole image: the decoded copy, its RGB uint8
#: form, float32 tiles and the task's own maps (measured on detect, smear analysis and karyotype:
#: benchmarks/memory_budget.py).  Pixels beyond (budget - reserve) / this go tile by tile or are refused.
WORK_BYTES_PER_PIXEL = 24
#: Pixels (rows x columns) the tile-by-tile path takes on at most by default: work, not memory,
#: grows with it (a 46k x 46k field is ~2,000 tiles); ``CELLCLASS_MAX_TILED_PIXELS`` changes it.
DEFAULT_MAX_TILED_PIXELS = 1 << 31
ENV_MAX_TILED_PIXELS = "CELLCLASS_MAX_TILED_PIXELS"
#: Objects one image may hand to a second model (classification of detections, crops): work, not memory.
MAX_OBJECTS_PER_IMAGE = 2000

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def memory_budget() -> int:
    """The peak-memory budget in bytes (``CELLCLASS_MEMORY_BUDGET`` if set, else 2 GiB)."""
    import re

    raw = os.environ.get(ENV_MEMORY_BUDGET, "").strip()
    if not raw:
        return DEFAULT_MEMORY_BUDGET
    m = re.fullmatch(r"([0-9.eE+]+)\s*([A-Za-z]*)", raw)
    unit = m.group(2).lower() if m else ""
    try:
        value = int(float(m.group(1)) * _UNITS[unit]) if m else -1
    except (ValueError, KeyError):
        value = -1
    if value < 256 * 2**20:
        raise InputError(f"{ENV_MEMORY_BUDGET}={raw!r} is not a memory size of at least 256 MiB "
                         "(e.g. 2GiB, 4096MiB or a number of bytes)")
    return value


def describe_budget() -> str:
    """``2.0 GiB (CELLCLASS_MEMORY_BUDGET)``: for messages and the benchmark."""
    return f"{memory_budget() / 2**30:.1f} GiB ({ENV_MEMORY_BUDGET})"


def image_bytes() -> int:
    """Bytes left to images once the interpreter, torch and a model are loaded."""
    return max(memory_budget() - RESERVED_BYTES, 128 * 2**20)


def whole_image_pixels(bytes_per_pixel: float = WORK_BYTES_PER_PIXEL) -> int:
    """The largest image (rows x columns) an analysis costing ``bytes_per_pixel`` may hold whole."""
    return int(image_bytes() // max(float(bytes_per_pixel), 1.0))


def max_tiled_pixels() -> int:
    """Pixels the tile-by-tile path takes on (``CELLCLASS_MAX_TILED_PIXELS`` if set, else 2**31)."""
    return _pixels_from_env(ENV_MAX_TILED_PIXELS, DEFAULT_MAX_TILED_PIXELS)


def too_large(height: int, width: int, detail: str, limit: str, path=None, hint: str = "") -> InputError:
    """The one refusal for an image over the memory or work budget: ``too large: W x H px ..., over ...``."""
    n = int(width) * int(height)
    size = f"too large: {int(width)} x {int(height)} px ({n / 1e6:,.0f} M px)"
    return InputError(f"{size}{' ' + detail if detail else ''}, over {limit}" + (f"; {hint}" if hint else ""),
                      path)


def check_whole_image(height: int, width: int, path=None, bytes_per_pixel: float = WORK_BYTES_PER_PIXEL,
                      what: str = "analysing it whole", hint: str | None = None) -> None:
    """Refuse an image whose whole-image analysis would pass the memory budget (from its size alone)."""
    n = int(height) * int(width)
    if n <= whole_image_pixels(bytes_per_pixel):
        return
    if hint is None:
        hint = (f"convert it to a tiled TIFF or OME-Zarr to process it tile by tile, or raise the budget with "
                f"{ENV_MEMORY_BUDGET}=<size> (docs/performance.md)")
    need = n * float(bytes_per_pixel) + RESERVED_BYTES
    raise too_large(height, width, f"for {what} would need about {need / 2**30:.1f} GiB",
                    f"the memory budget of {describe_budget()}", path, hint)
