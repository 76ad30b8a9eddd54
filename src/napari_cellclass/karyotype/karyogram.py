"""Karyogram image and per-chromosome table export.

The layout follows the usual cytogenetics sheet: row 1 holds pairs 1-5, row 2
pairs 6-12 and X, row 3 pairs 13-18, row 4 pairs 19-22 and Y.  Every chromosome is
cut out of the spread with its own mask (neighbours blanked), turned so its long
axis is vertical, and all crops share one scale so relative lengths stay true.
Objects the assignment rejected go in a last row marked "?".
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, transform

from ..engine.atomic import atomic_path
from .assign import CLASS_NAMES
from .segment import to_gray

KARYOGRAM_ROWS: list[list[str]] = [
    ["1", "2", "3", "4", "5"],
    ["6", "7", "8", "9", "10", "11", "12", "X"],
    ["13", "14", "15", "16", "17", "18"],
    ["19", "20", "21", "22", "Y"],
]
BACKGROUND = 255


def chromosome_crop(gray: np.ndarray, labels: np.ndarray, label: int, pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Gray crop (float 0..1, other objects blanked to white) and mask of one label."""
    sl = ndi.find_objects((labels == label).astype(np.int32))
    if not sl or sl[0] is None:
        return np.ones((1, 1), np.float32), np.zeros((1, 1), bool)
    ys, xs = sl[0]
    y0, x0 = max(0, ys.start - pad), max(0, xs.start - pad)
    y1, x1 = min(labels.shape[0], ys.stop + pad), min(labels.shape[1], xs.stop + pad)
    mask = labels[y0:y1, x0:x1] == label
    crop = np.where(mask, gray[y0:y1, x0:x1], 1.0).astype(np.float32)
    return crop, mask


def orient_vertical(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate so the object's long axis runs top to bottom, then trim to it."""
    if mask.sum() < 3:
        return crop, mask
    props = measure.regionprops(mask.astype(np.uint8))[0]
    angle = -np.degrees(props.orientation)  # orientation: rows axis -> major axis, counter-clockwise
    if abs(angle) > 1:
        crop = transform.rotate(crop, angle, resize=True, cval=1.0, order=1, preserve_range=True)
        mask = transform.rotate(mask.astype(np.float32), angle, resize=True, cval=0, order=1) > 0.5
        crop = np.where(mask, crop, 1.0)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return crop, mask
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return crop[sl].astype(np.float32), mask[sl]


def make_karyogram(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    *,
    flagged: Sequence[bool] | None = None,
    row_height: int = 110,
    title: str | None = None,
    return_layout: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Karyogram as an (H, W, 3) uint8 RGB array.

    With ``return_layout`` also returns {class name: (y0, x0, y1, x1)} of each pair's cell.

    ``classes[i]`` is the class index (0..23, -1 = unplaced) of label ``i + 1``;
    ``flagged`` objects get a red frame so a reviewer looks at them first.
    """
    gray = to_gray(image)
    n = int(labels.max()) if labels.size else 0
    classes = list(classes)[:n] + [-1] * max(0, n - len(classes))
    flagged = list(flagged) if flagged is not None else [False] * n
    crops: dict[int, list[tuple[np.ndarray, bool]]] = {}
    for i in range(n):
        c, m = chromosome_crop(gray, labels, i + 1)
        if not m.any():
            continue
        c, m = orient_vertical(c, m)
        crops.setdefault(int(classes[i]), []).append((c, bool(flagged[i]) if i < len(flagged) else False))
    tallest = max((c.shape[0] for lst in crops.values() for c, _ in lst), default=1)
    scale = (row_height - 8) / max(tallest, 1)
    rows = [list(r) for r in KARYOGRAM_ROWS]
    if -1 in crops:
        rows.append(["?"])
    scaled: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for cls, lst in crops.items():
        name = "?" if cls < 0 else CLASS_NAMES[cls]
        out = []
        for c, f in lst:
            h = max(2, int(round(c.shape[0] * scale)))
            w = max(2, int(round(c.shape[1] * scale)))
            out.append((transform.resize(c, (h, w), order=1, preserve_range=True, anti_aliasing=True), f))
        scaled[name] = out
    gap, label_h, margin = 6, 16, 12
    cell_w = {}
    for row in rows:
        for name in row:
            lst = scaled.get(name, [])
            cell_w[name] = max(44, sum(c.shape[1] for c, _ in lst) + gap * (len(lst) + 1))
    row_w = [sum(cell_w[nm] for nm in row) + 10 * (len(row) - 1) for row in rows]
    title_h = 22 if title else 0
    heights = [max([c.shape[0] for nm in row for c, _ in scaled.get(nm, [])] + [24]) + 6 for row in rows]
    W = max(row_w) + 2 * margin
    H = title_h + sum(h + label_h + 8 for h in heights) + 2 * margin
    canvas = np.full((H, W, 3), BACKGROUND, np.uint8)
    texts: list[tuple[int, int, str]] = []
    layout: dict[str, tuple[int, int, int, int]] = {}
    if title:
        texts.append((margin, margin // 2, title))
    y = margin + title_h
    for row, rw, rh in zip(rows, row_w, heights):
        x = margin + (W - 2 * margin - rw) // 2
        base = y + rh
        for name in row:
            cx = x + gap
            for c, f in scaled.get(name, []):
                h, w = c.shape
                patch = (np.clip(c, 0, 1) * 255).astype(np.uint8)
                y0 = base - h
                region = canvas[y0:base, cx:cx + w]
                region[:] = np.minimum(region, patch[:, :, None])
                if f:
                    _frame(canvas, y0 - 2, cx - 2, base + 1, cx + w + 1)
                cx += w + gap
            canvas[base + 2, x + 2:x + cell_w[name] - 2] = 60  # the pair's baseline
            texts.append((x + cell_w[name] // 2 - 4 * len(name), base + 4, name))
            layout[name] = (y, x, base + label_h, x + cell_w[name])
            x += cell_w[name] + 10
        y += rh + label_h + 8
    out = _draw_texts(canvas, texts)
    return (out, layout) if return_layout else out


def _frame(canvas: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> None:
    H, W = canvas.shape[:2]
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H - 1, y1), min(W - 1, x1)
    red = np.array([220, 30, 30], np.uint8)
    canvas[y0, x0:x1 + 1] = red
    canvas[y1, x0:x1 + 1] = red
    canvas[y0:y1 + 1, x0] = red
    canvas[y0:y1 + 1, x1] = red


def _draw_texts(canvas: np.ndarray, texts: list[tuple[int, int, str]]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for x, y, s in texts:
        draw.text((x, y), s, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an image array as PNG atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, np.uint8)).save(tmp, format="PNG")
    return path


CSV_COLUMNS = ["id", "class", "confidence", "flagged", "reason", "y0", "x0", "y1", "x1", "area"]


def chromosome_table(labels: np.ndarray, classes: Sequence[int], confidence: Sequence[float],
                     flagged: Sequence[bool], reasons: Sequence[str] | None = None) -> list[dict]:
    """One row per label: id, class name, confidence, flag, bbox (y0, x0, y1, x1), area in pixels."""
    n = int(labels.max()) if labels.size else 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    slices = ndi.find_objects(labels)
    rows = []
    for i in range(n):
        sl = slices[i] if i < len(slices) else None
        if sl is None:
            continue
        c = int(classes[i]) if i < len(classes) else -1
        rows.append({
            "id": i + 1,
            "class": CLASS_NAMES[c] if c >= 0 else "?",
            "confidence": round(float(confidence[i]), 4) if i < len(confidence) else 0.0,
            "flagged": bool(flagged[i]) if i < len(flagged) else False,
            "reason": (reasons[i] if reasons is not None and i < len(reasons) else ""),
            "y0": sl[0].start, "x0": sl[1].start, "y1": sl[0].stop, "x1": sl[1].stop,
            "area": int(areas[i + 1]),
        })
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write :func:`chromosome_table` rows as CSV atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    return path
