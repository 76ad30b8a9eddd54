"""Honest class probabilities: temperature scaling, expected calibration error, reliability plot.

A network trained with cross-entropy is over-confident on data it has not seen, so
its softmax "0.97" is not 97 %.  One temperature ``T`` (logits / T), fitted on
held-out data, fixes most of that without changing any argmax (Guo et al. 2017).
The checkpoint carries ``T`` and where it was fitted; the expected calibration error
(ECE) is reported on *other* held-out groups than the ones ``T`` was fitted on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence: sum over equal-width bins of |accuracy - confidence| x share."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(1)
    hit = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's data)."""
    probs = np.asarray(probs, np.float64)
    conf, hit = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                    "confidence": float(conf[sel].mean()) if sel.any() else float("nan"),
                    "accuracy": float(hit[sel].mean()) if sel.any() else float("nan")})
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (a 1-D convex search).

    ``logits`` may be log-probabilities (e.g. the log of a TTA-averaged softmax): the
    scaling is the same.
    """
    z = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    a, b = np.log(lo), np.log(hi)  # golden-section search on log T: NLL(T) is unimodal there
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2))


def scale_probs(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities re-tempered: softmax(log p / T) (argmax unchanged)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@dataclass
class Calibration:
    """A fitted temperature and what it did on groups it was not fitted on."""

    temperature: float
    ece_before: float
    ece_after: float
    n_fit: int
    n_test: int
    fit_on: str

    def to_dict(self) -> dict[str, float | int | str]:
        return {"temperature": round(self.temperature, 4), "ece_before": round(self.ece_before, 4),
                "ece_after": round(self.ece_after, 4), "n_fit": self.n_fit, "n_test": self.n_test,
                "fit_on": self.fit_on}


def fit_and_test_halves(groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the items whose group is fitted on (every other group, sorted) and tested on (the rest).

    With a single group both masks are all True: there is nothing else to measure on.
    """
    groups = np.asarray([str(g) for g in groups])
    fit_groups = set(sorted(set(groups))[0::2])
    fit = np.array([g in fit_groups for g in groups], bool)
    if fit.all() or not fit.any():
        return np.ones(len(groups), bool), np.ones(len(groups), bool)
    return fit, ~fit


def calibrate_held_out(probs: np.ndarray, labels: np.ndarray, groups: Sequence[str], *,
                       fit_on: str = "half of the held-out groups") -> Calibration:
    """Fit T on every other held-out group (sorted), measure the ECE on the rest."""
    fit, test = fit_and_test_halves(groups)
    if test.all():  # a single group: fit and test on it (said in fit_on)
        fit_on += " (one group: fitted and measured on the same data)"
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    t = fit_temperature(logp[fit], np.asarray(labels)[fit])
    return Calibration(temperature=t,
                       ece_before=expected_calibration_error(probs[test], np.asarray(labels)[test]),
                       ece_after=expected_calibration_error(scale_probs(probs[test], t), np.asarray(labels)[test]),
                       n_fit=int(fit.sum()), n_test=int(test.sum()), fit_on=fit_on)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """A reliability diagram (accuracy against confidence per bin) for one or more probability sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=100)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    for name, (probs, labels) in curves.items():
        rows = [r for r in reliability_bins(probs, labels) if r["n"]]
        ece = expected_calibration_error(probs, labels)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
