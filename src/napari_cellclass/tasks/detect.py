"""Cell detection (seed 002): train, evaluate, predict and detect with Faster/Mask R-CNN.

Conventions
    * ``detect`` returns boxes as ``(y0, x0, y1, x1)`` (napari's row/col order);
      datasets and annotation files use ``x0, y0, x1, y1`` (VOC/COCO order).
    * Class ids inside the network are 1-based (0 is background); results carry names.
    * A model keeps the pixel scale it was trained at (``training.pixel_scale`` in the
      checkpoint): images and tiles of any size are resized by that same factor, so an
      object is as many pixels tall at prediction as in training.
    * Large images are cut into tiles with overlap; detections cut by an inner tile
      edge are dropped when the neighbouring tile sees the whole object, then
      class-wise NMS merges the rest, so an object straddling a border is found once.
      The overlap must exceed the largest object (default 128 px).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budget import WORK_BYTES_PER_PIXEL
from ..engine import csvsafe
from ..engine.augment import flip_detection
from ..engine.checkpoint import CheckpointMeta, load_checkpoint
from ..engine.data import SeededBatches
from ..engine.progress import CancelToken, Job, Progress, check_cancel, run_sync
from ..errors import InputError
from ..io.detection_dataset import DetectionDataset, from_layers, load_dataset, read_image, to_rgb_uint8
from ..models import detection as detection_models  # registers the archs (incl. fasterrcnn_tiny)
from ..models.registry import build_model
from ..zoo.loaded import LoadedModel, load_model, model_file
from . import detect_centernet as dc
from .base import TaskOptions

TASK = "detect"
DEFAULT_ARCH = "fasterrcnn_resnet50_fpn_v2"  # the seed's detector: the default on a CUDA GPU
CPU_ARCH = "centernet"  # elsewhere: trains from scratch on a CPU in tens of minutes
QUICK_ARCH = "fasterrcnn_tiny"


def default_arch(policy: Any, quick: bool = False) -> str:
    """The architecture ``cellclass train detect`` uses when none is named: it must suit the device."""
    if quick:
        return QUICK_ARCH
    return DEFAULT_ARCH if policy.device.type == "cuda" else CPU_ARCH


# ----------------------------------------------------------------------------- images

def prepare_image(image: Any, hpa: bool | None = None) -> np.ndarray:
    """RGB, gray, RGBA or an HPA set -> (H, W, 3) uint8.

    An HPA set is a list/tuple of four 2D arrays (red, green, blue, yellow) or a
    ``(4, H, W)`` array (or ``(H, W, 4)`` with ``hpa=True``; otherwise that shape
    is RGBA).  Seed 002 merges it into RGB: half of yellow goes into red, half into green.
    """
    if isinstance(image, (list, tuple)):
        if len(image) != 4:
            raise InputError(f"an HPA set needs 4 channel images (red, green, blue, yellow), got {len(image)}")
        stack = np.stack([np.asarray(getattr(c, "data", c), dtype=np.float32) for c in image])
        return _merge_rgby(stack)
    a = np.asarray(getattr(image, "data", image))
    if a.ndim == 3 and a.shape[0] == 4 and a.shape[2] != 4 and hpa is not False:
        return _merge_rgby(a.astype(np.float32))
    if a.ndim == 3 and a.shape[2] == 4 and hpa:
        return _merge_rgby(np.moveaxis(a, 2, 0).astype(np.float32))
    return to_rgb_uint8(a)


def _merge_rgby(stack: np.ndarray) -> np.ndarray:
    if stack.ndim != 3 or stack.shape[0] != 4:
        raise InputError(f"an HPA set must be 4 same-size 2D channels, got {stack.shape}")
    scale = 255.0 if stack.max(initial=0) <= 255 else float(np.percentile(stack, 99.8)) or 1.0
    r, g, b, y = (stack / scale * 255.0)
    rgb = np.stack([r + y / 2, g + y / 2, b], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


# ----------------------------------------------------------------------------- training data

class _Batches(SeededBatches):
    """(images, targets) batches for torchvision detectors; random flips (torchvision v2) when augmenting."""

    def __init__(self, ds: DetectionDataset, batch_size: int, *, masks: bool, augment: bool, seed: int,
                 cache: bool = True):
        self.ds, self.bs, self.masks, self.augment = ds, max(1, batch_size), masks, augment
        self.batch_size = self.bs
        self.rng = np.random.default_rng(seed)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.idx = [i for i in range(len(ds)) if len(ds.items[i]) > 0]
        if not self.idx:
            raise InputError(f"{ds.source}: no image has any annotated object to learn from")
        from ..io.limits import check_training_signal

        # every image blank (all-black exports): refused before training; normally one image is read
        check_training_signal((self._image(i) for i in self.idx[:64]), ds.source)

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.bs)

    def _image(self, i: int) -> np.ndarray:
        if self.cache is None:
            return self.ds.image(i)
        if i not in self.cache:
            self.cache[i] = self.ds.image(i)
        return self.cache[i]

    def sample(self, i: int, flip: tuple[bool, bool] = (False, False)) -> tuple[torch.Tensor, dict]:
        img = self._image(i)
        target: dict[str, torch.Tensor] = {"labels": torch.from_numpy(self.ds.label_ids(i))}
        m = self.ds.masks(i, img.shape[:2]) if self.masks else None
        x, target["boxes"], m = flip_detection(_tensor(img), self.ds.items[i].boxes, m, *flip)
        if m is not None:
            target["masks"] = m
        return x, target

    def order(self) -> list[int]:
        order = list(self.idx)
        if self.augment:
            self.rng.shuffle(order)
        return order

    def fetch(self, indices: list[int]) -> tuple[list[torch.Tensor], list[dict]]:
        images, targets = [], []
        for i in indices:
            flip = (bool(self.rng.random() < 0.5), bool(self.rng.random() < 0.5)) if self.augment else (False, False)
            im, t = self.sample(i, flip)
            images.append(im)
            targets.append(t)
        return images, targets


def _detection_loss(model: torch.nn.Module, batch: Any, epoch: int) -> torch.Tensor:
    images, targets = batch
    losses = model(images, targets)
    return sum(losses.values())


def _pixel_scale(ds: DetectionDataset, min_size: int, max_size: int) -> float:
    scales = [min(min_size / min(it.height, it.width), max_size / max(it.height, it.width))
              for it in ds.items if it.height and it.width]
    return float(np.median(scales)) if scales else 1.0


def split_by_image(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Held-out split by image (never by object): (train indices, validation indices)."""
    from ..io.splits import grouped_split

    return grouped_split(range(n), fraction, seed, at_least_one=fraction > 0)


def _default_config(arch: str, opts: TaskOptions, n_classes: int, image_size: int | None) -> dict[str, Any]:
    # default: native resolution (pixel scale 1), capped so a CPU can cope
    native = min(image_size, 512 if arch == QUICK_ARCH else 800) if image_size else (128 if arch == QUICK_ARCH else 800)
    size = int(opts.size or opts.get("min_size") or native)
    cfg: dict[str, Any] = {"num_classes": n_classes + 1, "min_size": size,
                           "max_size": int(opts.get("max_size") or max(size, round(size * 1333 / 800)))}
    if arch == QUICK_ARCH:
        if opts.get("masks"):
            cfg["masks"] = True
        if opts.get("width"):
            cfg["width"] = int(opts.get("width"))
        if opts.get("anchor_sizes"):
            cfg["anchor_sizes"] = [int(v) for v in opts.get("anchor_sizes")]
    return cfg


def _train_job(train_ds: DetectionDataset, val_ds: DetectionDataset | None, opts: TaskOptions, *,
               source: str, trained_on: str, init_from: Path | None = None) -> Job[dict]:
    """Shared by ``train`` (folders) and ``train_from_layers`` (the widget's fine-tune)."""
    from ..engine.run import train_run

    return (yield from train_run(TASK, opts, lambda ctx: _train_spec(ctx, train_ds, val_ds, source=source,
                                                                      trained_on=trained_on, init_from=init_from)))


def _train_spec(ctx, train_ds: DetectionDataset, val_ds: DetectionDataset | None, *, source: str, trained_on: str,
                init_from: Path | None) -> Job[Any]:
    """Detection's part of a run (:mod:`napari_cellclass.engine.run`): R-CNN or CenterNet, mAP50."""
    from ..engine.run import TrainSpec
    from ..recipes import Recipe

    opts, policy = ctx.opts, ctx.policy
    classes = list(train_ds.classes)
    init_state = None
    if init_from is not None:  # fine-tune: keep the checkpoint's architecture and classes (plus new ones)
        # the raw state dict and header, not a built network; a built-in name resolves as everywhere
        ck = load_checkpoint(model_file(init_from, task=TASK), task=TASK)
        arch = ck.meta.arch
        classes = list(ck.meta.class_names) + [c for c in classes if c not in ck.meta.class_names]
        cfg = dict(ck.meta.arch_config, num_classes=len(classes) + (0 if arch == dc.ARCH else 1))
        init_state = ck.state_dict
        init_scale = ck.meta.training.get("pixel_scale")
    else:
        arch = opts.arch or default_arch(policy, opts.quick)
        init_scale = None
        if arch == dc.ARCH:
            cfg = dc.config_for(opts, len(classes))
        else:
            sizes = [min(it.height, it.width) for it in train_ds.items if it.height and it.width]
            cfg = _default_config(arch, opts, len(classes), int(np.median(sizes)) if sizes else None)
    centernet = arch == dc.ARCH
    train_ds.classes = classes
    if val_ds is not None:
        val_ds.classes = classes
    model = build_model(arch, **cfg)
    transfer = None
    if init_state is not None:
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape},
                              strict=False)
    elif opts.pretrained:
        transfer = detection_models.load_coco_transfer(model, arch)
    masks = detection_models.has_masks(model)
    yield Progress(0, None, "model", f"{arch}: {len(classes)} classes; device {policy.describe()}")
    if centernet:
        recipe = Recipe.from_options(opts, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                                     epochs=8 if opts.quick else 80, schedule="cosine",
                                     warmup_epochs=0.0 if opts.quick else 2.0, batch_size=4 if opts.quick else 8,
                                     grad_clip=10.0)
        scale = float(opts.get("pixel_scale") or init_scale or dc.default_pixel_scale(train_ds))
        batches = dc.CenterNetBatches(train_ds, recipe.batch_size, scale, augment=recipe.augment, seed=opts.seed)
    else:
        recipe = Recipe.from_options(opts, optimizer="momentum" if not opts.quick else "adam",
                                     lr=0.01 if not opts.quick else 2e-3, weight_decay=1e-4,
                                     epochs=10 if not opts.quick else 8,
                                     schedule="constant" if opts.quick else "cosine",
                                     warmup_epochs=0.0 if opts.quick else 1.0,
                                     batch_size=4 if not opts.quick else 2, grad_clip=10.0)
        batches = _Batches(train_ds, recipe.batch_size, masks=masks, augment=recipe.augment, seed=opts.seed)
        scale = _pixel_scale(train_ds, cfg["min_size"], cfg["max_size"])
    validate = val_ds is not None and len(val_ds) > 0 and opts.get("validate", True)
    evaluate_fn = None
    if validate:
        def evaluate_fn(m: torch.nn.Module, epoch: int) -> dict[str, float]:
            m.eval()
            if centernet:
                preds = [dc.infer(m, _tensor(val_ds.image(i)), scale, policy, 0.01) for i in range(len(val_ds))]
            else:
                preds = [_infer_whole(m, _tensor(val_ds.image(i)), scale, policy) for i in range(len(val_ds))]
            r = coco_metrics(val_ds, preds, classes)
            m.train()
            res = {"mAP50": r["mAP50"], "mAP": r["mAP"]}
            res.update({f"AP50_{c}": v["AP50"] for c, v in r["per_class"].items()})
            if centernet:  # the operating point users start from
                f1 = dc.best_f1_threshold(val_ds, preds)
                res.update({"score_threshold": f1["score_threshold"], "f1_at_threshold": f1["f1"]})
            return res

    def make_meta(best: dict[str, float], hist: list[dict[str, float]]) -> CheckpointMeta:
        input_size = list(batches.canvas) if centernet else [cfg["min_size"], cfg["max_size"]]
        threshold = float(best.get("score_threshold", 0.3 if centernet else 0.7))
        return CheckpointMeta(
            task=TASK, arch=arch, class_names=classes, in_channels=3,
            input_size=input_size, arch_config=cfg,
            normalization={"input": "RGB uint8 / 255 (HPA: yellow half into red and green)",
                           "model": "ImageNet mean/std inside the network"},
            thresholds=None,
            training={"source": source, "epochs": recipe.epochs, "pixel_scale": scale, "history": hist,
                      "device": policy.describe(), "recipe": recipe.to_dict(), "coco_transfer": transfer,
                      "fine_tuned_from": str(init_from) if init_from else None,
                      "score_threshold": threshold, "nms_iou": 0.5,
                      "train_images": _image_names(train_ds),
                      "val_images": _image_names(val_ds) if val_ds is not None else [],
                      "split": opts.get("split_rule", "by image")},
            metrics=best, trained_on=trained_on,
        )

    return TrainSpec(
        model=model, batches=batches.loader(), loss_fn=dc.loss_fn if centernet else _detection_loss, recipe=recipe,
        make_meta=make_meta, evaluate=evaluate_fn, monitor="mAP50" if validate else "loss",
        mode="max" if validate else "min",
        summary={"classes": classes, "arch": arch, "train_images": len(train_ds),
                 "val_images": len(val_ds) if val_ds is not None else 0})


def _image_names(ds: DetectionDataset) -> list[str]:
    return [it.image_path.name if it.image_path is not None else "" for it in ds.items]


def _held_out(ds: DetectionDataset, data: Path, opts: TaskOptions) -> tuple[list[int], list[int]]:
    """Train/validation indices.  ``split=image`` (default): random images; ``split=smear``:
    whole groups of overlapping fields of view, stratified by white-cell class where a
    ``wbc_labels.csv`` exists (:mod:`napari_cellclass.io.blood_split`), the built-in's rule."""
    frac = float(opts.get("val_fraction", 0.2))
    rule = str(opts.get("split", "image")).lower()
    seed = int(opts.get("split_seed", opts.seed))  # --set split_seed=N: same split, other training seed
    if rule == "image":
        opts.extra.setdefault("split_rule", f"by image, {frac:.0%} held out at random, seed {seed}")
        return split_by_image(len(ds), frac, seed)
    if rule != "smear":
        raise InputError(f"split must be 'image' or 'smear', got {rule!r}")
    from ..io.blood_split import overlap_groups
    from ..io.splits import grouped_split

    paths = [it.image_path for it in ds.items]
    strata = ["none"] * len(paths)
    table = Path(data) / "wbc_labels.csv"
    if Path(data).is_dir() and table.is_file():
        import csv

        with open(table, newline="") as fh:
            cls = {r["image"].strip(): (r.get("category") or "none").strip().upper() for r in csv.DictReader(fh)}
        strata = [cls.get(p.name, "none") for p in paths]
    groups = overlap_groups(paths)
    opts.extra.setdefault("split_rule", f"by smear area: {len(paths)} images in {len(set(groups))} groups of "
                                        f"overlapping fields; {frac:.0%} of the groups of each white-cell class "
                                        f"held out, seed {seed}")
    return grouped_split(groups, frac, seed, strata=strata)


def train(data: Path, opts: TaskOptions) -> Job[dict]:
    """Train on a VOC folder or COCO JSON; ``val_fraction`` (0.2) is held out by image (``split=smear``: by
    groups of overlapping fields, see :func:`_held_out`)."""
    ds = load_dataset(data, classes=opts.get("classes"), allow_new_classes=bool(opts.get("allow_new_classes", False)))
    yield Progress(0, None, "split", "choosing held-out images")
    tr, va = _held_out(ds, Path(data), opts)
    val = ds.subset(va) if va else None
    result = yield from _train_job(ds.subset(tr), val, opts, source=str(data),
                                   trained_on=str(opts.get("trained_on", data)), init_from=opts.model)
    return result


def train_from_layers(image: Any, boxes: np.ndarray, labels: list[str], opts: TaskOptions,
                      polygons: list[np.ndarray | None] | None = None) -> Job[dict]:
    """Fine-tune (``opts.model``) or train on one image from the viewer.

    ``boxes`` are ``(N, 4)`` ``y0, x0, y1, x1`` (napari order); ``polygons`` are
    ``(K, 2)`` row, col vertices (or None) and give instance masks; without one
    the box itself is the mask (seed 002).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]]
    polys = None if polygons is None else [None if p is None else np.asarray(p)[:, ::-1] for p in polygons]
    ds = from_layers(prepare_image(image), b, list(labels), polys)
    opts.extra.setdefault("validate", False)
    result = yield from _train_job(ds, None, opts, source="viewer layers", trained_on="viewer annotations",
                                   init_from=opts.model)
    return result


# ----------------------------------------------------------------------------- inference

def _set_scale(model: torch.nn.Module, h: int, w: int, scale: float) -> None:
    t = model.transform
    t.min_size = (max(8, int(round(min(h, w) * scale))),)
    t.max_size = max(8, int(math.ceil(max(h, w) * scale)) + 1)


#: one lock per torchvision detector: its input size and thresholds are attributes of the
#: network, which zoo.loaded shares between callers, so they are set and used under it
_FORWARD_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _forward_lock(model: torch.nn.Module) -> threading.Lock:
    with _LOCKS_LOCK:
        lock = _FORWARD_LOCKS.get(model)
        if lock is None:
            lock = _FORWARD_LOCKS[model] = threading.Lock()
        return lock


def _infer_whole(model: torch.nn.Module, x: torch.Tensor, scale: float, policy, score_threshold: float | None = None,
                 nms_iou: float | None = None) -> dict[str, np.ndarray]:
    """One image/tile -> numpy boxes (x0,y0,x1,y1), 1-based label ids, scores, masks (N,h,w) or None.

    ``score_threshold``/``nms_iou`` apply to this call only (None: the network's own,
    as during training's validation).  A torchvision detector keeps them, and its
    input size, as attributes; they are set and the forward run under the network's
    lock, so two callers of one shared (cached) network cannot mix them up.
    """
    if dc.is_centernet(model):  # CenterNet takes them as arguments: nothing on the network changes
        return dc.infer(model, x, scale, policy,
                        getattr(model, "score_thresh", 0.05) if score_threshold is None else float(score_threshold),
                        getattr(model, "nms_thresh", 0.5) if nms_iou is None else float(nms_iou))
    h, w = x.shape[-2:]
    with _forward_lock(model):
        _set_scale(model, h, w, scale)
        if score_threshold is not None or nms_iou is not None:
            _set_thresholds(model, score_threshold, nms_iou)
        with torch.inference_mode(), policy.autocast():
            out = model([x.to(policy.device)])[0]
    res = {k: out[k].float().cpu().numpy() for k in ("boxes", "scores")}
    res["labels"] = out["labels"].cpu().numpy()
    res["masks"] = out["masks"][:, 0].float().cpu().numpy() > 0.5 if "masks" in out else None
    return res


def _tiles(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _merge(boxes, labels, scores, truncated, nms_iou: float) -> np.ndarray:
    """Indices kept: drop edge-cut boxes covered by a whole one, then class-wise NMS."""
    from torchvision.ops import batched_nms

    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    whole = np.nonzero(~truncated)[0]
    for i in np.nonzero(truncated)[0]:
        same = whole[labels[whole] == labels[i]]
        if len(same) == 0:
            continue
        b = boxes[i]
        ix0 = np.maximum(b[0], boxes[same, 0]); iy0 = np.maximum(b[1], boxes[same, 1])
        ix1 = np.minimum(b[2], boxes[same, 2]); iy1 = np.minimum(b[3], boxes[same, 3])
        inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
        area = max((b[2] - b[0]) * (b[3] - b[1]), 1e-6)
        if (inter / area).max() > 0.5:
            keep[i] = False
    idx = np.nonzero(keep)[0]
    k = batched_nms(torch.as_tensor(boxes[idx], dtype=torch.float32), torch.as_tensor(scores[idx]),
                    torch.as_tensor(labels[idx]), nms_iou).numpy()
    return idx[k]


def _set_thresholds(model: torch.nn.Module, score_threshold: float | None, nms_iou: float | None) -> None:
    """Only under :func:`_forward_lock` (see :func:`_infer_whole`): the network may be shared."""
    target = getattr(model, "roi_heads", model)  # torchvision: the ROI heads
    if score_threshold is not None:
        target.score_thresh = float(score_threshold)
    if nms_iou is not None:
        target.nms_thresh = float(nms_iou)


def model_score_threshold(meta: CheckpointMeta) -> float:
    """The score threshold a model recommends (chosen on its validation images), else 0.7."""
    return float(meta.training.get("score_threshold", 0.7) or 0.7)


def detect(image: Any, model_path: Any, device: str | None = None, score_threshold: float | None = None,
           nms_iou: float = 0.5, tile: int | None = None, overlap: int = 128, cancel: CancelToken | None = None,
           hpa: bool | None = None) -> Job[dict]:
    """Detect objects in one image.

    Returns ``boxes`` (N, 4) ``y0, x0, y1, x1``, ``labels`` (names), ``label_ids``
    (1-based), ``scores``, ``class_names``, and for Mask R-CNN models
    ``instance_labels`` (H, W) int32 (object k painted as k + 1; higher scores on top).
    ``tile=None`` tiles automatically only images larger than 2048 px (tile 1024).
    ``score_threshold=None`` uses the model's own (stored at training); ``message``
    says how many objects passed it, also when none did (a normal result).
    """
    lm = load(model_path, device)  # a name, a path or a loaded model (used as it is)
    model, meta, policy = lm.net, lm.meta, lm.policy
    rgb = prepare_image(image, hpa)
    H, W = rgb.shape[:2]
    scale = float(meta.training.get("pixel_scale", 1.0))
    if score_threshold is None:
        score_threshold = model_score_threshold(meta)
    if tile is None and max(H, W) > 2048:
        tile = 1024
    tile = int(tile) if tile else max(H, W)
    overlap = int(min(max(0, overlap), tile // 2)) if tile < max(H, W) else 0
    ys, xs = _tiles(H, tile, overlap), _tiles(W, tile, overlap)
    total = len(ys) * len(xs)
    # float32 per tile, not for the whole image: 12 bytes a pixel of a 16000 px field would be 3 GB
    x_all = _tensor(rgb) if total == 1 else None
    all_b, all_l, all_s, all_t, all_m = [], [], [], [], []
    step = 0
    for y0 in ys:
        for x0 in xs:
            check_cancel(cancel)
            y1, x1 = min(H, y0 + tile), min(W, x0 + tile)
            x = x_all if x_all is not None else _tensor(rgb[y0:y1, x0:x1])
            r = _infer_whole(model, x, scale, policy, score_threshold, nms_iou)
            b = r["boxes"] + [x0, y0, x0, y0]
            edge = 2.0
            cut = np.zeros(len(b), dtype=bool)
            if x0 > 0:
                cut |= r["boxes"][:, 0] <= edge
            if y0 > 0:
                cut |= r["boxes"][:, 1] <= edge
            if x1 < W:
                cut |= r["boxes"][:, 2] >= (x1 - x0) - edge
            if y1 < H:
                cut |= r["boxes"][:, 3] >= (y1 - y0) - edge
            all_b.append(b); all_l.append(r["labels"]); all_s.append(r["scores"]); all_t.append(cut)
            if r["masks"] is not None:
                all_m.extend((m, y0, x0) for m in r["masks"])
            step += 1
            yield Progress(step, total, "detect", f"tile {step}/{total}")
    boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4))
    labels = np.concatenate(all_l).astype(np.int64) if all_l else np.zeros(0, np.int64)
    scores = np.concatenate(all_s) if all_s else np.zeros(0)
    truncated = np.concatenate(all_t) if all_t else np.zeros(0, bool)
    keep = _merge(boxes, labels, scores, truncated, nms_iou) if total > 1 else np.argsort(-scores, kind="stable")
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    names = list(meta.class_names)
    result: dict[str, Any] = {
        "boxes": boxes[keep][:, [1, 0, 3, 2]].astype(np.float64).reshape(-1, 4),
        "label_ids": labels[keep],
        "labels": [names[i - 1] if 0 < i <= len(names) else str(i) for i in labels[keep]],
        "scores": scores[keep].astype(np.float64),
        "class_names": names,
        "device": policy.describe(),
        "tiles": total,
        "score_threshold": float(score_threshold),
        "message": f"{len(keep)} object(s) above score {float(score_threshold):.2f}",
    }
    if all_m:
        inst = np.zeros((H, W), dtype=np.int32)
        for rank in range(len(keep) - 1, -1, -1):  # lowest score first, so the best ends on top
            m, y0, x0 = all_m[keep[rank]]
            region = inst[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            region[m] = rank + 1
        result["instance_labels"] = inst
    return result


# ----------------------------------------------------------------------------- evaluation

def coco_metrics(ds: DetectionDataset, preds: list[dict[str, np.ndarray]], classes: list[str]) -> dict[str, Any]:
    """COCO-style mAP@0.5 and mAP@[.5:.95] (overall and per class) with pycocotools' COCOeval.

    ``preds[i]`` holds ``boxes`` (x0, y0, x1, y1), 1-based ``labels``, ``scores`` for image i.
    VOC ``difficult`` objects are marked ``iscrowd`` so they neither count as misses nor as hits.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    aid = 1
    for i, it in enumerate(ds.items):
        seen_hw = preds[i].get("image_hw") if isinstance(preds[i], dict) else None
        h = it.height or (int(seen_hw[0]) if seen_hw is not None else 1)
        w = it.width or (int(seen_hw[1]) if seen_hw is not None else 1)
        images.append({"id": i + 1, "width": w, "height": h})
        for b, lab, attrs in zip(it.boxes, it.labels, it.attributes):
            if it.width is None and seen_hw is not None:  # no declared size: clip to the image read (1e300 -> edge)
                b = np.clip(np.asarray(b, dtype=np.float64), 0, [w, h, w, h])
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            if not (np.isfinite([bw, bh]).all() and bw > 0 and bh > 0):
                continue  # nothing left inside the image: not an object to find
            anns.append({"id": aid, "image_id": i + 1, "category_id": classes.index(lab) + 1,
                         "bbox": [float(b[0]), float(b[1]), bw, bh], "area": bw * bh,
                         "iscrowd": int(bool(attrs.get("difficult", 0)))})
            aid += 1
        p = preds[i]
        for b, lab, s in zip(p["boxes"], p["labels"], p["scores"]):
            dets.append({"image_id": i + 1, "category_id": int(lab), "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not dets:  # no detections: AP 0 where there was something to find, undefined (NaN) otherwise
            nan = float("nan")
            per = {c: {"AP50": 0.0 if any(a["category_id"] == k + 1 for a in anns) else nan,
                       "AP": 0.0 if any(a["category_id"] == k + 1 for a in anns) else nan}
                   for k, c in enumerate(classes)}
            return {"mAP50": 0.0 if anns else nan, "mAP": 0.0 if anns else nan, "per_class": per,
                    "images": len(images), "objects": len(anns), "detections": 0}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxdets]

    def ap(p: np.ndarray) -> float:
        v = p[p > -1]
        return float(v.mean()) if v.size else float("nan")

    per_class = {}
    for k, c in enumerate(classes):
        per_class[c] = {"AP50": ap(prec[0, :, k, 0, -1]), "AP": ap(prec[:, :, k, 0, -1]),
                        "objects": sum(1 for a in anns if a["category_id"] == k + 1)}
    return {"mAP50": ap(prec[0, :, :, 0, -1]), "mAP": ap(prec[:, :, :, 0, -1]), "per_class": per_class,
            "images": len(images), "objects": len(anns), "detections": len(dets)}


def _predict_dataset(model, meta, ds: DetectionDataset, policy, cancel, score_threshold: float = 0.05,
                     nms_iou: float = 0.5) -> Job[list[dict]]:
    # the network comes from load_model: already in eval mode on policy.device (and maybe shared)
    scale = float(meta.training.get("pixel_scale", 1.0))
    preds = []
    for i in range(len(ds)):
        check_cancel(cancel)
        img = ds.image(i)
        r = _infer_whole(model, _tensor(img), scale, policy, score_threshold, nms_iou)
        r["image_hw"] = tuple(img.shape[:2])  # the size the metrics clip boxes to when none was declared
        preds.append(r)
        yield Progress(i + 1, len(ds), "evaluate", f"image {i + 1}/{len(ds)}")
    return preds


def load(model: Any, device: Any = None) -> LoadedModel:
    """The detector: a built-in name, a checkpoint path or a :class:`LoadedModel`."""
    return load_model(model, task=TASK, device=device)


def evaluate(model: Path, data: Path, opts: TaskOptions) -> Job[dict]:
    """mAP on a VOC folder or COCO JSON. JSON-able result.

    ``model`` is a checkpoint file or a built-in model's name.  ``--set split=val``
    evaluates only the images the model held out when it was trained (listed in
    its checkpoint), ``split=train`` the others; default: all images given.
    """
    lm = load(model, opts.device)
    net, meta, policy = lm.net, lm.meta, lm.policy
    model = lm.path or model
    ds = load_dataset(data, classes=list(meta.class_names))
    unknown = [c for c in ds.classes if c not in meta.class_names]
    if unknown:
        raise InputError(f"dataset has classes the model does not know: {unknown}", data)
    ds.classes = list(meta.class_names)
    split = str(opts.get("split", "all")).lower()
    if split in ("val", "train"):
        wanted = set(meta.training.get(f"{split}_images") or [])
        if not wanted:
            raise InputError(f"the model does not list its {split} images; evaluate on a folder of held-out images")
        idx = [i for i, name in enumerate(_image_names(ds)) if name in wanted]
        if not idx:
            raise InputError(f"none of the model's {split} images are in this dataset", data)
        ds = ds.subset(idx)
    t0 = time.monotonic()
    # AP integrates over every threshold: keep low-scored detections (CenterNet: as its own validation did)
    floor = 0.01 if meta.arch == dc.ARCH else 0.05
    preds = yield from _predict_dataset(net, meta, ds, policy, opts.cancel,
                                        float(opts.get("score_threshold", floor)), float(opts.get("nms_iou", 0.5)))
    secs = time.monotonic() - t0
    r = coco_metrics(ds, preds, ds.classes)
    r.update({"model": str(model), "data": str(data), "split": split, "device": policy.describe(),
              "images_per_s": round(len(ds) / max(secs, 1e-9), 2), "trained_on": meta.trained_on})
    return json.loads(json.dumps(r, default=float))


def _refusal(path: Any, exc: InputError) -> dict[str, str]:
    from ..engine.batch import refusal

    return refusal(path, exc.problem)


def predict(model: Path, inputs: list[Path], opts: TaskOptions) -> Job[dict]:
    """Detect in image files; writes ``detections.csv`` and ``detections_coco.json`` into ``opts.out``."""
    import csv

    from ..engine.atomic import atomic_path

    model = load(model, opts.device)  # once, for every image
    meta, policy = model.meta, model.policy
    out = Path(opts.out or Path("runs") / f"{TASK}-predict-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows, images, anns = [], [], []
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(meta.class_names)]
    refused: list[dict[str, str]] = []
    for n, path in enumerate(inputs):
        try:  # an unreadable, blank, constant or tiny image is refused with its reason; the others go on
            img = read_image(Path(path), work=WORK_BYTES_PER_PIXEL)  # over the memory budget: refused unread
            from ..io.limits import check_informative

            check_informative(img, "the image", min_side=8)
            thr = opts.get("score_threshold")
            r = yield from detect(img, model, device=opts.device, score_threshold=None if thr is None else float(thr),
                                  nms_iou=float(opts.get("nms_iou", 0.5)), tile=opts.get("tile"),
                                  overlap=int(opts.get("overlap", 128)), cancel=opts.cancel)
        except InputError as exc:
            refused.append(_refusal(path, exc))
            continue
        images.append({"id": n + 1, "file_name": str(Path(path).resolve()), "width": img.shape[1],
                       "height": img.shape[0]})
        for k, (b, lab, lid, s) in enumerate(zip(r["boxes"], r["labels"], r["label_ids"], r["scores"])):
            y0, x0, y1, x1 = (float(v) for v in b)
            rows.append({"image": str(path), "label": lab, "score": round(float(s), 4),
                         "y0": y0, "x0": x0, "y1": y1, "x1": x1})
            anns.append({"id": len(anns) + 1, "image_id": n + 1, "category_id": int(lid), "score": float(s),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    with atomic_path(out / "detections.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            wr = csvsafe.DictWriter(fh, fieldnames=["image", "label", "score", "y0", "x0", "y1", "x1"])
            wr.writeheader()
            wr.writerows(rows)
    with atomic_path(out / "detections_coco.json") as tmp:
        Path(tmp).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"images": len(inputs), "analysed": len(inputs) - len(refused), "detections": len(rows),
            "csv": str(out / "detections.csv"), "coco": str(out / "detections_coco.json"),
            "device": policy.describe(), "refused": refused}


# ----------------------------------------------------------------------------- synth / demo

def synth(out: Path, n: int, seed: int) -> Path:
    """A VOC folder of ``n`` generated 128x128 images with "cell" and "debris" objects."""
    from ..synth.objects import write_voc_dataset

    return write_voc_dataset(Path(out), n, seed=seed)


def demo(out: Path, opts: TaskOptions) -> Job[dict]:
    """Synth 28 images, train the tiny detector (<= 25 s), evaluate on 8 held out, draw one prediction."""
    from skimage.io import imsave

    from ..synth.objects import make_image

    out = Path(out)
    data = synth(out / "data", 28, opts.seed)
    o = TaskOptions(**{**opts.__dict__, "out": out / "model", "arch": QUICK_ARCH, "quick": True,
                       "extra": {"val_fraction": 8 / 28, "time_budget_s": 25, "epochs": 24, "validate": False,
                                 **opts.extra}})
    if o.epochs is None:
        o.epochs = 24
    tr = yield from train(data, o)
    ds = load_dataset(data)
    _, va = split_by_image(len(ds), 8 / 28, opts.seed)
    lm = load(tr["checkpoint"], opts.device)
    net, meta = lm.net, lm.meta
    val = ds.subset(va)
    val.classes = list(meta.class_names)
    preds = yield from _predict_dataset(net, meta, val, lm.policy, opts.cancel)
    m = coco_metrics(val, preds, val.classes)
    s = make_image(192, n_objects=7, seed=opts.seed + 999)
    r = yield from detect(s["image"], lm, device=opts.device)
    overlay = s["image"].copy()
    for b in r["boxes"].astype(int):
        y0, x0, y1, x1 = np.clip(b, 0, [191, 191, 191, 191])
        overlay[y0, x0:x1] = overlay[y1, x0:x1] = [255, 255, 0]
        overlay[y0:y1, x0] = overlay[y0:y1, x1] = [255, 255, 0]
    imsave(out / "detections.png", overlay, check_contrast=False)
    with open(out / "detections.csv", "w") as fh:
        fh.write("label,score,y0,x0,y1,x1\n")
        for b, lab, sc in zip(r["boxes"], r["labels"], r["scores"]):
            fh.write(f"{lab},{sc:.3f},{b[0]:.1f},{b[1]:.1f},{b[2]:.1f},{b[3]:.1f}\n")
    summary = {"trained_on": "synthetic", "train_seconds": tr["seconds"], "heldout_images": len(val),
               "mAP50": round(m["mAP50"], 3), "mAP": round(m["mAP"], 3),
               "per_class_AP50": {c: round(v["AP50"], 3) for c, v in m["per_class"].items()},
               "detections_in_example": len(r["labels"]), "objects_in_example": len(s["labels"]),
               "image": str(out / "detections.png"), "checkpoint": tr["checkpoint"]}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def detect_sync(image: Any, model_path: Path, **kwargs) -> dict:
    """``detect`` driven to completion (for scripts)."""
    return run_sync(detect(image, model_path, **kwargs))
