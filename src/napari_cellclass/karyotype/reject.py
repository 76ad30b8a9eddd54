"""Telling a chromosome from an interphase nucleus, debris or a stain blob.

The detector proposes every dark elongated object; a spread also holds nuclei,
debris and stain blobs, which it sometimes proposes too, and each one then costs
the karyotype a "+N".  The rejection step looks at what sets those apart (size and
shape against the spread's own chromosomes, darkness, texture, how confident the
detector and the classifier are) and removes an object only when a small logistic
model, fitted on detections of annotated spreads, is confident it is not a
chromosome.  The model is a few numbers in the detector's checkpoint (its
``normalization.rejection`` entry, fitted on that detector's own detections by
``benchmarks/chromosome_rejection.py``): no pickle, nothing to trust.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .segment import to_gray

FEATURES = (
    "score", "log_area", "log_length", "log_width", "solidity", "eccentricity", "extent",
    "darkness", "texture", "log_dist", "border", "max_prob", "entropy", "log_area_sq",
)


def object_features(image: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None,
                    scores: np.ndarray | None, probs: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, len(FEATURES)) features of labels 1..N, each against the spread's own medians.

    Sizes are relative to the median object, so the features do not move with the
    microscope's magnification; intensities relative to the median object's darkness,
    so they do not move with the stain.
    """
    from skimage.measure import regionprops

    gray = to_gray(image).astype(np.float32)
    n = int(labels.max()) if labels.size else 0
    feats = np.zeros((n, len(FEATURES)), np.float32)
    if n == 0:
        return feats, FEATURES
    bg = float(np.median(gray[labels == 0])) if (labels == 0).any() else 1.0
    dark = bg - gray  # stain is dark on a light field (G-band); Q-band spreads are inverted by to_gray's caller
    props = {p.label: p for p in regionprops(labels)}
    H, W = labels.shape
    area = np.ones(n, np.float32)
    length = np.ones(n, np.float32)
    width = np.ones(n, np.float32)
    cen = np.zeros((n, 2), np.float32)
    for k in range(1, n + 1):
        p = props.get(k)
        if p is None:
            continue
        i = k - 1
        area[i] = p.area
        length[i] = max(p.axis_major_length, 1.0)
        width[i] = max(p.axis_minor_length, 1.0)
        cen[i] = p.centroid
        feats[i, FEATURES.index("solidity")] = p.solidity
        feats[i, FEATURES.index("eccentricity")] = p.eccentricity
        feats[i, FEATURES.index("extent")] = p.extent
        vals = dark[tuple(p.coords.T)]
        feats[i, FEATURES.index("darkness")] = float(vals.mean())
        feats[i, FEATURES.index("texture")] = float(vals.std())
        y0, x0, y1, x1 = p.bbox
        feats[i, FEATURES.index("border")] = float(y0 == 0 or x0 == 0 or y1 == H or x1 == W)
    med_len = float(np.median(length))
    d = FEATURES.index
    feats[:, d("log_area")] = np.log(area / np.median(area))
    feats[:, d("log_area_sq")] = feats[:, d("log_area")] ** 2
    feats[:, d("log_length")] = np.log(length / med_len)
    feats[:, d("log_width")] = np.log(width / np.median(width))
    md = float(np.median(feats[:, d("darkness")])) or 1e-3
    feats[:, d("darkness")] = feats[:, d("darkness")] / md
    feats[:, d("texture")] = feats[:, d("texture")] / md
    centre = np.median(cen, 0)
    dist = np.linalg.norm(cen - centre, axis=1)
    feats[:, d("log_dist")] = np.log1p(dist / max(med_len, 1.0))
    feats[:, d("score")] = 1.0 if scores is None or len(scores) != n else np.asarray(scores, np.float32)
    if probs is not None and len(probs) == n:
        p = np.clip(np.asarray(probs, np.float64), 1e-9, 1)
        feats[:, d("max_prob")] = p.max(1)
        feats[:, d("entropy")] = -(p * np.log(p)).sum(1) / np.log(p.shape[1])
    else:
        feats[:, d("max_prob")] = 0.5
        feats[:, d("entropy")] = 0.5
    return feats, FEATURES


def rejection_probability(feats: np.ndarray, model: dict[str, Any]) -> np.ndarray:
    """P(not a chromosome) for each row of :func:`object_features`, from a logistic model's numbers."""
    names = list(model["features"])
    idx = [FEATURES.index(nm) for nm in names]
    x = (np.asarray(feats, np.float64)[:, idx] - np.asarray(model["mean"])) / np.asarray(model["scale"])
    z = x @ np.asarray(model["coef"], np.float64) + float(model["intercept"])
    return 1.0 / (1.0 + np.exp(-z))


def rejection_model(detector: Any) -> dict[str, Any] | None:
    """The rejection model a loaded chromosome detector's checkpoint carries, else None (no
    rejection: the model is fitted on one detector's own detections, and another detector's
    scores mean something else)."""
    meta = getattr(detector, "meta", None)
    own = (getattr(meta, "normalization", None) or {}).get("rejection") if meta is not None else None
    return dict(own) if own else None


def reject_objects(image: np.ndarray, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None,
                   probs: np.ndarray, model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Remove the objects the rejection model is confident are not chromosomes.

    Returns ``(labels, probs, boxes, rejected)``: labels renumbered 1..M, the kept rows of
    ``probs`` and ``boxes``, and one record per removed object (its box in image pixels,
    area and probability of not being a chromosome), so a reviewer can see and restore them.
    """
    feats, _ = object_features(image, labels, boxes, scores, probs)
    if not len(feats):
        return labels, probs, boxes, []
    p = rejection_probability(feats, model)
    drop = p >= float(model.get("threshold", 0.99))
    if not drop.any():
        return labels, probs, boxes, []
    n = len(feats)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1]
    rejected = [{"box": [float(v) for v in boxes[i]], "area": int(areas[i]),
                 "p_not_chromosome": round(float(p[i]), 4)} for i in np.flatnonzero(drop)]
    keep = np.flatnonzero(~drop)
    lut = np.zeros(n + 1, np.int32)
    lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[labels], np.asarray(probs)[keep], np.asarray(boxes)[keep], rejected
