"""Synthetic G-band-like chromosomes and metaphase spreads, deterministic from a seed.

Each of the 24 classes (1-22, X, Y) has its own relative length, centromere
index and band pattern (the pattern is fixed per class; an instance varies it a
little: length, band contrast, stretch, bending, noise).  Chromosomes are drawn
dark on a light background, as G-banded spreads look under bright-field.  The
numbers (relative lengths, centromere indices) follow the human ideogram closely
enough that length, arm ratio and bands all carry class information, which is
what a classifier has to learn; they are not a cytogenetic reference.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..classes import CHROMOSOME_CLASSES, class_index
from ..errors import InputError

__all__ = ["CHROMOSOME_CLASSES", "class_index", "make_chromosome", "make_spread", "write_dataset"]

# relative length (percent of the haploid autosomal length, approximate) and centromere index p/(p+q)
_REL_LENGTH = [8.4, 8.0, 6.8, 6.3, 6.1, 5.9, 5.4, 4.9, 4.8, 4.6, 4.6, 4.5, 3.7, 3.6, 3.5, 3.4, 3.3,
               2.9, 2.7, 2.6, 1.9, 2.0, 5.1, 2.2]
_CENTROMERE = [0.48, 0.39, 0.47, 0.29, 0.29, 0.39, 0.39, 0.34, 0.35, 0.33, 0.40, 0.27, 0.17, 0.18,
               0.19, 0.43, 0.33, 0.26, 0.46, 0.45, 0.30, 0.29, 0.40, 0.30]

BACKGROUND = 232.0
# pixels per percent of relative length: chromosome 1 is ~59 px long; crops and spreads share it so
# that a classifier trained on write_dataset crops sees spread chromosomes at the same scale
DEFAULT_SCALE = 7.0


def _band_template(cls_index: int) -> list[tuple[float, float, float]]:
    """Class-specific bands as (position 0..1, width 0..1, darkness 0..1); fixed per class."""
    rng = np.random.default_rng(7919 + 104729 * cls_index)
    length = _REL_LENGTH[cls_index]
    n = int(round(2 + 1.3 * length))
    # positions: stratified so bands are spread along the chromosome, with a class-specific jitter
    edges = np.linspace(0.04, 0.96, n + 1)
    bands = []
    for i in range(n):
        pos = rng.uniform(edges[i], edges[i + 1])
        if abs(pos - _CENTROMERE[cls_index]) < 0.03:
            continue
        width = rng.uniform(0.25, 0.55) * (edges[1] - edges[0])
        dark = rng.uniform(0.35, 1.0)
        bands.append((float(pos), float(width), float(dark)))
    return bands


def _profile(cls_index: int, n: int, rng: np.random.Generator, contrast: float) -> np.ndarray:
    """Darkness along the long axis (n samples), 0 = pale band, 1 = darkest band."""
    s = (np.arange(n) + 0.5) / n
    base = np.full(n, 0.25)
    shift = rng.normal(0, 0.008)
    for pos, width, dark in _band_template(cls_index):
        p = pos + shift + rng.normal(0, 0.006)
        d = dark * rng.uniform(0.85, 1.15)
        base += d * np.exp(-0.5 * ((s - p) / (0.5 * width)) ** 2)
    base = np.clip(base, 0, 1.2)
    return 0.25 + contrast * (base - 0.25)


def _straight(cls_index: int, length: float, half_width: float, rng: np.random.Generator,
              contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Darkness and mask of an unbent chromosome, rows = long axis (p arm on top)."""
    n = max(8, int(np.ceil(length)))
    w = int(np.ceil(half_width)) + 2
    s = np.arange(n)[:, None] + 0.5
    u = np.arange(-w, w + 1)[None, :].astype(float)
    cen = _CENTROMERE[cls_index] * n
    # half-width: constriction at the centromere, rounded telomeres
    hw = half_width * (1 - 0.35 * np.exp(-0.5 * ((s - cen) / (0.045 * n + 1.0)) ** 2))
    end = np.minimum(s, n - s)
    cap = np.sqrt(np.clip(1 - np.clip(1 - end / max(half_width, 1.0), 0, 1) ** 2, 0, 1))
    hw = hw * cap
    inside = np.abs(u) <= hw
    # soft edge + two chromatids (slightly paler along the middle)
    edge = np.clip(hw - np.abs(u) + 0.5, 0, 1)
    chromatid = 1 - 0.18 * np.exp(-0.5 * (u / (0.22 * half_width + 0.3)) ** 2)
    prof = _profile(cls_index, n, rng, contrast)[:, None]
    dark = edge * chromatid * (0.45 + 0.55 * prof)
    return dark.astype(np.float32), inside


def _bend(dark: np.ndarray, inside: np.ndarray, curvature: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Bend the straight chromosome along a circular arc and rotate it (inverse mapping)."""
    n, m = dark.shape
    w = (m - 1) / 2
    diag = int(np.ceil(np.hypot(n, m))) + 4
    yy, xx = np.mgrid[0:diag, 0:diag].astype(np.float64)
    yy -= diag / 2
    xx -= diag / 2
    c, s_ = np.cos(angle), np.sin(angle)
    py = c * yy + s_ * xx  # along the chromosome (centred)
    px = -s_ * yy + c * xx  # across
    if abs(curvature) < 1e-4:
        arc, off = py, px
    else:
        r = 1.0 / curvature
        # centre of curvature at (px=r, py=0): distance from it gives the offset, angle the arc length
        dx, dy = r - px, py
        rad = np.hypot(dx, dy)
        arc = abs(r) * np.arctan2(dy, dx * np.sign(r))
        off = r - np.sign(r) * rad
    rows = arc + n / 2 - 0.5
    cols = off + w
    coords = np.stack([rows, cols])
    d = ndi.map_coordinates(dark, coords, order=1, mode="constant", cval=0.0)
    msk = ndi.map_coordinates(inside.astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.5
    ys, xs = np.nonzero(msk | (d > 0.02))
    if ys.size == 0:
        return d[:1, :1].astype(np.float32), msk[:1, :1]
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, diag)
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, diag)
    return d[y0:y1, x0:x1].astype(np.float32), msk[y0:y1, x0:x1]


def _render(cls_index: int, rng: np.random.Generator, scale: float, bend: float,
            rotate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Darkness map (0..1) and mask of one chromosome instance."""
    if not 0 <= cls_index < len(CHROMOSOME_CLASSES):
        raise InputError(f"class index {cls_index} is outside 0..{len(CHROMOSOME_CLASSES) - 1}")
    length = _REL_LENGTH[cls_index] * scale * rng.uniform(0.9, 1.1)
    half_width = scale * rng.uniform(0.95, 1.1) * 0.62
    contrast = rng.uniform(0.75, 1.15)
    dark, inside = _straight(cls_index, length, half_width, rng, contrast)
    curvature = rng.normal(0, bend) / max(length, 1.0)
    angle = rng.uniform(0, 2 * np.pi) if rotate else rng.normal(0, 0.08)
    return _bend(dark, inside, curvature, angle)


def _to_gray(dark: np.ndarray, rng: np.random.Generator, background: float = BACKGROUND,
             noise: float = 4.0) -> np.ndarray:
    depth = rng.uniform(150, 185)
    img = background - depth * ndi.gaussian_filter(dark, rng.uniform(0.5, 0.9))
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_chromosome(cls_index: int, seed: int = 0, *, scale: float = DEFAULT_SCALE, bend: float = 1.2,
                    rotate: bool = False, pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One banded chromosome of class ``cls_index`` (0 = "1", ..., 22 = "X", 23 = "Y").

    Returns ``(image, mask)``: a gray uint8 crop (dark chromosome on a light
    background) and its boolean mask.  ``scale`` is pixels per percent of
    relative length (chromosome 1 is ~``8.4 * scale`` px long; the same default as spreads); ``bend`` the
    typical bending (radians over the length); ``rotate`` gives a random
    orientation (else roughly vertical, p arm on top).
    """
    rng = np.random.default_rng([int(seed), int(cls_index), 11])
    dark, mask = _render(int(cls_index), rng, scale, bend, rotate)
    dark = np.pad(dark, pad)
    mask = np.pad(mask, pad)
    return _to_gray(dark, rng), mask


def parse_karyotype(karyotype: str | Sequence[int]) -> list[int]:
    """Class indices for an ISCN-like string ("46,XY", "47,XX,+21", "45,X") or a list of indices."""
    if not isinstance(karyotype, str):
        out = [int(k) for k in karyotype]
        bad = [k for k in out if not 0 <= k < len(CHROMOSOME_CLASSES)]
        if bad:
            raise InputError(f"class indices {bad} are outside 0..{len(CHROMOSOME_CLASSES) - 1}")
        return out
    parts = [p.strip() for p in karyotype.replace(" ", "").split(",") if p.strip()]
    if len(parts) < 2 or not parts[0].isdigit() or not re.fullmatch(r"[XY]+", parts[1].upper()):
        raise InputError(f"karyotype {karyotype!r} not understood; write e.g. '46,XY' or '47,XX,+21'")
    classes = [i for i in range(22) for _ in range(2)]
    classes += [class_index(c) for c in parts[1].upper()]
    for tok in parts[2:]:
        m = re.fullmatch(r"([+-])(\d{1,2}|X|Y)", tok.upper())
        if not m:
            raise InputError(f"karyotype {karyotype!r}: cannot read {tok!r} (use +N or -N)")
        k = class_index(m.group(2))
        if m.group(1) == "+":
            classes.append(k)
        elif k in classes:
            classes.remove(k)
    if int(parts[0]) != len(classes):
        raise InputError(f"karyotype {karyotype!r} lists {len(classes)} chromosomes, not {parts[0]}")
    return sorted(classes)


def _nucleus(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Darkness map of a round interphase nucleus with chromatin texture."""
    r = int(np.ceil(radius * 1.25)) + 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(float)
    theta = np.arctan2(yy, xx)
    wobble = 1 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.05 * np.sin(5 * theta + rng.uniform(0, 6))
    rad = np.hypot(yy, xx) / (radius * wobble)
    body = np.clip((1.0 - rad) * radius / 2.0, 0, 1)
    texture = ndi.gaussian_filter(rng.normal(0, 1, body.shape), 2.5)
    texture = 0.75 + 0.25 * texture / (texture.std() + 1e-6)
    return (body * np.clip(texture, 0.4, 1.2) * 0.8).astype(np.float32)


def make_spread(seed: int = 0, karyotype: str | Sequence[int] = "46,XY", size: tuple[int, int] = (768, 768),
                nucleus: bool = True, scale: float = DEFAULT_SCALE, bend: float = 1.2,
                max_tries: int = 400) -> dict[str, Any]:
    """A synthetic metaphase spread.

    Returns ``dict(image=uint8 HxW, labels=int32 HxW, classes=list[int], boxes=(N,4) int,
    karyotype=str, nucleus=bool HxW)``: label ``i + 1`` is chromosome ``i`` of class
    ``classes[i]``; boxes are ``(y0, x0, y1, x1)`` with exclusive ends.  Chromosomes
    never overlap each other or the nucleus (they may touch).  ``karyotype`` is an
    ISCN-like string ("46,XY", "47,XX,+21", "45,X") or a list of class indices.
    """
    classes = parse_karyotype(karyotype)
    H, W = int(size[0]), int(size[1])
    if H < 64 or W < 64:
        raise InputError(f"spread size {size} is too small (at least 64x64)")
    rng = np.random.default_rng([int(seed), 46])
    order = rng.permutation(len(classes))
    dark = np.zeros((H, W), np.float32)
    labels = np.zeros((H, W), np.int32)
    occupied = np.zeros((H, W), bool)
    nuc_mask = np.zeros((H, W), bool)
    if nucleus:
        radius = min(H, W) * rng.uniform(0.09, 0.13)
        nd = _nucleus(rng, radius)
        h, w = nd.shape
        cy = int(rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)]) * (H - h))
        cx = int(rng.uniform(0, 1) * (W - w))
        dark[cy:cy + h, cx:cx + w] = np.maximum(dark[cy:cy + h, cx:cx + w], nd)
        nuc_mask[cy:cy + h, cx:cx + w] = nd > 0.02
        occupied |= ndi.binary_dilation(nuc_mask, iterations=4)
    # chromosomes gather in a loose disc, as in a real spread
    cy0, cx0 = H / 2 + rng.normal(0, H * 0.04), W / 2 + rng.normal(0, W * 0.04)
    spread_r = 0.42 * min(H, W)
    out_classes: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    for idx in order:
        cls = classes[idx]
        d, m = _render(cls, rng, scale, bend, rotate=True)
        h, w = m.shape
        if h >= H or w >= W:
            raise InputError(f"spread size {size} is too small for chromosome {CHROMOSOME_CLASSES[cls]}")
        placed = False
        for attempt in range(max_tries):
            grow = 1.0 + attempt / 100  # widen the disc if it gets crowded
            rr = spread_r * grow * np.sqrt(rng.uniform())
            th = rng.uniform(0, 2 * np.pi)
            y = int(np.clip(cy0 + rr * np.sin(th) - h / 2, 0, H - h))
            x = int(np.clip(cx0 + rr * np.cos(th) - w / 2, 0, W - w))
            if not np.any(occupied[y:y + h, x:x + w] & m):
                placed = True
                break
        if not placed:
            raise InputError(f"could not place {len(classes)} chromosomes on a {H}x{W} spread; use a larger size")
        region = (slice(y, y + h), slice(x, x + w))
        dark[region] = np.where(m, np.maximum(dark[region], d), np.maximum(dark[region], d * (~occupied[region])))
        lab = len(out_classes) + 1
        labels[region][m] = lab
        occupied[region] |= ndi.binary_dilation(m, iterations=1) if attempt % 3 else m
        out_classes.append(int(cls))
        ys, xs = np.nonzero(m)
        boxes.append((y + int(ys.min()), x + int(xs.min()), y + int(ys.max()) + 1, x + int(xs.max()) + 1))
    # uneven illumination + noise
    yy, xx = np.mgrid[0:H, 0:W]
    illum = 1 + 0.04 * np.sin(yy / H * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)) * np.cos(
        xx / W * np.pi * rng.uniform(0.5, 1.5))
    image = _to_gray(dark, rng) * illum
    image = np.clip(image, 0, 255).astype(np.uint8)
    text = karyotype if isinstance(karyotype, str) else f"{len(classes)} chromosomes"
    return dict(image=image, labels=labels, classes=out_classes,
                boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4), karyotype=text, nucleus=nuc_mask)


def write_dataset(out: str | Path, n_cells: int = 4, seed: int = 0, *, scale: float = DEFAULT_SCALE,
                  rotate: bool = True) -> Path:
    """Class-per-folder crops (``out/1`` .. ``out/22``, ``out/X``, ``out/Y``).

    Cells alternate 46,XX and 46,XY; files are ``cell<NNN>_<class><a|b>.png`` so
    a split by the ``cell<NNN>`` prefix keeps both homologues of a cell together.
    """
    from PIL import Image

    out = Path(out)
    for name in CHROMOSOME_CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for cell in range(int(n_cells)):
        kary = "46,XX" if cell % 2 == 0 else "46,XY"
        seen: dict[int, int] = {}
        for k, cls in enumerate(parse_karyotype(kary)):
            copy = seen.get(cls, 0)
            seen[cls] = copy + 1
            img, _ = make_chromosome(cls, seed=int(seed) * 100003 + cell * 97 + k, scale=scale, rotate=rotate)
            name = CHROMOSOME_CLASSES[cls]
            Image.fromarray(img).save(out / name / f"cell{cell:03d}_{name}{'ab'[min(copy, 1)]}.png")
    return out


def napari_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: a synthetic 46,XY spread and its chromosome labels."""
    spread = make_spread(seed=0, karyotype="46,XY")
    names = [CHROMOSOME_CLASSES[c] for c in spread["classes"]]
    features = {"label": np.arange(1, len(names) + 1), "class": names}
    return [
        (spread["image"], {"name": "spread 46,XY (synthetic)", "colormap": "gray"}, "image"),
        (spread["labels"], {"name": "chromosomes (synthetic truth)", "features": features, "opacity": 0.4},
         "labels"),
    ]
