"""One wording for "this model only ever saw generated data", shared by CLI, demo and widgets.

A checkpoint's ``meta.trained_on`` says where its weights come from; the tasks
write ``"synthetic"`` (or ``"synthetic (napari-cellclass demo)"``) for models
trained on napari-cellclass's own generated images.  Their results look like
real results, so every place that shows them adds this warning.
"""
from __future__ import annotations

SYNTHETIC_WARNING = (
    "Warning: this model was trained only on generated (synthetic) images; "
    "its results on real cells are not reliable."
)


def is_synthetic(trained_on: object) -> bool:
    """True for models trained only on napari-cellclass's generated data."""
    return str(trained_on or "").strip().lower().startswith("synthetic")


def synthetic_warning(trained_on: object) -> str:
    """The warning text for a synthetic-only model, else ``""`` (so it can be appended blindly)."""
    return SYNTHETIC_WARNING if is_synthetic(trained_on) else ""
