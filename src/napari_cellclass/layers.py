"""Task results -> napari layer-data tuples ``(data, kwargs, layer_type)``.

One place decides how a result looks in the viewer (layer names, colours,
``features``, text), so the widgets, the Python API (``viewer=`` /
``as_layers=True``) and scripts show the same layers.  Pure: no Qt, and napari
is only needed by :func:`add_layers`, which takes a viewer you already have.

Each ``*_layers`` function takes the dict a task returns and, optionally, the
``source`` layer the task ran on (anything with ``name``, ``scale`` and
``translate``); the output layers then take that layer's name as prefix and
its scale/translate, so they sit on the image.  Every tuple's metadata carries
``{"cellclass": {"task": ..., "role": ..., "name": ...}}``; :func:`add_layers`
replaces only layers carrying the same mark, never a layer of the user's that
shares a name (napari then names ours ``chromosomes [1]`` and we find it again
by its mark).

No task result is drawn as points today; masks are labels layers and boxes
are rectangles in shapes layers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

LayerData = tuple[Any, dict[str, Any], str]

MARK = "cellclass"  # metadata key that marks a layer as one of our results

# blood / white cells
SMEAR_SUFFIX = " smear analysis"
CLASSIFIED_SUFFIX = " (classified)"
OTHER_COLOURS = {"RBC": (0.9, 0.25, 0.25, 0.9), "Platelets": (1.0, 0.85, 0.1, 1.0), "WBC": (0.1, 0.9, 0.9, 1.0)}
UNKNOWN_WBC_COLOUR = (0.6, 0.6, 0.6, 1.0)
UNKNOWN_KIND_COLOUR = (1.0, 1.0, 0.0, 1.0)
BLOOD_TEXT = {"string": "{tag}", "color": "white", "size": 9, "anchor": "upper_left"}
# detection
DETECT_SUFFIX = " detections"
INSTANCES_SUFFIX = " instances"
DETECT_TEXT = {"string": "{label} {score:.2f}", "size": 9, "color": "white", "anchor": "upper_left"}
# HPA
HPA_CELLS_NAME = "HPA cells"
# karyotype
KARYO_LABELS_NAME = "chromosomes"
KARYO_SHAPES_NAME = "chromosome classes"
KARYOGRAM_NAME = "karyogram"
NOT_CHROMOSOMES_NAME = "not chromosomes"  # what the rejection step set aside (nuclei, debris), for review
KARYOGRAM_GAP = 20  # pixels (spread units) between the spread and the karyogram on its right
KARYO_TEXT = {"string": "{class}", "size": 9, "color": "cyan", "anchor": "upper_left"}
FLAGGED_COLOUR, OK_COLOUR = "red", "lime"


# ---------------------------------------------------------------------------- helpers
def _mark(kwargs: dict[str, Any], task: str, role: str) -> dict[str, Any]:
    meta = dict(kwargs.get("metadata") or {})
    meta[MARK] = {"task": task, "role": role, "name": kwargs.get("name")}
    kwargs["metadata"] = meta
    return kwargs


def _place(source: Any) -> dict[str, Any]:
    """The source layer's 2-D scale/translate (last two axes), or {} when there is none."""
    if source is None:
        return {}
    out: dict[str, Any] = {}
    scale = getattr(source, "scale", None)
    translate = getattr(source, "translate", None)
    if scale is not None and len(scale) >= 2:
        out["scale"] = tuple(float(s) for s in np.asarray(scale, float)[-2:])
    if translate is not None and len(translate) >= 2:
        out["translate"] = tuple(float(t) for t in np.asarray(translate, float)[-2:])
    return out


def _base(source: Any, default: str) -> str:
    name = getattr(source, "name", None) if source is not None else None
    return str(name) if name else default


def rectangles(boxes: Any) -> list[np.ndarray]:
    """(y0, x0, y1, x1) boxes -> napari rectangle vertex arrays (float)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float) for y0, x0, y1, x1 in b]


def class_colour_map(classes: Sequence[str]) -> dict[str, str]:
    """Detector class -> edge colour (the annotation reader's palette, in class order)."""
    from .io.annotation_reader import PALETTE

    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


# ---------------------------------------------------------------------------- blood
def blood_colour(kind: str, wbc_class: str) -> tuple[float, ...]:
    """Edge colour of a smear object: its white-cell class colour, else its kind's colour."""
    from .synth.blood import CLASS_COLOURS

    if wbc_class:
        return CLASS_COLOURS.get(wbc_class, UNKNOWN_WBC_COLOUR)
    return OTHER_COLOURS.get(kind, UNKNOWN_KIND_COLOUR)


def blood_colours(features: pd.DataFrame) -> np.ndarray:
    """One RGBA edge colour per row of a blood result layer's features."""
    kinds = features["kind"] if "kind" in features.columns else [""] * len(features)
    return np.array([blood_colour(str(k), str(c or "")) for k, c in zip(kinds, features["reviewed_class"])])


def blood_tag(row: pd.Series) -> str:
    """Short on-screen text: class (4 letters), its score, or ``*`` when a reviewer changed it."""
    c = row.get("reviewed_class") or ""
    if not c:
        return ""
    s = row.get("wbc_score")
    mark = "*" if bool(row.get("corrected", False)) else ""
    return f"{c[:4]}{mark} {s:.2f}" if isinstance(s, float) and np.isfinite(s) and not mark else f"{c[:4]}{mark}"


def smear_features(res: dict[str, Any]) -> pd.DataFrame:
    """A smear analysis as layer features (one row per detected object)."""
    from .tasks.blood import count_kind

    names = list(res["class_names"])
    n = len(res["labels"])
    probs = np.full((n, len(names)), np.nan)
    for k, i in enumerate(res["wbc_index"]):
        probs[i] = res["probabilities"][k]
    df = pd.DataFrame({
        "label": pd.Series([str(v) for v in res["labels"]], dtype=object),
        "score": np.asarray(res["scores"], dtype=float),
        "kind": pd.Series([count_kind(v) for v in res["labels"]], dtype=object),
        "wbc_class": pd.Series(list(res["wbc_class"]), dtype=object),
        "wbc_score": np.asarray(res["wbc_score"], dtype=float),
        "reviewed_class": pd.Series(list(res["wbc_class"]), dtype=object),
        "corrected": np.zeros(n, dtype=bool),
    })
    for j, c in enumerate(names):
        df[f"p_{c}"] = probs[:, j]
    return df


def blood_shapes(name: str, rects: list, features: pd.DataFrame, shape_types: Sequence[str] | None = None,
                 *, task: str = "blood", role: str = "smear", place: dict | None = None) -> LayerData:
    """The shapes tuple of a blood result: class-coloured edges, thick for white cells, a ``tag`` text."""
    features = features.reset_index(drop=True).copy()
    features["tag"] = ([blood_tag(r) for _, r in features.iterrows()] if len(features)
                       else pd.Series([], dtype=object))
    kwargs: dict[str, Any] = dict(name=name, features=features, face_color="transparent", edge_width=3,
                                  **(place or {}))
    if len(rects):
        kwargs["shape_type"] = list(shape_types) if shape_types is not None else "rectangle"
        kwargs["edge_color"] = blood_colours(features)
        kwargs["edge_width"] = [3 if k == "WBC" else 1 for k in features.get("kind", ["WBC"] * len(rects))]
        kwargs["text"] = dict(BLOOD_TEXT)
    return list(rects), _mark(kwargs, task, role), "shapes"


def smear_layers(res: dict[str, Any], *, source: Any = None, name: str | None = None) -> list[LayerData]:
    """Analyse smear (:func:`napari_cellclass.tasks.blood.analyse_smear`) -> ``<image> smear analysis`` shapes."""
    name = name or f"{_base(source, 'smear')}{SMEAR_SUFFIX}"
    return [blood_shapes(name, rectangles(res["boxes"]), smear_features(res), place=_place(source))]


def wbc_layers(res: dict[str, Any], *, source: Any = None, cells: Any = None, name: str | None = None,
               selected: Sequence[int] | None = None) -> list[LayerData]:
    """White cells classified (:func:`napari_cellclass.tasks.wbc.classify`) -> ``<cells> (classified)`` shapes.

    ``cells`` is the shapes layer the boxes came from (its shapes, shape types and
    features are kept; a user's column that clashes with a new one is kept renamed
    ``<col>_user``) or None (rectangles from the result's boxes; ``label_id`` for a
    labels input).  ``selected`` are the rows of ``cells`` that were classified
    (default: all, in order); the other rows keep empty classes.
    """
    names = list(res["class_names"])
    probs = np.asarray(res["probabilities"], dtype=float).reshape(-1, len(names))
    if cells is not None and getattr(cells, "shape_type", None) is not None:
        rects = [np.array(d, dtype=float) for d in cells.data]  # copies: the user's layer stays as it is
        features = pd.DataFrame(getattr(cells, "features", None)).copy().reset_index(drop=True)
        if len(features) != len(rects):
            features = pd.DataFrame(index=range(len(rects)))
        shape_types = list(cells.shape_type)
        base = _base(cells, "cells")
    else:
        rects = rectangles(res["boxes"])
        ids = res.get("label_ids")
        features = (pd.DataFrame({"label_id": np.asarray(ids)}) if ids is not None
                    else pd.DataFrame(index=range(len(rects))))
        shape_types = ["rectangle"] * len(rects)
        base = _base(cells if cells is not None else source, "cells")
    n = len(rects)
    idx = list(range(len(probs))) if selected is None else [int(i) for i in selected]
    wbc_class, wbc_score = [""] * n, np.full(n, np.nan)
    p = np.full((n, len(names)), np.nan)
    for k, i in enumerate(idx):
        wbc_class[i], wbc_score[i], p[i] = res["classes"][k], float(res["scores"][k]), probs[k]
    new: dict[str, Any] = {"wbc_class": pd.Series(wbc_class, dtype=object), "wbc_score": wbc_score,
                           "reviewed_class": pd.Series(wbc_class, dtype=object),
                           "corrected": np.zeros(n, dtype=bool)}
    new.update({f"p_{c}": p[:, j] for j, c in enumerate(names)})
    clash = [c for c in [*new, "kind", "tag"] if c in features.columns]
    features = features.rename(columns={c: f"{c}_user" for c in clash})  # kept, renamed
    for col, values in new.items():
        features[col] = values
    features["kind"] = ["WBC" if c else "" for c in wbc_class]
    name = name or f"{base}{CLASSIFIED_SUFFIX}"
    return [blood_shapes(name, rects, features, shape_types, task="wbc", role="classified",
                         place=_place(source))]


# ---------------------------------------------------------------------------- detection
def detect_layers(res: dict[str, Any], *, source: Any = None) -> list[LayerData]:
    """Detections -> ``<image> detections`` rectangles (``label``, ``score``) and, with masks,
    ``<image> instances`` labels."""
    classes = list(res.get("class_names") or [])
    labels = [str(v) for v in res["labels"]]
    base = _base(source, "image")
    place = _place(source)
    rects = rectangles(res["boxes"])
    # explicit dtypes: with zero detections an untyped empty column became float and the
    # default label could not be stored in it
    features = pd.DataFrame({"label": pd.Series(labels, dtype=object),
                             "score": pd.Series(np.asarray(res["scores"], dtype=float), dtype=float)})
    kwargs: dict[str, Any] = dict(name=f"{base}{DETECT_SUFFIX}", shape_type="rectangle", features=features,
                                  face_color="transparent", edge_width=2,
                                  feature_defaults={"label": classes[0] if classes else "object", "score": 1.0},
                                  **place)
    if rects:
        colours = class_colour_map(classes)
        first = next(iter(colours.values()), None) or class_colour_map(["object"])["object"]
        kwargs["edge_color"] = [colours.get(lab, first) for lab in labels]
        kwargs["text"] = dict(DETECT_TEXT)
    out: list[LayerData] = [(rects, _mark(kwargs, "detect", "detections"), "shapes")]
    if res.get("instance_labels") is not None:
        out.append((np.asarray(res["instance_labels"]),
                    _mark(dict(name=f"{base}{INSTANCES_SUFFIX}", opacity=0.4, **place), "detect", "instances"),
                    "labels"))
    return out


# ---------------------------------------------------------------------------- HPA
def hpa_layers(res: dict[str, Any], *, source: Any = None) -> list[LayerData]:
    """HPA cells mode -> the ``HPA cells`` labels layer with one features row per label.

    Whole-image mode has no layer of its own (the widget writes the prediction
    into the channel layers' metadata): an empty list.
    """
    if res.get("mode") != "cells" or res.get("labels") is None:
        return []
    from .tasks.hpa import features_table

    kwargs = dict(name=HPA_CELLS_NAME, features=features_table(res), opacity=0.4,
                  metadata={"hpa_class_names": list(res["class_names"])}, **_place(source))
    return [(np.asarray(res["labels"]), _mark(kwargs, "hpa", "cells"), "labels")]


# ---------------------------------------------------------------------------- karyotype
def _karyo_names(res: dict[str, Any]) -> list[str]:
    from .karyotype.assign import CLASS_NAMES

    return [CLASS_NAMES[c] if c >= 0 else "?" for c in np.asarray(res["classes"], int)]


def _karyo_ids(res: dict[str, Any]) -> np.ndarray:
    # a session's result lists its label ids; the pipeline's row k is label k + 1
    if res.get("ids") is not None:
        return np.asarray(res["ids"], int)
    return np.arange(1, len(res["classes"]) + 1, dtype=int)


def karyotype_features(res: dict[str, Any]) -> pd.DataFrame:
    """Features of the ``chromosomes`` labels layer (one row per chromosome)."""
    return pd.DataFrame({"index": _karyo_ids(res).tolist(), "class": _karyo_names(res),
                         "confidence": np.round(np.asarray(res["confidence"], float), 3),
                         "flagged": np.asarray(res["flagged"], bool)})


def karyogram_placement(labels_shape: tuple[int, ...], karyogram_shape: tuple[int, ...],
                        place: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scale/translate that put the karyogram right of the spread, as tall as the spread."""
    H, W = labels_shape[:2]
    s = H / karyogram_shape[0]
    sy, sx = (place or {}).get("scale", (1.0, 1.0))
    ty, tx = (place or {}).get("translate", (0.0, 0.0))
    return {"scale": (s * sy, s * sx), "translate": (ty, tx + (W + KARYOGRAM_GAP) * sx)}


def karyotype_layers(res: dict[str, Any], *, source: Any = None, copy_labels: bool = True) -> list[LayerData]:
    """Karyotype (pipeline or :class:`~napari_cellclass.karyotype.corrections.KaryotypeSession` result) ->
    ``chromosomes`` labels, ``chromosome classes`` rectangles (red when flagged) and the ``karyogram``
    image right of the spread.

    ``copy_labels`` (default) gives the labels layer its own array, so painting in
    the viewer shows up as a difference from the session's labels.
    """
    place = _place(source)
    names = _karyo_names(res)
    labels = np.array(res["labels"], copy=True) if copy_labels else np.asarray(res["labels"])
    out: list[LayerData] = [(labels, _mark(dict(name=KARYO_LABELS_NAME, opacity=0.4,
                                                features=karyotype_features(res), **place),
                                           "karyotype", "labels"), "labels")]
    rects = rectangles(res["boxes"])
    if rects:
        feats = pd.DataFrame({"class": names, "confidence": np.round(np.asarray(res["confidence"], float), 3),
                              "flagged": np.asarray(res["flagged"], bool), "id": _karyo_ids(res)})
        kwargs = dict(name=KARYO_SHAPES_NAME, shape_type="rectangle", features=feats,
                      edge_color=[FLAGGED_COLOUR if f else OK_COLOUR for f in res["flagged"]],
                      face_color="transparent", edge_width=1.5, text=dict(KARYO_TEXT), **place)
        out.append((rects, _mark(kwargs, "karyotype", "classes"), "shapes"))
    rejected = list(res.get("rejected") or [])
    if rejected:  # dashed orange boxes: not counted; a reviewer who disagrees paints the object back in
        feats = pd.DataFrame({"p_not_chromosome": [float(r["p_not_chromosome"]) for r in rejected],
                              "area": [int(r["area"]) for r in rejected]})
        kwargs = dict(name=NOT_CHROMOSOMES_NAME, shape_type="rectangle", features=feats, edge_color="orange",
                      face_color="transparent", edge_width=1.5, opacity=0.8,
                      text={"string": "not counted", "size": 8, "color": "orange", "anchor": "upper_left"}, **place)
        out.append((rectangles(np.asarray([r["box"] for r in rejected], float)),
                    _mark(kwargs, "karyotype", "rejected"), "shapes"))
    k = res.get("karyogram")
    if k is not None:
        k = np.asarray(k)
        kwargs = dict(name=KARYOGRAM_NAME, rgb=True, **karyogram_placement(labels.shape, k.shape, place))
        out.append((k, _mark(kwargs, "karyotype", "karyogram"), "image"))
    return out


# ---------------------------------------------------------------------------- explanations
def explanation_layers(res: dict[str, Any], *, source: Any = None) -> list[LayerData]:
    """A saliency map -> a translucent ``<method>: <class>`` image over the explained crop."""
    place = _place(source)
    scale = np.asarray(place.get("scale", (1.0, 1.0)), float)
    translate = np.asarray(place.get("translate", (0.0, 0.0)), float)
    r0, c0 = res.get("offset", (0, 0))
    kwargs = {"name": f"{res['method']}: {res['class']}", "colormap": "inferno", "blending": "translucent",
              "opacity": 0.5, "contrast_limits": (0.0, 1.0), "scale": tuple(scale),
              "translate": tuple(translate + np.array([r0, c0], float) * scale),
              "metadata": {"cellclass_explanation": {k: v for k, v in res.items() if k != "heatmap"}}}
    return [(np.asarray(res["heatmap"]), _mark(kwargs, "explain", "saliency"), "image")]


# ---------------------------------------------------------------------------- dispatch
_BUILDERS = {"hpa": hpa_layers, "wbc": wbc_layers, "blood": smear_layers, "smear": smear_layers,
             "detect": detect_layers, "karyotype": karyotype_layers, "explain": explanation_layers}


def result_kind(res: dict[str, Any]) -> str:
    """Which task produced ``res`` (by its keys)."""
    if "karyogram" in res or "summary" in res and "flagged" in res:
        return "karyotype"
    if "heatmap" in res:
        return "explain"
    if "wbc_index" in res:
        return "blood"
    if "mode" in res and "thresholds" in res:
        return "hpa"
    if "differential" in res and "classes" in res:
        return "wbc"
    if "boxes" in res and "labels" in res and "scores" in res:
        return "detect"
    from .errors import InputError

    raise InputError(f"cannot tell which task made this result (keys: {', '.join(sorted(res)) or 'none'})")


def result_layers(res: dict[str, Any], task: str | None = None, *, source: Any = None,
                  **kwargs: Any) -> list[LayerData]:
    """Any task result -> its layer-data tuples; ``task`` defaults to :func:`result_kind`."""
    from .errors import InputError

    kind = task or result_kind(res)
    if kind not in _BUILDERS:
        raise InputError(f"no layers for task {kind!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[kind](res, source=source, **kwargs)


def _ours(layer: Any) -> dict | None:
    return (getattr(layer, "metadata", None) or {}).get(MARK)


def add_layers(viewer: Any, tuples: Sequence[LayerData]) -> list[Any]:
    """Add layer-data tuples to ``viewer``; returns the layers.

    Our earlier layer for the same result (same mark in its metadata: task, role,
    intended name) is updated in place for labels and images (so the user's
    display settings and connected callbacks stay) and replaced, at the same
    place in the layer list, for shapes (whose number of shapes changes).  Any
    other layer is left alone; napari gives a new layer a unique name when the
    user already has one of that name.
    """
    out = []
    for data, kwargs, kind in tuples:
        kwargs = dict(kwargs)
        mark = (kwargs.get("metadata") or {}).get(MARK)
        old = next((ly for ly in viewer.layers if mark is not None and _ours(ly) == mark), None)
        if old is not None and old._type_string != kind:
            viewer.layers.remove(old)
            old = None
        if old is not None and kind in ("labels", "image") and bool(getattr(old, "rgb", False)) == bool(
                kwargs.get("rgb", False)):
            if not (isinstance(old.data, np.ndarray) and np.array_equal(old.data, data)):
                old.data = data
            for key in ("features", "scale", "translate", "contrast_limits"):
                if key in kwargs:
                    setattr(old, key, kwargs[key])
            old.metadata = {**old.metadata, **kwargs["metadata"]}
            out.append(old)
            continue
        index = None
        if old is not None:  # shapes (their count changes) or another kind of image: a fresh layer, same place
            index = viewer.layers.index(old)
            viewer.layers.remove(old)
        layer = getattr(viewer, f"add_{kind}")(data if kind != "shapes" or len(data) else None, **kwargs)
        if index is not None:
            viewer.layers.move(viewer.layers.index(layer), index)
        out.append(layer)
    return out
