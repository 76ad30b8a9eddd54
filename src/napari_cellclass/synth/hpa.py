"""Synthetic HPA-like 4-channel fields, deterministic from a seed.

Each field holds a few cells (Voronoi-shaped, each with an elliptic nucleus).
Red = microtubule-like radial fibres, blue = nucleus, yellow = ER (bright near the
nucleus, fading outwards), green = the protein, placed in the compartment(s) of
the field's labels.  Labels use the HPA class ids (0..27).  The fields only say
that the pipeline learns a protein's location from its pattern relative to the
reference channels; they look nothing like real cells in detail.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..classes import HPA_CLASSES  # the one table (re-exported here for older callers)

# compartments this generator can draw: HPA class id -> where the green signal goes
SYNTH_CLASSES = {0: "nucleoplasm", 2: "nucleoli", 6: "er", 21: "membrane", 23: "puncta", 25: "cytosol"}
NUCLEAR = (0, 2)
CYTOPLASMIC = (6, 21, 23, 25)


def sample_labels(rng: np.random.Generator, p_multi: float = 0.3) -> list[int]:
    """One compartment, or with ``p_multi`` a nuclear plus a cytoplasmic one."""
    if rng.random() < p_multi:
        return sorted([int(rng.choice(NUCLEAR)), int(rng.choice(CYTOPLASMIC))])
    return [int(rng.choice(list(SYNTH_CLASSES)))]


def _cells(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Cell label image, nucleus label image and per-cell geometry."""
    spacing = float(np.clip(size / 3.5, 20, 72))
    n_side = max(1, int(round(size / spacing)))
    step = size / n_side
    centres = []
    for i in range(n_side):
        for j in range(n_side):
            jitter = rng.uniform(-0.2, 0.2, 2) * step
            centres.append(((i + 0.5) * step + jitter[0], (j + 0.5) * step + jitter[1]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dists = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    owner = dists.argmin(0)
    cells = np.zeros((size, size), np.int32)
    nuclei = np.zeros((size, size), np.int32)
    geo = []
    for k, (cy, cx) in enumerate(centres):
        rc = step * rng.uniform(0.48, 0.6)
        cell = (owner == k) & (dists[k] < rc)
        a, b = rc * rng.uniform(0.32, 0.42), rc * rng.uniform(0.26, 0.36)
        th = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
        v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
        nuc = ((u / a) ** 2 + (v / b) ** 2 < 1) & cell
        cells[cell] = k + 1
        nuclei[nuc] = k + 1
        geo.append({"cy": cy, "cx": cx, "rc": rc, "a": a, "b": b, "theta": th})
    return cells, nuclei, geo


def render_field(
    rng: np.random.Generator, size: int = 128, labels: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(image (4, H, W) uint8 RGBY, cell labels (H, W) int32, labels)``."""
    labels = sample_labels(rng) if labels is None else list(labels)
    unknown = [c for c in labels if c not in SYNTH_CLASSES]
    if unknown:
        raise ValueError(f"synthetic HPA fields cannot draw class(es) {unknown}; choose from {sorted(SYNTH_CLASSES)}")
    cells, nuclei, geo = _cells(rng, size)
    cyto = (cells > 0) & (nuclei == 0)
    nuc = nuclei > 0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    red = np.zeros((size, size), np.float32)
    yellow = np.zeros_like(red)
    green = np.zeros_like(red)
    blue = nuc * rng.uniform(0.5, 0.8) * (0.85 + 0.15 * rng.random((size, size), dtype=np.float32))
    # distance from the nucleus inside each cell, for the ER gradient
    d_nuc = ndi.distance_transform_edt(~nuc).astype(np.float32)
    for k, g in enumerate(geo, start=1):
        cell = cells == k
        if not cell.any():
            continue
        ang = np.arctan2(yy - g["cy"], xx - g["cx"])
        fibres = 0.35 + 0.65 * np.abs(np.sin(ang * rng.integers(5, 9) + rng.uniform(0, np.pi)))
        red[cell & ~nuc] = (0.45 * fibres)[cell & ~nuc]
        er = np.exp(-d_nuc / (0.18 * g["rc"]))
        yellow[cell & ~nuc] = (0.75 * er)[cell & ~nuc]
    bright = rng.uniform(0.6, 0.95)
    for c in labels:
        kind = SYNTH_CLASSES[c]
        if kind == "nucleoplasm":
            green += nuc * bright * 0.7
        elif kind == "cytosol":
            green += cyto * bright * 0.55
        elif kind == "er":
            green += np.where(cyto, np.exp(-d_nuc / (0.18 * np.mean([g["rc"] for g in geo]))), 0) * bright
        elif kind == "membrane":
            from skimage.segmentation import find_boundaries

            ring = find_boundaries(cells, mode="inner") & (cells > 0)
            ring = ndi.binary_dilation(ring, iterations=1) & (cells > 0)
            green += ring * bright
        elif kind in ("nucleoli", "puncta"):
            spots = np.zeros_like(green)
            for k, g in enumerate(geo, start=1):
                region = (nuclei == k) if kind == "nucleoli" else (cyto & (cells == k))
                ys, xs = np.nonzero(region)
                if len(ys) == 0:
                    continue
                n = rng.integers(2, 4) if kind == "nucleoli" else rng.integers(8, 16)
                pick = rng.integers(0, len(ys), n)
                spots[ys[pick], xs[pick]] = 1.0
            sigma = max(0.8, size / 160) * (1.6 if kind == "nucleoli" else 0.8)
            blob = ndi.gaussian_filter(spots, sigma)
            if blob.max() > 0:
                blob /= blob.max()
            green += blob * bright
    img = np.stack([red, green, blue, yellow])
    img = ndi.gaussian_filter(img, sigma=(0, 0.7, 0.7))
    img += rng.normal(0, 0.025, img.shape).astype(np.float32) + 0.03
    img = np.clip(img, 0, 1)
    return (img * 255).round().astype(np.uint8), cells, sorted(labels)


def make_dataset(n: int, seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """``(images (n, 4, H, W) uint8, targets (n, 28) float32, label lists)`` in memory."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 4, size, size), np.uint8)
    targets = np.zeros((n, len(HPA_CLASSES)), np.float32)
    all_labels = []
    for i in range(n):
        img, _, labels = render_field(rng, size)
        images[i] = img
        targets[i, labels] = 1
        all_labels.append(labels)
    return images, targets, all_labels


def write_dataset(out: str | Path, n: int = 100, seed: int = 0, size: int = 128) -> Path:
    """Kaggle-2018 layout: ``out/train.csv`` (Id,Target) and ``out/train/<id>_<colour>.png``."""
    import imageio.v3 as iio

    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img, _, labels = render_field(rng, size)
        sid = f"synth{seed:03d}_{i:05d}"
        for c, colour in enumerate(("red", "green", "blue", "yellow")):
            iio.imwrite(out / "train" / f"{sid}_{colour}.png", img[c])
        rows.append((sid, " ".join(str(x) for x in labels)))
    with open(out / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Id", "Target"])
        w.writerows(rows)
    return out


def napari_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Sample-data menu: one 256x256 field (nucleoli + cytosol) as four image layers."""
    from ..io.hpa_reader import CHANNEL_ROLES, CHANNELS

    img, cells, labels = render_field(np.random.default_rng(7), 256, [2, 25])
    names = ", ".join(HPA_CLASSES[c] for c in labels)
    layers = []
    for c, colour in enumerate(CHANNELS):
        layers.append((
            img[c],
            {
                "name": f"synthetic {colour} ({CHANNEL_ROLES[colour]})",
                "colormap": colour,
                "blending": "additive",
                "contrast_limits": [0, 255],
                "metadata": {"hpa_set_id": "synthetic", "hpa_channel": colour, "hpa_true_labels": labels,
                             "description": f"synthetic HPA field, protein in: {names}"},
            },
            "image",
        ))
    return layers
