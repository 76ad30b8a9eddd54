"""Classification metrics, one module for every task, computed by scikit-learn.

Single-label (chromosomes, white cells): accuracy, macro F1 over the classes
present in the truth, per-class precision/recall/F1/support and the confusion
matrix (rows = truth).  Multi-label (HPA): per-class F1, macro F1 over the classes
present, exact-match ("subset") accuracy and per-label accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> np.ndarray:
    """(n, n) int64 counts, rows = truth, columns = prediction; every class has its row."""
    from sklearn.metrics import confusion_matrix

    if not len(y_true):
        return np.zeros((n, n), np.int64)
    return confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(n)).astype(np.int64)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str],
                           undefined: float | None = 0.0) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    A precision or recall with nothing to divide by (a class never predicted, or
    absent from the truth) is ``undefined`` (0.0, or None where a report should say
    "no data").  ``per_class[name]["accuracy"]`` is the class's recall (the fraction
    of its items classified right), None when it has no items.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    k = len(class_names)
    yt, yp = np.asarray(y_true, int), np.asarray(y_pred, int)
    cm = confusion(yt, yp, k)
    n = int(cm.sum())
    labels = np.arange(k)
    if n:
        prec, rec, f1, support = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=np.nan)
    else:
        prec = rec = f1 = np.full(k, np.nan)
        support = np.zeros(k, int)
    present = labels[support > 0]
    macro = float(f1_score(yt, yp, labels=present, average="macro", zero_division=0)) if len(present) else 0.0

    def val(v: float) -> float | None:
        return undefined if np.isnan(v) else float(v)

    per_class = {
        name: {"precision": val(prec[i]), "recall": val(rec[i]), "f1": 0.0 if np.isnan(f1[i]) else float(f1[i]),
               "support": int(support[i]), "accuracy": None if support[i] == 0 else float(rec[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(np.trace(cm) / n) if n else (0.0 if undefined is not None else float("nan")),
        "macro_f1": macro,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": n,
    }


def f1_per_class(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 per column of boolean (N, C) arrays; NaN where a class is absent from both."""
    from sklearn.metrics import f1_score

    truth, pred = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    if truth.shape[0] == 0:
        return np.full(truth.shape[1], np.nan)
    return np.asarray(f1_score(truth, pred, average=None, zero_division=np.nan), float)


def multilabel_metrics(truth: np.ndarray, probs: np.ndarray,
                       thresholds: np.ndarray | list[float] | float = 0.5) -> dict[str, float]:
    """Macro F1 (over classes present in ``truth``), subset accuracy and per-label accuracy."""
    thr = np.broadcast_to(np.asarray(thresholds, dtype=float), (probs.shape[1],))
    pred = probs >= thr
    truth = np.asarray(truth).astype(bool)
    f1 = f1_per_class(truth, pred)
    present = truth.any(0)
    return {
        "macro_f1": float(np.mean(np.nan_to_num(f1[present]))) if present.any() else float("nan"),
        "accuracy": float((pred == truth).all(1).mean()),
        "label_accuracy": float((pred == truth).mean()),
    }
