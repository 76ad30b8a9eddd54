"""The pixel budget: how many pixels one image (or a model's declared input) may hold.

One number for the readers (:mod:`napari_cellclass.io.limits`, which enforces it on
every file) and the checkpoint checks (:mod:`napari_cellclass.engine.checkpoint`),
kept here so that neither layer imports the other for it.
"""
from __future__ import annotations

import os

from .errors import InputError

#: Default budget: values (pixels x channels x pages) one image may declare (268 M).
DEFAULT_MAX_PIXELS = 1 << 28
#: Environment variable that raises (or lowers) the budget, e.g. ``CELLCLASS_MAX_PIXELS=2e9``.
ENV_MAX_PIXELS = "CELLCLASS_MAX_PIXELS"


def max_pixels() -> int:
    """The pixel budget now in force (``CELLCLASS_MAX_PIXELS`` if set, else 2**28)."""
    raw = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise InputError(f"{ENV_MAX_PIXELS}={raw!r} is not a number of pixels") from None
    if value < 1:
        raise InputError(f"{ENV_MAX_PIXELS}={raw!r} must be a positive number of pixels")
    return value
