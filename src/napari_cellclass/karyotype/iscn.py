"""ISCN-style numerical karyotype summary (``46,XY``, ``47,XX,+21``, ``45,X``).

Only numerical findings are described: structural rearrangements cannot be seen by
a per-chromosome classifier, so the summary never claims them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .assign import N_CLASSES, X_INDEX, Y_INDEX


@dataclass
class KaryotypeSummary:
    text: str  # e.g. "47,XX,+21"
    count: int
    abnormal: bool
    findings: list[str]  # e.g. ["+21"], ["count 45 (expected 46)"]


def iscn_summary(classes: np.ndarray | list[int]) -> KaryotypeSummary:
    """Summarise assigned classes (0..23, -1 = rejected, ignored) as an ISCN string."""
    cls = np.asarray(classes, dtype=int)
    cls = cls[cls >= 0]
    counts = np.bincount(cls, minlength=N_CLASSES)
    n = int(counts.sum())
    sex = "X" * int(counts[X_INDEX]) + "Y" * int(counts[Y_INDEX])
    parts = [str(n), sex or "--"]
    findings: list[str] = []
    for c in range(22):
        k = int(counts[c])
        if k > 2:
            findings += [f"+{c + 1}"] * (k - 2)
        elif k < 2:
            findings += [f"-{c + 1}"] * (2 - k)
    text = ",".join(parts + findings)
    abnormal = n != 46 or bool(findings) or sex not in ("XX", "XY")
    notes = list(findings)
    if n != 46:
        notes.insert(0, f"count {n} (expected 46)")
    if sex not in ("XX", "XY"):
        notes.append(f"sex chromosomes {sex or 'none'}")
    return KaryotypeSummary(text=text, count=n, abnormal=abnormal, findings=notes)
