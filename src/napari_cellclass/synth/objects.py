"""Deterministic synthetic detection images: two object classes on a noisy background.

"cell": a bright filled disc with a darker nucleus; "debris": a dim filled
square.  Objects do not overlap.  Used by the detector's tests, demo and CLI
``synth``; everything follows from ``seed``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["cell", "debris"]


def make_image(size: int | tuple[int, int] = 128, n_objects: int = 4, seed: int = 0,
               radius: tuple[int, int] = (9, 15)) -> dict:
    """One RGB uint8 image with boxes ``(N, 4)`` x0,y0,x1,y1, labels, masks ``(N, H, W)``."""
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w]
    img = rng.normal(60, 8, (h, w, 3))
    occupied = np.zeros((h, w), dtype=bool)
    boxes, labels, masks = [], [], []
    tries = 0
    while len(boxes) < n_objects and tries < 200 * n_objects:
        tries += 1
        r = int(rng.integers(radius[0], radius[1] + 1))
        cy, cx = int(rng.integers(r + 1, h - r - 1)), int(rng.integers(r + 1, w - r - 1))
        cls = int(rng.integers(0, 2))
        if cls == 0:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            s = int(r * 0.85)
            m = (np.abs(yy - cy) <= s) & (np.abs(xx - cx) <= s)
        grown = np.zeros_like(m)
        ys, xs = np.nonzero(m)
        grown[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
        if (grown & occupied).any():
            continue
        occupied |= grown
        if cls == 0:
            img[m] = [200, 120, 170] + rng.normal(0, 6, (int(m.sum()), 3))
            nuc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r * 0.45) ** 2
            img[nuc] = [90, 40, 130]
        else:
            img[m] = [120, 160, 90] + rng.normal(0, 6, (int(m.sum()), 3))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(CLASSES[cls])
        masks.append(m)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return {
        "image": image,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": labels,
        "masks": np.asarray(masks, dtype=bool).reshape(-1, h, w),
    }


def place(image: np.ndarray, y: int, x: int, cls: str, r: int = 12) -> tuple[list[float], np.ndarray]:
    """Draw one object centred at (y, x) in place; returns its box and mask (for border tests)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    if cls == "cell":
        m = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        image[m] = [200, 120, 170]
        image[(yy - y) ** 2 + (xx - x) ** 2 <= (r * 0.45) ** 2] = [90, 40, 130]
    else:
        s = int(r * 0.85)
        m = (np.abs(yy - y) <= s) & (np.abs(xx - x) <= s)
        image[m] = [120, 160, 90]
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)], m


def write_voc_dataset(out: Path, n: int, seed: int = 0, size: int = 128, n_objects: int = 4) -> Path:
    """A VOC folder (Annotations/ + JPEGImages/ as PNG) of ``n`` generated images."""
    from skimage.io import imsave

    out = Path(out)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = make_image(size, n_objects=n_objects, seed=seed * 100003 + i)
        name = f"synth_{i:04d}"
        imsave(out / "JPEGImages" / f"{name}.png", s["image"], check_contrast=False)
        objs = "".join(
            f"<object><name>{lab}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin>"
            f"<xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
            for b, lab in zip(s["boxes"], s["labels"])
        )
        (out / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{name}.png</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>{objs}</annotation>\n"
        )
    (out / "classes.json").write_text(json.dumps(CLASSES))
    return out


def napari_sample():
    """A generated detection image for napari's sample menu."""
    s = make_image(256, n_objects=10, seed=0)
    return [(s["image"], {"name": "synthetic objects", "rgb": True}, "image")]
