"""npe2 reader for our own outputs: OME-Zarr labels, TIFF labels and shapes CSV.

``get_reader`` only claims what it can recognise cheaply and for sure: an OME-Zarr
folder with ``image-label`` metadata (ours or any NGFF 0.4 writer's), a folder of HPA
channel sets (handed to :mod:`.hpa_reader`; this is the plugin's only folder reader), a TIFF whose
ImageDescription carries the napari-cellclass marker, and a CSV whose first line is our header
(or napari's own shapes CSV header: coordinates only, opened with a warning that no features
were saved, when the user picks this plugin for it).
Other TIFFs are opened too (``*.tif`` is our pattern, so napari hands us a TIFF only when the
user chose this plugin for it, in the dialog or by a remembered preference): a spread with its
sidecar boxes, anything else as an image (HPA ``*_red.tif`` channels are left to the HPA reader).  Anything
else gets ``None``.  Once claimed, a file that turns out to be damaged raises
:class:`~napari_cellclass.errors.InputError` naming the file and the problem.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from napari_cellclass.engine.csvsafe import unescape_text
from napari_cellclass.errors import CellClassError, InputError
from napari_cellclass.io.writers import (
    CSV_HEADER_PREFIX,
    LAYERS_FOLDER_EXT,
    LAYERS_MANIFEST,
    MARKER,
    SHAPES_CSV_EXT,
    TEXT_ESCAPE,
    _csv_cell,
    column_from_values,
    decode_value,
    is_text_dtype,
    table_from_json,
)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunc = Callable[[Any], list[LayerData]]

#: Arrays above this many bytes stay on disk (napari reads the visible chunks lazily).
EAGER_LIMIT_BYTES = 1 << 30
#: ... and so do arrays split into more chunks than this (a huge declared shape reads lazily).
MAX_EAGER_CHUNKS = 4096
_SHAPE_TYPES = {"rectangle": (2, 4), "ellipse": (2, 4), "line": (2, 2), "polygon": (3, None), "path": (2, None)}
_MAX_HEADER = 1 << 20


def get_reader(path: str | list[str]) -> ReaderFunc | None:
    """Return a reader for napari-cellclass outputs (and NGFF labels), else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
        kind = _sniff(p)
    except Exception:  # sniffing must never raise: not recognisable means not ours
        return None
    if kind is None:
        return None
    if kind == "hpa":
        from napari_cellclass.io.hpa_reader import read_hpa

        return read_hpa
    if kind == "spread":
        from napari_cellclass.io.spread_reader import read_spread

        return read_spread
    return {"zarr": read_zarr_labels, "tiff": read_tiff_labels, "csv": read_shapes_csv,
            "napari_csv": read_napari_shapes_csv, "folder": read_layers_folder}[kind]


def _sniff(p: Path) -> str | None:
    if p.suffix.lower() in (".zarr", ".tif", ".tiff", ".csv", LAYERS_FOLDER_EXT):
        from napari_cellclass.engine.atomic import recover

        recover(p)  # an interrupted save: restore or finish it, drop dead temporaries
    if p.is_dir():
        if _zarr_label_attrs(p) is not None:
            return "zarr"
        if (p / LAYERS_MANIFEST).is_file():  # File > Save All Layers with our folder writer
            return "folder"
        # the one folder reader of the plugin (npe2 offers every folder to every reader that
        # accepts directories): a folder of HPA channel sets goes to the HPA reader
        from napari_cellclass.io.hpa_reader import find_sets

        return "hpa" if find_sets(p) else None
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff") and p.is_file():
        if _tiff_marker(p) is not None:
            return "tiff"
        # *.tif is in our patterns (for our labels), so napari offers "Cell Class" for every TIFF and
        # honours a remembered "*.tif -> napari-cellclass": napari gives us a TIFF only when we were
        # chosen, so we open it (declining would fail the open).  An HPA channel is the HPA reader's
        # (its pattern matches too), a spread with a VOC/COCO sidecar opens with its boxes, any other
        # TIFF as an image
        from napari_cellclass.io.hpa_reader import parse_name

        return None if parse_name(p) is not None else "spread"
    if suffix == ".csv" and p.is_file():
        with open(p, encoding="utf-8", errors="replace") as fh:
            first = fh.readline(_MAX_HEADER)
        if first.startswith(CSV_HEADER_PREFIX):
            return "csv"
        # napari's own shapes CSV (File > Save with its default filter): coordinates only.  Opened
        # when the user picks Cell Class for it, with a warning that the features were not saved
        return "napari_csv" if first.rstrip("\r\n").startswith(_NAPARI_SHAPES_HEADER) else None
    return None


# --------------------------------------------------------------------------- OME-Zarr

def _read_attrs(folder: Path) -> dict[str, Any] | None:
    """Group attributes from zarr v2 ``.zattrs`` or v3 ``zarr.json``; None when absent/unreadable."""
    v2, v3 = folder / ".zattrs", folder / "zarr.json"
    try:
        if v2.is_file():
            attrs = json.loads(v2.read_text(encoding="utf-8"))
        elif v3.is_file():
            attrs = json.loads(v3.read_text(encoding="utf-8")).get("attributes", {})
            attrs = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
        else:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _zarr_label_attrs(folder: Path) -> dict[str, Any] | None:
    """Attributes when ``folder`` is a labels image (ours or NGFF) or holds a ``labels`` group."""
    attrs = _read_attrs(folder)
    if attrs is None:
        return None
    if "image-label" in attrs and "multiscales" in attrs:
        return attrs
    if isinstance(attrs.get(MARKER), dict) and attrs[MARKER].get("kind") == "labels":
        return attrs
    lab = _read_attrs(folder / "labels")
    if lab is not None and isinstance(lab.get("labels"), list) and lab["labels"]:
        return {"labels": lab["labels"]}
    return None


def read_zarr_labels(path: Any) -> list[LayerData]:
    """Read an OME-Zarr labels image (or every label image under ``<image>.zarr/labels``)."""
    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    from napari_cellclass.engine.atomic import recover

    recover(p)
    attrs = _zarr_label_attrs(p)
    if attrs is None:
        raise InputError("not an OME-Zarr labels folder (no image-label / labels metadata)", p)
    if "labels" in attrs and "multiscales" not in attrs:
        out = []
        for name in attrs["labels"]:
            sub = p / "labels" / str(name)
            sub_attrs = _read_attrs(sub)
            if sub_attrs is None or "multiscales" not in sub_attrs:
                raise InputError(f"labels/{name} listed but has no multiscales metadata", p)
            out.append(_read_label_image(sub, sub_attrs, default_name=str(name)))
        return out
    return [_read_label_image(p, attrs, default_name=p.stem)]


def _read_label_image(p: Path, attrs: dict[str, Any], default_name: str) -> LayerData:
    import zarr

    try:
        ms = attrs["multiscales"][0]
        datasets = [d["path"] for d in ms["datasets"]]
        axes = ms.get("axes", [])
        transforms = ms["datasets"][0].get("coordinateTransformations", [])
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"malformed OME-Zarr multiscales metadata ({type(exc).__name__}: {exc})", p) from None
    if not datasets:
        raise InputError("OME-Zarr multiscales lists no datasets", p)
    ours = attrs.get(MARKER) if isinstance(attrs.get(MARKER), dict) else {}
    try:
        group = zarr.open_group(store=str(p), mode="r")
        arrays = [group[str(d)] for d in datasets]
    except Exception as exc:  # zarr raises many types for broken stores
        raise InputError(f"OME-Zarr array could not be opened: {type(exc).__name__}: {exc}", p) from None
    for d, a in zip(datasets, arrays):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise InputError(f"dataset {d!r} is a group, not an array", p)
        if np.dtype(a.dtype).kind not in "iub":
            raise InputError(f"dataset {d!r} holds {a.dtype}; labels must be integers", p)
        if axes and len(axes) != len(a.shape):
            raise InputError(f"dataset {d!r} has {len(a.shape)} dimensions but {len(axes)} axes are declared", p)
    full = arrays[0]
    nbytes = int(np.prod(full.shape, dtype=np.float64) * np.dtype(full.dtype).itemsize)
    nchunks = math.prod(math.ceil(s / max(1, c)) for s, c in zip(full.shape, getattr(full, "chunks", full.shape)))
    if len(arrays) == 1 and nbytes <= EAGER_LIMIT_BYTES and nchunks <= MAX_EAGER_CHUNKS:
        try:
            data: Any = np.asarray(full[...])
        except Exception as exc:
            raise InputError(f"labels data could not be read (truncated or corrupt chunk): "
                             f"{type(exc).__name__}: {exc}", p) from None
        dtype = ours.get("dtype")
        if dtype:
            try:
                data = data.astype(np.dtype(dtype), copy=False)
            except TypeError:
                raise InputError(f"recorded dtype {dtype!r} is not a numpy dtype", p) from None
    else:
        data = arrays if len(arrays) > 1 else full
    kwargs: dict[str, Any] = {"name": ours.get("name") or ms.get("name") or default_name}
    for t in transforms if isinstance(transforms, list) else []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == len(full.shape):
            kwargs["scale"] = [float(v) for v in t["scale"]]
        if isinstance(t, dict) and t.get("type") == "translation" and len(t.get("translation", [])) == len(full.shape):
            kwargs["translate"] = [float(v) for v in t["translation"]]
    if "features" in ours:
        try:
            kwargs["features"] = table_from_json(ours["features"])
        except (ValueError, TypeError) as exc:
            raise InputError(f"class table in the metadata is malformed: {exc}", p) from None
    elif isinstance(attrs.get("image-label", {}).get("properties"), list):
        props = [q for q in attrs["image-label"]["properties"] if isinstance(q, dict)]
        if props:
            kwargs["features"] = pd.DataFrame(props).rename(columns={"label-value": "index"})
    meta = dict(ours.get("metadata") or {}) if isinstance(ours.get("metadata"), dict) else {}
    meta["source_path"] = str(p)
    kwargs["metadata"] = meta
    return data, kwargs, "labels"


# --------------------------------------------------------------------------- TIFF

def _tiff_marker(p: Path) -> dict[str, Any] | None:
    """Our JSON from the first page's ImageDescription, or None (not ours / not a TIFF)."""
    import tifffile

    with tifffile.TiffFile(p) as tif:
        desc = tif.pages.first.description if len(tif.pages) else ""
    if not desc or MARKER not in desc[:200]:
        return None
    info = json.loads(desc)
    if not isinstance(info, dict) or info.get("marker") != MARKER or info.get("kind") != "labels":
        return None
    return info


def read_tiff_labels(path: Any) -> list[LayerData]:
    """Read a TIFF labels image written by :func:`~napari_cellclass.io.writers.write_labels_tiff`."""
    import tifffile

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        info = _tiff_marker(p)
    except Exception as exc:
        raise InputError(f"not a readable TIFF ({type(exc).__name__}: {exc})", p) from None
    if info is None:
        raise InputError("TIFF lacks the napari-cellclass labels marker", p)
    try:
        shape = tuple(int(s) for s in info["shape"])
        dtype = np.dtype(info.get("dtype", "int32"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"labels TIFF description is malformed: {exc}", p) from None
    if dtype.kind not in "iub":
        raise InputError(f"recorded dtype {dtype} is not an integer type", p)
    from napari_cellclass.io.limits import check_pixels, probe

    check_pixels(shape, p, "labels TIFF description")
    probe(p)  # the pixel budget, all pages counted, before decoding
    try:
        with tifffile.TiffFile(p) as tif:
            data = tif.asarray()
    except Exception as exc:  # tifffile raises many types for truncated/corrupt data
        raise InputError(f"TIFF pixel data could not be read (truncated or corrupt): "
                         f"{type(exc).__name__}: {exc}", p) from None
    if data.dtype.kind not in "iub":
        raise InputError(f"TIFF holds {data.dtype} pixels; labels must be integers", p)
    if data.size != math.prod(shape):
        raise InputError(f"TIFF holds {data.size} pixels but its description declares shape {shape}", p)
    data = data.reshape(shape).astype(dtype, copy=False)
    kwargs: dict[str, Any] = {"name": str(info.get("name") or p.stem)}
    for key in ("scale", "translate"):
        v = info.get(key)
        if isinstance(v, list) and len(v) == len(shape):
            kwargs[key] = [float(x) for x in v]
    if "features" in info:
        try:
            kwargs["features"] = table_from_json(info["features"])
        except (ValueError, TypeError) as exc:
            raise InputError(f"class table in the TIFF description is malformed: {exc}", p) from None
    meta = dict(info.get("metadata") or {}) if isinstance(info.get("metadata"), dict) else {}
    meta["source_path"] = str(p)
    kwargs["metadata"] = meta
    return [(data, kwargs, "labels")]


# --------------------------------------------------------------------------- CSV shapes

def read_shapes_csv(path: Any) -> list[LayerData]:
    """Read shapes and features from a CSV written by :func:`~napari_cellclass.io.writers.write_shapes_csv`."""
    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        with open(p, encoding="utf-8", newline="") as fh:  # a \r inside a quoted cell is data
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"CSV could not be read: {exc}", p) from None
    first, _, rest = text.partition("\n")
    first = first.rstrip("\r")
    if not first.startswith(CSV_HEADER_PREFIX):
        raise InputError("CSV lacks the napari-cellclass shapes header line", p)
    try:
        info = json.loads(first[len(CSV_HEADER_PREFIX):])
        columns = info["columns"]
        ndim = int(info.get("ndim", 2))
        if not isinstance(columns, list) or not all(isinstance(c, dict) and "name" in c for c in columns):
            raise ValueError("column list malformed")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"CSV header line is malformed: {exc}", p) from None
    try:
        rows = list(csv.reader(io.StringIO(rest, newline="")))
    except csv.Error as exc:
        raise InputError(f"CSV is malformed: {exc}", p) from None
    if not rows:
        raise InputError("CSV has no column header row", p)
    escaped = info.get("text_escape") == TEXT_ESCAPE  # files before issue 24 carry no quotes
    if escaped:
        rows = [[unescape_text(cell) for cell in r] for r in rows]
    header, body = rows[0], [r for r in rows[1:] if r]
    names = [str(c["name"]) for c in columns]
    try:
        missing = {str(c["name"]): {int(i) for i in c.get("missing") or []} for c in columns}
        categories = {str(c["name"]): {_csv_cell(v, "category"): v for v in map(decode_value, c["categories"])}
                      for c in columns if isinstance(c.get("categories"), list)}
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"CSV header line is malformed: {exc}", p) from None
    if header[:3] != ["index", "shape_type", "vertices"] or header[3:] != names:
        raise InputError(f"CSV columns {header} do not match its header line ({['index', 'shape_type', 'vertices', *names]})", p)
    shapes, types = [], []
    values: dict[str, list[Any]] = {n: [] for n in names}
    for k, (lineno, row) in enumerate(enumerate(body, start=3)):
        if len(row) != len(header):
            raise InputError(f"line {lineno} has {len(row)} fields, expected {len(header)}", p)
        stype = row[1]
        if stype not in _SHAPE_TYPES:
            raise InputError(f"line {lineno}: unknown shape type {stype!r}", p)
        try:
            verts = np.asarray(json.loads(row[2]), dtype=float)
        except (ValueError, TypeError) as exc:
            raise InputError(f"line {lineno}: vertices are not a JSON list of points ({exc})", p) from None
        if verts.ndim != 2 or verts.shape[1] != ndim or not np.all(np.isfinite(verts)):
            raise InputError(f"line {lineno}: vertices must be finite {ndim}-D points, got array of shape {verts.shape}", p)
        lo, hi = _SHAPE_TYPES[stype]
        if len(verts) < lo or (hi is not None and len(verts) > hi):
            raise InputError(f"line {lineno}: a {stype} cannot have {len(verts)} vertices", p)
        shapes.append(verts)
        types.append(stype)
        for c, cell in zip(columns, row[3:]):
            name, dtype = str(c["name"]), str(c.get("dtype", "object"))
            try:
                if (is_text_dtype(dtype) or c.get("text") is True) and escaped:  # "" is text; missing rows listed
                    value = None if k in missing[name] else categories.get(name, {}).get(cell, cell)
                else:
                    value = _parse_cell(cell, dtype)
                values[c["name"]].append(value)
            except (ValueError, TypeError) as exc:
                raise InputError(f"line {lineno}: column {c['name']!r} value {cell!r} is not "
                                 f"{c.get('dtype')} ({exc})", p) from None
    try:
        feats = pd.DataFrame({c["name"]: column_from_values(values[c["name"]], str(c.get("dtype", "object")), c)
                              for c in columns}, index=pd.RangeIndex(len(shapes)))
    except (ValueError, TypeError) as exc:
        raise InputError(f"feature columns could not be rebuilt: {exc}", p) from None
    meta = dict(info["metadata"]) if isinstance(info.get("metadata"), dict) else {}
    meta["source_path"] = str(p)
    kwargs = {"name": str(info.get("name") or p.stem), "shape_type": types, "features": feats, "metadata": meta,
              **_display_kwargs(info.get("display"), len(shapes), names)}
    return [(shapes, kwargs, "shapes")]


_ANCHORS = {"center", "upper_left", "upper_right", "lower_left", "lower_right"}


def _display_kwargs(display: Any, n: int, features: list[str]) -> dict[str, Any]:
    """The saved look of a shapes layer, each entry checked; what does not fit is dropped."""
    if not isinstance(display, dict) or n == 0:
        return {}
    out: dict[str, Any] = {}

    def finite(v: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            arr = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            return None
        return arr if arr.shape == shape and np.all(np.isfinite(arr)) else None

    for key in ("edge_color", "face_color"):
        arr = finite(display.get(key), (n, 4))
        if arr is not None and np.all((arr >= 0) & (arr <= 1)):
            out[key] = arr
    arr = finite(display.get("edge_width"), (n,))
    if arr is not None and np.all(arr >= 0):
        out["edge_width"] = arr.tolist()
    arr = finite(display.get("z_index"), (n,))
    if arr is not None:
        out["z_index"] = [int(v) for v in arr]
    op = display.get("opacity")
    if isinstance(op, (int, float)) and 0 <= op <= 1:
        out["opacity"] = float(op)
    text = display.get("text")
    if isinstance(text, dict) and isinstance(text.get("string"), str):
        import string as _string

        try:  # only plain {feature} fields this layer has, so napari can format every row
            parts = list(_string.Formatter().parse(text["string"]))
            fields = {f for _, f, _, _ in parts if f}
            if any("{" in (spec or "") for _, _, spec, _ in parts):
                fields = {None}
        except ValueError:
            fields = {None}
        if fields <= set(features):
            t: dict[str, Any] = {"string": text["string"]}
            colour = text.get("color")
            rgba = finite(colour, (4,))
            if rgba is not None and np.all((rgba >= 0) & (rgba <= 1)):
                t["color"] = rgba
            if isinstance(text.get("size"), (int, float)) and 0 < text["size"] < 1000:
                t["size"] = float(text["size"])
            if text.get("anchor") in _ANCHORS:
                t["anchor"] = text["anchor"]
            out["text"] = t
    return out


# --------------------------------------------------------------------------- a folder of layers

_MAX_FOLDER_LAYERS = 256
_FOLDER_KWARGS = {"name", "scale", "translate", "opacity", "blending", "visible", "metadata", "rgb",
                  "contrast_limits", "gamma", "colormap"}


def read_layers_folder(path: Any) -> list[LayerData]:
    """Open a ``NAME.cellclass`` folder (:func:`~napari_cellclass.io.writers.write_layers_folder`)
    as its layers, in the order they were saved; files are looked up inside the folder only."""
    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    from napari_cellclass.engine.atomic import recover

    recover(p)
    try:
        info = json.loads((p / LAYERS_MANIFEST).read_text(encoding="utf-8"))
        entries = info["layers"]
        if info.get("marker") != MARKER or not isinstance(entries, list):
            raise ValueError("not a napari-cellclass layer list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{LAYERS_MANIFEST} is unreadable or malformed: {exc}", p) from None
    if len(entries) > _MAX_FOLDER_LAYERS:
        raise InputError(f"{LAYERS_MANIFEST} lists {len(entries)} layers (at most {_MAX_FOLDER_LAYERS})", p)
    out = []
    for k, e in enumerate(entries):
        name = e.get("file") if isinstance(e, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise InputError(f"layer {k}: file name {name!r} is not a plain file name inside the folder", p)
        f = p / name
        if not f.is_file() or f.is_symlink():
            raise InputError(f"layer {k}: {name} is listed but missing (or not a regular file)", p)
        kind = e.get("type")
        if kind == "labels":
            data, kwargs, _ = read_tiff_labels(f)[0]
        elif kind == "shapes":
            data, kwargs, _ = read_shapes_csv(f)[0]
        elif kind == "image":
            data, kwargs = _read_folder_image(f, e.get("kwargs") or {}), {}
        else:
            raise InputError(f"layer {k}: unknown layer type {kind!r}", p)
        saved = e.get("kwargs") if isinstance(e.get("kwargs"), dict) else {}
        kwargs.update({key: decode_value(v) for key, v in saved.items() if key in _FOLDER_KWARGS})
        meta = kwargs.get("metadata") if isinstance(kwargs.get("metadata"), dict) else {}
        kwargs["metadata"] = {**meta, "source_path": str(f)}
        out.append((data, kwargs, kind))
    return out


def _read_folder_image(f: Path, saved: dict[str, Any]) -> np.ndarray:
    import tifffile

    from napari_cellclass.io.limits import check_pixels, probe

    try:
        shape = tuple(int(v) for v in saved["shape"])
        dtype = np.dtype(str(saved["dtype"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"image entry lacks a valid shape/dtype ({exc})", f) from None
    check_pixels(shape, f, "image entry")
    probe(f)  # the pixel budget, all pages counted, before decoding
    try:
        data = tifffile.imread(f)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"TIFF pixel data could not be read (truncated or corrupt): "
                         f"{type(exc).__name__}", f) from None
    if data.size != math.prod(shape) or data.dtype != dtype:
        raise InputError(f"TIFF holds {data.size} {data.dtype} values; the folder lists shape {shape} {dtype}", f)
    return data.reshape(shape)


_NAPARI_SHAPES_HEADER = "index,shape-type,vertex-index,axis-0,axis-1"
#: What napari's Save dialog lists for our shapes CSV writer (plugin display name + napari.yaml).
KEEPS_FEATURES_CSV = "Cell Class CSV keeping classes and review marks"


def read_napari_shapes_csv(path: Any) -> list[LayerData]:
    """Open a shapes CSV written by napari's own writer: coordinates and shape types only.

    napari's default filter in File > Save Selected Layers writes no features, so what a
    smear analysis found (classes, scores, review marks) is not in the file; the warning
    says so and names the format that keeps them.
    """
    import warnings

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        with open(p, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"CSV could not be read: {exc}", p) from None
    header = rows[0] if rows else []
    naxes = len(header) - 3
    shapes: dict[int, tuple[str, list[list[float]]]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(f"line {lineno} has {len(row)} fields, expected {len(header)}", p)
        try:
            idx, point = int(row[0]), [float(v) for v in row[3:]]
        except ValueError as exc:
            raise InputError(f"line {lineno}: {exc}", p) from None
        stype = row[1]
        if stype not in _SHAPE_TYPES or not all(math.isfinite(v) for v in point):
            raise InputError(f"line {lineno}: unknown shape type {stype!r} or non-finite coordinate", p)
        if shapes.setdefault(idx, (stype, []))[0] != stype:
            raise InputError(f"line {lineno}: shape {idx} changes type to {stype!r}", p)
        shapes[idx][1].append(point)
    for i, (stype, pts) in shapes.items():
        lo, hi = _SHAPE_TYPES[stype]
        if len(pts) < lo or (hi is not None and len(pts) > hi):
            raise InputError(f"shape {i}: a {stype} cannot have {len(pts)} vertices", p)
    data = [np.asarray(shapes[i][1], dtype=float).reshape(-1, naxes) for i in sorted(shapes)]
    warnings.warn(
        f"{p.name}: saved by napari's own CSV writer, which keeps coordinates only; classes, scores "
        f"and review marks were not saved. To keep them, pick the file type '{KEEPS_FEATURES_CSV}' in "
        f"File > Save Selected Layers (from Python: save to *{SHAPES_CSV_EXT}).", UserWarning, stacklevel=2)
    kwargs = {"name": p.stem, "shape_type": [shapes[i][0] for i in sorted(shapes)],
              "metadata": {"source_path": str(p), "features_saved": False}}
    return [(data, kwargs, "shapes")]


def _parse_cell(cell: str, dtype: str) -> Any:
    """Inverse of ``writers._csv_cell`` for a column of ``dtype``."""
    if dtype == "object":
        return decode_value(json.loads(cell))
    if cell == "" and dtype not in ("str", "string"):
        return None
    kind = dtype.lower()
    if kind.startswith(("float", "double")):
        return float(cell)
    if kind.startswith(("int", "uint")):
        return int(cell)
    if kind in ("bool", "boolean"):
        if cell not in ("true", "false"):
            raise ValueError("expected true or false")
        return cell == "true"
    if kind in ("str", "string") and cell == "":
        return None
    return cell


__all__ = ["get_reader", "read_zarr_labels", "read_tiff_labels", "read_shapes_csv", "read_napari_shapes_csv",
           "read_layers_folder", "CellClassError"]
