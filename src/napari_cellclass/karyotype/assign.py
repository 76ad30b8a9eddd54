"""Class assignment of a spread's chromosomes under the pairing constraint.

A classifier looks at one chromosome at a time; a cell has (normally) two of each
autosome and XX or XY.  We solve one linear assignment of chromosomes to *slots*:
two normal slots per autosome, the sex slots of the XX or the XY configuration
(both are tried, the cheaper wins), one *extra* slot per class (a gain, e.g.
trisomy 21) that costs ``extra_cost`` nats, and *reject* slots (debris / not a
chromosome) that cost ``reject_cost``.  Normal slots carry a bonus of
``missing_cost`` nats, so leaving one empty (a loss, e.g. 45,X) costs exactly
that much.  Gains and losses are therefore found when the probabilities support
them, not forced away by the 46-slot template.

Size: a classifier sees a crop resized to its input, so it can call a long
chromosome "21".  With ``sizes`` (each object's area, or length, in pixels) the
cost adds a size term: sizes are put on the ideogram scale by matching the
spread's sorted sizes to the sorted relative lengths of a normal set, and each
class costs the Gaussian negative log-likelihood of the object's log size
ratio.  An object more than ``size_limit`` times the expected size of a class
(or less than 1 / ``size_limit``) can never take that class: a chromosome 1
cannot sit in the 21/22 slots whatever the classifier says.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..classes import CHROMOSOME_CLASSES as CLASS_NAMES
from ..errors import InputError

N_CLASSES = len(CLASS_NAMES)
X_INDEX, Y_INDEX = 22, 23
REJECT = -1


@dataclass
class Assignment:
    """Result of :func:`assign_classes` (one entry per chromosome, in input order)."""

    classes: np.ndarray  # (N,) int, class index 0..23 or -1 (rejected)
    confidence: np.ndarray  # (N,) float, probability of the assigned class
    flagged: np.ndarray  # (N,) bool, low confidence / extra / changed from argmax
    slot: list[str]  # "normal" | "extra" | "reject" | "manual"
    sex: str  # "XX" or "XY": the sex-slot template that fitted best
    counts: np.ndarray  # (24,) number of chromosomes per class
    cost: float
    reasons: list[str] = field(default_factory=list)

    def class_names(self) -> list[str]:
        return [CLASS_NAMES[c] if c >= 0 else "reject" for c in self.classes]


def _slots(sex: str) -> tuple[np.ndarray, np.ndarray]:
    """Slot class indices and slot kinds (0 normal, 1 extra) for a sex template."""
    cls: list[int] = []
    kind: list[int] = []
    for c in range(22):
        cls += [c, c, c]
        kind += [0, 0, 1]
    if sex == "XX":
        cls += [X_INDEX, X_INDEX, X_INDEX, Y_INDEX]
        kind += [0, 0, 1, 1]
    else:
        cls += [X_INDEX, X_INDEX, Y_INDEX, Y_INDEX]
        kind += [0, 1, 0, 1]
    return np.asarray(cls), np.asarray(kind)


FORBIDDEN = 50.0  # nats: a cost no assignment pays while any other slot is open


def size_costs(sizes: np.ndarray, sigma: float = 0.35, size_limit: float = 2.2) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24) size cost in nats and the (N,) sizes on the relative-length scale.

    Sizes are areas or lengths; only their ratios matter.  The scale is the median
    ratio of the sorted sizes to the sorted relative lengths of a 46,XX set taken
    at the same quantiles, so it needs no classifier and survives a few missing
    or extra objects.
    """
    from .ideogram import rel_lengths

    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1)
    n = len(sizes)
    if n == 0:
        return np.zeros((0, N_CLASSES)), np.zeros(0)
    rl = rel_lengths()
    ref = np.sort(np.concatenate([rl[:22], rl[:22], [rl[X_INDEX], rl[X_INDEX]]]))[::-1]
    q = (np.arange(n) + 0.5) / n
    ref_q = np.interp(q, (np.arange(len(ref)) + 0.5) / len(ref), ref)
    obs = np.sort(np.maximum(sizes, 1e-9))[::-1]
    scale = float(np.median(obs / ref_q))
    rel = np.maximum(sizes, 1e-9) / scale
    z = np.log(rel[:, None] / rl[None, :])
    cost = 0.5 * (z / sigma) ** 2
    cost[np.abs(z) > np.log(size_limit)] = FORBIDDEN
    return cost, rel


def assign_classes(
    probs: np.ndarray,
    *,
    missing_cost: float = 3.0,
    extra_cost: float = 3.0,
    reject_cost: float = 9.0,
    low_confidence: float = 0.5,
    fixed: dict[int, int] | None = None,
    sizes: np.ndarray | None = None,
    size_sigma: float = 0.35,
    size_limit: float = 2.2,
) -> Assignment:
    """Assign each chromosome a class with at most two per autosome and XX/XY.

    Parameters
    ----------
    probs : (N, 24) array of class probabilities (rows need not sum exactly to 1).
    sizes : (N,) object areas (or lengths) in pixels; adds the size term (see the module doc).
    size_sigma, size_limit : spread of log size ratio allowed for a class; hard limit on the ratio.
    missing_cost, extra_cost : nats charged for an empty normal slot / a used extra slot.
    reject_cost : nats for calling an object "not a chromosome".
    low_confidence : chromosomes whose assigned probability is below this are flagged.
    fixed : {row: class} set by the user; these rows keep their class and take a slot.

    Examples
    --------
    >>> p = np.full((2, 24), 0.01); p[:, 20] = 0.77
    >>> assign_classes(p).class_names()
    ['21', '21']
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != N_CLASSES:
        raise InputError(f"probs must have shape (N, {N_CLASSES}), got {probs.shape}")
    n = probs.shape[0]
    fixed = dict(fixed or {})
    nll = -np.log(np.clip(probs, 1e-9, 1.0))
    size_cost = None
    if sizes is not None:
        if len(np.asarray(sizes).reshape(-1)) != n:
            raise InputError(f"sizes must have one value per chromosome ({n}), got {np.shape(sizes)}")
        size_cost, _ = size_costs(sizes, size_sigma, size_limit)
        nll = nll + size_cost
    # a user's choice is certain and always kept, even beyond the slots (a fourth 21 the user
    # insists on stays a 21): fixed rows take their class's slots first, the others share the rest
    free = np.array([i for i in range(n) if i not in fixed], dtype=int)
    best: tuple[float, str, np.ndarray, np.ndarray] | None = None
    for sex in ("XX", "XY"):
        s_cls, s_kind = _slots(sex)
        avail = np.ones(len(s_cls), bool)
        total = missing_cost * int((s_kind == 0).sum())
        for c in fixed.values():
            cand = np.nonzero(avail & (s_cls == c))[0]
            if len(cand):
                k = cand[np.argsort(s_kind[cand], kind="stable")][0]  # a normal slot before an extra one
                avail[k] = False
                total += -missing_cost if s_kind[k] == 0 else extra_cost
        cols_ok = np.nonzero(avail)[0]
        assigned = np.full(len(free), -1)
        if len(free):
            cost = nll[free][:, s_cls[cols_ok]] + np.where(s_kind[cols_ok] == 0, -missing_cost, extra_cost)[None, :]
            cost = np.concatenate([cost, np.full((len(free), len(free)), reject_cost)], axis=1)
            rows, cols = linear_sum_assignment(cost)
            total += float(cost[rows, cols].sum())
            if len(cols_ok):
                assigned[rows] = np.where(cols < len(cols_ok), cols_ok[np.minimum(cols, len(cols_ok) - 1)], -1)
        if best is None or total < best[0] - 1e-9:
            best = (total, sex, assigned, s_cls)
    assert best is not None
    total, sex, assigned, s_cls = best
    s_cls_all, s_kind_all = _slots(sex)
    classes = np.full(n, REJECT, dtype=int)
    slot: list[str] = ["reject"] * n
    for i, col in zip(free, assigned):
        if col >= 0:
            classes[i] = s_cls_all[col]
            slot[i] = "normal" if s_kind_all[col] == 0 else "extra"
    for row, c in fixed.items():
        classes[row] = int(c)
    return _finish(probs, classes, slot, sex, total, low_confidence, fixed, size_cost)


def _finish(probs, classes, slot, sex, total, low_confidence, fixed, size_cost=None) -> Assignment:
    n = len(classes)
    conf = np.array([probs[i, c] if c >= 0 else 0.0 for i, c in enumerate(classes)])
    flagged = np.zeros(n, dtype=bool)
    reasons: list[str] = []
    argmax = probs.argmax(axis=1) if n else np.zeros(0, dtype=int)
    for i in range(n):
        why = []
        if i in fixed:
            slot[i] = "manual"
            conf[i] = 1.0
            reasons.append("")
            continue
        if conf[i] < low_confidence:
            why.append(f"low confidence {conf[i]:.2f}")
        informative = probs[i].max() - probs[i].min() > 1e-6  # a uniform row (no classifier) has no argmax
        if classes[i] >= 0 and classes[i] != argmax[i] and informative:
            by_size = size_cost is not None and size_cost[i, argmax[i]] >= FORBIDDEN
            why.append(f"moved from {CLASS_NAMES[argmax[i]]} by {'size' if by_size else 'pairing'}")
        if slot[i] == "extra":
            why.append("extra copy")
        if slot[i] == "reject":
            why.append("not placed (debris?)")
        flagged[i] = bool(why)
        reasons.append("; ".join(why))
    counts = np.bincount(classes[classes >= 0], minlength=N_CLASSES)
    return Assignment(classes, conf, flagged, slot, sex, counts, total, reasons)


def manual_assignment(probs: np.ndarray, classes: np.ndarray, low_confidence: float = 0.5) -> Assignment:
    """Wrap classes chosen elsewhere (e.g. argmax or all user-set) as an Assignment."""
    probs = np.asarray(probs, dtype=np.float64)
    classes = np.asarray(classes, dtype=int)
    counts = np.bincount(classes[classes >= 0], minlength=N_CLASSES)
    sex = "XY" if counts[Y_INDEX] else "XX"
    return _finish(probs, classes, ["normal"] * len(classes), sex, 0.0, low_confidence, {})
