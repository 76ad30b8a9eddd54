"""Synthetic Wright/Giemsa-like blood cells and smears, deterministic from a seed.

Four white-blood-cell classes, drawn with the features a haematologist (and the
classifier) uses: a *neutrophil* has a nucleus of 3-5 lobes joined by thin
strands in pale lilac cytoplasm; a *lymphocyte* is small, with a round nucleus
filling nearly all of it and a thin blue rim; a *monocyte* is the largest, with a
kidney-shaped nucleus in grey-blue cytoplasm; an *eosinophil* has a bilobed
nucleus in cytoplasm packed with orange-red granules.  Red cells (pale discs
with central pallor) fill the background.  Sizes follow the real proportions
(RBC about 7.5 um, lymphocyte 8-10 um, monocyte 15-20 um) at roughly BCCD's scale.
The images are for tests, demos and the napari sample, not for judging accuracy
on real smears.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..classes import WBC_CLASSES as BLOOD_CLASSES  # the one table, under its old name

# display colours (RGBA 0..1) used by the widget, the demo overlay and the docs
CLASS_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "EOSINOPHIL": (1.0, 0.45, 0.1, 1.0),
    "LYMPHOCYTE": (0.2, 0.6, 1.0, 1.0),
    "MONOCYTE": (0.75, 0.3, 1.0, 1.0),
    "NEUTROPHIL": (0.1, 0.85, 0.3, 1.0),
    "BASOPHIL": (0.95, 0.2, 0.6, 1.0),
}

_PLASMA = np.array([236.0, 222.0, 214.0])
_RBC = np.array([214.0, 128.0, 126.0])
_PALLOR = np.array([228.0, 172.0, 166.0])
_NUCLEUS = np.array([86.0, 38.0, 128.0])
_CYTO = {
    "EOSINOPHIL": np.array([232.0, 176.0, 160.0]),
    "LYMPHOCYTE": np.array([168.0, 190.0, 232.0]),
    "MONOCYTE": np.array([186.0, 182.0, 214.0]),
    "NEUTROPHIL": np.array([222.0, 196.0, 214.0]),
}
_GRANULE = np.array([222.0, 96.0, 60.0])
# cell radius in pixels (at the 224-px crop scale) per class
_RADIUS = {"EOSINOPHIL": 50.0, "LYMPHOCYTE": 36.0, "MONOCYTE": 58.0, "NEUTROPHIL": 48.0}
RBC_RADIUS = 28.0


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, soft: float = 1.2) -> np.ndarray:
    """Anti-aliased disc coverage in [0, 1]."""
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((r - dist) / soft + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, cover: np.ndarray, colour: np.ndarray) -> None:
    a = cover[..., None]
    img *= 1.0 - a
    img += a * colour


def _draw_rbc(img: np.ndarray, cy: float, cx: float, r: float, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(0, int(cy - r - 3)), min(h, int(cy + r + 4))
    x0, x1 = max(0, int(cx - r - 3)), min(w, int(cx + r + 4))
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    sub = img[y0:y1, x0:x1]
    tint = _RBC + rng.normal(0, 6, 3)
    _paint(sub, _disc(yy, xx, cy, cx, r) * 0.9, tint)
    _paint(sub, _disc(yy, xx, cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5), r * 0.45, soft=r * 0.3) * 0.7, _PALLOR)


def _nucleus_mask(cls: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                  rng: np.random.Generator) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([np.cos(theta), np.sin(theta)])
    perp = np.array([-rot[1], rot[0]])
    if cls == "LYMPHOCYTE":
        off = rng.normal(0, 0.05 * r, 2)
        return _disc(yy, xx, cy + off[0], cx + off[1], r * rng.uniform(0.78, 0.86))
    if cls == "MONOCYTE":
        # kidney / bean: a large disc with a bite taken out of one side
        c = np.array([cy, cx]) + rot * 0.08 * r
        big = _disc(yy, xx, c[0], c[1], r * 0.62)
        bite_c = c + rot * r * 0.62
        bite = _disc(yy, xx, bite_c[0], bite_c[1], r * 0.36, soft=2.0)
        return np.clip(big - bite, 0, 1) * (0.85 + 0.15 * _disc(yy, xx, c[0], c[1], r * 0.5, soft=r * 0.3))
    if cls == "EOSINOPHIL":
        lobes = [np.array([cy, cx]) + s * rot * 0.36 * r + perp * rng.normal(0, 0.05 * r) for s in (-1, 1)]
        m = np.zeros_like(yy)
        for c in lobes:
            m = np.maximum(m, _disc(yy, xx, c[0], c[1], r * rng.uniform(0.27, 0.32)))
        for t in np.linspace(0, 1, 9):  # thin strand between the lobes
            c = lobes[0] * (1 - t) + lobes[1] * t
            m = np.maximum(m, _disc(yy, xx, c[0], c[1], r * 0.06))
        return m
    # NEUTROPHIL: 3-5 small lobes along a C-shaped arc, joined by thin strands
    n = int(rng.integers(3, 6))
    angles = theta + np.linspace(-0.9 * np.pi * 0.9, 0.9 * np.pi * 0.9, n)
    arc_r = r * 0.42
    centres = [np.array([cy + arc_r * np.sin(a), cx + arc_r * np.cos(a)]) for a in angles]
    m = np.zeros_like(yy)
    for c in centres:
        m = np.maximum(m, _disc(yy, xx, c[0], c[1], r * rng.uniform(0.17, 0.22)))
    for a, b in zip(centres[:-1], centres[1:]):
        for t in np.linspace(0, 1, 7):
            c = a * (1 - t) + b * t
            m = np.maximum(m, _disc(yy, xx, c[0], c[1], r * 0.05))
    return m


def _draw_wbc(img: np.ndarray, cls: str, cy: float, cx: float, r: float, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(0, int(cy - r - 3)), min(h, int(cy + r + 4))
    x0, x1 = max(0, int(cx - r - 3)), min(w, int(cx + r + 4))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    sub = img[y0:y1, x0:x1]
    cell = _disc(yy, xx, cy, cx, r)
    _paint(sub, cell, _CYTO[cls] + rng.normal(0, 5, 3))
    if cls in ("EOSINOPHIL", "NEUTROPHIL"):
        count, size, colour, alpha = (
            (int(r * 3.2), (2.0, 3.2), _GRANULE, 0.9) if cls == "EOSINOPHIL" else (int(r * 1.5), (0.8, 1.3), _CYTO[cls] - 40, 0.5)
        )
        rad = r * np.sqrt(rng.uniform(0, 0.85, count))
        ang = rng.uniform(0, 2 * np.pi, count)
        gy, gx = cy + rad * np.sin(ang), cx + rad * np.cos(ang)
        g = np.zeros_like(yy)
        for py, px, s in zip(gy, gx, rng.uniform(*size, count)):
            g = np.maximum(g, _disc(yy, xx, py, px, s, soft=1.0))
        _paint(sub, g * cell * alpha, colour)
    nucleus = _nucleus_mask(cls, yy, xx, cy, cx, r, rng)
    # chromatin texture: nuclei are not flat
    tex = ndi.gaussian_filter(rng.normal(0, 1, yy.shape), 1.5)
    shade = _NUCLEUS + rng.normal(0, 6, 3)
    _paint(sub, nucleus * cell * 0.95, shade)
    sub += (nucleus * cell * tex * 10.0)[..., None]


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = ndi.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += rng.normal(0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _scatter_rbcs(img: np.ndarray, rng: np.random.Generator, avoid: list[tuple[float, float, float]],
                  density: float = 0.9, scale: float = 1.0) -> None:
    h, w = img.shape[:2]
    r0 = RBC_RADIUS * scale
    n = int(density * h * w / (np.pi * r0 * r0))
    placed: list[tuple[float, float]] = []
    for _ in range(n * 4):
        if len(placed) >= n:
            break
        cy, cx = rng.uniform(-r0 / 2, h + r0 / 2), rng.uniform(-r0 / 2, w + r0 / 2)
        if any((cy - ay) ** 2 + (cx - ax) ** 2 < (ar + r0 * 0.9) ** 2 for ay, ax, ar in avoid):
            continue
        if any((cy - py) ** 2 + (cx - px) ** 2 < (1.6 * r0) ** 2 for py, px in placed):
            continue
        placed.append((cy, cx))
        _draw_rbc(img, cy, cx, r0 * rng.uniform(0.9, 1.1), rng)


def make_cell(cls: int | str, seed: int = 0, size: int = 224) -> np.ndarray:
    """One (size, size, 3) uint8 crop of a white cell of class ``cls``, framed as its box plus context.

    The framing is the one :func:`napari_cellclass.io.wbc_dataset.crop_cell` gives a
    cell box on a smear, so a model trained on these crops sees smear cells the same way.
    """
    name = BLOOD_CLASSES[cls] if isinstance(cls, (int, np.integer)) else str(cls).upper()
    if name not in BLOOD_CLASSES:
        raise ValueError(f"unknown blood cell class {cls!r}; choose one of {BLOOD_CLASSES}")
    rng = np.random.default_rng([int(seed), BLOOD_CLASSES.index(name), 1])
    scale = size / 224.0
    img = np.empty((size, size, 3), np.float32)
    img[:] = _PLASMA + rng.normal(0, 4, 3)
    r = _RADIUS[name] * scale * rng.uniform(0.9, 1.1)
    cy, cx = size / 2 + rng.normal(0, 6 * scale, 2)
    _scatter_rbcs(img, rng, [(cy, cx, r)], scale=scale)
    _draw_wbc(img, name, cy, cx, r, rng)
    # frame the cell as a detector box would (box + context), like smear cells are cropped for classification
    from ..io.wbc_dataset import crop_cell

    return crop_cell(_finish(img, rng), (cy - r - 2, cx - r - 2, cy + r + 2, cx + r + 2), size)


def make_smear(seed: int = 0, size: tuple[int, int] = (480, 640), n_wbc: int = 4,
               classes: list[str] | None = None) -> dict[str, Any]:
    """A smear with ``n_wbc`` white cells among red cells.

    Returns ``{"image": (H, W, 3) uint8, "boxes": (N, 4) float (y0, x0, y1, x1),
    "labels": list[str], "classes": list[int]}``; boxes enclose each white cell.
    ``classes`` fixes the white cells' classes (else they are drawn at random).
    """
    rng = np.random.default_rng([int(seed), 2])
    h, w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = _PLASMA + rng.normal(0, 4, 3)
    names = list(classes) if classes is not None else [BLOOD_CLASSES[i] for i in rng.integers(0, 4, n_wbc)]
    cells: list[tuple[float, float, float]] = []
    labels: list[str] = []
    for name in names:
        r = _RADIUS[name] * rng.uniform(0.9, 1.1)
        for _ in range(200):
            cy, cx = rng.uniform(r + 4, h - r - 4), rng.uniform(r + 4, w - r - 4)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 12) ** 2 for y, x, q in cells):
                cells.append((cy, cx, r))
                labels.append(name)
                break
    _scatter_rbcs(img, rng, cells)
    for (cy, cx, r), name in zip(cells, labels):
        _draw_wbc(img, name, cy, cx, r, rng)
    boxes = np.array([[cy - r - 2, cx - r - 2, cy + r + 2, cx + r + 2] for cy, cx, r in cells], dtype=float).reshape(-1, 4)
    boxes = np.clip(boxes, 0, [h, w, h, w])
    return {"image": _finish(img, rng), "boxes": boxes, "labels": labels,
            "classes": [BLOOD_CLASSES.index(n) for n in labels]}


def write_dataset(out: str | Path, n: int = 50, seed: int = 0, size: int = 224) -> Path:
    """Write ``n`` crops per class as ``out/<CLASS>/<CLASS>_<i>.png`` (class-per-folder)."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "SYNTHETIC.txt").write_text(
        "Synthetic white blood cells generated by napari-cellclass (napari_cellclass.synth.blood); "
        f"{int(n)} per class, seed {int(seed)}.\n")
    for k, name in enumerate(BLOOD_CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(int(n)):
            img = make_cell(name, seed=int(seed) * 1_000_003 + i, size=size)
            Image.fromarray(img).save(out / name / f"{name.lower()}_{i:04d}.png")
    return out


def boxes_to_rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """(y0, x0, y1, x1) boxes -> napari rectangle vertex arrays."""
    return [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float) for y0, x0, y1, x1 in np.asarray(boxes)]


def napari_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: a synthetic smear and its white cells as rectangles (truth in ``label``)."""
    smear = make_smear(seed=0, n_wbc=6, classes=["NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE", "EOSINOPHIL",
                                                  "NEUTROPHIL", "LYMPHOCYTE"])
    return [
        (smear["image"], {"name": "blood smear (synthetic)", "rgb": True}, "image"),
        (boxes_to_rectangles(smear["boxes"]),
         {"name": "white cells", "shape_type": "rectangle", "edge_color": "yellow", "face_color": "transparent",
          "edge_width": 3, "features": {"label": smear["labels"]}},
         "shapes"),
    ]
