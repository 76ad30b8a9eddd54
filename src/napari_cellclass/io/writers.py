"""npe2 writers: labels -> OME-Zarr / TIFF, shapes -> Pascal VOC XML / COCO JSON / CSV, and a
mix of images, labels and shapes -> one ``NAME.cellclass`` folder (File > Save All Layers).

napari's Save dialog preselects napari's own writers, which keep no features; ours are
listed by names that say they keep them, and own the ``.cellclass.*`` extensions so that
``napari.save_layers`` picks them without ``plugin=`` (docs/io.md, "Saving from napari's
File menu").

Every write goes through :func:`napari_cellclass.engine.atomic.atomic_path`: the file
(or the ``.zarr`` folder) is built beside the target and moved into place only when
complete, so a failure never leaves half a file or destroys an existing one.  What a
format cannot hold (float labels, rotated boxes in VOC, ...) is refused with an
:class:`~napari_cellclass.errors.InputError` before anything is written.  The plugin's
readers (``io/layer_reader.py`` and the annotation reader) read the outputs back to the
same data, features included; see ``docs/io.md``.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from napari_cellclass._version import __version__
from napari_cellclass.engine.atomic import atomic_path
from napari_cellclass.errors import InputError
from napari_cellclass.io import ngff

# --------------------------------------------------------------------------- feature table codec
# A lossless JSON form of ``layer.features`` so that dtypes (int/float/bool/str/category and
# object columns holding lists or arrays, e.g. per-class probabilities) survive a round trip.

MARKER = "napari-cellclass"
FORMAT_VERSION = 1


def features_frame(attributes: dict[str, Any] | None) -> pd.DataFrame:
    """The feature table from napari layer attributes (``features`` or, failing that, ``properties``)."""
    attributes = attributes or {}
    feats = attributes.get("features")
    if isinstance(feats, pd.DataFrame):
        return feats.reset_index(drop=True)
    if isinstance(feats, dict) and feats:
        return pd.DataFrame(feats)
    props = attributes.get("properties")
    if isinstance(props, dict) and props:
        return pd.DataFrame({k: list(v) if not isinstance(v, np.ndarray) else v for k, v in props.items()})
    return pd.DataFrame()


def encode_value(v: Any) -> Any:
    """One cell -> a JSON-able value; non-finite floats and arrays are tagged so they come back."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else {"__float__": repr(f)}
    if isinstance(v, str):
        return v
    if isinstance(v, np.ndarray):
        return {"__ndarray__": [encode_value(x) for x in v.ravel().tolist()], "dtype": str(v.dtype),
                "shape": list(v.shape)}
    if isinstance(v, (list, tuple)):
        return [encode_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode_value(x) for k, x in v.items()}
    if v is pd.NA or v is pd.NaT:
        return None
    return str(v)


def decode_value(v: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(v, dict):
        if "__float__" in v and len(v) == 1:
            return float(v["__float__"])
        if "__ndarray__" in v:
            flat = [decode_value(x) for x in v["__ndarray__"]]
            return np.asarray(flat, dtype=v.get("dtype")).reshape(v.get("shape", [len(flat)]))
        return {k: decode_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    return v


def table_to_json(df: pd.DataFrame) -> dict[str, Any]:
    """DataFrame -> {"columns": [{"name", "dtype", "values"[, "categories"]}], "length"}."""
    cols = []
    for name in df.columns:
        s = df[name]
        entry: dict[str, Any] = {"name": str(name), "dtype": str(s.dtype)}
        if isinstance(s.dtype, pd.CategoricalDtype):
            entry["categories"] = [encode_value(c) for c in s.cat.categories.tolist()]
            entry["ordered"] = bool(s.cat.ordered)
            entry["values"] = [encode_value(c) for c in s.astype(object).tolist()]
        else:
            entry["values"] = [encode_value(x) for x in s.tolist()]
        cols.append(entry)
    return {"columns": cols, "length": int(len(df))}


def table_from_json(obj: Any, where: str = "feature table") -> pd.DataFrame:
    """Rebuild the DataFrame written by :func:`table_to_json`; ValueError on malformed input."""
    if not isinstance(obj, dict) or not isinstance(obj.get("columns", []), list):
        raise ValueError(f"{where} is not a column list")
    n = obj.get("length", 0)
    data: dict[str, Any] = {}
    for entry in obj.get("columns", []):
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("values"), list):
            raise ValueError(f"{where} has a malformed column entry")
        values = [decode_value(v) for v in entry["values"]]
        if len(values) != n:
            raise ValueError(f"{where}: column {entry['name']!r} has {len(values)} values, expected {n}")
        data[entry["name"]] = column_from_values(values, str(entry.get("dtype", "object")), entry)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def column_from_values(values: list[Any], dtype: str, entry: dict[str, Any] | None = None) -> pd.Series:
    """A Series with the recorded dtype (object columns keep Python values as they are)."""
    entry = entry or {}
    if dtype == "category":
        cats = [decode_value(c) for c in entry.get("categories", [])]
        return pd.Series(pd.Categorical(values, categories=cats, ordered=bool(entry.get("ordered"))))
    if dtype == "object":
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
        return pd.Series(arr, dtype=object)
    try:
        return pd.Series(pd.array(values, dtype=dtype))
    except (TypeError, ValueError):
        try:
            return pd.Series(np.asarray(values, dtype=dtype))
        except (TypeError, ValueError):
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            return pd.Series(arr, dtype=object)


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN literals) so every JSON parser accepts our metadata."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------- shared helpers

def _marker(kind: str, **extra: Any) -> dict[str, Any]:
    return {"marker": MARKER, "kind": kind, "format_version": FORMAT_VERSION, "writer_version": __version__, **extra}


def _jsonable(obj: Any) -> Any:
    """Best effort for free-form metadata: values JSON cannot hold are dropped, not fatal."""
    enc = encode_value(obj)
    try:
        dumps(enc)
        return enc
    except (TypeError, ValueError):
        return None


def _layer_name(attributes: dict[str, Any] | None, default: str) -> str:
    name = (attributes or {}).get("name")
    return str(name) if name else default


def _float_list(values: Any, ndim: int, default: float, what: str, path: Path) -> list[float]:
    if values is None:
        return [default] * ndim
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size != ndim or not np.all(np.isfinite(arr)):
        raise InputError(f"layer {what} {arr.tolist()} does not fit {ndim} dimensions", path)
    return arr.tolist()


def _labels_array(data: Any, path: Path) -> np.ndarray:
    """The full-resolution labels as an integer numpy array, or InputError saying why not."""
    if isinstance(data, (list, tuple)):  # multiscale: keep the full-resolution level
        if not data:
            raise InputError("labels layer has no data", path)
        data = data[0]
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"labels must hold integers (one id per object), got dtype {arr.dtype}; "
            "convert the layer to an integer type before saving", path)
    if arr.ndim < 2 or arr.ndim > 5:
        raise InputError(f"labels must have 2 to 5 dimensions, got {arr.ndim} (shape {arr.shape})", path)
    if arr.size == 0:
        raise InputError(f"labels array is empty (shape {arr.shape})", path)
    return arr


def _check_suffix(path: Path, suffixes: Sequence[str], what: str) -> None:
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{what} are saved to a file ending in {' or '.join(suffixes)}, got {path.name!r}", path)


#: The extensions only this plugin writes.  npe2 picks the writer whose extension is the
#: longest match, so ``napari.save_layers("x.cellclass.csv", [layer])`` (and
#: ``layer.save``, ``viewer.layers.save``) reach our writers without ``plugin=``; a bare
#: ``.csv``/``.tif`` goes to napari's own writer, which keeps no features (docs/io.md).
SHAPES_CSV_EXT = ".cellclass.csv"
LABELS_TIFF_EXT = ".cellclass.tif"
_PLAUSIBLE_EXT = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}")


def _target_path(path: str, suffixes: Sequence[str], default: str, what: str) -> Path:
    """The file to write: ``path``, or ``path + default`` when it has no extension.

    napari's Save dialog hands the typed name over as it is once the user picked one of our
    filters, so ``cells`` (or a layer name such as ``smear 1.5x analysis``) becomes
    ``cells.cellclass.csv``; a real other extension (``cells.txt``) is refused, one line.
    """
    target = Path(path)
    if target.suffix.lower() in suffixes:
        return target
    if not _PLAUSIBLE_EXT.fullmatch(target.suffix):
        return target.with_name(target.name + default)
    _check_suffix(target, suffixes, what)
    return target


# --------------------------------------------------------------------------- labels -> OME-Zarr

def write_labels_zarr(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as an OME-Zarr (NGFF 0.4, zarr v2 format) image-label group.

    The root group carries ``multiscales`` (one level, dataset ``0``) and ``image-label``
    (built and checked against the NGFF 0.4 schemas by :mod:`.ngff`) so OME-Zarr tools
    open it as labels; the class table (``features``) and the layer's
    name/scale/translate sit under the ``napari-cellclass`` key.
    """
    import zarr

    target = _target_path(path, [".zarr"], ".zarr", "OME-Zarr labels")
    arr = _labels_array(data, target)
    attributes = attributes or {}
    ndim = arr.ndim
    scale = _float_list(attributes.get("scale"), ndim, 1.0, "scale", target)
    translate = _float_list(attributes.get("translate"), ndim, 0.0, "translate", target)
    feats = features_frame(attributes)
    name = _layer_name(attributes, target.stem)
    attrs = {
        "multiscales": ngff.multiscales(name, ndim, scale, translate),
        "image-label": {"version": ngff.VERSION, **_label_properties(feats)},
        MARKER: _marker(
            "labels", name=name, dtype=str(np.asarray(data[0] if isinstance(data, (list, tuple)) else data).dtype),
            features=table_to_json(feats), metadata=_jsonable(attributes.get("metadata") or {})),
    }
    dumps(attrs)  # fail before writing if anything is not strict JSON
    ngff.validate_labels_attrs(attrs, ndim)  # ... or not OME-NGFF 0.4 (a writer bug, caught here)
    chunks = tuple(1 if i < ndim - 2 else min(s, 1024) for i, s in enumerate(arr.shape))
    with atomic_path(target, directory=True) as tmp:
        root = zarr.open_group(store=str(tmp), mode="w", zarr_format=2)
        z = root.create_array("0", shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                              chunk_key_encoding={"name": "v2", "separator": "/"}, fill_value=0)
        z[...] = arr
        root.attrs.update(attrs)
    return [str(target)]


def _label_properties(feats: pd.DataFrame) -> dict[str, Any]:
    """NGFF ``image-label.properties`` (one dict per label value) when the table says which id each row is."""
    key = next((c for c in ("index", "label_id", "label-value") if c in feats.columns), None)
    if key is None or feats.empty:
        return {}
    try:
        ids = [int(v) for v in feats[key].tolist()]
    except (TypeError, ValueError):
        return {}
    props = []
    for i, row in zip(ids, feats.to_dict("records")):
        entry = {"label-value": i}
        for k, v in row.items():
            if k != key:
                ev = encode_value(v)
                if isinstance(ev, (str, int, float, bool)) or ev is None:
                    entry[str(k)] = ev
        props.append(entry)
    return {"properties": props}


# --------------------------------------------------------------------------- labels -> TIFF

def write_labels_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as a TIFF; our marker, dtype, shape and class table go in ImageDescription."""
    import tifffile

    target = _target_path(path, [".tif", ".tiff"], LABELS_TIFF_EXT, "TIFF labels")
    orig = data[0] if isinstance(data, (list, tuple)) and data else data
    arr = _labels_array(data, target)
    attributes = attributes or {}
    ndim = arr.ndim
    desc = _marker(
        "labels", name=_layer_name(attributes, _plain_stem(target)), dtype=str(np.asarray(orig).dtype),
        shape=list(arr.shape),
        scale=_float_list(attributes.get("scale"), ndim, 1.0, "scale", target),
        translate=_float_list(attributes.get("translate"), ndim, 0.0, "translate", target),
        features=table_to_json(features_frame(attributes)),
        metadata=_jsonable(attributes.get("metadata") or {}))
    text = dumps(desc)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            tifffile.imwrite(fh, arr, description=text, metadata=None, photometric="minisblack",
                             bigtiff=arr.nbytes > 2**31 - 2**25, compression="zlib")
    return [str(target)]


# --------------------------------------------------------------------------- shapes helpers

def _shapes_list(data: Any, attributes: dict[str, Any], path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Vertices (N, D) per shape and their shape types, checked for consistency."""
    if isinstance(data, np.ndarray) and data.ndim == 2:
        data = [data]
    shapes = [np.asarray(s, dtype=float) for s in (data or [])]
    types = attributes.get("shape_type", "polygon")
    if isinstance(types, str):
        types = [types] * len(shapes)
    types = [str(t) for t in types]
    if len(types) != len(shapes):
        raise InputError(f"{len(shapes)} shapes but {len(types)} shape types", path)
    for i, s in enumerate(shapes):
        if s.ndim != 2 or s.shape[1] < 2 or len(s) == 0:
            raise InputError(f"shape {i} has malformed vertices (array of shape {s.shape})", path)
        if not np.all(np.isfinite(s)):
            raise InputError(f"shape {i} has non-finite vertex coordinates", path)
    return shapes, types


def _check_2d(shapes: list[np.ndarray], fmt: str, path: Path) -> None:
    for i, s in enumerate(shapes):
        if s.shape[1] > 2:
            extra = s[:, :-2]
            if not np.all(extra == extra[0]):
                raise InputError(f"{fmt} holds 2D annotations; shape {i} spans several planes", path)
    dims = {s.shape[1] for s in shapes}
    if len(dims) > 1:
        raise InputError(f"shapes have different dimensionality {sorted(dims)}", path)


def _feature_rows(feats: pd.DataFrame, n: int, path: Path) -> list[dict[str, Any]]:
    if feats.empty and len(feats.columns) == 0:
        return [{} for _ in range(n)]
    if len(feats) != n:
        raise InputError(f"feature table has {len(feats)} rows for {n} shapes", path)
    return feats.to_dict("records")


def _label_of(row: dict[str, Any], default: str = "object") -> str:
    for key in ("label", "class", "class_name", "name"):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != "":
            return str(v)
    return default


def _box_of(s: np.ndarray, stype: str, i: int, fmt: str, path: Path) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of an axis-aligned rectangle (napari vertices are (row, col))."""
    yx = s[:, -2:]
    if stype != "rectangle":
        raise InputError(f"{fmt} holds axis-aligned boxes only; shape {i} is a {stype} "
                         "(save it as COCO JSON or CSV instead)", path)
    ys, xs = np.unique(yx[:, 0]), np.unique(yx[:, 1])
    if len(yx) != 4 or len(ys) > 2 or len(xs) > 2:
        raise InputError(f"{fmt} holds axis-aligned boxes only; rectangle {i} is rotated", path)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _num(v: float) -> str:
    """Integers print as integers (LabelImg style); other values keep full precision."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _image_info(attributes: dict[str, Any], shapes: list[np.ndarray], path: Path) -> tuple[str, str, int, int, int]:
    """(folder, filename, width, height, depth) from layer metadata, else from the shapes' extent."""
    meta = attributes.get("metadata") or {}
    img = meta.get("image_path") or meta.get("source_image") or meta.get("filename")
    shape = meta.get("image_shape") or meta.get("image_size")
    if img:
        folder, filename = Path(str(img)).parent.name, Path(str(img)).name
    else:
        folder, filename = path.parent.name, _layer_name(attributes, path.stem) + ".png"
    depth = int(meta.get("depth", 3))
    if shape is not None and len(shape) >= 2:
        height, width = int(shape[0]), int(shape[1])
        if len(shape) == 3:
            depth = int(shape[2])
    else:
        ext = np.concatenate([s[:, -2:] for s in shapes]) if shapes else np.zeros((1, 2))
        height, width = int(math.ceil(max(ext[:, 0].max(), 1))), int(math.ceil(max(ext[:, 1].max(), 1)))
    return folder, filename, width, height, depth


# --------------------------------------------------------------------------- shapes -> Pascal VOC

def write_shapes_voc(path: str, data: Any, attributes: dict) -> list[str]:
    """Save axis-aligned rectangles as Pascal VOC XML (LabelImg layout).

    ``object/name`` is the ``label`` feature; every feature also goes in
    ``object/attributes`` as ``<attribute dtype=..><name>..</name><value>..</value>``
    (CVAT style; scalars as text, lists as JSON), which LabelImg ignores and the
    plugin's VOC reader (``io/annotations.read_voc``) returns as per-object attributes.  Coordinates are written as given
    (integers when whole, full precision otherwise): x = column, y = row.
    """
    target = Path(path)
    _check_suffix(target, [".xml"], "Pascal VOC annotations")
    attributes = attributes or {}
    shapes, types = _shapes_list(data, attributes, target)
    _check_2d(shapes, "Pascal VOC", target)
    boxes = [_box_of(s, t, i, "Pascal VOC", target) for i, (s, t) in enumerate(zip(shapes, types))]
    feats = features_frame(attributes)
    rows = _feature_rows(feats, len(shapes), target)
    folder, filename, width, height, depth = _image_info(attributes, shapes, target)

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    meta = attributes.get("metadata") or {}
    ET.SubElement(root, "path").text = str(meta.get("image_path") or filename)
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "napari-cellclass"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = str(depth)
    ET.SubElement(root, "segmented").text = "0"
    dtypes = {str(c): str(feats[c].dtype) for c in feats.columns}
    for (x0, y0, x1, y1), row in zip(boxes, rows):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = _label_of(row)
        ET.SubElement(obj, "pose").text = str(row.get("pose", "Unspecified"))
        ET.SubElement(obj, "truncated").text = str(int(row.get("truncated", 0) or 0))
        ET.SubElement(obj, "difficult").text = str(int(row.get("difficult", 0) or 0))
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bnd, tag).text = _num(v)
        if row:  # every feature, so the plugin's VOC reader restores the table
            attrs_el = ET.SubElement(obj, "attributes")
            for k, v in row.items():
                a = ET.SubElement(attrs_el, "attribute", dtype=dtypes.get(str(k), "object"))
                ET.SubElement(a, "name").text = str(k)
                ET.SubElement(a, "value").text = _voc_text(v)
    ET.indent(root)
    payload = ET.tostring(root, encoding="unicode")
    with atomic_path(target) as tmp:
        tmp.write_text(payload + "\n", encoding="utf-8")
    return [str(target)]


# --------------------------------------------------------------------------- shapes -> COCO

_COCO_KEYS = {"id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd", "attributes"}


def write_shapes_coco(path: str, data: Any, attributes: dict) -> list[str]:
    """Save rectangles and polygons as COCO JSON (one image).

    Each annotation has ``bbox`` [x, y, w, h], ``area``, ``category_id`` from the
    ``label`` feature and a ``segmentation``: the polygon outline for polygons, empty
    (box only, detection style) for rectangles.  Every feature becomes an annotation
    field (``score``, ``probabilities`` ...; NaN -> null); names that clash with COCO's
    own keys go under ``attributes``.  Lines, paths and ellipses are refused (COCO has
    no such shapes).
    """
    target = Path(path)
    _check_suffix(target, [".json"], "COCO annotations")
    attributes = attributes or {}
    shapes, types = _shapes_list(data, attributes, target)
    _check_2d(shapes, "COCO", target)
    for i, (s, t) in enumerate(zip(shapes, types)):
        if t not in ("rectangle", "polygon"):
            raise InputError(f"COCO holds boxes and polygons; shape {i} is a {t} "
                             "(save it as CSV instead)", target)
        if t == "polygon" and len(s) < 3:
            raise InputError(f"polygon {i} has {len(s)} vertices; COCO needs at least 3", target)
    feats = features_frame(attributes)
    rows = _feature_rows(feats, len(shapes), target)
    folder, filename, width, height, _ = _image_info(attributes, shapes, target)
    names: list[str] = []
    for row in rows:
        lab = _label_of(row)
        if lab not in names:
            names.append(lab)
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    dtypes = {str(c): str(feats[c].dtype) for c in feats.columns}
    anns = []
    for k, (s, t, row) in enumerate(zip(shapes, types, rows)):
        yx = s[:, -2:]
        x0, y0 = float(yx[:, 1].min()), float(yx[:, 0].min())
        x1, y1 = float(yx[:, 1].max()), float(yx[:, 0].max())
        poly = [float(c) for pt in yx for c in (pt[1], pt[0])]
        area = _polygon_area(yx[:, 1], yx[:, 0])
        ann: dict[str, Any] = {
            "id": k + 1, "image_id": 1, "category_id": cat_ids[_label_of(row)],
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": 0,
            # rectangles are boxes only (detection style); polygons keep their outline
            "segmentation": [poly] if t == "polygon" else [],
        }
        for kk, v in row.items():  # features as annotation fields (e.g. "score"), others nested
            ev = encode_value(v)
            if isinstance(ev, dict) and "__float__" in ev:
                ev = None  # COCO is strict JSON: NaN/inf become null
            (ann.setdefault("attributes", {}) if str(kk) in _COCO_KEYS else ann)[str(kk)] = ev
        anns.append(ann)
    doc = {
        "info": {"description": f"written by napari-cellclass {__version__}", "version": "1.0"},
        "licenses": [],
        "images": [{"id": 1, "file_name": filename, "width": width, "height": height}],
        "categories": [{"id": cat_ids[n], "name": n, "supercategory": "cell"} for n in names],
        "annotations": anns,
        MARKER: _marker("shapes", feature_dtypes=dtypes, name=_layer_name(attributes, target.stem)),
    }
    payload = json.dumps(doc, allow_nan=False, indent=1)
    with atomic_path(target) as tmp:
        tmp.write_text(payload + "\n", encoding="utf-8")
    return [str(target)]


def _voc_text(v: Any) -> str:
    """Scalars as plain text (VOC readers parse numbers), anything else as JSON."""
    if isinstance(v, str):
        return v
    ev = encode_value(v)
    if isinstance(ev, bool):
        return "true" if ev else "false"
    if isinstance(ev, (int, float)):
        return _num(ev) if isinstance(ev, float) else str(ev)
    if isinstance(ev, dict) and "__float__" in ev:
        return ev["__float__"]
    return "" if ev is None else dumps(ev)


def _polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


# --------------------------------------------------------------------------- shapes -> CSV

CSV_HEADER_PREFIX = "# napari-cellclass shapes csv "


def write_shapes_csv(path: str, data: Any, attributes: dict) -> list[str]:
    """Save any shapes with all their features as CSV, one row per shape.

    Line 1 is a ``#`` comment holding our marker and the feature dtypes as JSON (read
    with ``pandas.read_csv(path, comment="#")`` elsewhere).  Columns: ``index``,
    ``shape_type``, ``vertices`` (JSON list of [row, col, ...] points, full precision),
    then one column per feature (lists/arrays JSON-encoded).  Text that a spreadsheet would
    run as a formula (``=``, ``+``, ``-``, ``@`` ...) gets a leading ``'``
    (:func:`~napari_cellclass.engine.csvsafe.escape_text`, undone by our reader); missing
    values of text columns are listed in line 1, so an empty ``tag`` stays ``""``.
    """
    from napari_cellclass.engine.csvsafe import escape_text

    target = _target_path(path, [".csv"], SHAPES_CSV_EXT, "shapes CSV")
    attributes = attributes or {}
    shapes, types = _shapes_list(data, attributes, target)
    feats = features_frame(attributes)
    rows = _feature_rows(feats, len(shapes), target)
    reserved = {"index", "shape_type", "vertices"}
    clash = reserved & {str(c) for c in feats.columns}
    if clash:
        raise InputError(f"feature column(s) {sorted(clash)} clash with the CSV's own columns", target)
    cols = [str(c) for c in feats.columns]
    columns = []
    for c in feats.columns:
        dtype = str(feats[c].dtype)
        entry: dict[str, Any] = {"name": str(c), "dtype": dtype}
        if isinstance(feats[c].dtype, pd.CategoricalDtype):
            entry["categories"] = [encode_value(x) for x in feats[c].cat.categories.tolist()]
            entry["ordered"] = bool(feats[c].cat.ordered)
        values = feats[c].tolist()
        if dtype == "object" and values and all(isinstance(v, str) or v is None for v in values):
            entry["text"] = True  # an object column of strings (class names): plain cells, not JSON
        if is_text_dtype(dtype) or entry.get("text"):
            missing = [i for i, v in enumerate(values) if _is_missing(v)]
            if missing:
                entry["missing"] = missing
        columns.append(entry)
    info = _marker("shapes", ndim=int(shapes[0].shape[1]) if shapes else 2,
                   name=_layer_name(attributes, _plain_stem(target)), text_escape=TEXT_ESCAPE, columns=columns,
                   metadata=_jsonable(attributes.get("metadata") or {}),
                   display=_shapes_display(attributes, len(shapes)))
    buf = _stdio.StringIO()
    buf.write(CSV_HEADER_PREFIX + dumps(info) + "\r\n")
    # RFC 4180 line ends: csv quotes a cell holding \r or \n only when they are in lineterminator
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["index", "shape_type", "vertices", *[escape_text(c) for c in cols]])
    for i, (s, t, row) in enumerate(zip(shapes, types, rows)):
        w.writerow([i, t, dumps([[float(c) for c in pt] for pt in s]),
                    *[escape_text(_csv_cell(row[c], "str" if e.get("text") else e["dtype"]))
                      for c, e in zip(feats.columns, columns)]])
    with atomic_path(target) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")  # no newline translation
    return [str(target)]


def _colours(value: Any, n: int) -> list[list[float]] | None:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n, 4) or not np.all(np.isfinite(arr)):
        return None
    return [[round(float(c), 6) for c in row] for row in arr]


def _shapes_display(attributes: dict[str, Any], n: int) -> dict[str, Any]:
    """What makes a result layer look as it did: per-shape colours and widths, the text label.

    Best effort: anything that does not have the expected form is left out (napari's
    defaults then apply); the reader checks every entry again.
    """
    out: dict[str, Any] = {}
    for key in ("edge_color", "face_color"):
        cols = _colours(attributes.get(key), n)
        if cols is not None:
            out[key] = cols
    for key in ("edge_width", "z_index"):
        v = attributes.get(key)
        try:
            arr = np.asarray(v, dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        if v is not None and arr.size == n and np.all(np.isfinite(arr)):
            out[key] = [int(x) if key == "z_index" else float(x) for x in arr]
    opacity = attributes.get("opacity")
    if isinstance(opacity, (int, float)) and 0 <= float(opacity) <= 1:
        out["opacity"] = float(opacity)
    text = attributes.get("text")
    if isinstance(text, dict):
        string = text.get("string")
        fmt = string.get("format") if isinstance(string, dict) else string
        if isinstance(fmt, str) and fmt:
            t: dict[str, Any] = {"string": fmt}
            colour = text.get("color")
            colour = colour.get("constant") if isinstance(colour, dict) else colour
            rgba = _colours([colour], 1) if colour is not None and not isinstance(colour, str) else None
            if rgba:
                t["color"] = rgba[0]
            if isinstance(text.get("size"), (int, float)):
                t["size"] = float(text["size"])
            anchor = getattr(text.get("anchor"), "value", text.get("anchor"))
            if isinstance(anchor, str):
                t["anchor"] = anchor
            out["text"] = t
    return out


#: Line 1 of a shapes CSV says that text cells carry :func:`csvsafe.escape_text`'s quote.
TEXT_ESCAPE = "leading-quote"


def is_text_dtype(dtype: str) -> bool:
    """Columns written as plain text cells (str, string, category ...), not numbers, bools or JSON."""
    kind = dtype.lower()
    numeric = kind.startswith(("float", "double", "int", "uint")) or kind in ("bool", "boolean")
    return not (kind == "object" or numeric)


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, (float, np.floating)) and math.isnan(float(v))


def _plain_stem(target: Path) -> str:
    """``cells`` for ``cells.cellclass.csv`` / ``cells.csv`` (the layer name when the layer has none)."""
    name = target.name
    for ext in (SHAPES_CSV_EXT, LABELS_TIFF_EXT, LABELS_TIFF_EXT + "f"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return target.stem


def _csv_cell(v: Any, dtype: str) -> str:
    """Plain text for str/number/bool cells, empty for missing; object columns are JSON per cell."""
    if dtype == "object":
        return dumps(encode_value(v))
    if isinstance(v, str):
        return v
    ev = encode_value(v)
    if isinstance(ev, bool):
        return "true" if ev else "false"
    if isinstance(ev, int):
        return str(ev)
    if isinstance(ev, float):
        return repr(ev)
    if isinstance(ev, dict) and "__float__" in ev:
        return ev["__float__"] if dtype.startswith(("float", "Float")) else ""
    if ev is None:
        return ""
    return dumps(ev)


# --------------------------------------------------------------------------- several layers -> folder

LAYERS_FOLDER_EXT = ".cellclass"
LAYERS_MANIFEST = "cellclass-layers.json"
#: Layer settings kept in the folder's manifest (what the per-layer files do not hold).
_KEPT_KWARGS = ("name", "scale", "translate", "opacity", "blending", "visible", "metadata")
_KEPT_IMAGE_KWARGS = ("rgb", "contrast_limits", "gamma")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 ._()+-]+")


def write_layers_folder(path: str, layer_data: list) -> list[str]:
    """Save several layers (images, labels, shapes) into one ``NAME.cellclass`` folder.

    File > Save All Layers offers napari's own "Save to Folder", which writes each layer with
    napari's writers and so drops every feature; this writer is offered beside it (and first,
    for a mix of layer types).  Labels go in as our marked TIFFs, shapes as our CSV (both keep
    the feature table), images as plain TIFFs; ``cellclass-layers.json`` lists the files in
    layer order with each layer's name, scale, translate and display settings.  The plugin's
    reader opens the folder as the same layers.
    """
    import tifffile

    target = _target_path(path, [LAYERS_FOLDER_EXT], LAYERS_FOLDER_EXT, "layer folders")
    if not layer_data:
        raise InputError("no layers to save", target)
    entries: list[dict[str, Any]] = []
    with atomic_path(target, directory=True) as tmp:
        for i, item in enumerate(layer_data):
            data, attrs, kind = item[0], dict(item[1] or {}), str(item[2])
            stem = f"{i:02d} " + (_UNSAFE_NAME.sub("_", _layer_name(attrs, "layer")).strip(" .") or "layer")[:80]
            keys = _KEPT_KWARGS + (_KEPT_IMAGE_KWARGS if kind == "image" else ())
            kept = {k: _jsonable(attrs[k]) for k in keys if attrs.get(k) is not None}
            cmap = attrs.get("colormap")
            if kind == "image" and isinstance(getattr(cmap, "name", cmap), str):
                kept["colormap"] = str(getattr(cmap, "name", cmap))  # by name: napari's own colormaps
            if kind == "labels":
                name = stem + LABELS_TIFF_EXT
                write_labels_tiff(str(tmp / name), data, attrs)
            elif kind == "shapes":
                name = stem + SHAPES_CSV_EXT
                write_shapes_csv(str(tmp / name), data, attrs)
            elif kind == "image":
                name = stem + ".tif"
                arr = np.asarray(data[0] if attrs.get("multiscale") and isinstance(data, (list, tuple)) else data)
                if arr.dtype.kind not in "biuf" or arr.size == 0:
                    raise InputError(f"layer {attrs.get('name')!r}: images of dtype {arr.dtype} "
                                     f"(shape {arr.shape}) cannot be saved as TIFF", target)
                kept["shape"], kept["dtype"] = list(arr.shape), str(arr.dtype)
                with open(tmp / name, "wb") as fh:
                    tifffile.imwrite(fh, arr, photometric="rgb" if attrs.get("rgb") else "minisblack",
                                     metadata=None, bigtiff=arr.nbytes > 2**31 - 2**25, compression="zlib")
            else:
                raise InputError(f"layer {attrs.get('name')!r} is a {kind} layer; a layer folder holds images, "
                                 "labels and shapes", target)
            entries.append({"file": name, "type": kind, "kwargs": {k: v for k, v in kept.items() if v is not None}})
        manifest = _marker("layers", layers=entries)
        (tmp / LAYERS_MANIFEST).write_text(dumps(manifest) + "\n", encoding="utf-8")
    return [str(target)]


# --------------------------------------------------------------------------- helpers for other modules

def write_png_atomic(path: str | Path, image: np.ndarray) -> Path:
    """Save a 2D gray or RGB(A) uint8/uint16 image as PNG, atomically (e.g. a karyogram)."""
    import imageio.v3 as iio

    target = Path(path)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InputError(f"PNG needs a 2D gray or RGB/RGBA image, got shape {arr.shape}", target)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError("image has non-finite values", target)
        lo, hi = (0.0, 1.0) if arr.min() >= 0 and arr.max() <= 1 else (float(arr.min()), float(arr.max()))
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"PNG holds 8- or 16-bit unsigned images, got {arr.dtype}", target)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(iio.imwrite("<bytes>", arr, extension=".png"))
    return target


def write_csv_atomic(path: str | Path, rows: pd.DataFrame | Iterable[dict[str, Any]],
                     columns: Sequence[str] | None = None) -> Path:
    """Save a table (DataFrame or iterable of dicts) as a plain CSV with a header, atomically."""
    target = Path(path)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise InputError(f"table lacks column(s) {missing}", target)
        df = df[list(columns)]
    from ..engine.csvsafe import escape_frame

    payload = escape_frame(df).to_csv(index=False, lineterminator="\n")  # no cell runs as a formula
    with atomic_path(target) as tmp:
        tmp.write_text(payload, encoding="utf-8")
    return target


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Save a JSON document atomically (strict JSON: NaN/inf refused before writing)."""
    target = Path(path)
    try:
        payload = json.dumps(obj, allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot be saved as JSON: {exc}", target) from None
    with atomic_path(target) as tmp:
        tmp.write_text(payload + "\n", encoding="utf-8")
    return target
