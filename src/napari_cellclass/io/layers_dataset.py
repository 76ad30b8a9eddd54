"""Turn annotated viewer layers into a training dataset on disk.

An image layer plus a shapes layer (one shape per object, the class in a feature
column, ``label`` by default) or a labels layer (one id per object, its class in
``layer.features`` rows with an ``index`` column) becomes either

* a **class-per-folder** crop dataset (``out/<class>/crop_0001.png``), read by the
  WBC and chromosome tasks, or
* a **VOC folder** (``out/JPEGImages/image.png`` + ``out/Annotations/image.xml``)
  for the detection task.

Only numpy arrays and plain lists come in, so this module has no napari or Qt import.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

CLASS_FEATURE = "label"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Global (not per-crop) scaling to uint8 so intensity differences between objects survive."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = np.nanpercentile(a, 0.1), np.nanpercentile(a, 99.9)
    if hi <= lo:
        hi = lo + 1
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def _image_2d(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        return a[..., :3] if a.ndim == 3 else a
    raise InputError(f"training from layers needs a 2-D grey or RGB image, got shape {a.shape}")


def shape_boxes(shapes: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, 4)`` ``y0, x0, y1, x1`` bounding boxes of napari shapes (last two coordinates)."""
    boxes = []
    for s in shapes:
        v = np.asarray(s, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] < 2:
            raise InputError(f"a shape has vertices of shape {v.shape}; expected (K, 2)")
        yx = v[:, -2:]
        boxes.append([*yx.min(0), *yx.max(0)])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def label_boxes(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Bounding boxes and ids of the objects of a labels image."""
    from skimage.measure import regionprops

    props = regionprops(np.asarray(labels).astype(np.int64))
    return np.asarray([p.bbox for p in props], dtype=np.float64).reshape(-1, 4), [int(p.label) for p in props]


def class_names_from_features(features, n: int, column: str = CLASS_FEATURE) -> list[str]:
    """The class of each object from a layer's features table (a pandas DataFrame or dict)."""
    if features is None or column not in features:
        raise InputError(f"the annotation layer has no {column!r} feature naming each object's class")
    values = list(features[column])
    if len(values) != n:
        raise InputError(f"the {column!r} feature has {len(values)} rows for {n} objects")
    names = [str(v) for v in values]
    bad = [i for i, v in enumerate(names) if v.strip() in ("", "nan", "None")]
    if len(bad) == n:
        raise InputError(f"no object has a class in the {column!r} feature")
    return names


def _safe(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip())
    if not clean or clean in (".", ".."):
        raise InputError(f"class name {name!r} cannot be used as a folder name")
    return clean


def export_class_folders(
    image: np.ndarray, boxes: np.ndarray, classes: Sequence[str], out: str | Path,
    context: float = 1.15, square: bool = True, min_per_class: int = 1,
) -> dict[str, int]:
    """Write one crop per object into ``out/<class>/``; returns the count per class.

    Crops are squares of ``context`` times the longer box side around the box centre
    (the WBC crop rule), clipped at the image border. Objects without a class are skipped.
    """
    from skimage.io import imsave

    img = to_uint8(_image_2d(image))
    h, w = img.shape[:2]
    out = Path(out)
    counts: dict[str, int] = {}
    for i, (box, cls) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), classes)):
        if cls is None or str(cls).strip() in ("", "nan", "None"):
            continue
        y0, x0, y1, x1 = box
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        hh, hw = (y1 - y0) * context / 2, (x1 - x0) * context / 2
        if square:
            hh = hw = max(hh, hw)
        r0, r1 = int(max(0, np.floor(cy - hh))), int(min(h, np.ceil(cy + hh)))
        c0, c1 = int(max(0, np.floor(cx - hw))), int(min(w, np.ceil(cx + hw)))
        if r1 - r0 < 2 or c1 - c0 < 2:
            continue
        name = _safe(str(cls))
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        counts[name] = counts.get(name, 0) + 1
        imsave(d / f"obj{i:05d}_crop.png", img[r0:r1, c0:c1], check_contrast=False)
    if not counts:
        raise InputError("no labelled object could be cropped from the layers")
    few = {k: v for k, v in counts.items() if v < min_per_class}
    if few:
        raise InputError(f"too few examples for class(es) {few}; need at least {min_per_class} each")
    return counts


def export_voc(image: np.ndarray, boxes: np.ndarray, classes: Sequence[str], out: str | Path,
               name: str = "image") -> Path:
    """Write ``out/JPEGImages/<name>.png`` and ``out/Annotations/<name>.xml``.

    Box coordinates are written as they are in the viewer (no VOC 1-based shift),
    the convention of :mod:`napari_cellclass.io.annotations`.
    """
    from skimage.io import imsave

    img = to_uint8(_image_2d(image))
    out = Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    imsave(out / "JPEGImages" / f"{name}.png", img, check_contrast=False)
    h, w = img.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.png"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", w), ("height", h), ("depth", 3 if img.ndim == 3 else 1)):
        ET.SubElement(size, tag).text = str(v)
    n = 0
    for box, cls in zip(np.asarray(boxes).reshape(-1, 4), classes):
        if cls is None or str(cls).strip() in ("", "nan", "None"):
            continue
        y0, x0, y1, x1 = box
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(cls)
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = f"{min(max(float(v), 0.0), float(w if tag[0] == 'x' else h)):.1f}"
        n += 1
    if not n:
        raise InputError("no labelled box to write")
    xml = out / "Annotations" / f"{name}.xml"
    ET.ElementTree(root).write(xml)
    return out
