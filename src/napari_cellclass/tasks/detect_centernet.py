"""Training and inference for the CenterNet detector (:mod:`napari_cellclass.models.centernet`).

The CPU default of ``cellclass train detect``.  Images are brought to one pixel
scale (``pixel_scale``: BCCD's 640x480 fields become 320x240, where a red cell
is ~50 px and a platelet ~20 px), padded to a multiple of 32 and fed whole.
Augmentation, per batch: flips, transposes, a random zoom of +-20% with a
random placement on the canvas, and mild colour jitter (stains vary between
smears, but a platelet must stay violet).  After training, the score threshold
that maximises F1 on the validation images is stored in the checkpoint, so a
user starts from a threshold the model was measured at.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.data import SeededBatches
from ..engine.progress import Job, Progress, check_cancel
from ..io.detection_dataset import DetectionDataset
from ..models.centernet import CenterNet, STRIDE, centernet_loss, decode, encode_targets

ARCH = "centernet"
ALIGN = 32  # the encoder's total stride: canvas sides are multiples of it


def is_centernet(model: torch.nn.Module) -> bool:
    return isinstance(model, CenterNet)


def default_pixel_scale(ds: DetectionDataset) -> float:
    """Scale so the median image's short side is ~240 px (BCCD 480 -> 0.5); never enlarges."""
    sides = [min(it.height, it.width) for it in ds.items if it.height and it.width]
    if not sides:
        return 1.0
    return float(min(1.0, 240.0 / float(np.median(sides))))


def _resize(img: torch.Tensor, scale: float) -> torch.Tensor:
    """(3, H, W) float -> resized by ``scale`` (antialiased when shrinking)."""
    if abs(scale - 1.0) < 1e-6:
        return img
    h, w = img.shape[-2:]
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]


def _canvas(h: int, w: int) -> tuple[int, int]:
    return int(math.ceil(h / ALIGN) * ALIGN), int(math.ceil(w / ALIGN) * ALIGN)


class CenterNetBatches(SeededBatches):
    """Augmented (images, targets) batches at the model's pixel scale, images cached as uint8."""

    def __init__(self, ds: DetectionDataset, batch_size: int, scale: float, *, augment: bool = True,
                 seed: int = 0, zoom: float = 0.2, colour: float = 0.1):
        self.ds, self.bs, self.scale, self.augment = ds, max(1, int(batch_size)), float(scale), augment
        self.batch_size = self.bs
        self.zoom, self.colour = float(zoom), float(colour)
        self.rng = np.random.default_rng(seed)
        self.num_classes = len(ds.classes)
        self.images: list[torch.Tensor] = []
        self.boxes: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        for i in range(len(ds)):
            it = ds.items[i]
            if len(it) == 0:
                continue
            img = torch.from_numpy(np.ascontiguousarray(ds.image(i))).permute(2, 0, 1).float()
            img = _resize(img, self.scale).round().clamp(0, 255).to(torch.uint8)
            self.images.append(img)
            self.boxes.append(np.asarray(it.boxes, dtype=np.float32) * self.scale)
            self.labels.append(ds.label_ids(i) - 1)
        if not self.images:
            from ..errors import InputError

            raise InputError(f"{ds.source}: no image has any annotated object to learn from")
        hs = [im.shape[1] for im in self.images]
        ws = [im.shape[2] for im in self.images]
        self.canvas = _canvas(int(np.median(hs)), int(np.median(ws)))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.bs)

    def _place(self, img: torch.Tensor, boxes: np.ndarray, labels: np.ndarray, ch: int, cw: int,
               transpose: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        rng = self.rng
        x = img.float() / 255.0
        b = boxes.copy()
        if transpose:
            x = x.transpose(1, 2)
            b = b[:, [1, 0, 3, 2]]
        z = 1.0
        if self.augment and self.zoom:
            z = float(np.exp(rng.uniform(-self.zoom, self.zoom)))
            x = _resize(x, z)
            b = b * z
        h, w = x.shape[-2:]
        if self.augment:
            if rng.random() < 0.5:
                x = x.flip(-1)
                b[:, [0, 2]] = w - b[:, [2, 0]]
            if rng.random() < 0.5:
                x = x.flip(-2)
                b[:, [1, 3]] = h - b[:, [3, 1]]
        fill = x.flatten(1).median(dim=1).values.view(3, 1, 1)
        out = fill.expand(3, ch, cw).clone()
        # random placement: crop when larger than the canvas, pad (with the background colour) when smaller
        oy = int(rng.integers(min(0, ch - h), max(0, ch - h) + 1)) if self.augment else 0
        ox = int(rng.integers(min(0, cw - w), max(0, cw - w) + 1)) if self.augment else 0
        sy0, sx0 = max(0, -oy), max(0, -ox)
        dy0, dx0 = max(0, oy), max(0, ox)
        hh, ww = min(h - sy0, ch - dy0), min(w - sx0, cw - dx0)
        out[:, dy0:dy0 + hh, dx0:dx0 + ww] = x[:, sy0:sy0 + hh, sx0:sx0 + ww]
        b = b + np.array([ox, oy, ox, oy], dtype=np.float32)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        c = b.copy()
        c[:, [0, 2]] = c[:, [0, 2]].clip(0, cw)
        c[:, [1, 3]] = c[:, [1, 3]].clip(0, ch)
        vis = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        keep = (vis >= 0.35 * np.maximum(area, 1e-6)) & (c[:, 2] - c[:, 0] >= 2) & (c[:, 3] - c[:, 1] >= 2)
        if self.augment and self.colour:
            k = self.colour
            gain = torch.from_numpy(rng.uniform(1 - k, 1 + k, 3).astype(np.float32)).view(3, 1, 1)
            contrast = float(rng.uniform(1 - k, 1 + k))
            m = out.mean()
            out = ((out - m) * contrast + m) * gain
            out = out.clamp_(0, 1)
        return out, c[keep], labels[keep]

    def order(self) -> np.ndarray:
        return self.rng.permutation(len(self.images)) if self.augment else np.arange(len(self.images))

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ch, cw = self.canvas
        transpose = bool(self.augment and self.rng.random() < 0.5)
        h, w = (cw, ch) if transpose else (ch, cw)
        xs, targets = [], []
        for i in indices:
            x, b, lab = self._place(self.images[i], self.boxes[i], self.labels[i], h, w, transpose)
            xs.append(x)
            targets.append(encode_targets(torch.from_numpy(b), torch.from_numpy(lab.astype(np.int64)),
                                          self.num_classes, (h // STRIDE, w // STRIDE)))
        batch_t = {key: torch.stack([t[key] for t in targets]) for key in targets[0]}
        return torch.stack(xs), batch_t


def loss_fn(model: torch.nn.Module, batch: Any, epoch: int) -> torch.Tensor:
    x, targets = batch
    return centernet_loss(model(x), targets)


@torch.no_grad()
def infer(model: CenterNet, x: torch.Tensor, scale: float, policy: Any, score_threshold: float = 0.05,
          nms_iou: float = 0.5, max_detections: int | None = None) -> dict[str, np.ndarray]:
    """One image/tile (3, H, W) in [0, 1] -> numpy boxes (x0, y0, x1, y1 image pixels), labels, scores."""
    from torchvision.ops import batched_nms

    h, w = x.shape[-2:]
    xr = _resize(x.float(), scale)
    sh, sw = xr.shape[-2:]
    ch, cw = _canvas(sh, sw)
    pad = torch.zeros(3, ch, cw)
    pad[:] = xr.flatten(1).median(dim=1).values.view(3, 1, 1)
    pad[:, :sh, :sw] = xr
    model.eval()
    with torch.inference_mode(), policy.autocast():
        out = model(policy.prepare_input(pad[None], inference=True))
    out = {k: v.float().cpu() for k, v in out.items()}
    k = int(max_detections or getattr(model, "max_detections", 300))
    r = decode(out, k=k, score_threshold=score_threshold)[0]
    boxes = r["boxes"] / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
    ok = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
    boxes, labels, scores = boxes[ok], r["labels"][ok], r["scores"][ok]
    if len(boxes) and nms_iou < 1.0:
        keep = batched_nms(boxes, scores, labels, float(nms_iou))
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    return {"boxes": boxes.numpy().astype(np.float32), "labels": labels.numpy().astype(np.int64),
            "scores": scores.numpy().astype(np.float32), "masks": None}


def best_f1_threshold(ds: DetectionDataset, preds: list[dict[str, np.ndarray]], iou: float = 0.5) -> dict[str, float]:
    """The score threshold with the best F1 (all classes pooled, greedy matching at ``iou``)."""
    from torchvision.ops import box_iou

    records = []  # (score, is_true_positive)
    n_gt = 0
    for i, it in enumerate(ds.items):
        gt = torch.as_tensor(np.asarray(it.boxes, dtype=np.float32)).reshape(-1, 4)
        gl = np.asarray([ds.classes.index(lab) + 1 for lab in it.labels])
        n_gt += len(gt)
        p = preds[i]
        order = np.argsort(-p["scores"])
        used = np.zeros(len(gt), bool)
        ious = box_iou(torch.as_tensor(p["boxes"][order]).reshape(-1, 4), gt).numpy() if len(gt) else None
        for r, j in enumerate(order):
            tp = False
            if ious is not None:
                cand = np.where((gl == p["labels"][j]) & ~used, ious[r], 0.0)
                k = int(cand.argmax()) if cand.size else 0
                if cand.size and cand[k] >= iou:
                    used[k] = tp = True
            records.append((float(p["scores"][j]), tp))
    if not records or n_gt == 0:
        return {"score_threshold": 0.3, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    records.sort(key=lambda t: -t[0])
    tps = np.cumsum([t for _, t in records])
    k = np.arange(1, len(records) + 1)
    prec, rec = tps / k, tps / n_gt
    f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-9)
    best = int(f1.argmax())
    return {"score_threshold": round(float(records[best][0]), 3), "f1": float(f1[best]),
            "precision": float(prec[best]), "recall": float(rec[best])}


def predict_dataset(model: CenterNet, ds: DetectionDataset, scale: float, policy: Any, cancel: Any = None,
                    score_threshold: float = 0.01, nms_iou: float = 0.5) -> Job[list[dict[str, np.ndarray]]]:
    preds = []
    for i in range(len(ds)):
        check_cancel(cancel)
        x = torch.from_numpy(np.ascontiguousarray(ds.image(i))).permute(2, 0, 1).float().div_(255.0)
        preds.append(infer(model, x, scale, policy, score_threshold, nms_iou))
        yield Progress(i + 1, len(ds), "evaluate", f"image {i + 1}/{len(ds)}")
    return preds


def config_for(opts: Any, n_classes: int) -> dict[str, Any]:
    """Architecture keyword arguments: the small default, or ``--set widths=...`` etc."""
    cfg: dict[str, Any] = {"num_classes": n_classes}
    for key in ("widths", "depths"):
        v = opts.get(key)
        if v is not None:
            cfg[key] = [int(t) for t in (v if isinstance(v, (list, tuple)) else str(v).split(","))]
    for key in ("head", "head_hidden"):
        if opts.get(key) is not None:
            cfg[key] = int(opts.get(key))
    if opts.quick:
        cfg.setdefault("widths", [8, 16, 16, 32, 32])
        cfg.setdefault("depths", [1, 1, 1, 1, 1])
        cfg.setdefault("head", 16)
        cfg.setdefault("head_hidden", 16)
    return cfg


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
