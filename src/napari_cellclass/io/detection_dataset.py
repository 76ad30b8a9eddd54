"""Detection datasets: a VOC folder, a COCO JSON with its images, or open napari layers.

All three become a :class:`DetectionDataset`: annotations (``AnnotatedImage``)
plus an image loader, and one class list.  Images are read lazily, so a folder
of hundreds of photos costs no memory until a batch needs it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from .limits import ScanReport, check_finite, is_appledouble, json_guarded
from .annotations import AnnotatedImage, check_declared_size, coco_categories, is_coco, polygon_to_mask, read_coco, read_voc


def to_rgb_uint8(image: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Any 2D/RGB/RGBA array -> (H, W, 3) uint8 (16-bit and float scaled by percentiles)."""
    a = np.asarray(image)
    check_finite(a, "image", path)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise InputError(f"expected a gray, RGB or RGBA image, got shape {a.shape}", path)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    was_float = a.dtype.kind == "f"
    a = a.astype(np.float32)
    if was_float and a.size and np.nanmax(a) <= 1.0 and np.nanmin(a) >= 0.0:
        return (a * 255 + 0.5).astype(np.uint8)
    lo, hi = np.nanpercentile(a, [0.5, 99.8]) if a.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def read_image(path: Path, work: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 through :func:`.limits.read_image` (size checked before decoding).

    ``work``: bytes per pixel of the whole-image analysis to follow (memory budget, see
    :func:`napari_cellclass.budget.check_whole_image`).
    """
    from .limits import read_image as read_checked

    if not Path(path).exists():
        raise InputError("image file not found (the annotation names it)", path)
    return to_rgb_uint8(read_checked(path, work=work), path)


@dataclass
class DetectionDataset:
    items: list[AnnotatedImage]
    classes: list[str]
    source: str = ""
    loader: Callable[[int], np.ndarray] | None = None
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8."""
        if self.loader is not None:
            return self.loader(i)
        item = self.items[i]
        if item.image_path is None:
            raise InputError(f"annotation {item.source} names no image file")
        img = read_image(item.image_path)
        check_declared_size(item, img.shape[:2])
        clip_boxes(item, img.shape[:2])
        return img

    def masks(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        """(N, H, W) uint8 instance masks: RLE/polygon where given, else the filled box (seed 002)."""
        ann = self.items[i]
        h, w = shape
        out = np.zeros((len(ann), h, w), dtype=np.uint8)
        for k in range(len(ann)):
            if ann.masks[k] is not None and ann.masks[k].shape == (h, w):
                out[k] = ann.masks[k]
            elif ann.polygons[k] is not None:
                out[k] = polygon_to_mask(ann.polygons[k], h, w)
            else:
                x0, y0, x1, y1 = ann.boxes[k]
                out[k, int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = 1
        return out

    def label_ids(self, i: int) -> np.ndarray:
        """1-based class ids (0 is background)."""
        return np.asarray([self.classes.index(lab) + 1 for lab in self.items[i].labels], dtype=np.int64)

    def subset(self, idx: list[int]) -> "DetectionDataset":
        parent = self

        def load(j: int) -> np.ndarray:
            return parent.image(idx[j])

        return DetectionDataset([self.items[i] for i in idx], self.classes, self.source, load)


#: Largest box coordinate taken as a coordinate (px); beyond it a value is a typo or an attack (1e300).
MAX_COORDINATE = float(1 << 20)


def check_boxes(items: list[AnnotatedImage]) -> None:
    """Refuse non-finite or absurd box coordinates when the annotations are read, naming the file.

    A VOC box with ``xmax=1e300`` and no ``<size>`` once reached torchvision's ``roi_align``
    and crashed the process (exit 139, nothing printed).
    """
    for it in items:
        b = np.asarray(it.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(b):
            continue
        bad = ~np.isfinite(b) | (np.abs(b) > MAX_COORDINATE)
        if bad.any():
            k, j = (int(v) for v in np.argwhere(bad)[0])
            name = ("x0", "y0", "x1", "y1")[j]
            raise InputError(f"object {k + 1} ({it.labels[k] if k < len(it.labels) else '?'}): box coordinate "
                             f"{name}={b[k, j]:g} is not a pixel position (must be finite and within "
                             f"{MAX_COORDINATE:,.0f} px); fix the annotation", it.source)


def clip_boxes(item: AnnotatedImage, shape: tuple[int, int]) -> None:
    """Clip ``item``'s boxes to the image now that its size is known (annotations without ``<size>``).

    A box left with no area inside the image is an error naming the annotation file.
    """
    b = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return
    h, w = float(shape[0]), float(shape[1])
    c = np.clip(b, 0.0, [w, h, w, h])
    empty = (c[:, 2] <= c[:, 0]) | (c[:, 3] <= c[:, 1])
    if empty.any():
        k = int(np.nonzero(empty)[0][0])
        raise InputError(f"object {k + 1}: box (x0={b[k, 0]:g}, y0={b[k, 1]:g}, x1={b[k, 2]:g}, y1={b[k, 3]:g}) lies "
                         f"outside the {int(w)}x{int(h)} image", item.source)
    if not np.array_equal(c, b):
        item.boxes = c


def _classes_of(items: list[AnnotatedImage], declared: list[str] | None,
                allow_new_classes: bool = False) -> list[str]:
    """The class list; a label outside the declared list (a typo) is an error unless allowed.

    Without a declared list, a rare label that looks like a frequent one (``WCB`` among
    hundreds of ``WBC``) is taken for a typo too.
    """
    import difflib
    from collections import Counter

    counts = Counter(lab for it in items for lab in it.labels)
    seen = list(dict.fromkeys(lab for it in items for lab in it.labels))
    where = {lab: it.source for it in reversed(items) for lab in it.labels}
    if declared:
        extra = [c for c in seen if c not in declared]
        if extra and not allow_new_classes:
            c = extra[0]
            close = difflib.get_close_matches(c, list(declared), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"label {c!r}{hint} is not one of the known classes: {', '.join(map(str, declared))}"
                + (f" ({len(extra)} unknown labels: {', '.join(map(repr, extra[:5]))})" if len(extra) > 1 else "")
                + "; fix the annotation, or pass --set allow_new_classes=true to add new classes",
                where.get(c))
        return list(declared) + extra
    if not allow_new_classes:
        for c in seen:
            bigger = [o for o in seen if o != c and counts[o] >= 10 * counts[c] and counts[c] <= 3]
            close = difflib.get_close_matches(c, bigger, n=1, cutoff=0.85) or [
                o for o in bigger if o.lower() == c.lower().strip()]
            if close:
                raise InputError(
                    f"label {c!r} ({counts[c]} object(s)) looks like a typo of {close[0]!r} ({counts[close[0]]} "
                    f"objects); fix the annotation, or pass --set allow_new_classes=true if {c!r} is a real class",
                    where.get(c))
    return sorted(seen)


def load_voc_folder(folder: str | Path, classes: list[str] | None = None,
                    allow_new_classes: bool = False) -> DetectionDataset:
    """``folder/Annotations/*.xml`` (+ ``JPEGImages/``), or a folder of XML files next to their images.

    macOS ``._*.xml`` files are skipped (reported in a warning).  ``classes`` (or a
    ``classes.json`` list) fixes the class list; labels outside it are refused unless
    ``allow_new_classes``.
    """
    folder = Path(folder)
    ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    report = ScanReport()
    files = []
    for p in sorted(ann_dir.glob("*.xml")):
        if is_appledouble(p):
            report.skip("macOS '._' metadata file(s)", p)
        else:
            files.append(p)
    report.warn(folder)
    if not files:
        raise InputError("no Pascal VOC *.xml files found (expected Annotations/*.xml)", folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped zero-size boxes are listed in item.notes
        items = [read_voc(p) for p in files]
    check_boxes(items)
    missing = [it.source.name for it in items if it.image_path is None or not it.image_path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} annotation(s) name images that are not there, e.g. {missing[0]}", folder)
    declared = classes
    if declared is None and (folder / "classes.json").is_file():
        declared = _read_class_list(folder / "classes.json")
    return DetectionDataset(items, _classes_of(items, declared, allow_new_classes), str(folder))


def _read_class_list(path: Path) -> list[str]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"class list could not be read ({str(exc)[:120]})", path) from None
    if not isinstance(data, list) or not data or not all(isinstance(c, str) and c.strip() for c in data):
        raise InputError("classes.json must be a non-empty JSON list of class names", path)
    return data


def load_coco(path: str | Path, image_root: str | Path | None = None, classes: list[str] | None = None,
              allow_new_classes: bool = False) -> DetectionDataset:
    path = Path(path)
    items = json_guarded(path, lambda: read_coco(path, image_root))
    check_boxes(items)
    declared = classes if classes else json_guarded(path, lambda: coco_categories(path))
    return DetectionDataset(items, _classes_of(items, declared, allow_new_classes), str(path))


def load_dataset(path: str | Path, classes: list[str] | None = None,
                 allow_new_classes: bool = False) -> DetectionDataset:
    """VOC folder, COCO JSON file, or a folder holding one ``*.json`` COCO file."""
    path = Path(path)
    if not path.exists():
        raise InputError("dataset path does not exist", path)
    if path.is_file():
        if json_guarded(path, lambda: is_coco(path)):
            return load_coco(path, classes=classes, allow_new_classes=allow_new_classes)
        raise InputError("not a COCO JSON file; give a VOC folder or a COCO .json", path)
    if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return load_voc_folder(path, classes, allow_new_classes)
    jsons = [p for p in sorted(path.glob("*.json")) if json_guarded(p, lambda p=p: is_coco(p))]
    if len(jsons) == 1:
        return load_coco(jsons[0], classes=classes, allow_new_classes=allow_new_classes)
    raise InputError("found neither Annotations/*.xml (VOC) nor exactly one COCO .json", path)


def from_layers(image: np.ndarray, boxes: np.ndarray, labels: list[str],
                polygons: list[np.ndarray | None] | None = None, classes: list[str] | None = None) -> DetectionDataset:
    """One image from the viewer: boxes (N, 4) x0,y0,x1,y1; polygons (K, 2) x,y give masks."""
    rgb = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(labels):
        raise InputError(f"{len(boxes)} shapes but {len(labels)} labels")
    if len(boxes) == 0:
        raise InputError("draw at least one box (with a label) to train on")
    keep = (boxes[:, 2] > boxes[:, 0] + 0.5) & (boxes[:, 3] > boxes[:, 1] + 0.5)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    polys = list(polygons) if polygons is not None else [None] * len(boxes)
    idx = np.nonzero(keep)[0]
    item = AnnotatedImage(None, w, h, boxes[idx], [str(labels[i]) for i in idx], [polys[i] for i in idx],
                          [{} for _ in idx])
    # labels drawn in the viewer are the user's own classes: new ones are welcome here
    return DetectionDataset([item], _classes_of([item], classes, allow_new_classes=True), "viewer layers",
                            lambda _i: rgb)
