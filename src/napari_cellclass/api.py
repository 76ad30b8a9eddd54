"""Python API for scripts, notebooks and scripted ``viewer`` sessions.

Each function takes numpy arrays, image file paths or napari layers (whose
``.data`` is used) and returns plain results (dicts, arrays, lists).
``classify``, ``detect`` and ``karyotype`` also take ``viewer=`` (the result's
layers are added to that viewer and returned) or ``as_layers=True`` (the
layer-data tuples are returned); the layers are the ones the widgets show
(:mod:`napari_cellclass.layers`), named after the input layer and placed on it
(its scale and translate).  The work is done by the task modules; these are
the stable, documented doors.  See docs/scripting.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .engine.progress import run_sync
from .tasks.base import TaskOptions, task_function


class ResultLayers(list):
    """The layers (``viewer=``) or layer-data tuples (``as_layers=True``) of one result.

    A plain list, plus ``.result``: the task's result dict (ISCN string, classes,
    scores...), which the layers alone would lose.
    """

    def __init__(self, items: Any, result: dict[str, Any]):
        super().__init__(items)
        self.result = result


def _is_layer(x: Any) -> bool:
    return hasattr(x, "data") and hasattr(x, "name") and hasattr(x, "scale")


def _data(x: Any) -> Any:
    """An array from an array, a napari layer (its data; level 0 of a multiscale one) or an image path."""
    if isinstance(x, (str, Path)):
        from .io.limits import read_image

        return read_image(x)
    if isinstance(x, np.ndarray):  # an array stays itself (ndarray.data is a raw buffer, not the pixels)
        return _writable(x)
    if _is_layer(x) and getattr(x, "multiscale", False):
        return x.data[0]
    data = getattr(x, "data", x)
    return _writable(data) if isinstance(data, np.ndarray) else data


def _writable(a: np.ndarray) -> np.ndarray:
    """A read-only array (``setflags(write=False)``, a read-only memory map) as a private copy:
    torch warns on every tensor it shares with one, and the user's array is never written anyway."""
    return a if a.flags.writeable else np.array(a)


def _source(x: Any) -> Any:
    """What the output layers take their name and place from: the input layer, or a path's name."""
    if isinstance(x, (list, tuple)) and x:
        x = x[0]
    if _is_layer(x):
        return x
    if isinstance(x, (str, Path)):
        from types import SimpleNamespace

        return SimpleNamespace(name=Path(x).stem, scale=None, translate=None)
    return None


def _deliver(res: dict[str, Any], task: str, source: Any, viewer: Any, as_layers: bool,
             **layer_options: Any) -> Any:
    """The result as asked: the dict (default), its layer-data tuples, or its layers in ``viewer``."""
    if viewer is None and not as_layers:
        return res
    from . import layers as L
    from .errors import InputError

    if viewer is not None and as_layers:
        raise InputError("give viewer= (add the layers to it) or as_layers=True (return the layer data), not both")
    tuples = L.result_layers(res, task, source=source, **layer_options)
    return ResultLayers(tuples if as_layers else L.add_layers(viewer, tuples), res)


def _model(model: Any, task: str | None, device: str | None = None):
    """A built-in model name, a checkpoint path or a loaded model -> a :class:`~napari_cellclass.zoo.loaded.LoadedModel`."""
    from .zoo.loaded import load_model

    return load_model(model, task=task, device=device)


def classify(image: Any, model: str | Path, *, task: str | None = None, cells: Any = None,
             device: str | None = None, viewer: Any = None, as_layers: bool = False, **kwargs) -> Any:
    """Classify a whole image or each cell of it.

    ``model`` is a built-in model name (see ``napari_cellclass.zoo.list_models()``) or a checkpoint path;
    ``task`` defaults to the task named in the checkpoint ("hpa" or "wbc").
    ``cells`` is a labels array, a list of (y0, x0, y1, x1) boxes, or a shapes or labels layer.
    Returns the result dict; with ``viewer=`` the layers added to it (HPA cells: the ``HPA cells``
    labels; white cells: ``<cells> (classified)`` shapes keeping a shapes layer's own features),
    with ``as_layers=True`` their layer-data tuples (both a :class:`ResultLayers`).
    """
    model = _model(model, task, device)
    task = task or model.task
    fn = task_function(task, "classify")
    source = _source(image)
    if isinstance(image, (list, tuple)):
        image = [_data(i) for i in image]
    else:
        image = _data(image)
    res = run_sync(fn(image, model, cells=cells, device=device, **kwargs))
    options = {"cells": cells if _is_layer(cells) else None} if task == "wbc" else {}
    return _deliver(res, task, source, viewer, as_layers, **options)


def detect(image: Any, model: str | Path, *, device: str | None = None, viewer: Any = None,
           as_layers: bool = False, **kwargs) -> Any:
    """Detect objects; returns boxes (y0, x0, y1, x1), labels, scores and optional masks.

    With ``viewer=``: the ``<image> detections`` shapes (and ``<image> instances`` labels when
    the model has masks) added to it; with ``as_layers=True``: their layer-data tuples.
    """
    res = run_sync(task_function("detect", "detect")(_data(image), _model(model, "detect", device), device=device,
                                                     **kwargs))
    return _deliver(res, "detect", _source(image), viewer, as_layers)


def karyotype(image: Any, model: str | Path | None = None, *, device: str | None = None,
              viewer: Any = None, as_layers: bool = False, **kwargs) -> Any:
    """Segment, classify and pair the chromosomes of a metaphase spread.

    ``model`` None uses the built-in classifier for the spread's banding (G or Q) and the
    built-in chromosome detector.  ``labels=`` (an array or a labels layer) skips the
    segmentation.  With ``viewer=``: the ``chromosomes`` labels, ``chromosome classes``
    shapes and ``karyogram`` image added to it; with ``as_layers=True``: their tuples
    (both a :class:`ResultLayers`, whose ``.result["summary"]`` is the ISCN string).
    """
    if kwargs.get("labels") is not None:
        kwargs["labels"] = _data(kwargs["labels"])
    res = run_sync(task_function("karyotype", "karyotype")(
        _data(image), None if model is None else _model(model, "karyotype", device), device=device, **kwargs))
    return _deliver(res, "karyotype", _source(image), viewer, as_layers)


def karyotype_session(image: Any, result: dict[str, Any], model: str | Path | None = None, *,
                      device: str | None = None):
    """A :class:`~napari_cellclass.karyotype.corrections.KaryotypeSession` to correct ``result`` by script.

    Cut, merge, delete, set classes or hand it an edited labels array
    (``apply_labels``); ``update()`` classifies only the changed chromosomes again
    with ``model`` (None: the built-in for the spread's banding) and re-pairs.
    Show the new result with :func:`show`.
    """
    from .karyotype.corrections import KaryotypeSession
    from .tasks.karyotype import default_classifier, model_classifier

    img = _data(image)
    path = default_classifier(img, device) if model is None else _model(model, "karyotype", device)
    return KaryotypeSession.from_result(img, getattr(result, "result", result),
                                        classify=model_classifier(path, device))


def show(result: dict[str, Any], viewer: Any = None, *, source: Any = None, task: str | None = None,
         **options: Any) -> ResultLayers:
    """Any task result (or a session's ``update()``) as layers in ``viewer``, or as tuples without one.

    ``source`` is the input layer (name prefix and placement); earlier layers of the
    same result are updated in place, the user's own layers are never touched.
    """
    from . import layers as L

    result = getattr(result, "result", result)
    tuples = L.result_layers(result, task, source=_source(source), **options)
    return ResultLayers(tuples if viewer is None else L.add_layers(viewer, tuples), result)


def train(task: str, data: str | Path, **options) -> dict[str, Any]:
    """Train a model for ``task`` on a dataset folder; returns the summary (incl. checkpoint)."""
    return run_sync(task_function(task, "train")(Path(data), _task_options(task, "train", options)))


def _task_options(task: str, command: str, options: dict[str, Any]) -> TaskOptions:
    """TaskOptions from keyword arguments: its own fields, the rest typed and checked as ``--set`` keys are
    (a misspelt key is an error naming the closest one, never silently dropped)."""
    from .tasks.options import coerce_settings

    known = set(TaskOptions.__dataclass_fields__)
    opts = TaskOptions(**{k: v for k, v in options.items() if k in known and k != "extra"})
    opts.extra.update(options.get("extra") or {})
    opts.extra.update(coerce_settings(task, command, {k: v for k, v in options.items() if k not in known}))
    return opts


def evaluate(task: str, model: str | Path, data: str | Path, **options) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset folder; returns JSON-able metrics."""
    opts = _task_options(task, "evaluate", options)
    seg_only = task == "karyotype" and (model is None or str(model).lower() in ("none", "-"))
    return run_sync(task_function(task, "evaluate")(model if seg_only else _model(model, task, opts.device),
                                                    Path(data), opts))


def analyse_smear(image: Any, detector: str | Path | None = None, classifier: str | Path | None = None, *,
                  device: str | None = None, viewer: Any = None, as_layers: bool = False, **kwargs) -> Any:
    """Blood smear end to end: detect cells, classify only the white ones, count.

    Models default to the built-in blood-cell detector and white-cell classifier.
    Returns boxes (y0, x0, y1, x1), detector labels and scores, the white-cell class
    of each white cell, ``counts`` (RBC, WBC, Platelets) and the ``differential``;
    see :func:`napari_cellclass.tasks.blood.analyse_smear`.  With ``viewer=`` /
    ``as_layers=True``: the Blood widget's ``<image> smear analysis`` shapes layer.
    """
    from .tasks.blood import analyse_smear as job

    res = run_sync(job(_data(image), detector, classifier, device=device, **kwargs))
    return _deliver(res, "blood", _source(image), viewer, as_layers)
