"""A small CenterNet ("objects as points") detector that trains from scratch on a CPU.

Why this and not a small Faster R-CNN: with no ImageNet/COCO weights and two CPU
cores, a two-stage detector spends its budget learning anchors and proposals
and still misses small objects (BCCD platelets scored AP50 0.00 after five
minutes).  CenterNet predicts, at stride 4, one heat map per class whose peaks
are object centres, plus the box size (log scale) and a sub-pixel offset at each
peak.  Decoding is a 3x3 max-pool and a top-k: no anchors, no proposals, no NMS
tuning, and platelets (20 px at half resolution) get several heat-map cells.

The network is a compact residual encoder (strides 2-32) with a top-down path
back to stride 4 (a small FPN/U-Net), about 1 GMAC for a 320x256 input.
``model(x)`` on a batch (N, 3, H, W) in [0, 1] returns the raw head maps;
:func:`decode` turns them into boxes.  Images are normalised inside the model,
like torchvision's detectors, so callers feed plain RGB / 255.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register

STRIDE = 4
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Block(nn.Module):
    """Residual basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.c1 = _conv_bn(cin, cout, stride)
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.skip is None else self.skip(x)
        return F.relu(self.c2(self.c1(x)) + s)


class CenterNet(nn.Module):
    """Encoder (5 stages) + top-down decoder to stride 4 + heat-map / size / offset heads."""

    def __init__(self, num_classes: int = 3, widths: Sequence[int] = (16, 32, 48, 96, 128),
                 depths: Sequence[int] = (1, 2, 2, 2, 1), head: int = 48, head_hidden: int = 32,
                 max_detections: int = 300):
        super().__init__()
        self.max_detections = int(max_detections)  # peaks kept per image (a decoding setting, not a weight)
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError("widths and depths need 5 stages (strides 2, 4, 8, 16, 32)")
        self.num_classes = int(num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        stages, cin = [], 3
        for w, d in zip(widths, depths):
            blocks = [_Block(cin, w, 2)] + [_Block(w, w) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        # top-down: stride 32 -> 16 -> 8 -> 4, each adding a 1x1-projected skip
        self.lateral = nn.ModuleList([nn.Conv2d(widths[i], head, 1) for i in (1, 2, 3, 4)])
        self.smooth = nn.ModuleList([_conv_bn(head, head) for _ in range(3)])

        def _head(cout: int, bias: float = 0.0) -> nn.Sequential:
            h = nn.Sequential(nn.Conv2d(head, head_hidden, 3, 1, 1), nn.ReLU(inplace=True),
                              nn.Conv2d(head_hidden, cout, 1))
            nn.init.constant_(h[-1].bias, bias)
            return h

        self.heatmap = _head(self.num_classes, -math.log((1 - 0.01) / 0.01))  # prior: 1% of cells are centres
        self.size = _head(2)
        self.offset = _head(2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in (self.heatmap[-1], self.size[-1], self.offset[-1]):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.lateral[3](feats[4])
        for k, i in enumerate((3, 2, 1)):  # strides 16, 8, 4
            skip = self.lateral[i - 1](feats[i])
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest") + skip
            y = self.smooth[k](y)
        return {"heatmap": self.heatmap(y), "size": self.size(y), "offset": self.offset(y)}


# ----------------------------------------------------------------------------- targets and loss

def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: a centre this far off still gives a box with IoU >= ``min_overlap``."""
    a1, b1, c1 = 1, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 - math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return max(0.0, min(r1, r2, r3))


def encode_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, out_hw: tuple[int, int],
                   stride: int = STRIDE) -> dict[str, torch.Tensor]:
    """Targets for one image: boxes (N, 4) x0, y0, x1, y1 in input pixels, labels (N,) 0-based."""
    h, w = out_hw
    heat = torch.zeros(num_classes, h, w)
    size = torch.zeros(2, h, w)
    offset = torch.zeros(2, h, w)
    mask = torch.zeros(h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    # larger objects first, so a small one sharing a cell keeps its own size target
    order = torch.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), descending=True)
    for i in order.tolist():
        x0, y0, x1, y1 = (float(v) / stride for v in boxes[i])
        bw, bh = x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = int(min(max(cx, 0), w - 1)), int(min(max(cy, 0), h - 1))
        r = max(0.0, gaussian_radius(bh, bw))
        sigma = (2 * int(r) + 1) / 6
        g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma ** 2))
        c = int(labels[i])
        heat[c] = torch.maximum(heat[c], g)
        size[:, iy, ix] = torch.tensor([math.log(bw), math.log(bh)])
        offset[:, iy, ix] = torch.tensor([cx - ix, cy - iy])
        mask[iy, ix] = 1.0
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask}


def focal_loss(pred_logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = torch.sigmoid(pred_logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * neg
    n = pos.sum().clamp_min(1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def centernet_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], size_weight: float = 1.0,
                   offset_weight: float = 1.0) -> torch.Tensor:
    heat = focal_loss(out["heatmap"], targets["heatmap"])
    m = targets["mask"].unsqueeze(1)
    n = m.sum().clamp_min(1.0)
    size = (F.l1_loss(out["size"].float(), targets["size"], reduction="none") * m).sum() / n
    off = (F.l1_loss(out["offset"].float(), targets["offset"], reduction="none") * m).sum() / n
    return heat + size_weight * size + offset_weight * off


# ----------------------------------------------------------------------------- decoding

@torch.no_grad()
def decode(out: dict[str, torch.Tensor], k: int = 300, score_threshold: float = 0.05,
           stride: int = STRIDE) -> list[dict[str, torch.Tensor]]:
    """Peaks of the heat maps -> per image ``boxes`` (x0, y0, x1, y1 input pixels), ``labels`` (1-based), ``scores``."""
    heat = torch.sigmoid(out["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    n, c, h, w = heat.shape
    results = []
    for b in range(n):
        flat = peaks[b].reshape(-1)
        kk = min(k, flat.numel())
        scores, idx = flat.topk(kk)
        keep = scores >= score_threshold
        scores, idx = scores[keep], idx[keep]
        cls = idx // (h * w)
        pix = idx % (h * w)
        ys, xs = (pix // w), (pix % w)
        off = out["offset"][b].float()[:, ys, xs]
        sz = out["size"][b].float()[:, ys, xs].clamp(-2.0, 8.0).exp()
        cx, cy = xs.float() + off[0], ys.float() + off[1]
        boxes = torch.stack([cx - sz[0] / 2, cy - sz[1] / 2, cx + sz[0] / 2, cy + sz[1] / 2], 1) * stride
        results.append({"boxes": boxes, "labels": cls + 1, "scores": scores})
    return results


@register("centernet")
def build_centernet(num_classes: int = 3, widths: Sequence[int] = (16, 32, 48, 96, 128),
                    depths: Sequence[int] = (1, 2, 2, 2, 1), head: int = 48, head_hidden: int = 32,
                    max_detections: int = 300) -> CenterNet:
    """CenterNet with a small residual encoder; ``num_classes`` counts object classes (no background)."""
    return CenterNet(num_classes, widths, depths, head, head_hidden, max_detections)
