"""Karyogram image and per-chromosome table export.

The layout follows the usual cytogenetics sheet: row 1 holds pairs 1-5, row 2
pairs 6-12 and X, row 3 pairs 13-18, row 4 pairs 19-22 and Y.  Every chromosome is
cut out of the spread with its own mask (neighbours blanked) and stood upright:
turned so its long axis is vertical, then turned 180 degrees when its banding and
centromere fit its class's ideogram better that way (p arm up; see
:func:`upright`).  A schematic ideogram of the class stands beside each pair at
the length the class should have at this karyogram's scale.  All crops share one
scale so relative lengths stay true.  A bent chromosome is laid out straight
along its medial axis first (:mod:`.straighten`; ``straighten=False`` keeps the
plain upright crop), so its bands run across and its length is its real one.
Objects the assignment rejected go in a last row marked "?".  A user's own
rotation or mirror of a chromosome (``orientation``) is applied after the
automatic one and wins over it.  The selection frame is not part of the image
(exports stay clean); :meth:`Karyogram.with_selection` draws it for display.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import transform

from ..engine import csvsafe
from ..engine.atomic import atomic_path
from .assign import CLASS_NAMES
from .ideogram import IDEOGRAMS, draw_ideogram, orientation_score, rel_lengths
from .segment import to_gray

KARYOGRAM_ROWS: list[list[str]] = [
    ["1", "2", "3", "4", "5"],
    ["6", "7", "8", "9", "10", "11", "12", "X"],
    ["13", "14", "15", "16", "17", "18"],
    ["19", "20", "21", "22", "Y"],
]
BACKGROUND = 255
# Below this |score| the profiles cannot tell pter from qter and the crop is left as it is.
# Chosen on 13 cytogeneticist karyograms (benchmarks/karyogram_orientation.py): at 0.2 the
# decision agreed with the cytogeneticist for 97% of decided chromosomes outside groups F/G;
# the small acrocentrics (21, 22, Y) agreed only 60% at 0.2, 75% at 0.4, hence their stricter bar.
ORIENT_MIN_SCORE = 0.2
ORIENT_MIN_SCORE_SMALL = 0.4  # classes 21, 22, Y
IDEOGRAM_W = 9
SELECTED_COLOUR = (30, 90, 230)
# a chromosome counts as bent when its medial axis strays from the line between its ends by this
# share of its width (and 3 px): on a held-out Tseng spread (1050041) this picked the C- and S-shaped
# ones by eye, where the straightener's length test (axis 5 % longer than the crop) missed gentle Cs
STRAIGHTEN_MIN_SAG = 0.3


@dataclass
class Orientation:
    """How one chromosome was stood upright in the karyogram."""

    angle: float = 0.0  # degrees turned to make the long axis vertical
    turned: bool = False  # turned a further 180 degrees so the p arm is up
    score: float = 0.0  # orientation_score of the upright crop (> 0: p arm already up)
    method: str = "none"  # "banding" (ideogram fit), "uncertain" (|score| too small), "user"
    user_rotation: float = 0.0  # degrees the user added (counter-clockwise)
    user_mirror: bool = False  # the user mirrored it left-right
    straightened: bool = False  # laid out straight along its medial axis (it was bent)


@dataclass
class Karyogram:
    """A rendered karyogram and where everything in it is, for hit-testing clicks and drags."""

    image: np.ndarray  # (H, W, 3) uint8
    cells: dict[str, tuple[int, int, int, int]]  # class name -> (y0, x0, y1, x1) of its cell
    items: dict[int, tuple[int, int, int, int]]  # label id -> box of its crop
    orientation: dict[int, Orientation] = field(default_factory=dict)

    def cell_at(self, y: float, x: float) -> str | None:
        for name, (y0, x0, y1, x1) in self.cells.items():
            if y0 <= y < y1 and x0 <= x < x1:
                return name
        return None

    def item_at(self, y: float, x: float, slack: int = 3) -> int | None:
        for lid, (y0, x0, y1, x1) in self.items.items():
            if y0 - slack <= y < y1 + slack and x0 - slack <= x < x1 + slack:
                return lid
        return None

    def with_selection(self, lid: int | None) -> np.ndarray:
        """A copy of the image with a blue frame round chromosome ``lid``, for the screen only
        (the image itself, which PNG and PDF exports use, never carries it)."""
        if lid is None or lid not in self.items:
            return self.image
        y0, x0, y1, x1 = self.items[lid]
        out = self.image.copy()
        _frame(out, y0 - 3, x0 - 3, y1 + 2, x1 + 2, SELECTED_COLOUR)
        return out


def chromosome_crop(gray: np.ndarray, labels: np.ndarray, label: int, pad: int = 3,
                    box: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gray crop (float 0..1, other objects blanked to white) and mask of one label.

    ``box`` (from ``ndi.find_objects``) saves a pass over the whole label image.
    """
    if box is None:
        sl = ndi.find_objects((labels == label).astype(np.int32))
        box = sl[0] if sl else None
    if box is None:
        return np.ones((1, 1), np.float32), np.zeros((1, 1), bool)
    ys, xs = box
    y0, x0 = max(0, ys.start - pad), max(0, xs.start - pad)
    y1, x1 = min(labels.shape[0], ys.stop + pad), min(labels.shape[1], xs.stop + pad)
    mask = labels[y0:y1, x0:x1] == label
    crop = np.where(mask, gray[y0:y1, x0:x1], 1.0).astype(np.float32)
    return crop, mask


def _rotate(crop: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    if abs(angle) <= 1e-3:
        return crop, mask
    if abs(abs(angle) - 180) < 1e-3:
        return crop[::-1, ::-1].copy(), mask[::-1, ::-1].copy()
    crop = transform.rotate(crop, angle, resize=True, cval=1.0, order=1, preserve_range=True)
    mask = transform.rotate(mask.astype(np.float32), angle, resize=True, cval=0, order=1) > 0.5
    return np.where(mask, crop, 1.0).astype(np.float32), mask


def _trim(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return crop, mask
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return crop[sl].astype(np.float32), mask[sl]


def _major_axis_angle(mask: np.ndarray) -> float:
    """Degrees to rotate (counter-clockwise) so the mask's major axis is vertical.

    Same angle as ``-degrees(regionprops(mask).orientation)``, from the second
    moments directly (regionprops took 26 ms per chromosome, this well under 1).
    """
    ys, xs = np.nonzero(mask)
    ys = ys - ys.mean()
    xs = xs - xs.mean()
    a, c, b = float((xs * xs).mean()), float((ys * ys).mean()), -float((xs * ys).mean())
    return -float(np.degrees(0.5 * np.arctan2(-2 * b, c - a)))


def orient_vertical(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate so the object's long axis runs top to bottom, then trim to it."""
    if mask.sum() < 3:
        return crop, mask
    angle = _major_axis_angle(mask)
    if abs(angle) > 1:
        crop, mask = _rotate(crop, mask, angle)
    return _trim(crop, mask)


def axis_profiles(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Darkness (mean of 1 - gray over the object) and width of each row of an upright crop."""
    widths = mask.sum(axis=1).astype(float)
    dark = np.where(mask, 1.0 - crop, 0.0).sum(axis=1) / np.maximum(widths, 1)
    keep = widths > 0
    return dark[keep], widths[keep]


def upright(crop: np.ndarray, mask: np.ndarray, cls: int, user: Orientation | None = None,
            straighten: bool = False) -> tuple[np.ndarray, np.ndarray, Orientation]:
    """Stand a chromosome crop upright, p arm up where the banding can tell.

    The long axis is made vertical (image moments); with ``straighten`` a bent
    chromosome is then laid out straight along its medial axis, so the band
    profiles below run along the real axis.  Which end is pter is judged
    by :func:`napari_cellclass.karyotype.ideogram.orientation_score`: the crop's
    darkness and width profiles along the axis are correlated with the class's
    ideogram (bands and centromere constriction) as they are and reversed.  The
    classifier cannot tell: it is trained and tested on flipped crops (flip
    test-time augmentation averages both ways), so its scores are the same
    either way up.  ``user`` adds the user's rotation / mirror on top.
    """
    info = Orientation()
    if mask.sum() >= 3:
        info.angle = _major_axis_angle(mask)
        if abs(info.angle) > 1:
            crop, mask = _rotate(crop, mask, info.angle)
        crop, mask = _trim(crop, mask)
        if straighten:
            from .straighten import straighten_with_mask

            # straighten works on bright-on-dark, background 0; the karyogram's crops are dark on white
            out, m, info.straightened = straighten_with_mask(np.where(mask, 1.0 - crop, 0.0), mask,
                                                                      min_sag=STRAIGHTEN_MIN_SAG)
            if info.straightened:
                crop, mask = _trim(np.where(m, 1.0 - out, 1.0).astype(np.float32), m)
    name = CLASS_NAMES[cls] if 0 <= cls < len(CLASS_NAMES) else None
    if name is not None and mask.shape[0] >= 8:
        dark, widths = axis_profiles(crop, mask)
        info.score = orientation_score(dark, widths, name)
        if abs(info.score) < (ORIENT_MIN_SCORE_SMALL if name in ("21", "22", "Y") else ORIENT_MIN_SCORE):
            info.method = "uncertain"
        else:
            info.method = "banding"
            if info.score < 0:
                info.turned = True
                crop, mask = crop[::-1, ::-1].copy(), mask[::-1, ::-1].copy()
    if user is not None and (user.user_rotation or user.user_mirror):
        info.user_rotation, info.user_mirror, info.method = user.user_rotation, user.user_mirror, "user"
        crop, mask = _rotate(crop, mask, user.user_rotation % 360 if user.user_rotation % 360 <= 180
                             else user.user_rotation % 360 - 360)
        if user.user_mirror:
            crop, mask = crop[:, ::-1].copy(), mask[:, ::-1].copy()
        crop, mask = _trim(crop, mask)
    return crop, mask, info


def make_karyogram(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    *,
    flagged: Sequence[bool] | None = None,
    row_height: int = 140,
    title: str | None = None,
    return_layout: bool = False,
    **kw,
) -> np.ndarray | tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Karyogram as an (H, W, 3) uint8 RGB array (see :func:`render_karyogram`).

    With ``return_layout`` also returns {class name: (y0, x0, y1, x1)} of each pair's cell.
    """
    k = render_karyogram(image, labels, classes, flagged=flagged, row_height=row_height, title=title, **kw)
    return (k.image, k.cells) if return_layout else k.image


def render_karyogram(
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    *,
    flagged: Sequence[bool] | None = None,
    row_height: int = 140,
    title: str | None = None,
    orientation: dict[int, Orientation] | None = None,
    selected: int | None = None,
    ideograms: bool = True,
    invert: bool | None = None,
    ids: Sequence[int] | None = None,
    cache: dict | None = None,
    straighten: bool = True,
) -> Karyogram:
    """Draw the karyogram; returns the image and where each cell and chromosome went.

    ``classes[i]`` is the class index (0..23, -1 = unplaced) of label ``ids[i]``
    (default ``i + 1``); ``flagged`` objects get a red frame so a reviewer looks at
    them first.  ``selected`` gets a blue one, drawn only into the returned image
    (callers that export should leave it None and show :meth:`Karyogram.with_selection`).
    ``straighten`` lays bent chromosomes out straight (False: the plain upright
    crops, as cut from the spread).  ``orientation`` holds the user's turns
    per label id.  ``invert`` shows a light-on-dark (Q-band) spread dark-on-light;
    by default it follows the image's polarity.  ``cache`` (a dict the caller
    keeps, keyed by label id) saves re-cutting and re-orienting unchanged
    chromosomes when only classes or one chromosome's turn changed; the caller
    drops the entries of labels it edits.
    """
    gray = to_gray(image)
    if invert is None:
        invert = _is_light_on_dark(gray)
    if invert:
        gray = 1.0 - gray
    classes = [int(c) for c in classes]
    ids = list(ids) if ids is not None else list(range(1, len(classes) + 1))
    flagged = list(flagged) if flagged is not None else [False] * len(classes)
    orientation = orientation or {}
    slices = ndi.find_objects(labels) if labels.size else []
    crops: dict[int, list[tuple[int, np.ndarray, bool]]] = {}
    orient: dict[int, Orientation] = {}
    for i, lid in enumerate(ids):
        box = slices[lid - 1] if 0 < lid <= len(slices) else None
        if box is None:
            continue
        user = orientation.get(lid)
        key = (classes[i], bool(invert), user.user_rotation if user else 0.0, user.user_mirror if user else False,
               tuple((s.start, s.stop) for s in box), bool(straighten))
        hit = cache.get(lid) if cache is not None else None
        if hit is not None and hit[0] == key:
            c, m, info = hit[1]
        else:
            c, m = chromosome_crop(gray, labels, lid, box=box)
            if not m.any():
                continue
            c, m, info = upright(c, m, classes[i], user, straighten=straighten)
            if cache is not None:
                cache[lid] = (key, (c, m, info))
        orient[lid] = info
        crops.setdefault(classes[i], []).append((lid, c, bool(flagged[i]) if i < len(flagged) else False))
    # one scale for all, set by the tallest *placed* chromosome: a nucleus or a clump among the
    # unplaced objects must not shrink the karyogram (those are shrunk to fit the row instead)
    placed = [c.shape[0] for cls, lst in crops.items() if cls >= 0 for _, c, _ in lst]
    tallest = max(placed or [c.shape[0] for lst in crops.values() for _, c, _ in lst] or [1])
    scale = (row_height - 8) / max(tallest, 1)
    rows = [list(r) for r in KARYOGRAM_ROWS]
    if -1 in crops:
        rows.append(["?"])
    scaled: dict[str, list[tuple[int, np.ndarray, bool]]] = {}
    for cls, lst in crops.items():
        name = "?" if cls < 0 else CLASS_NAMES[cls]
        out = []
        for lid, c, f in lst:
            sc = min(scale, (row_height - 8) / c.shape[0], 2.5 * (row_height - 8) / max(c.shape[1], 1))
            h = max(2, int(round(c.shape[0] * sc)))
            w = max(2, int(round(c.shape[1] * sc)))
            out.append((lid, transform.resize(c, (h, w), order=1, preserve_range=True, anti_aliasing=True), f))
        scaled[name] = out
    # ideogram heights: the length each class should have at this scale (median px per relative length unit)
    rl = rel_lengths()
    per_unit = [c.shape[0] / rl[CLASS_NAMES.index(nm)] for nm, lst in scaled.items() if nm != "?" for _, c, _ in lst]
    px_per_rl = float(np.median(per_unit)) if per_unit else (row_height - 8) / rl.max()
    ideo_h = {nm: int(np.clip(px_per_rl * IDEOGRAMS[nm].rel_length, 12, row_height + 20))
              for nm in CLASS_NAMES} if ideograms else {}
    ideo_w = IDEOGRAM_W + 2 + 6 if ideograms else 0
    gap, label_h, margin = 6, 18, 12
    cell_w = {}
    for row in rows:
        for name in row:
            lst = scaled.get(name, [])
            extra = ideo_w if name in ideo_h else 0
            cell_w[name] = max(44, extra + sum(c.shape[1] for _, c, _ in lst) + gap * (len(lst) + 1))
    row_w = [sum(cell_w[nm] for nm in row) + 10 * (len(row) - 1) for row in rows]
    title_h = 24 if title else 0
    heights = [max([c.shape[0] for nm in row for _, c, _ in scaled.get(nm, [])]
                   + [ideo_h.get(nm, 0) for nm in row] + [24]) + 6 for row in rows]
    W = max(row_w) + 2 * margin
    H = title_h + sum(h + label_h + 8 for h in heights) + 2 * margin
    canvas = np.full((H, W, 3), BACKGROUND, np.uint8)
    texts: list[tuple[int, int, str]] = []
    cells: dict[str, tuple[int, int, int, int]] = {}
    items: dict[int, tuple[int, int, int, int]] = {}
    frames: list[tuple[int, int, int, int, tuple[int, int, int]]] = []
    if title:
        texts.append((margin, margin // 2, title))
    y = margin + title_h
    for row, rw, rh in zip(rows, row_w, heights):
        x = margin + (W - 2 * margin - rw) // 2
        base = y + rh
        for name in row:
            cx = x + gap
            if name in ideo_h:
                ih = ideo_h[name]
                ideo = draw_ideogram(name, ih, IDEOGRAM_W)
                canvas[base - ih:base, cx:cx + ideo.shape[1]] = ideo
                cx += ideo.shape[1] + 6
            for lid, c, f in scaled.get(name, []):
                h, w = c.shape
                patch = (np.clip(c, 0, 1) * 255).astype(np.uint8)
                y0 = base - h
                region = canvas[y0:base, cx:cx + w]
                region[:] = np.minimum(region, patch[:, :, None])
                items[lid] = (y0, cx, base, cx + w)
                if f:
                    frames.append((y0 - 2, cx - 2, base + 1, cx + w + 1, (220, 30, 30)))
                cx += w + gap
            canvas[base + 2, x + 2:x + cell_w[name] - 2] = 60  # the pair's baseline
            texts.append((x + cell_w[name] // 2 - 4 * len(name), base + 4, name))
            cells[name] = (y, x, base + label_h, x + cell_w[name])
            x += cell_w[name] + 10
        y += rh + label_h + 8
    for y0, x0, y1, x1, colour in frames:
        _frame(canvas, y0, x0, y1, x1, colour)
    k = Karyogram(_draw_texts(canvas, texts), cells, items, orient)
    if selected is not None:
        k.image = k.with_selection(selected)
    return k


def _is_light_on_dark(gray: np.ndarray) -> bool:
    sub = gray[:: max(1, gray.shape[0] // 300), :: max(1, gray.shape[1] // 300)]
    p1, p50, p99 = np.percentile(sub, [1, 50, 99])
    return bool((p50 - p1) < 0.5 * (p99 - p1))


def _frame(canvas: np.ndarray, y0: int, x0: int, y1: int, x1: int,
           colour: tuple[int, int, int] = (220, 30, 30)) -> None:
    H, W = canvas.shape[:2]
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H - 1, y1), min(W - 1, x1)
    c = np.array(colour, np.uint8)
    canvas[y0, x0:x1 + 1] = c
    canvas[y1, x0:x1 + 1] = c
    canvas[y0:y1 + 1, x0] = c
    canvas[y0:y1 + 1, x1] = c


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        return ImageFont.load_default()


def _draw_texts(canvas: np.ndarray, texts: list[tuple[int, int, str]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(13)
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
                     flagged: Sequence[bool], reasons: Sequence[str] | None = None,
                     ids: Sequence[int] | None = None) -> list[dict]:
    """One row per label: id, class name, confidence, flag, bbox (y0, x0, y1, x1), area in pixels.

    Row ``i`` describes label ``ids[i]`` (default ``i + 1``).
    """
    n = int(labels.max()) if labels.size else 0
    ids = list(ids) if ids is not None else list(range(1, n + 1))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    slices = ndi.find_objects(labels)
    rows = []
    for i, lid in enumerate(ids):
        sl = slices[lid - 1] if 0 < lid <= len(slices) else None
        if sl is None:
            continue
        c = int(classes[i]) if i < len(classes) else -1
        rows.append({
            "id": int(lid),
            "class": CLASS_NAMES[c] if c >= 0 else "?",
            "confidence": round(float(confidence[i]), 4) if i < len(confidence) else 0.0,
            "flagged": bool(flagged[i]) if i < len(flagged) else False,
            "reason": (reasons[i] if reasons is not None and i < len(reasons) else ""),
            "y0": sl[0].start, "x0": sl[1].start, "y1": sl[0].stop, "x1": sl[1].stop,
            "area": int(areas[lid]),
        })
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write :func:`chromosome_table` rows as CSV atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csvsafe.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    return path
