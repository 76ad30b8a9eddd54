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
from .annotations import AnnotatedImage, coco_categories, is_coco, polygon_to_mask, read_coco, read_voc


def to_rgb_uint8(image: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Any 2D/RGB/RGBA array -> (H, W, 3) uint8 (16-bit and float scaled by percentiles)."""
    a = np.asarray(image)
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


def read_image(path: Path) -> np.ndarray:
    from skimage.io import imread

    if not Path(path).is_file():
        raise InputError("image file not found (the annotation names it)", path)
    try:
        return to_rgb_uint8(imread(str(path)), path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"image could not be read: {exc}", path) from None


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
        path = self.items[i].image_path
        if path is None:
            raise InputError(f"annotation {self.items[i].source} names no image file")
        return read_image(path)

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


def _classes_of(items: list[AnnotatedImage], declared: list[str] | None) -> list[str]:
    seen = list(dict.fromkeys(lab for it in items for lab in it.labels))
    if declared:
        extra = [c for c in seen if c not in declared]
        return list(declared) + extra
    return sorted(seen)


def load_voc_folder(folder: str | Path, classes: list[str] | None = None) -> DetectionDataset:
    """``folder/Annotations/*.xml`` (+ ``JPEGImages/``), or a folder of XML files next to their images."""
    folder = Path(folder)
    ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise InputError("no Pascal VOC *.xml files found (expected Annotations/*.xml)", folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped zero-size boxes are listed in item.notes
        items = [read_voc(p) for p in files]
    missing = [it.source.name for it in items if it.image_path is None or not it.image_path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} annotation(s) name images that are not there, e.g. {missing[0]}", folder)
    declared = classes
    if declared is None and (folder / "classes.json").is_file():
        import json

        declared = json.loads((folder / "classes.json").read_text())
    return DetectionDataset(items, _classes_of(items, declared), str(folder))


def load_coco(path: str | Path, image_root: str | Path | None = None) -> DetectionDataset:
    path = Path(path)
    items = read_coco(path, image_root)
    return DetectionDataset(items, _classes_of(items, coco_categories(path)), str(path))


def load_dataset(path: str | Path, classes: list[str] | None = None) -> DetectionDataset:
    """VOC folder, COCO JSON file, or a folder holding one ``*.json`` COCO file."""
    path = Path(path)
    if not path.exists():
        raise InputError("dataset path does not exist", path)
    if path.is_file():
        if is_coco(path):
            return load_coco(path)
        raise InputError("not a COCO JSON file; give a VOC folder or a COCO .json", path)
    if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return load_voc_folder(path, classes)
    jsons = [p for p in sorted(path.glob("*.json")) if is_coco(p)]
    if len(jsons) == 1:
        return load_coco(jsons[0])
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
    return DetectionDataset([item], _classes_of([item], classes), "viewer layers", lambda _i: rgb)
