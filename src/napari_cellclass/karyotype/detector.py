"""The learned chromosome detector: one box and one mask per chromosome of a spread.

Training needs only what annotated spreads have, boxes (Tseng et al. 2023 VOC
files): the network (:mod:`napari_cellclass.models.chromdet`) learns box centres
and sizes, and the stain inside boxes as foreground, so nuclei and debris, which
no box covers, are learnt as background.  At inference every centre peak is one
chromosome, and each stained pixel goes to the detection whose box centre is
nearest (in box units), which separates touching chromosomes and gives both
arms of a crossing to their own chromosome.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.data import SeededBatches
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError

TASK = "karyotype"
ARCH = "chromdet_unet"
PATCH = 192
WORK_SCALE = 0.5  # spreads are detected at half their pixel size: Tseng chromosomes are ~80 px long
MAX_SIDE = 1024  # and never larger than this (memory, time)
# blob_size() and stain_width() of the 143 Tseng training spreads at their own pixel size (medians; 5-95 %)
REFERENCE_BLOB = 36.6  # 31-47
REFERENCE_WIDTH = 10.2  # 7.2-12.8
MAX_OBJECTS = 500  # a metaphase spread holds 46 (polyploid cells a few hundred): more is another kind of image
AUG_RANGE = 1.35  # training rescales patches by 0.7-1.4: spreads within this factor of the reference are left as they are


# ----------------------------------------------------------------------------- input
def spread_input(image: np.ndarray) -> np.ndarray:
    """Float32 (H, W): chromosomes bright (about 1), flattened background 0, either banding polarity."""
    from scipy import ndimage as ndi

    from .segment import to_gray

    g = to_gray(image)
    if g.size == 0 or min(g.shape) < 16:
        raise InputError(f"a spread must be at least 16x16 pixels, got {g.shape}")
    if float(np.median(g)) < 0.5:  # bright chromosomes on dark (Q-band, DAPI): make them dark-on-light
        g = 1.0 - g
    f = max(1, min(g.shape) // 64)
    small = g[::f, ::f]
    bg_small = ndi.grey_closing(small, size=max(3, min(small.shape) // 12))  # chromosomes are darker
    bg_small = ndi.uniform_filter(bg_small, size=max(3, min(small.shape) // 12))
    bg = ndi.zoom(bg_small, (g.shape[0] / small.shape[0], g.shape[1] / small.shape[1]), order=1)
    bg = bg[: g.shape[0], : g.shape[1]]
    if bg.shape != g.shape:
        bg = np.pad(bg, [(0, g.shape[0] - bg.shape[0]), (0, g.shape[1] - bg.shape[1])], mode="edge")
    inv = np.clip(1.0 - g / np.maximum(bg, 1e-3), 0, 1)
    hi = float(np.percentile(inv, 99.5))
    if hi < 0.05:
        raise InputError("the image has no stained objects (blank or nearly uniform)")
    return np.clip(inv / hi, 0, 1.5).astype(np.float32)


def blob_size(x: np.ndarray) -> float:
    """Typical size (px, square root of area) of the stained blobs of a :func:`spread_input` image.

    The area-weighted median blob: specks hardly count and one nucleus does not
    dominate, so it tracks magnification linearly (tested: 17.9, 35.8, 71.5, 107 px
    on one Tseng spread at 0.5x, 1x, 2x, 3x) and varies about +-15 % between spreads.
    """
    from scipy import ndimage as ndi

    lab, n = ndi.label(x > 0.5)
    if n == 0:
        return float(REFERENCE_BLOB)
    areas = np.bincount(lab.ravel())[1:]
    areas = np.sort(areas[areas >= max(16, 1e-5 * x.size)])
    if areas.size == 0:
        return float(REFERENCE_BLOB)
    cum = np.cumsum(areas) / areas.sum()
    return float(np.sqrt(areas[np.searchsorted(cum, 0.5)]))


def stain_width(x: np.ndarray) -> float:
    """Typical chromosome width (px) of a :func:`spread_input` image: twice the median distance to the
    background along the stain's skeleton.  Touching chromosomes and clumps do not widen it."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    fg = ndi.binary_opening(x > 0.5)
    skeleton = skeletonize(fg)
    if not skeleton.any():
        return float(REFERENCE_WIDTH)
    return float(2 * np.median(ndi.distance_transform_edt(fg)[skeleton]))


def magnification(x: np.ndarray, reference_blob: float | None = None, reference_width: float | None = None) -> float:
    """How many times larger than the training spreads' this spread's chromosomes are (1.0: leave it).

    Two measures must agree: blob size alone reads clumped spreads as magnified
    (held-out Tseng spreads at their own scale read up to 2.1x) and width alone
    varies with condensation (0.7-1.4x), but a real change of magnification moves
    both.  Only when both are outside the training jitter (:data:`AUG_RANGE`) on the
    same side is their geometric mean returned; no held-out Tseng spread is then
    touched, and 0.5x-3x zooms are all corrected.

    The correction is the power of two nearest their geometric mean: what is left
    (0.71-1.41x) lies within the training jitter, and the same spread scanned at 2x or
    4x then lands on exactly the working image of 1x, so its count does not move with
    the error of the estimate (same count within +-1 at 0.5x, 1x, 2x and 4x on 8 of 12
    held-out Tseng spreads, 6 of 12 with the estimate itself; unchanged at 1x).
    """
    rb = blob_size(x) / float(reference_blob or REFERENCE_BLOB)
    rw = stain_width(x) / float(reference_width or REFERENCE_WIDTH)
    if (rb > AUG_RANGE and rw > AUG_RANGE) or (rb < 1 / AUG_RANGE and rw < 1 / AUG_RANGE):
        return float(2.0 ** np.round(np.log2(np.sqrt(rb * rw))))
    return 1.0


# ----------------------------------------------------------------------------- targets
def make_targets(x: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Training targets for one (scaled) spread; ``boxes`` (N, 4) as y0, x0, y1, x1 in its pixels."""
    H, W = x.shape
    heat = np.zeros((H, W), np.float32)
    size = np.zeros((2, H, W), np.float32)
    size_w = np.zeros((H, W), np.float32)
    inside = np.zeros((H, W), bool)
    yy, xx = np.arange(H)[:, None], np.arange(W)[None, :]
    for y0, x0, y1, x1 in np.asarray(boxes, float).reshape(-1, 4):
        h, w = max(y1 - y0, 1.0), max(x1 - x0, 1.0)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        iy, ix = int(np.clip(round(cy), 0, H - 1)), int(np.clip(round(cx), 0, W - 1))
        sig = max(1.0, min(h, w) / 6.0)
        r = int(3 * sig) + 1
        ya, yb, xa, xb = max(0, iy - r), min(H, iy + r + 1), max(0, ix - r), min(W, ix + r + 1)
        g = np.exp(-((yy[ya:yb] - iy) ** 2 + (xx[:, xa:xb] - ix) ** 2) / (2 * sig * sig))
        heat[ya:yb, xa:xb] = np.maximum(heat[ya:yb, xa:xb], g)
        heat[iy, ix] = 1.0
        size[:, iy, ix] = (math.log(h / 16.0), math.log(w / 16.0))
        size_w[iy, ix] = 1.0
        inside[max(0, int(y0) - 1):int(math.ceil(y1)) + 1, max(0, int(x0) - 1):int(math.ceil(x1)) + 1] = True
    fg = (x > 0.35) & inside
    return {"fg": fg.astype(np.float32), "heat": heat, "size": size, "size_w": size_w}


@dataclass
class Spread:
    x: np.ndarray  # spread_input
    boxes: np.ndarray  # y0, x0, y1, x1
    name: str


def load_spreads(pairs: Sequence[tuple[Path, Path]], cancel: CancelToken | None = None) -> list[Spread]:
    from ..io.spread_reader import read_spread_image as _read_spread
    from ..io.spread_reader import spread_truth as _truth

    out = []
    for k, (img, side) in enumerate(pairs):
        if k % 10 == 0:
            check_cancel(cancel)
        boxes, _ = _truth(img, side)
        out.append(Spread(spread_input(_read_spread(img)), np.asarray(boxes, float).reshape(-1, 4), img.stem))
    return out


class PatchBatches(SeededBatches):
    """Random scaled, flipped, rotated patches with their targets; ``per_spread`` patches per epoch."""

    def __init__(self, spreads: Sequence[Spread], batch_size: int = 8, per_spread: int = 4,
                 scale: tuple[float, float] = (0.7 * WORK_SCALE, 1.4 * WORK_SCALE), patch: int = PATCH,
                 seed: int = 0):
        self.spreads = list(spreads)
        self.batch_size, self.per_spread, self.scale, self.patch = batch_size, per_spread, scale, patch
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return (len(self.spreads) * self.per_spread + self.batch_size - 1) // self.batch_size

    def _sample(self, sp: Spread) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from skimage.transform import rescale

        rng, P = self.rng, self.patch
        s = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        x = rescale(sp.x, s, order=1, anti_aliasing=s < 1).astype(np.float32)
        boxes = sp.boxes * s
        H, W = x.shape
        if H < P or W < P:
            x = np.pad(x, [(0, max(0, P - H)), (0, max(0, P - W))])
            H, W = x.shape
        if len(boxes) and rng.random() < 0.8:  # most patches centred near chromosomes
            b = boxes[rng.integers(len(boxes))]
            cy, cx = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            y0 = int(np.clip(cy - P / 2 + rng.integers(-P // 3, P // 3 + 1), 0, H - P))
            x0 = int(np.clip(cx - P / 2 + rng.integers(-P // 3, P // 3 + 1), 0, W - P))
        else:
            y0, x0 = int(rng.integers(0, H - P + 1)), int(rng.integers(0, W - P + 1))
        t_full = make_targets(x[y0:y0 + P, x0:x0 + P], _clip_boxes(boxes - [y0, x0, y0, x0], P))
        xp = x[y0:y0 + P, x0:x0 + P] * rng.uniform(0.75, 1.25) + rng.normal(0, 0.03, (P, P)).astype(np.float32)
        k = int(rng.integers(4))
        flip = rng.random() < 0.5

        def geo(a: np.ndarray) -> np.ndarray:
            a = np.rot90(a, k, axes=(-2, -1))
            return np.ascontiguousarray(a[..., ::-1] if flip else a)

        t = {key: geo(v) for key, v in t_full.items()}
        if k % 2:  # box height and width swap under a quarter turn
            t["size"] = t["size"][::-1].copy()
        return geo(xp.astype(np.float32)), t

    def order(self) -> list[int]:
        order = [i for i in range(len(self.spreads)) for _ in range(self.per_spread)]
        self.rng.shuffle(order)
        return order

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        items = [self._sample(self.spreads[i]) for i in indices]
        x = torch.from_numpy(np.stack([it[0] for it in items]))[:, None]
        t = {key: torch.from_numpy(np.stack([it[1][key] for it in items])) for key in items[0][1]}
        return x, t


def _clip_boxes(boxes: np.ndarray, P: int) -> np.ndarray:
    """Boxes whose centre lies in the patch (centre targets only exist there)."""
    if not len(boxes):
        return boxes
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return boxes[(cy >= 0) & (cy < P) & (cx >= 0) & (cx < P)]


# ----------------------------------------------------------------------------- loss
def detector_loss(out: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on centres, L1 on log box size, BCE on foreground."""
    out = out.float()
    fg_loss = F.binary_cross_entropy_with_logits(out[:, 0], t["fg"])
    p = torch.sigmoid(out[:, 1]).clamp(1e-4, 1 - 1e-4)
    pos = t["heat"] >= 0.999
    n_pos = pos.sum().clamp(min=1)
    focal = -(((1 - p) ** 2 * torch.log(p))[pos].sum()
              + ((1 - t["heat"]) ** 4 * p ** 2 * torch.log(1 - p))[~pos].sum()) / n_pos
    w = t["size_w"][:, None]
    size_loss = (torch.abs(out[:, 2:4] - t["size"]) * w).sum() / (2 * w.sum().clamp(min=1))
    return focal + fg_loss + size_loss


# ----------------------------------------------------------------------------- inference
TTA_FLIPS = {1: [()], 2: [(), (3,)], 4: [(), (3,), (2,), (2, 3)]}  # flip dims of NCHW: none, left-right, up-down
# Chosen by F1 on 36 *training* spreads among tta 1/4 x threshold 0.2/0.25/0.3 (4 flips at 0.2: 0.919;
# the old 1 pass at 0.3: 0.908); on the 36 held-out spreads recall 0.888 -> 0.928, precision 0.948 -> 0.931
DEFAULT_TTA = 4
DEFAULT_SCORE = 0.2


def _forward_padded(model: torch.nn.Module, x: np.ndarray, autocast, tta: int = 1) -> np.ndarray:
    """The (4, H, W) output; with ``tta`` 2 or 4 the mean over flipped copies (flipped back).

    Flips leave box heights and widths as they are, so every channel averages as is.
    """
    m = getattr(model, "multiple", 16)
    H, W = x.shape
    ph, pw = (-H) % m, (-W) % m
    t = torch.from_numpy(np.pad(x, [(0, ph), (0, pw)]))[None, None]
    flips = TTA_FLIPS.get(int(tta))
    if flips is None:
        raise InputError(f"tta must be 1, 2 or 4, got {tta}")
    batch = torch.cat([t.flip(f) if f else t for f in flips])
    param = next(model.parameters(), None)
    if param is not None:
        batch = batch.to(param.device)
    with torch.inference_mode(), autocast():
        out = model(batch).float()
    out = torch.stack([o.flip([d - 1 for d in f]) if f else o for o, f in zip(out, flips)]).mean(0)
    return out[:, :H, :W].cpu().numpy()


def decode(out: np.ndarray, score_threshold: float = 0.3, nms_iou: float = 0.5
           ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4: y0, x0, y1, x1) and scores from the network's (4, H, W) output."""
    from torchvision.ops import nms

    heat = torch.sigmoid(torch.from_numpy(out[1]))[None, None]
    peak = (F.max_pool2d(heat, 5, stride=1, padding=2) == heat) & (heat > score_threshold)
    ys, xs = np.nonzero(peak[0, 0].numpy())
    if not len(ys):
        return np.zeros((0, 4)), np.zeros(0)
    scores = heat[0, 0].numpy()[ys, xs]
    h = 16.0 * np.exp(np.clip(out[2, ys, xs], -3, 4))
    w = 16.0 * np.exp(np.clip(out[3, ys, xs], -3, 4))
    boxes = np.stack([ys + 0.5 - h / 2, xs + 0.5 - w / 2, ys + 0.5 + h / 2, xs + 0.5 + w / 2], 1)
    keep = nms(torch.from_numpy(boxes[:, [1, 0, 3, 2]]).float(), torch.from_numpy(scores).float(), nms_iou).numpy()
    return boxes[keep], scores[keep]


def instance_labels(fg: np.ndarray, boxes: np.ndarray, return_kept: bool = False):
    """Give each foreground pixel to the detection whose box centre is nearest in box units.

    With ``return_kept`` also the indices of the boxes that kept a mask (label k is box kept[k-1]).
    """
    H, W = fg.shape
    best = np.full((H, W), np.inf, np.float32)
    labels = np.zeros((H, W), np.int32)
    for k, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, float).reshape(-1, 4), start=1):
        h, w = max(y1 - y0, 1.0), max(x1 - x0, 1.0)
        ya, yb = max(0, int(y0 - 0.1 * h)), min(H, int(math.ceil(y1 + 0.1 * h)))
        xa, xb = max(0, int(x0 - 0.1 * w)), min(W, int(math.ceil(x1 + 0.1 * w)))
        if yb <= ya or xb <= xa:
            continue
        yy = (np.arange(ya, yb)[:, None] + 0.5 - (y0 + y1) / 2) / h
        xx = (np.arange(xa, xb)[None, :] + 0.5 - (x0 + x1) / 2) / w
        d = (yy * yy + xx * xx).astype(np.float32)
        sub_fg, sub_best = fg[ya:yb, xa:xb], best[ya:yb, xa:xb]
        within = (np.abs(yy) <= 0.6) & (np.abs(xx) <= 0.6)  # the box and a 10% margin
        take = sub_fg & within & (d < sub_best)
        sub_best[take] = d[take]
        labels[ya:yb, xa:xb][take] = k
    out, kept = _tidy(labels)
    return (out, kept) if return_kept else out


def _tidy(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep each label's largest connected piece (stray pixels of a neighbour go to background)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    out = np.zeros_like(labels)
    objs = ndi.find_objects(labels)
    for k, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        m = labels[sl] == k
        lab, n = ndi.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            m = lab == (int(np.argmax(sizes)) + 1)
        if m.sum() >= 4:
            out[sl][m] = k
    out, _, inverse = relabel_sequential(out)
    return out.astype(np.int32), np.asarray(inverse.in_values[inverse.in_values > 0], int) - 1


def detector_device(device: str | None) -> str | None:
    """The device a spread detector runs on: the one asked for, else CUDA when present, else the CPU."""
    return "cpu" if device is None and not torch.cuda.is_available() else device


def detect_chromosomes(image: np.ndarray, model: Any, device: str | None = None,
                       score_threshold: float | None = None, cancel: CancelToken | None = None,
                       work_scale: float | None = None, tta: int = DEFAULT_TTA) -> Job[dict[str, Any]]:
    """``{"labels", "boxes", "scores", "seconds"}`` for one spread.

    Magnification is normalised (:func:`magnification`): a spread imaged larger or
    smaller than the training spreads is detected at a working scale that brings its
    chromosomes to the training size (a spread scanned at 3x is found as well as at
    1x).  ``work_scale`` given explicitly is used as it is.

    ``boxes`` (y0, x0, y1, x1, image pixels) are the detections, row k-1 for label k: they
    follow the annotators' box convention, which the masks' own bounding boxes do not.
    ``score_threshold=None`` is the detector's own (:func:`model_score_threshold`).
    """
    from ..zoo.loaded import load_model

    t0 = time.monotonic()
    lm = load_model(model, task=TASK, device=detector_device(device), in_channels=1)
    yield Progress(0, 2, "detect", "normalising spread")
    out, f, shape = network_output(image, lm, work_scale, tta, cancel)
    yield Progress(1, 2, "detect", "separating chromosomes")
    if score_threshold is None:
        score_threshold = model_score_threshold(lm)
    labels, boxes, scores = objects_from_output(out, f, shape, score_threshold)
    yield Progress(2, 2, "detect", f"{int(labels.max())} chromosomes")
    return {"labels": labels, "boxes": boxes, "scores": scores, "seconds": round(time.monotonic() - t0, 3)}


def model_score_threshold(lm: Any) -> float:
    """The detector's own operating point (chosen on its training spreads), else :data:`DEFAULT_SCORE`."""
    norm = (lm.meta.normalization if getattr(lm, "meta", None) is not None else None) or {}
    return float(norm.get("score_threshold", DEFAULT_SCORE))


def network_output(image: np.ndarray, lm: Any, work_scale: float | None = None, tta: int = DEFAULT_TTA,
                   cancel: CancelToken | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The network's (4, h, w) output on the spread at its working scale, that scale, and the spread's shape.

    Kept apart from :func:`objects_from_output` so that several score thresholds can be
    measured on one forward pass (benchmarks)."""
    from skimage.transform import resize

    norm = lm.meta.normalization if lm.meta is not None else {}
    scale = float(norm.get("work_scale", WORK_SCALE))
    reference = float(norm.get("reference_blob", REFERENCE_BLOB))
    explicit_scale = work_scale is not None
    work_scale = work_scale or scale
    x = spread_input(image)
    H, W = x.shape
    if not explicit_scale:
        work_scale = work_scale / magnification(x, reference)
    f = min(float(work_scale), MAX_SIDE / max(H, W))
    xs = resize(x, (round(H * f), round(W * f)), order=1, anti_aliasing=True).astype(np.float32) if f != 1 else x
    check_cancel(cancel)
    return _forward_padded(lm.net, xs, lm.policy.autocast, tta), f, (H, W)


def objects_from_output(out: np.ndarray, f: float, shape: tuple[int, int], score_threshold: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, boxes, scores) in the spread's own pixels from :func:`network_output`."""
    from skimage.transform import resize

    boxes, scores = decode(out, score_threshold)
    if len(boxes) > MAX_OBJECTS:  # the per-object work (masks, crops, classification) is bounded before it starts
        raise InputError(f"{len(boxes)} objects were found, more than the {MAX_OBJECTS} a metaphase spread can "
                         "hold: is this one spread? Crop a single spread, or use the threshold segmenter")
    fg = 1 / (1 + np.exp(-out[0])) > 0.5
    labels, kept = instance_labels(fg, boxes, return_kept=True)
    boxes, scores = boxes[kept], scores[kept]  # box k-1 belongs to label k
    if f != 1:
        labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        boxes = boxes / f
    return labels, boxes, scores


# ----------------------------------------------------------------------------- training
def train(data: Path, opts) -> Job[dict[str, Any]]:
    """Train the detector on VOC-annotated spreads, split by spread (same rule and seed as the classifier)."""
    from ..engine.device import resolve_device
    from ..engine.run import train_run

    amp = opts.get("amp")
    policy = resolve_device(opts.device, amp=None if amp is None else bool(amp))
    return (yield from train_run(TASK, opts, lambda ctx: _train_spec(Path(data), ctx), policy=policy,
                                 run_name="karyotype-detector"))


def _train_spec(data: Path, ctx) -> Job[Any]:
    """The detector's part of a run (:mod:`napari_cellclass.engine.run`): random patches, CenterNet-style loss."""
    from ..engine.checkpoint import CheckpointMeta
    from ..engine.run import TrainSpec
    from ..karyotype.metrics import match_boxes
    from ..models.registry import build_model
    from ..recipes import Recipe
    from ..io.spread_reader import annotated_spreads

    opts = ctx.opts
    recipe = Recipe.from_options(opts, lr=2e-3, batch_size=8, optimizer="adamw", schedule="cosine",
                                 epochs=2 if opts.quick else 60, grad_clip=5.0)
    pairs = annotated_spreads(Path(data))
    train_p, val_p = split_spreads(pairs, float(opts.get("val_fraction", 0.2)), opts.seed)
    yield Progress(0, None, "load", f"{len(train_p)} training and {len(val_p)} validation spreads")
    train_s = load_spreads(train_p, opts.cancel)
    val_s = load_spreads(val_p, opts.cancel)
    widths = [int(v) for v in opts.get("widths", [8, 12, 16, 24, 32] if opts.quick else [8, 16, 32, 48, 64])]
    cfg = {"in_channels": 1, "widths": widths}
    model = build_model(ARCH, **cfg)
    patch = int(opts.get("patch", 128 if opts.quick else PATCH))
    batches = PatchBatches(train_s, recipe.batch_size, int(opts.get("per_spread", 4)), patch=patch, seed=opts.seed)
    eval_every = int(opts.get("eval_every", 5))

    def loss_fn(m: torch.nn.Module, batch, epoch: int) -> torch.Tensor:
        x, t = batch
        return detector_loss(m(x), t)

    def evaluate_fn(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        if (epoch + 1) % eval_every and epoch + 1 != recipe.epochs:
            return {}
        m.eval()
        metrics = score_spreads(m, val_s, match_boxes, opts.cancel)
        m.train()
        return metrics

    def make_meta(best: dict[str, float], hist: list[dict[str, float]]) -> CheckpointMeta:
        return CheckpointMeta(
            task=TASK, arch=ARCH, class_names=["chromosome"], in_channels=1, input_size=[patch, patch],  # any size at inference
            arch_config=cfg,
            normalization={"preprocess": "spread_input", "max_side": MAX_SIDE, "work_scale": WORK_SCALE,
                           "polarity": "auto (either banding)", "output": "fg, centre heat, log box size"},
            training={"recipe": recipe.to_dict(), "data": str(data), "train_spreads": len(train_s),
                      "val_spreads": len(val_s), "val_names": [s.name for s in val_s], "history": hist},
            metrics=dict(best), trained_on=str(opts.get("trained_on", data)),
        )

    # the last epoch is kept (cosine schedule): choosing an epoch on the validation spreads would
    # make their numbers optimistic
    return TrainSpec(model=model, batches=batches.loader(), loss_fn=loss_fn, recipe=recipe, make_meta=make_meta,
                     evaluate=evaluate_fn, monitor="epoch", mode="max",
                     summary={"n_train": len(train_s), "n_val": len(val_s)})


def split_spreads(pairs: Sequence[tuple[Path, Path]], val_fraction: float, seed: int):
    """The classifier's split by spread (:func:`split_by_cell` on the annotation stems), so the
    detector and the classifier hold out the same spreads and the end-to-end numbers are honest."""
    from ..io.chromosome_dataset import ChromosomeSample, split_by_cell

    def source(img: Path) -> str:  # the data set folder: each is split on its own (sources.txt)
        return img.parent.parent.name if img.parent.name == "images" else img.parent.name

    samples = [ChromosomeSample(img, 0, side.stem, source=source(Path(img))) for img, side in pairs]
    tr, va = split_by_cell(samples, val_fraction, seed)
    val_cells = {s.cell for s in va}
    return [p for p in pairs if p[1].stem not in val_cells], [p for p in pairs if p[1].stem in val_cells]


def score_spreads(model: torch.nn.Module, spreads: Sequence[Spread], match_boxes,
                  cancel: CancelToken | None = None) -> dict[str, float]:
    """Recall, precision (IoU 0.5) and the share of spreads counted exactly, on prepared spreads."""
    from contextlib import nullcontext

    tp = n_pred = n_true = exact = 0
    from skimage.transform import rescale

    for sp in spreads:
        check_cancel(cancel)
        x = rescale(sp.x, WORK_SCALE, order=1, anti_aliasing=True).astype(np.float32)
        boxes, _ = decode(_forward_padded(model, x, nullcontext))
        boxes = boxes / WORK_SCALE
        tp += len(match_boxes(boxes, sp.boxes, 0.5))
        n_pred += len(boxes)
        n_true += len(sp.boxes)
        exact += int(len(boxes) == len(sp.boxes))
    return {"recall": tp / max(n_true, 1), "precision": tp / max(n_pred, 1),
            "count_exact": exact / max(len(spreads), 1)}
