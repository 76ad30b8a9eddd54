"""The pure (model-free) second half of karyotyping: pairing, summary, karyogram.

Kept apart from ``tasks/karyotype.py`` so the widget can re-pair and redraw
instantly when the user changes one chromosome's class, without touching the model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .assign import CLASS_NAMES, assign_classes
from .iscn import iscn_summary
from .karyogram import chromosome_crop, chromosome_table, make_karyogram
from .segment import label_boxes, to_gray


def spread_crops(image: np.ndarray, labels: np.ndarray, ids: list[int] | None = None) -> list[np.ndarray]:
    """uint8 crops (dark-on-light) of the given label ids, neighbours blanked to background."""
    gray = to_gray(image)
    n = int(labels.max()) if labels.size else 0
    ids = list(range(1, n + 1)) if ids is None else ids
    out = []
    for i in ids:
        c, m = chromosome_crop(gray, labels, i, pad=4)
        bg = float(np.median(gray[labels == 0])) if (labels == 0).any() else 1.0
        c = np.where(m, c, bg)
        out.append(np.clip(np.round(c * 255), 0, 255).astype(np.uint8))
    return out


def finish_karyotype(
    image: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    fixed: dict[int, int] | None = None,
    low_confidence: float = 0.5,
    pairing: bool = True,
    karyogram: bool = True,
) -> dict[str, Any]:
    """Pair, summarise and draw: probabilities (N, 24) for labels 1..N -> result dict.

    ``fixed`` maps a 0-based row (label - 1) to a class the user chose.
    """
    probs = np.asarray(probs, np.float64).reshape(-1, len(CLASS_NAMES))
    if pairing:  # object areas let the pairing keep long chromosomes out of small classes' slots
        areas = np.bincount(labels.ravel(), minlength=len(probs) + 1)[1:len(probs) + 1]
        a = assign_classes(probs, fixed=fixed, low_confidence=low_confidence, sizes=areas)
    else:
        from .assign import manual_assignment

        cls = probs.argmax(1) if len(probs) else np.zeros(0, int)
        for r, c in (fixed or {}).items():
            cls[r] = c
        a = manual_assignment(probs, cls, low_confidence)
    summary = iscn_summary(a.classes, a.flagged)
    table = chromosome_table(labels, a.classes, a.confidence, a.flagged, a.reasons)
    result: dict[str, Any] = {
        "labels": labels,
        "boxes": label_boxes(labels),
        "probabilities": probs,
        "classes": a.classes,
        "class_names": a.class_names(),
        "confidence": a.confidence,
        "flagged": a.flagged,
        "reasons": a.reasons,
        "slots": a.slot,
        "sex_template": a.sex,
        "summary": summary.text,
        "headline": summary.headline,
        "confident": summary.confident,
        "n_flagged": summary.n_flagged,
        "iscn_valid": summary.valid,
        "count": summary.count,
        "abnormal": summary.abnormal,
        "findings": summary.findings,
        "table": table,
        "fixed": dict(fixed or {}),
    }
    if karyogram:
        title = summary.headline
        result["karyogram"] = make_karyogram(image, labels, a.classes, flagged=a.flagged, title=title)
    return result
