"""Pure parsing of Pascal VOC XML (LabelImg) and COCO JSON into one structure.

Both formats end up as :class:`AnnotatedImage`: boxes ``(N, 4)`` float
``x0, y0, x1, y1`` in pixels, one label per box, an optional polygon per object
(``(K, 2)`` as ``x, y``) and a dict of per-object extras.  No layers, no
images are read here, so the writers (``io/writers.py``) can round-trip through
these functions and tests can run without napari.

Coordinate conventions
    Coordinates are taken as written, without the historical VOC "1-based"
    shift: LabelImg and most tools write pixel coordinates directly.  A COCO
    ``bbox`` ``[x, y, w, h]`` becomes ``x0=x, y0=y, x1=x+w, y1=y+h``.

Boxes that do not fit (policy)
    * non-finite coordinates, an inverted box (``x1 < x0`` or ``y1 < y0``) or a
      box lying entirely outside the image -> :class:`InputError` naming file and object;
    * a box with zero width or height (a stray click; BCCD has two) is *dropped*,
      with a line in ``AnnotatedImage.notes`` and a :class:`UserWarning`;
    * a box that sticks out of the image (annotation tools let the cursor slip
      a few pixels past the border) is *clipped* to the image and the object's
      attributes get ``clipped=True``, so nothing is lost silently.
    When the image size is unknown (no ``<size>``, no COCO width/height) no
    border check is possible and boxes are kept as written.

VOC extensions read here (written by CVAT and by our own writers):
    ``<polygon>`` inside ``<object>`` with either ``<pt><x>..</x><y>..</y></pt>``
    children or ``<x1>, <y1>, <x2>, <y2> ...`` children; ``<score>``; and
    ``<attributes><attribute><name>..</name><value>..</value></attribute>``.
    Any other simple child of ``<object>`` with text becomes an attribute
    (numbers converted to float/int).
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from ..errors import InputError
from .limits import check_pixels, check_regular_file, confined, max_pixels, safe_relative

__all__ = ["AnnotatedImage", "read_voc", "read_coco", "is_voc", "is_coco", "polygon_to_mask", "check_declared_size"]


@dataclass
class AnnotatedImage:
    """One image's objects, format-neutral.

    ``masks`` is filled only for COCO RLE objects (exact bool masks, ``(H, W)``);
    for everything else it holds ``None`` per object (polygons rasterise on demand
    with :func:`polygon_to_mask`).
    """

    image_path: Path | None
    width: int | None
    height: int | None
    boxes: np.ndarray  # (N, 4) float64 x0, y0, x1, y1
    labels: list[str]
    polygons: list[np.ndarray | None]
    attributes: list[dict[str, Any]]
    masks: list[np.ndarray | None] = field(default_factory=list)
    source: Path | None = None  # the annotation file
    notes: list[str] = field(default_factory=list)  # objects dropped on reading, and why
    #: feature name -> pandas dtype recorded by our writers (empty for other tools' files)
    feature_dtypes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        if not self.masks:
            self.masks = [None] * n
        if not (len(self.labels) == len(self.polygons) == len(self.attributes) == len(self.masks) == n):
            raise ValueError("boxes, labels, polygons, attributes and masks must have one entry per object")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def classes(self) -> list[str]:
        """Distinct labels in first-seen order."""
        return list(dict.fromkeys(self.labels))


# ----------------------------------------------------------------------------- helpers

def check_declared_size(item: AnnotatedImage, shape: tuple[int, int]) -> None:
    """The size an annotation declares must be the image's: else boxes land in the wrong place."""
    h, w = int(shape[0]), int(shape[1])
    if item.width and item.height and (int(item.width), int(item.height)) != (w, h):
        raise InputError(
            f"the annotation declares a {item.width}x{item.height} image but {(Path(item.image_path).name if item.image_path else 'the image')} is "
            f"{w}x{h} (width x height); fix <size>/width/height or use the right image", item.source)



def _number(text: str | None) -> Any:
    """'3' -> 3, '2.5' -> 2.5, anything else unchanged (stripped)."""
    if text is None:
        return None
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def typed_value(v: Any, dtype: str) -> Any:
    """A feature value read from VOC text or COCO JSON, back in the type our writer recorded.

    bool stays bool ("true"/"false"), int stays int, floats come back as floats (missing
    -> None, shown as NaN), object columns (lists, arrays) are decoded from JSON.
    """
    from .writers import decode_value

    kind = str(dtype).lower()
    if isinstance(v, str) and kind not in ("object", "str", "string", "category"):
        v = v.strip()
        if v == "":
            return None
    if v is None:
        return None
    if kind in ("bool", "boolean"):
        if isinstance(v, str):
            if v.lower() in ("true", "1"):
                return True
            if v.lower() in ("false", "0"):
                return False
            raise ValueError(f"expected true or false, got {v!r}")
        return bool(v)
    if kind.startswith(("int", "uint")):
        f = float(v)
        if not f.is_integer():
            raise ValueError(f"expected a whole number, got {v!r}")
        return int(f)
    if kind.startswith(("float", "double")):
        return float(v)
    if kind == "object":
        if isinstance(v, str):
            try:
                return decode_value(json.loads(v))
            except ValueError:
                return v
        return decode_value(v)
    return v


def _typed_attrs(raw: dict[str, Any], dtypes: dict[str, str], where: str, path: Path) -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        try:
            out[k] = typed_value(v, dtypes[k]) if k in dtypes else v
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where}: feature {k!r} value {v!r} is not {dtypes[k]} ({exc})", path) from None
    return out


class _ZeroBox(Exception):
    """A degenerate box: dropped with a note rather than refusing the whole file."""


def _drop(notes: list[str], exc: _ZeroBox, path: Path) -> None:
    notes.append(str(exc))
    warnings.warn(f"{path}: {exc}", UserWarning, stacklevel=3)


def _check_box(box: list[float], width: int | None, height: int | None, where: str, path: Path) -> tuple[list[float], bool]:
    """Apply the module's policy to one box; returns (box, clipped)."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"{where}: box has non-finite coordinates {box}", path)
    if x1 < x0 or y1 < y0:
        raise InputError(
            f"{where}: inverted box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}); max must be >= min", path
        )
    if x1 == x0 or y1 == y0:
        raise _ZeroBox(f"{where}: box has zero width or height (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}); dropped")
    clipped = False
    if width is not None and height is not None and width > 0 and height > 0:
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise InputError(
                f"{where}: box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) lies entirely outside the "
                f"{width}x{height} image",
                path,
            )
        c = [max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]
        clipped = c != [x0, y0, x1, y1]
        x0, y0, x1, y1 = c
    return [x0, y0, x1, y1], clipped


def polygon_to_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise an ``(K, 2)`` x,y polygon into a bool ``(height, width)`` mask."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros((height, width), dtype=bool)
    p = np.asarray(polygon, dtype=float)
    rr, cc = draw_polygon(p[:, 1], p[:, 0], shape=(height, width))
    mask[rr, cc] = True
    return mask


def _mask_to_polygon(mask: np.ndarray) -> np.ndarray | None:
    """Outline of the largest connected part of a mask as ``(K, 2)`` x,y."""
    from skimage.measure import find_contours

    if not mask.any():
        return None
    contours = find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)
    if not contours:
        return None
    best = max(contours, key=len) - 1.0  # undo the padding
    return np.stack([best[:, 1], best[:, 0]], axis=1)


# ----------------------------------------------------------------------------- VOC

def is_voc(path: str | Path) -> bool:
    """Cheap sniff: an XML file whose root element is ``<annotation>``."""
    path = Path(path)
    if path.suffix.lower() != ".xml" or not path.is_file():
        return False
    try:
        for _event, elem in ET.iterparse(str(path), events=("start",)):
            return elem.tag == "annotation"
    except (ET.ParseError, OSError):
        return False
    return False


def _voc_image_path(root: ET.Element, path: Path) -> Path | None:
    """The image a VOC file names, looked up inside the data set only.

    ``<filename>`` must be a relative name without ``..`` (else InputError); of
    ``<path>`` (LabelImg writes the annotator's absolute path) only the file name is
    used, and a ``<folder>`` that is not a plain folder name is ignored.
    """
    filename = (root.findtext("filename") or "").strip()
    written = (root.findtext("path") or "").strip()
    folder = (root.findtext("folder") or "").strip()
    if not filename and written:
        filename = PureWindowsPath(written).name
    if not filename:
        return None
    rel = Path(safe_relative(filename, path, "<filename>"))
    candidates = [path.parent / rel, path.parent.parent / "JPEGImages" / rel]
    if folder and folder not in (".", "..") and "/" not in folder and "\\" not in folder:
        candidates.append(path.parent.parent / folder / rel)
    candidates.append(path.with_name(path.stem + rel.suffix))
    # the data set: the folder above Annotations/, else the XML's own folder; nothing outside it is read
    base = path.parent.parent if path.parent.name.lower() == "annotations" else path.parent
    candidates = [c for c in candidates if _inside(c, base)]
    for c in candidates:
        if c.is_file():
            return confined(c, base, "image file")  # a link that leads out of the data set is refused
    if not candidates:
        return None
    # not found: the usual VOC layout is the best guess (callers check existence)
    return candidates[1] if path.parent.name.lower() == "annotations" else candidates[0]


def _voc_polygon(obj: ET.Element, where: str, path: Path) -> np.ndarray | None:
    poly = obj.find("polygon")
    if poly is None:
        return None
    pts: list[tuple[float, float]] = []
    if poly.findall("pt"):
        for pt in poly.findall("pt"):
            try:
                pts.append((float(pt.findtext("x")), float(pt.findtext("y"))))
            except (TypeError, ValueError):
                raise InputError(f"{where}: polygon point without numeric <x>/<y>", path) from None
    else:
        coords: dict[int, dict[str, float]] = {}
        for child in poly:
            m = re.fullmatch(r"([xy])(\d+)", child.tag)
            if not m:
                continue
            try:
                coords.setdefault(int(m.group(2)), {})[m.group(1)] = float(child.text or "")
            except ValueError:
                raise InputError(f"{where}: polygon coordinate <{child.tag}> is not a number", path) from None
        for i in sorted(coords):
            if set(coords[i]) != {"x", "y"}:
                raise InputError(f"{where}: polygon point {i} lacks x or y", path)
            pts.append((coords[i]["x"], coords[i]["y"]))
    if len(pts) < 3:
        raise InputError(f"{where}: polygon needs at least 3 points, got {len(pts)}", path)
    return np.asarray(pts, dtype=np.float64)


_VOC_OBJECT_SKIP = {"name", "bndbox", "polygon", "attributes", "parts", "part"}


def read_voc(path: str | Path) -> AnnotatedImage:
    """Read one Pascal VOC / LabelImg XML file.

    Raises :class:`InputError` for malformed XML, a root other than
    ``<annotation>``, objects without ``<name>`` or a complete ``<bndbox>``,
    and boxes that break the policy in the module docstring.
    """
    path = check_regular_file(path, "annotation file")
    try:
        root = ET.parse(str(path)).getroot()
    except ET.ParseError as exc:
        raise InputError(f"malformed XML ({exc})", path) from None
    if root.tag != "annotation":
        raise InputError(f"not a Pascal VOC file: root element is <{root.tag}>, expected <annotation>", path)

    width = height = None
    size = root.find("size")
    if size is not None:
        try:
            width = int(float(size.findtext("width") or "0")) or None
            height = int(float(size.findtext("height") or "0")) or None
        except (ValueError, OverflowError):
            raise InputError("<size> has non-numeric width/height", path) from None
        if (width is not None and width < 0) or (height is not None and height < 0):
            raise InputError(f"<size> has a negative width/height ({width} x {height})", path)

    boxes: list[list[float]] = []
    labels: list[str] = []
    polygons: list[np.ndarray | None] = []
    attributes: list[dict[str, Any]] = []
    notes: list[str] = []
    ours = (root.findtext("source/database") or "").strip() == "napari-cellclass"
    dtypes: dict[str, str] = {}
    for i, obj in enumerate(root.findall("object")):
        where = f"object {i + 1}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise InputError(f"{where} has no <name> (class label)", path)
        where = f"object {i + 1} ({name})"
        polygon = _voc_polygon(obj, where, path)
        bb = obj.find("bndbox")
        if bb is not None:
            vals = []
            for key in ("xmin", "ymin", "xmax", "ymax"):
                text = bb.findtext(key)
                if text is None:
                    raise InputError(f"{where}: <bndbox> lacks <{key}>", path)
                try:
                    vals.append(float(text))
                except ValueError:
                    raise InputError(f"{where}: <{key}> is not a number ({text!r})", path) from None
        elif polygon is not None:
            vals = [*polygon.min(0), *polygon.max(0)]
        else:
            raise InputError(f"{where} has neither <bndbox> nor <polygon>", path)
        try:
            box, clipped = _check_box(vals, width, height, where, path)
        except _ZeroBox as exc:
            _drop(notes, exc, path)
            continue
        attrs: dict[str, Any] = {}
        typed = obj.findall("attributes/attribute")
        if not (ours and typed):  # our files: the typed block is the whole feature row
            for child in obj:
                if child.tag in _VOC_OBJECT_SKIP or len(child):
                    continue
                if child.text is not None and child.text.strip():
                    attrs[child.tag] = _number(child.text)
        for att in typed:
            key = (att.findtext("name") or "").strip()
            if not key:
                continue
            dtype = att.get("dtype")
            if dtype:
                dtypes.setdefault(key, dtype)
                attrs.update(_typed_attrs({key: att.findtext("value") or ""}, {key: dtype}, where, path))
            else:
                attrs[key] = _number(att.findtext("value"))
        if clipped:
            attrs["clipped"] = True
        if polygon is not None and width and height:
            polygon = np.clip(polygon, 0, [width, height])
        boxes.append(box)
        labels.append(name)
        polygons.append(polygon)
        attributes.append(attrs)
    return AnnotatedImage(
        image_path=_voc_image_path(root, path),
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=labels,
        polygons=polygons,
        attributes=attributes,
        source=path,
        notes=notes,
        feature_dtypes=dtypes,
    )


# ----------------------------------------------------------------------------- COCO

def is_coco(path: str | Path) -> bool:
    """A JSON object with ``images`` and ``annotations`` lists (``categories`` optional here)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
        if '"annotations"' not in head and '"images"' not in head:
            # big files may have these keys later; fall back to a full parse
            if len(head) < (1 << 16):
                return False
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)


def _coco_image_path(file_name: str, path: Path, image_root: Path | None) -> Path:
    """The image a COCO entry names, inside the data set (``..``/absolute names refused)."""
    rel = Path(safe_relative(file_name, path, "image file_name"))
    roots = [image_root] if image_root is not None else []
    roots += [path.parent, path.parent / "images", path.parent.parent / "images"]
    # the data set: the image root given, the folder above annotations/, else the JSON's own folder
    base = Path(image_root) if image_root is not None else (
        path.parent.parent if path.parent.name.lower() == "annotations" else path.parent)
    roots = [r for r in roots if _inside(r, base)]
    for r in roots:
        c = r / rel
        if c.is_file():
            return confined(c, base, "image file")  # a link that leads out of the data set is refused
    return roots[0] / rel


def _inside(p: Path, base: Path) -> bool:
    """``p`` lies lexically inside ``base`` (no link is followed here)."""
    a, b = os.path.normpath(os.path.abspath(p)), os.path.normpath(os.path.abspath(base))
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _decode_rle(seg: dict, h: int | None, w: int | None, where: str, path: Path) -> np.ndarray:
    from pycocotools import mask as mask_utils

    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise InputError(f"{where}: RLE segmentation lacks 'size': [height, width] (positive integers)", path)
    check_pixels(size, path, f"{where}: RLE mask")
    if h is not None and w is not None and list(size) != [h, w]:
        raise InputError(f"{where}: RLE size {size} differs from the image size [{h}, {w}]", path)
    counts = seg.get("counts")
    try:
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, size[0], size[1])
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise InputError(f"{where}: RLE 'counts' must be a list or a string", path)
        return mask_utils.decode(rle).astype(bool)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: cannot decode RLE segmentation ({exc})", path) from None


def _coco_polygon(seg: list, where: str, path: Path) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """COCO polygon list -> (largest part as (K,2), all parts)."""
    parts = []
    for part in seg:
        if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
            raise InputError(f"{where}: polygon segmentation must be lists of >= 3 x,y pairs", path)
        try:
            parts.append(np.asarray(part, dtype=np.float64).reshape(-1, 2))
        except (TypeError, ValueError):
            raise InputError(f"{where}: polygon coordinates are not numbers", path) from None
    if not parts:
        return None, []

    def area(p: np.ndarray) -> float:
        x, y = p[:, 0], p[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

    return max(parts, key=area), parts


_COCO_ANN_SKIP = {"id", "image_id", "category_id", "bbox", "segmentation", "area"}


def read_coco(path: str | Path, image_root: str | Path | None = None) -> list[AnnotatedImage]:
    """Read a COCO instances (or results-with-images) JSON; one entry per image, in file order.

    Images without annotations are kept (empty boxes) so evaluation counts them.
    ``segmentation`` may be polygons (largest part kept as the polygon; a
    multi-part object also gets an exact mask) or RLE (compressed or not; decoded
    with pycocotools into ``masks``, outline into ``polygons``).  ``bbox`` may be
    missing when a segmentation is given (the box is its extent).
    """
    path = check_regular_file(path, "annotation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise InputError("JSON is nested too deeply", path) from None
    except UnicodeDecodeError:
        raise InputError("not a text (UTF-8) JSON file", path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc})", path) from None
    except ValueError:  # Python's limit on integer digits (4300): no image has such a number
        raise InputError("JSON holds a number with thousands of digits; not an annotation file", path) from None
    if not isinstance(data, dict):
        raise InputError("not a COCO file: top level is not a JSON object", path)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise InputError(f"not a COCO file: missing the '{key}' list", path)
    root = Path(image_root) if image_root is not None else None

    categories: dict[Any, str] = {}
    cats = data.get("categories") or []
    if not isinstance(cats, list):
        raise InputError("'categories' must be a list", path)
    for c in cats:
        if not isinstance(c, dict) or "id" not in c:
            raise InputError("a category lacks 'id'", path)
        if not _is_id(c["id"]):
            raise InputError(f"category id {c['id']!r} must be an integer or a string", path)
        name = c.get("name", c["id"])
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise InputError(f"category {c['id']!r}: 'name' must be a string, got {type(name).__name__}", path)
        categories[c["id"]] = str(name)

    images: dict[Any, dict] = {}
    order: list[Any] = []
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise InputError(f"image entry {k} lacks 'id'", path)
        if not _is_id(im["id"]):
            raise InputError(f"image entry {k}: 'id' {im['id']!r} must be an integer or a string", path)
        for key in ("width", "height"):
            v = im.get(key)
            if v is not None and v != 0 and not (_is_whole(v) and v > 0):
                raise InputError(f"image {im['id']!r}: '{key}' must be a positive integer, got {v!r}", path)
        fn = im.get("file_name")
        if fn is not None and not isinstance(fn, str):
            raise InputError(f"image {im['id']!r}: 'file_name' must be a string, got {type(fn).__name__}", path)
        if im["id"] in images:
            raise InputError(f"image id {im['id']} appears twice", path)
        images[im["id"]] = im
        order.append(im["id"])

    per_image: dict[Any, list[dict]] = {i: [] for i in order}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(f"annotation {k} is not an object", path)
        if not _is_id(ann.get("image_id")) or not _is_id(ann.get("category_id", 0)):
            raise InputError(f"annotation {k}: 'image_id' and 'category_id' must be integers or strings", path)
        if ann.get("image_id") not in images:
            raise InputError(f"annotation {ann.get('id', k)} refers to unknown image_id {ann.get('image_id')!r}", path)
        if "category_id" not in ann:
            raise InputError(f"annotation {ann.get('id', k)} lacks 'category_id'", path)
        if categories and ann["category_id"] not in categories:
            raise InputError(
                f"annotation {ann.get('id', k)} refers to unknown category_id {ann['category_id']!r}", path
            )
        per_image[ann["image_id"]].append(ann)

    out: list[AnnotatedImage] = []
    marker = data.get("napari-cellclass")
    dtypes = marker.get("feature_dtypes") if isinstance(marker, dict) else None
    dtypes = {str(k): str(v) for k, v in dtypes.items()} if isinstance(dtypes, dict) else {}
    mask_budget = [4 * max_pixels()]  # full-size masks decoded for this file, all images together
    for image_id in order:
        im = images[image_id]
        w = int(im["width"]) if im.get("width") else None
        h = int(im["height"]) if im.get("height") else None
        file_name = im.get("file_name")
        boxes, labels, polygons, attributes, masks = [], [], [], [], []
        notes: list[str] = []
        for ann in per_image[image_id]:
            label = categories.get(ann["category_id"], str(ann["category_id"]))
            where = f"annotation {ann.get('id', '?')} ({label}) on image {file_name or image_id}"
            seg = ann.get("segmentation")
            polygon = mask = None
            if isinstance(seg, dict):
                _spend(mask_budget, seg.get("size"), where, path)
                mask = _decode_rle(seg, h, w, where, path)
                polygon = _mask_to_polygon(mask)
            elif isinstance(seg, list) and seg:
                polygon, parts = _coco_polygon(seg, where, path)
                if len(parts) > 1 and h and w:
                    _spend(mask_budget, [h, w], where, path)
                    mask = np.zeros((h, w), dtype=bool)
                    for p in parts:
                        mask |= polygon_to_mask(p, h, w)
            bbox = ann.get("bbox")
            if bbox is not None:
                if not (isinstance(bbox, list) and len(bbox) == 4):
                    raise InputError(f"{where}: 'bbox' must be [x, y, width, height]", path)
                try:
                    x, y, bw, bh = (float(v) for v in bbox)
                except (TypeError, ValueError, OverflowError):  # a 400-digit integer: not a coordinate
                    raise InputError(f"{where}: 'bbox' values are not numbers", path) from None
                if bw < 0 or bh < 0:
                    raise InputError(f"{where}: 'bbox' has negative width/height {bbox} (inverted box)", path)
                vals = [x, y, x + bw, y + bh]
            elif mask is not None:
                ys, xs = np.nonzero(mask)
                if len(xs) == 0:
                    raise InputError(f"{where}: empty RLE mask and no 'bbox'", path)
                vals = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            elif polygon is not None:
                vals = [*polygon.min(0), *polygon.max(0)]
            else:
                raise InputError(f"{where}: lacks both 'bbox' and 'segmentation'", path)
            try:
                box, clipped = _check_box([float(v) for v in vals], w, h, where, path)
            except _ZeroBox as exc:
                _drop(notes, exc, path)
                continue
            attrs = _coco_attrs(ann, dtypes, where, path)
            if clipped:
                attrs["clipped"] = True
            boxes.append(box)
            labels.append(label)
            polygons.append(polygon)
            attributes.append(attrs)
            masks.append(mask)
        out.append(
            AnnotatedImage(
                image_path=_coco_image_path(file_name, path, root) if file_name else None,
                width=w,
                height=h,
                boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                labels=labels,
                polygons=polygons,
                attributes=attributes,
                masks=masks,
                source=path,
                notes=notes,
                feature_dtypes=dict(dtypes),
            )
        )
    return out


def _coco_attrs(ann: dict[str, Any], dtypes: dict[str, str], where: str, path: Path) -> dict[str, Any]:
    """Per-object features of one COCO annotation.

    Our files (``dtypes`` from the ``napari-cellclass`` marker): exactly the recorded
    features, in their recorded types; names that clash with COCO's own keys (``id``...)
    come from the nested ``attributes`` object.  Other tools' files: every scalar field
    that is not COCO's own, plus the scalars of a CVAT-style ``attributes`` object.
    """
    nested = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    if dtypes:
        raw = {k: (nested[k] if k in nested else ann.get(k)) for k in dtypes if k in nested or k in ann}
        return _typed_attrs(raw, dtypes, where, path)
    attrs = {k: v for k, v in ann.items()
             if k not in _COCO_ANN_SKIP and k != "attributes" and isinstance(v, (int, float, str, bool))}
    for k, v in nested.items():
        if isinstance(v, (int, float, str, bool)) and str(k) not in attrs:
            attrs[str(k)] = v
    return attrs


def coco_categories(path: str | Path) -> list[str]:
    """Category names in id order (the class list a COCO file declares, even unused ones)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot read COCO JSON ({str(exc)[:120]})", path) from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats:
        return []
    if not isinstance(cats, list) or not all(isinstance(c, dict) and _is_id(c.get("id", 0)) for c in cats):
        raise InputError("'categories' must be a list of {id, name} objects", path)
    cats = sorted(cats, key=lambda c: (isinstance(c.get("id", 0), str), c.get("id", 0)))
    return [str(c.get("name", c.get("id"))) for c in cats]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_whole(v: Any) -> bool:
    """An integer, or a float without a fraction (640.0): image sizes."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _is_id(v: Any) -> bool:
    """COCO ids are integers or strings (anything else cannot be looked up)."""
    return (_is_int(v) or isinstance(v, str)) and not isinstance(v, bool)


def _spend(budget: list[int], size: Any, where: str, path: Path) -> None:
    """Count a full-size mask against the file's mask budget (4x the pixel budget)."""
    try:
        n = int(size[0]) * int(size[1])
    except (TypeError, ValueError, IndexError):
        return  # malformed sizes are reported by the decoder
    budget[0] -= n
    if budget[0] < 0:
        raise InputError(
            f"{where}: decoding every mask of this file would need more than {4 * max_pixels():,} pixels "
            "(4x the pixel budget, CELLCLASS_MAX_PIXELS)", path)
