"""Matching predicted chromosomes to annotated boxes (IoU) for evaluation."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes (N,4) and (M,4), both y0, x0, y1, x1 (``torchvision.ops.box_iou``;
    IoU does not care which axis comes first as long as both sets agree).  Two empty boxes: 0."""
    from torchvision.ops import box_iou as iou

    a = torch.as_tensor(np.asarray(a, np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))
    return np.nan_to_num(iou(a, b).numpy(), nan=0.0)


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one matches (pred index, truth index) with IoU >= ``iou`` maximising total IoU."""
    if len(pred) == 0 or len(truth) == 0:
        return []
    m = box_iou(pred, truth)
    rows, cols = linear_sum_assignment(-m)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if m[r, c] >= iou]
