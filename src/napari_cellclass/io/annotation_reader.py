"""napari reader for Pascal VOC XML and COCO JSON annotation files.

A VOC file opens as one shapes layer of rectangles; a COCO file as one shapes
layer per image (named after the image) plus, when it carries polygons or RLE,
a labels layer of the instances.  Coordinates become napari's (row, col).  The
``label`` feature (and every other per-object attribute) drives text and edge
colour.  Files that are XML/JSON but not VOC/COCO get ``None`` so other readers
can take them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .annotations import AnnotatedImage, is_coco, is_voc, polygon_to_mask, read_coco, read_voc
from .limits import check_pixels

PALETTE = ["#ff4040", "#40c0ff", "#ffd000", "#40ff80", "#ff60ff", "#ff9020", "#a080ff", "#80ffff"]


def class_colors(classes: list[str]) -> dict[str, str]:
    """One stable colour per class name (palette order)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() == ".xml" and is_voc(p):
        return read_annotations
    if p.suffix.lower() == ".json":
        try:
            coco = is_coco(p)
        except (RecursionError, OverflowError):  # a hostile JSON: the reader names the problem
            coco = True
        if coco:
            return read_annotations
    return None


def features_of(ann: AnnotatedImage) -> pd.DataFrame:
    """The shapes layer's feature table: ``label`` first, then every per-object attribute.

    Types survive a round trip through our writers: the dtypes they record come back
    (bool stays bool, int stays int, lists stay lists, ``id`` is kept).  For other tools'
    files the type is inferred per column: all bool -> bool, all whole numbers -> int,
    numbers with gaps -> float (NaN), anything else -> text.
    """
    from .writers import column_from_values

    n = len(ann)
    dtypes = ann.feature_dtypes or {}
    keys = list(dict.fromkeys(k for a in ann.attributes for k in a))
    cols: dict[str, pd.Series] = {}
    if "label" in dtypes and all("label" in a for a in ann.attributes):
        cols["label"] = _column([a["label"] for a in ann.attributes], dtypes["label"], column_from_values)
    else:
        cols["label"] = pd.Series(list(ann.labels), dtype=object)
    for k in keys:
        if k == "label":
            continue
        vals = [a.get(k) for a in ann.attributes]
        cols[k] = _column(vals, dtypes[k], column_from_values) if k in dtypes else _inferred(vals)
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


def _column(vals: list, dtype: str, column_from_values) -> pd.Series:
    if dtype == "category":  # VOC/COCO do not carry the category list: the values seen are it
        return pd.Series(pd.Categorical(vals))
    if dtype.startswith(("float", "Float")):
        vals = [np.nan if v is None else v for v in vals]
    return column_from_values(vals, dtype)


def _inferred(vals: list) -> pd.Series:
    present = [v for v in vals if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present) and len(present) == len(vals):
        return pd.Series(vals, dtype=bool)
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present) \
            and len(present) == len(vals):
        return pd.Series(vals, dtype=np.int64)
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
    return pd.Series(["" if v is None else str(v) for v in vals], dtype=object)


def shapes_layer(ann: AnnotatedImage, name: str, classes: list[str] | None = None) -> tuple:
    """Layer-data tuple: rectangles as 4 corners in (row, col), features and colours by class."""
    rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for x0, y0, x1, y1 in ann.boxes]
    classes = sorted(classes or ann.classes)
    colors = class_colors(classes)
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": features_of(ann),
        # explicit per-object colours (same class -> same colour in every layer we make)
        "edge_color": [colors.get(lab, PALETTE[0]) for lab in ann.labels],
        "face_color": "transparent",
        "edge_width": 2,
        "text": {"string": "{label}", "size": 9, "color": "white", "anchor": "upper_left"},
    }
    if not rects:  # napari wants no colour-by-feature on an empty layer
        kwargs["edge_color"] = PALETTE[0]
        kwargs.pop("text")
    return (rects, kwargs, "shapes")


def instance_labels(ann: AnnotatedImage) -> np.ndarray | None:
    """Labels image of the objects that have a polygon or mask (object k -> k + 1), or None."""
    if not (ann.height and ann.width):
        return None
    if not any(m is not None for m in ann.masks) and not any(p is not None for p in ann.polygons):
        return None
    # the size comes from the annotation file, not an image: check it before allocating
    check_pixels((ann.height, ann.width), ann.source, "annotation's declared image")
    lab = np.zeros((ann.height, ann.width), dtype=np.int32)
    for k in range(len(ann)):
        m = ann.masks[k]
        if m is None and ann.polygons[k] is not None:
            m = polygon_to_mask(ann.polygons[k], ann.height, ann.width)
        if m is not None:
            lab[m] = k + 1
    return lab


def read_annotations(path: str | list[str]) -> list[tuple]:
    """The napari reader function (errors are InputError with the file named)."""
    if isinstance(path, list):
        path = path[0]
    p = Path(path)
    if p.suffix.lower() == ".xml":
        anns = [read_voc(p)]
    else:
        from .limits import json_guarded

        anns = json_guarded(p, lambda: read_coco(p))
    classes = list(dict.fromkeys(lab for a in anns for lab in a.labels))
    layers = []
    for a in anns:
        stem = a.image_path.stem if a.image_path is not None else p.stem
        if len(anns) > 1 and len(a) == 0:
            continue
        layers.append(shapes_layer(a, f"{stem} boxes", classes))
        lab = instance_labels(a)
        if lab is not None:
            layers.append((lab, {"name": f"{stem} instances"}, "labels"))
    if not layers:  # a COCO file with no objects at all: still show an empty layer
        layers.append(shapes_layer(anns[0] if anns else AnnotatedImage(None, None, None, np.zeros((0, 4)), [], [], []),
                                   f"{p.stem} boxes"))
    return layers
