"""Python API for scripts, notebooks and scripted ``viewer`` sessions.

Each function takes numpy arrays (or napari layers, whose ``.data`` is used) and
returns plain results (dicts, arrays, lists) that the widgets turn into layers.
The work is done by the task modules; these are the stable, documented doors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine.progress import run_sync
from .tasks.base import TaskOptions, task_function


def _data(x: Any) -> Any:
    return getattr(x, "data", x)


def _model(model: str | Path, task: str | None) -> Path:
    """A built-in model name or a checkpoint path -> a verified local checkpoint path."""
    from . import zoo

    return zoo.resolve_model(model, task=task)


def classify(image: Any, model: str | Path, *, task: str | None = None, cells: Any = None,
             device: str | None = None, **kwargs) -> dict[str, Any]:
    """Classify a whole image or each cell of it.

    ``model`` is a built-in model name (see ``napari_cellclass.zoo.list_models()``) or a checkpoint path;
    ``task`` defaults to the task named in the checkpoint ("hpa" or "wbc").
    ``cells`` is a labels array, a list of (y0, x0, y1, x1) boxes, or a shapes layer.
    """
    from .engine.checkpoint import read_meta

    model = _model(model, task)
    task = task or read_meta(model).task
    fn = task_function(task, "classify")
    if isinstance(image, (list, tuple)):
        image = [_data(i) for i in image]
    else:
        image = _data(image)
    return run_sync(fn(image, Path(model), cells=cells, device=device, **kwargs))


def detect(image: Any, model: str | Path, *, device: str | None = None, **kwargs) -> dict[str, Any]:
    """Detect objects; returns boxes (y0, x0, y1, x1), labels, scores and optional masks."""
    return run_sync(task_function("detect", "detect")(_data(image), _model(model, "detect"), device=device,
                                                      **kwargs))


def karyotype(image: Any, model: str | Path | None = None, *, device: str | None = None,
              **kwargs) -> dict[str, Any]:
    """Segment, classify and pair the chromosomes of a metaphase spread.

    ``model`` None uses the built-in classifier for the spread's banding (G or Q) and the
    built-in chromosome detector.
    """
    return run_sync(task_function("karyotype", "karyotype")(
        _data(image), None if model is None else _model(model, "karyotype"), device=device, **kwargs))


def train(task: str, data: str | Path, **options) -> dict[str, Any]:
    """Train a model for ``task`` on a dataset folder; returns the summary (incl. checkpoint)."""
    known = set(TaskOptions.__dataclass_fields__)
    extra = {k: v for k, v in options.items() if k not in known}
    opts = TaskOptions(**{k: v for k, v in options.items() if k in known})
    opts.extra.update(extra)
    return run_sync(task_function(task, "train")(Path(data), opts))


def evaluate(task: str, model: str | Path, data: str | Path, **options) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset folder; returns JSON-able metrics."""
    known = set(TaskOptions.__dataclass_fields__)
    opts = TaskOptions(**{k: v for k, v in options.items() if k in known})
    seg_only = task == "karyotype" and (model is None or str(model).lower() in ("none", "-"))
    return run_sync(task_function(task, "evaluate")(model if seg_only else _model(model, task), Path(data), opts))


def analyse_smear(image: Any, detector: str | Path | None = None, classifier: str | Path | None = None, *,
                  device: str | None = None, **kwargs) -> dict[str, Any]:
    """Blood smear end to end: detect cells, classify only the white ones, count.

    Models default to the built-in blood-cell detector and white-cell classifier.
    Returns boxes (y0, x0, y1, x1), detector labels and scores, the white-cell class
    of each white cell, ``counts`` (RBC, WBC, Platelets) and the ``differential``;
    see :func:`napari_cellclass.tasks.blood.analyse_smear`.
    """
    from .tasks.blood import analyse_smear as job

    return run_sync(job(_data(image), detector, classifier, device=device, **kwargs))
