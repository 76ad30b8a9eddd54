"""npe2 reader for chromosome metaphase spreads that come with annotations.

A spread image (gray or RGB; G-, Q-band or FISH) is claimed only when a sidecar
annotation file exists: ``<name>.xml`` (Pascal VOC) or ``<name>.json`` (COCO)
next to it, or in a sibling ``annotations``/``Annotations`` folder (the VOC
``JPEGImages``/``Annotations`` layout, used by the Tseng 2023 G-band set).
Plain images are left to napari's own reader (we return ``None``).  The image
opens as it is (a colour smear such as BCCD stays in colour; gray, or gray saved
as RGB, opens gray) and the annotations as a shapes layer whose features keep
their types.

The manifest registers no file pattern for this reader: napari asks "which
reader?" whenever two plugins match a pattern, and napari's own reader matches
every image.  In the viewer, open the image and drop its sidecar (the annotation
reader); from scripts and widgets, :func:`get_reader` / :func:`read_spread`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
LayerData = tuple[Any, dict[str, Any], str]


def find_sidecar(image_path: str | Path) -> Path | None:
    """The VOC/COCO file annotating ``image_path``, or None."""
    p = Path(image_path)
    folders = [p.parent] + [p.parent.parent / name for name in ("annotations", "Annotations")]
    for folder in folders:
        for suffix in (".xml", ".json"):
            cand = folder / (p.stem + suffix)
            if cand.is_file():
                return cand
    return None


def get_reader(path: str | Path | list) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader for a spread image with a sidecar, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
        return None
    if find_sidecar(p) is None:
        return None
    return read_spread


def read_gray(path: str | Path) -> np.ndarray:
    """A spread as a 2D uint8/uint16 gray array (RGB is averaged with luminance weights).

    Read through :func:`.limits.read_image` (size checked before decoding; stacks
    refused); other sample types (float, 32-bit) are rescaled to uint8 knowingly.
    """
    from .limits import read_image

    return _gray_of(read_image(path), path)


def _gray_of(arr: np.ndarray, path: str | Path) -> np.ndarray:
    from .limits import to_uint8

    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        arr = arr[..., 0]
    if arr.dtype not in (np.uint8, np.uint16):
        arr = to_uint8(arr, path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        arr = np.clip(np.round(gray), 0, 255 if arr.dtype == np.uint8 else 65535).astype(arr.dtype)
    if arr.ndim != 2:
        raise InputError(f"a spread must be a 2D gray or RGB image, got shape {arr.shape}", path)
    return arr


def read_display(path: str | Path) -> tuple[np.ndarray, bool]:
    """The spread as shown: ``(array, rgb)``; colour stays colour, gray (or gray-as-RGB) is 2-D.

    Read through :func:`.limits.read_image`; 8- and 16-bit gray are kept, colour and
    other sample types become uint8 (rescaled knowingly, never clipped).
    """
    from .limits import read_image, to_uint8

    arr = read_image(path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            return to_uint8(rgb, path), True
    return _gray_of(arr, path), False


def _annotations(image_path: Path, sidecar: Path):
    from .annotations import read_coco, read_voc

    if sidecar.suffix.lower() == ".xml":
        return read_voc(sidecar)
    items = read_coco(sidecar, image_root=image_path.parent)
    for item in items:
        if item.image_path is not None and Path(item.image_path).name == image_path.name:
            return item
    if len(items) == 1:
        return items[0]
    raise InputError(f"no image named {image_path.name} in this COCO file", sidecar)


def annotation_shapes(ann, name: str = "annotations") -> LayerData:
    """Shapes layer data for an AnnotatedImage: polygons where drawn, else rectangles."""
    shapes, types = [], []
    for box, poly in zip(ann.boxes, ann.polygons):
        if poly is not None and len(poly) >= 3:
            pts = np.asarray(poly, float)[:, ::-1]  # (x, y) -> (row, col)
            shapes.append(pts)
            types.append("polygon")
        else:
            x0, y0, x1, y1 = box
            shapes.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float))
            types.append("rectangle")
    from .annotation_reader import features_of

    kwargs = {
        "name": name,
        "shape_type": types,
        "features": features_of(ann),
        "edge_color": "yellow",
        "face_color": "transparent",
        "edge_width": 2,
        "text": {"string": "{label}", "size": 9, "color": "yellow", "anchor": "upper_left"},
        "metadata": {"source": str(ann.source) if ann.source else None},
    }
    return (shapes, kwargs, "shapes")


def read_spread(path: str | Path | list) -> list[LayerData]:
    """Open a spread and its sidecar annotations as [image, shapes] layer data."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(path)
    sidecar = find_sidecar(p)
    img, rgb = read_display(p)
    meta = {"path": str(p), "sidecar": str(sidecar)}
    kwargs: dict[str, Any] = {"name": p.stem, "rgb": True} if rgb else {"name": p.stem, "colormap": "gray"}
    layers: list[LayerData] = [(img, {**kwargs, "metadata": meta}, "image")]
    if sidecar is not None:
        from .annotations import check_declared_size

        ann = _annotations(p, sidecar)
        check_declared_size(ann, img.shape[:2])
        layers.append(annotation_shapes(ann, name=f"{p.stem} annotations"))
    return layers


# ----------------------------------------------------------------------------- annotated spreads (training, evaluation)
#: Working bytes per pixel of karyotyping a whole spread (segmentation maps, float copies, crops): 2.3 GiB
#: peak measured at 27 M px, ~64 bytes a pixel over the loaded models; 96 leaves room (~14 M px).
KARYOTYPE_WORK_BYTES = 96


def read_spread_image(path: Path) -> np.ndarray:
    """One spread as gray, with a clear error when the file is missing.

    The karyotyper holds the whole spread: one too large for the memory budget is refused
    from its header, before a pixel is decoded (a 262 KB blank PNG of 16000 x 16000 px once
    took 4.7 GB to be called blank).
    """
    from ..budget import check_whole_image
    from .limits import probe, read_image

    if not Path(path).is_file():
        raise InputError("spread image does not exist", path)
    info = probe(path)
    check_whole_image(info.shape[0], info.shape[1], path, KARYOTYPE_WORK_BYTES, "karyotyping it",
                      hint="a metaphase spread is a few megapixels: crop or downscale the image, or raise the "
                           "budget with CELLCLASS_MEMORY_BUDGET=<size>")
    return _gray_of(read_image(path), path)


def spread_truth(image_path: Path, sidecar: Path) -> tuple[np.ndarray, list[int]]:
    """Annotated boxes (y0, x0, y1, x1) and class indices (-1 when unknown)."""
    from .chromosome_dataset import voc_class

    ann = _annotations(image_path, sidecar)
    boxes = ann.boxes[:, [1, 0, 3, 2]] if len(ann.boxes) else np.zeros((0, 4))
    classes = []
    for name in ann.labels:
        try:
            classes.append(voc_class(name))
        except Exception:
            classes.append(-1)
    return boxes, classes


def annotated_spreads(data: Path) -> list[tuple[Path, Path]]:
    """(image, VOC/COCO sidecar) pairs under ``data`` (a spread, a folder, or images/ + annotations/).

    A ``sources.txt`` listing several such folders (one per line) gives all their pairs.
    """
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".txt":
        from .chromosome_dataset import read_sources

        return [pair for folder in read_sources(data) for pair in annotated_spreads(folder)]
    if data.is_file():
        cands = [data]
    elif (data / "images").is_dir():
        cands = sorted(p for p in (data / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif data.is_dir():
        cands = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise InputError("no such file or folder", data)
    pairs = [(p, s) for p in cands if (s := find_sidecar(p)) is not None]
    if not pairs:
        raise InputError("no spread images with VOC/COCO annotations found", data)
    return pairs
