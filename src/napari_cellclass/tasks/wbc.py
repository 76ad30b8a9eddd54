"""White-blood-cell classification (seed 001): train, evaluate, predict, classify, synth, demo.

The model is an IBN-ResNet-34 (:mod:`napari_cellclass.models.ibn_resnet`), 224x224
RGB crops, classes EOSINOPHIL / LYMPHOCYTE / MONOCYTE / NEUTROPHIL (+ BASOPHIL
with ``--set include_basophil=true``), trained with cross-entropy plus
``lam`` * the hard-mining centre-triplet hinge (:mod:`napari_cellclass.models.wbc_losses`).

Task options (``--set key=value``): ``loss=ce|center|triplet`` (default triplet),
``lam`` (0.5), ``margin`` (0.5), ``centers=running|learned``, ``mode=seed|per_class``,
``normalize`` (true: L2-normalised features in the metric term),
``balance=sampler|weights|none`` (class imbalance: balanced sampler, inverse-
frequency loss weights, or nothing), ``val_fraction`` (0.2, split by source
image), ``width``/``layers`` (network size), ``include_basophil``, ``split``
(evaluate: all|train|test|val).  Optimiser: the seed's SGD, lr 1e-3, momentum
0.9 when starting from ImageNet weights (``--pretrained``); Adam lr 1e-3 from
random weights, which learns faster from scratch; both overridable
(``--lr``, ``--set optimizer=...``, a recipe file).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..engine import csvsafe
from ..engine.checkpoint import CheckpointMeta
from ..engine.inference import predict_batches
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError
from ..io import wbc_dataset as D
from ..metrics import classification_metrics
from ..zoo.loaded import LoadedModel, load_model
from .base import TaskOptions

TASK = "wbc"
DEFAULT_SIZE = 224
FIXED_SIZE = 128  # fixed-scale smear crops: a 256 px window shown at 128 px
FIXED_WIDTH = 16
QUICK_SIZE = 64
QUICK_ARCH = {"width": 8, "layers": [1, 1, 1, 1]}
SYNTH_MARKER = "SYNTHETIC.txt"


# ----------------------------------------------------------------------------- pure helpers

def differential_count(classes: Sequence[str], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The WBC differential: number and percent of each class.

    >>> differential_count(["NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE"])["percent"]["NEUTROPHIL"]
    66.7
    """
    classes = [str(c) for c in classes]
    names = list(class_names) if class_names is not None else sorted(set(classes))
    names += [c for c in dict.fromkeys(classes) if c not in names]
    total = len(classes)
    counts = {n: sum(1 for c in classes if c == n) for n in names}
    percent = {n: (round(100.0 * k / total, 1) if total else 0.0) for n, k in counts.items()}
    rows = [{"class": n, "count": counts[n], "percent": percent[n]} for n in names]
    return {"total": total, "counts": counts, "percent": percent, "rows": rows}


def differential_csv(diff: dict[str, Any]) -> str:
    """The differential as CSV text (class,count,percent + a total row)."""
    buf = io.StringIO()
    w = csvsafe.writer(buf)
    w.writerow(["class", "count", "percent"])
    for r in diff["rows"]:
        w.writerow([r["class"], r["count"], f"{r['percent']:.1f}"])
    w.writerow(["TOTAL", diff["total"], "100.0" if diff["total"] else "0.0"])
    return buf.getvalue()


# ----------------------------------------------------------------------------- model pieces

def _arch(opts: TaskOptions, num_classes: int) -> tuple[str, dict[str, Any]]:
    arch = opts.arch or opts.get("arch") or "ibn_resnet34"
    if arch not in ("ibn_resnet34", "resnet34"):
        raise InputError(f"unknown WBC architecture {arch!r}; choose ibn_resnet34 or resnet34")
    cfg: dict[str, Any] = {"num_classes": num_classes, "in_channels": 3}
    if opts.quick:
        cfg.update(QUICK_ARCH)
    if opts.get("width") is not None:
        cfg["width"] = int(opts.get("width"))
    if opts.get("layers") is not None:
        layers = opts.get("layers")
        cfg["layers"] = [int(v) for v in (layers if isinstance(layers, (list, tuple)) else str(layers).split(","))]
    return arch, cfg


def _forward_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(model, "forward_with_features"):
        return model.forward_with_features(x)
    from ..recipes.losses import features_and_logits

    f, logits = features_and_logits(model, x)
    return logits, f


def _probabilities(model: torch.nn.Module, crops: np.ndarray, policy, batch_size: int,
                   cancel: CancelToken | None, tta: int = 1) -> Job[np.ndarray]:
    """Softmax probabilities; ``tta`` > 1 averages over that many of the 8 flips/rotations
    (a cell has no up or down, so this only removes orientation noise)."""
    total = None
    for k in range(max(1, min(int(tta), 8))):
        items = list(range(len(crops)))
        probs = yield from predict_batches(
            model, items, policy=policy, batch_size=batch_size, cancel=cancel, stage="classify",
            preprocess=lambda i, k=k: D.dihedral(D.to_tensor(crops[i : i + 1])[0], k),
            postprocess=lambda out: list(torch.softmax(out.float(), dim=1).numpy()),
        )
        p = np.stack(probs) if probs else np.zeros((0, 0), np.float32)
        total = p if total is None else total + p
    return total / max(1, min(int(tta), 8))


def crop_mode(meta_or_norm: Any) -> str:
    norm = getattr(meta_or_norm, "normalization", meta_or_norm) or {}
    return str(norm.get("crop", "box"))


def model_crops(image: np.ndarray, boxes: np.ndarray | None, meta: CheckpointMeta) -> np.ndarray:
    """The crops a checkpoint expects, by its declared transform (:class:`~napari_cellclass.preprocess.WBCCrop`):
    fixed-scale windows around the box centres (``crop=fixed``, the blood-smear models) or
    squares fitted to each box (``crop=box``); ``boxes`` None = the image is one cell."""
    from ..preprocess import get_transform

    return get_transform(meta).crops(image, boxes)


# ----------------------------------------------------------------------------- train

def _without(opts: TaskOptions, *keys: str) -> TaskOptions:
    return dataclasses.replace(opts, extra={k: v for k, v in opts.extra.items() if k not in keys})


def train(data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Train a WBC classifier on a class-per-folder or BCCD-style dataset."""
    from ..engine.run import train_run

    return (yield from train_run(TASK, opts, lambda ctx: _train_spec(Path(data), ctx)))


def _train_spec(data: Path, ctx) -> Job[Any]:
    """WBC's part of a run (:mod:`napari_cellclass.engine.run`): IBN-ResNet, CE + centre-triplet."""
    from ..engine.run import TrainSpec
    from ..models.registry import build_model
    from ..models.wbc_losses import WBCLoss, canonical_wbc_loss
    from ..recipes import Recipe

    opts, policy = ctx.opts, ctx.policy
    size = int(opts.size or (QUICK_SIZE if opts.quick else DEFAULT_SIZE))
    try:
        loss_kind = canonical_wbc_loss(opts.get("loss", "triplet"))
    except ValueError as exc:
        raise InputError(str(exc)) from None

    all_records = D.find_records(data, split=opts.get("split", "train") if _has_split_folders(data) else None)
    class_names, records = D.choose_classes(all_records, bool(opts.get("include_basophil", False)))
    left_out = _left_out(all_records, class_names)
    train_recs, val_recs = _split(records, opts, all_records)
    crop = str(opts.get("crop") or ("fixed" if records and all(r.box is not None for r in records) else "box"))
    if crop not in ("fixed", "box"):
        raise InputError(f"crop must be 'fixed' (fixed pixel scale, for smears) or 'box', got {crop!r}")
    fixed = crop == "fixed"
    if fixed and not opts.size:
        size = QUICK_SIZE if opts.quick else FIXED_SIZE
    window = float(opts.get("window", D.FIXED_WINDOW))
    note = "; ".join(f"{n} {k} cell(s) left out ({why})" for n, (k, why) in left_out.items())
    yield Progress(0, None, "load", f"{len(train_recs)} training / {len(val_recs)} validation cells, {class_names}"
                   + (f"; {note}" if note else ""))
    if fixed:
        x_train = D.load_fixed_crops(train_recs, window, size, D.MARGIN, opts.cancel)
        x_val = D.load_fixed_crops(val_recs, window, size, 1.0, opts.cancel)
    else:
        x_train = D.load_crops(train_recs, size, opts.cancel)
        x_val = D.load_crops(val_recs, size, opts.cancel)
    from ..io.limits import check_training_signal

    check_training_signal(x_train, data, "training crop")  # 80 all-black images: refused, not "trained"
    y_train = [class_names.index(r.label) for r in train_recs]
    y_val = [class_names.index(r.label) for r in val_recs]

    arch, cfg = _arch(opts, len(class_names))
    if fixed and opts.get("width") is None and not opts.quick and not opts.pretrained:
        cfg["width"] = FIXED_WIDTH  # CPU-sized: ResNet-34 depth at a quarter of its channels
    model = build_model(arch, **cfg, pretrained=bool(opts.pretrained))
    quick = opts.quick
    if fixed:
        recipe = Recipe.from_options(
            _without(opts, "loss"), optimizer="adamw", lr=2e-3, weight_decay=5e-4, schedule="cosine",
            warmup_epochs=0.0 if quick else 5.0, epochs=3 if quick else 60, batch_size=16 if quick else 32,
        )
    else:
        recipe = Recipe.from_options(
            _without(opts, "loss"),
            optimizer="momentum" if opts.pretrained else "adam", lr=1e-3, momentum=0.9,
            epochs=3 if quick else 20, batch_size=16 if quick else 32,
        )
    tta = int(opts.get("tta", 8 if fixed else 1))
    recipe.apply_to_model(model)
    balance = str(opts.get("balance", "sampler"))
    if balance not in ("sampler", "weights", "none"):
        raise InputError(f"balance must be sampler, weights or none, got {balance!r}")
    weights = D.class_weights(y_train, len(class_names)) if balance == "weights" else None
    criterion = WBCLoss(
        loss_kind, len(class_names), feat_dim=model.embedding_dim if hasattr(model, "embedding_dim") else 512,
        lam=float(opts.get("lam", 0.5)), margin=float(opts.get("margin", 0.5)),
        centers=str(opts.get("centers", "running")), mode=str(opts.get("mode", "seed")), class_weights=weights,
        normalize=bool(opts.get("normalize", True)),
    ).to(policy.device)
    optimizer = recipe.make_optimizer(list(model.parameters()) + list(criterion.parameters()))
    if fixed:
        batches = D.AugmentedCropBatches(
            x_train, y_train, recipe.batch_size, size, balance="sampler" if balance == "sampler" else "none",
            seed=opts.seed, num_classes=len(class_names), augment=recipe.augment,
            epoch_size=int(opts.get("epoch_size", 4 * recipe.batch_size if quick else 512)))
    else:
        batches = D.CropBatches(x_train, y_train, recipe.batch_size, augment=recipe.augment,
                                balance="sampler" if balance == "sampler" else "none", seed=opts.seed,
                                num_classes=len(class_names))

    def loss_fn(m: torch.nn.Module, batch: Any, epoch: int) -> torch.Tensor:
        x, y = batch
        criterion.train()
        logits, f = _forward_features(m, x)
        return criterion(logits, y, f)

    x_val_t = D.to_tensor(x_val) if len(x_val) else None
    select = str(opts.get("select", "last" if fixed else "best"))
    if select not in ("last", "best"):
        raise InputError(f"select must be 'last' or 'best', got {select!r}")

    def evaluate(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        if x_val_t is None:
            return {}
        probs = 0
        for k in range(max(1, min(tta, 8))):
            out = []
            for s in range(0, len(x_val_t), 64):
                out.append(torch.softmax(m(policy.prepare_input(D.dihedral(x_val_t[s : s + 64], k))).float(), 1).cpu())
            probs = probs + torch.cat(out)
        met = classification_metrics(y_val, probs.argmax(1).tolist(), class_names)
        res = {"accuracy": met["accuracy"], "macro_f1": met["macro_f1"]}
        res.update({f"recall_{n}": v["recall"] for n, v in met["per_class"].items()})
        return res

    stored_arch, stored_cfg = recipe.arch_config(arch, cfg)
    trained_on = "synthetic" if (data / SYNTH_MARKER).exists() else str(data)
    training = {
        "recipe": recipe.to_dict(), "loss": loss_kind, "lam": criterion.lam, "balance": balance,
        "pretrained": bool(opts.pretrained), "n_train": len(train_recs), "n_val": len(val_recs),
        "split": opts.extra.get("split_rule", "by source image"),
        "augment": ("rotations 0-360, mirror, shift, +-8% zoom, mild colour jitter and blur" if fixed else
                    "flips, 90-degree rotations, transposes") if recipe.augment else "none",
        "device": policy.describe(), "left_out": {n: {"cells": k, "why": why} for n, (k, why) in left_out.items()},
        "val_images": sorted({r.path.name for r in val_recs}), "train_images": sorted({r.path.name for r in train_recs}),
        "select": select,
    }

    def make_meta(best: dict[str, float], history: list[dict[str, float]]) -> CheckpointMeta:
        return CheckpointMeta(
            task=TASK, arch=stored_arch, class_names=class_names, in_channels=3, input_size=[size, size],
            arch_config=stored_cfg,
            normalization={"mean": list(D.IMAGENET_MEAN), "std": list(D.IMAGENET_STD), "scale": 255.0,
                           "crop_context": D.CONTEXT, "crop": crop, "window_px": window if fixed else None,
                           "tta": tta},
            training={**training, "epochs_run": len(history)}, metrics=dict(best), trained_on=trained_on,
        )

    has_val = x_val_t is not None
    # "last" keeps the final (annealed) epoch, so the validation score is not picked on the
    # validation set itself; "best" keeps the epoch with the best validation macro F1
    monitor, mode = ("epoch", "max") if select == "last" else (("macro_f1", "max") if has_val else ("loss", "min"))
    return TrainSpec(
        model=model, batches=batches.loader(), loss_fn=loss_fn, recipe=recipe, make_meta=make_meta,
        evaluate=evaluate if has_val else None, monitor=monitor, mode=mode, optimizer=optimizer,
        summary={"class_names": class_names, "n_train": len(train_recs), "n_val": len(val_recs), "loss": loss_kind,
                 "arch": arch, "crop": crop,
                 "left_out": {n: f"{k} cell(s): {why}" for n, (k, why) in left_out.items()}},
    )


MIN_CELLS_TO_LEARN = 5


def _left_out(records: Sequence[D.WBCRecord], class_names: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Classes in the data that the model will not learn, with their cell count and the reason."""
    out: dict[str, tuple[int, str]] = {}
    for label in sorted({r.label for r in records} - set(class_names)):
        k = sum(1 for r in records if r.label == label)
        why = (f"too few to learn (fewer than {MIN_CELLS_TO_LEARN}); such cells are reported as one of the "
               f"learned classes and should be reviewed" if k < MIN_CELLS_TO_LEARN else
               "not asked for (--set include_basophil=true adds basophils)")
        out[label] = (k, why)
    return out


def _split(records: list[D.WBCRecord], opts: TaskOptions,
           all_records: Sequence[D.WBCRecord] | None = None) -> tuple[list[D.WBCRecord], list[D.WBCRecord]]:
    """By source image (``split=group``, default), or by smear area (``split=smear``: images whose
    fields of view overlap are kept together, see :mod:`napari_cellclass.io.blood_split`).

    For smears with a label table (BCCD) the smear split is made over *every* image of the
    image folder, stratified by each image's label ("none" without one), exactly as
    ``cellclass train detect DATA --set split=smear`` makes it, so a detector and a
    classifier trained on one folder hold out the same smears.
    """
    frac = float(opts.get("val_fraction", 0.2))
    rule = str(opts.get("split", "group")).lower()
    seed = int(opts.get("split_seed", opts.seed))  # --set split_seed=N: same split, other training seed
    if rule in ("group", "image", "train", "test"):
        opts.extra.setdefault("split_rule", f"by source image, {frac:.0%} of each class held out, seed {seed}")
        return D.split_by_group(records, frac, seed)
    if rule != "smear":
        raise InputError(f"split must be 'group' or 'smear', got {rule!r}")
    from ..io.blood_split import PEAK, overlap_groups
    from ..io.splits import grouped_split

    label = {}
    for r in (all_records if all_records is not None else records):
        label.setdefault(r.path, r.label)
    paths = list(dict.fromkeys(r.path for r in records))
    folders = {p.parent for p in paths}
    if len(folders) == 1 and all(r.box is not None for r in records):  # a smear folder with a label table
        folder = next(iter(folders))
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in D.IMAGE_SUFFIXES and p.is_file()
                       and not p.name.startswith("._"))
    groups = dict(zip(paths, overlap_groups(paths)))
    tr, va = grouped_split([groups[p] for p in paths], frac, seed, strata=[label.get(p, "none") for p in paths])
    val_paths = {paths[i] for i in va}
    opts.extra.setdefault("split_rule", f"by smear area: {len(paths)} images in {len(set(groups.values()))} groups "
                                        f"of overlapping fields (phase correlation > {PEAK}); {frac:.0%} of the "
                                        f"groups of each class held out, seed {seed}")
    return [r for r in records if r.path not in val_paths], [r for r in records if r.path in val_paths]


def _has_split_folders(data: Path) -> bool:
    return data.is_dir() and any(p.is_dir() and p.name.upper() in ("TRAIN", "TEST") for p in data.iterdir())


def make_ensemble(checkpoints: Sequence[str | Path], out: str | Path, *, command: str = "") -> Path:
    """Combine WBC checkpoints of one recipe into one mean-probability ensemble checkpoint.

    The members must agree on classes, input size and preprocessing, and (when they
    list them) on their held-out images, so the ensemble's validation score is still
    measured on cells none of its members saw.
    """
    from ..engine.checkpoint import load_checkpoint, save_checkpoint

    cks = [load_checkpoint(p, task=TASK, in_channels=3) for p in checkpoints]
    if len(cks) < 2:
        raise InputError("an ensemble needs at least two checkpoints")
    first = cks[0].meta
    for ck in cks[1:]:
        m = ck.meta
        if m.class_names != first.class_names or m.input_size != first.input_size or \
                m.normalization != first.normalization:
            raise InputError("members differ in classes, input size or preprocessing", ck.path)
        if sorted(m.training.get("val_images") or []) != sorted(first.training.get("val_images") or []):
            raise InputError("members were validated on different images; train them with one --set split_seed",
                             ck.path)
        if m.arch not in ("ibn_resnet34", "resnet34"):
            raise InputError(f"ensemble members must be single networks, got {m.arch!r}", ck.path)
    members = [dict({k: v for k, v in ck.meta.arch_config.items() if k not in ("num_classes", "in_channels")},
                    arch=ck.meta.arch) for ck in cks]
    state = {f"members.{i}.{k}": v for i, ck in enumerate(cks) for k, v in ck.state_dict.items()}
    training = {k: v for k, v in first.training.items() if k not in ("recipe", "epochs_run")}
    training.update({"ensemble_of": [str(ck.path) for ck in cks],
                     "member_metrics": [ck.meta.metrics for ck in cks], "command": command})
    meta = CheckpointMeta(task=TASK, arch="wbc_ensemble", class_names=list(first.class_names), in_channels=3,
                          input_size=list(first.input_size),
                          arch_config={"members": members, "num_classes": len(first.class_names), "in_channels": 3},
                          normalization=dict(first.normalization), training=training, metrics={},
                          trained_on=first.trained_on)
    return save_checkpoint(out, state, meta)


# ----------------------------------------------------------------------------- evaluate

def evaluate(model: Path, data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Accuracy, macro F1, per-class precision/recall/F1 and confusion matrix on a dataset.

    ``--set split=val`` evaluates only the validation part of the by-image split
    that ``train`` makes with the same ``--seed``/``val_fraction``; ``split=test``
    the TEST folder of a Kaggle-layout dataset.
    """
    data = Path(data)
    lm = load(model, opts.device)
    net, meta, policy = lm.net, lm.meta, lm.policy
    model = lm.path or model
    split = str(opts.get("split", "all")).lower()
    folder_split = split if split in ("train", "test") else None
    if folder_split is None and _has_split_folders(data) and split == "all":
        folder_split = "test" if (data / "TEST").is_dir() else None
    records = D.find_records(data, split=folder_split)
    known = [r for r in records if r.label in meta.class_names]
    skipped = sorted({r.label for r in records} - set(meta.class_names))
    listed = set(meta.training.get("val_images") or [])
    scored_records = records
    if split == "val" and listed:  # exactly the images the model held out
        known = [r for r in known if r.path.name in listed]
        scored_records = [r for r in records if r.path.name in listed]
    elif split == "val":
        known = D.split_by_group(known, float(opts.get("val_fraction", 0.2)), opts.seed)[1]
    skipped_cells = _left_out(scored_records, meta.class_names)
    if not known:
        raise InputError(f"no cells of the model's classes {meta.class_names} in the dataset", data)
    size = int(meta.input_size[0])
    if crop_mode(meta) == "fixed":
        crops = D.load_fixed_crops(known, float(meta.normalization.get("window_px") or D.FIXED_WINDOW), size, 1.0,
                                   opts.cancel)
    else:
        crops = D.load_crops(known, size, opts.cancel)
    t0 = time.monotonic()
    probs = yield from _probabilities(net, crops, policy, int(opts.batch_size or 32), opts.cancel,
                                      int(meta.normalization.get("tta", 1) or 1))
    secs = time.monotonic() - t0
    y_true = [meta.class_names.index(r.label) for r in known]
    metrics = classification_metrics(y_true, probs.argmax(1).tolist(), meta.class_names)
    metrics.update({"device": policy.describe(), "split": split, "skipped_classes": skipped,
                    "not_scored": {n: f"{k} cell(s): {why}" for n, (k, why) in skipped_cells.items()},
                    "images_per_second": round(len(known) / max(secs, 1e-9), 1), "model": str(model),
                    "trained_on": meta.trained_on})
    return metrics


# ----------------------------------------------------------------------------- classify / predict

def load(model: Any, device: Any = None) -> LoadedModel:
    """The white-cell classifier: a built-in name, a checkpoint path or a :class:`LoadedModel`."""
    return load_model(model, task=TASK, device=device, in_channels=3)


def _boxes_from_cells(cells: Any, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(boxes (N, 4) y0, x0, y1, x1 or None for the whole image, label ids or None)."""
    if cells is None:
        return None, None
    data = cells if isinstance(cells, (np.ndarray, list, tuple)) else getattr(cells, "data", cells)
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape == tuple(shape) and data.dtype.kind in "iub":
        from skimage.measure import regionprops

        props = regionprops(data.astype(np.int64))
        boxes = np.array([p.bbox for p in props], dtype=float).reshape(-1, 4)
        return boxes, np.array([p.label for p in props], dtype=int)
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 4:
        return data.astype(float).reshape(-1, 4), None
    items = [data[i] for i in range(len(data))] if isinstance(data, np.ndarray) else list(data)
    boxes = []
    for i, c in enumerate(items):
        a = np.asarray(c, dtype=float)
        if a.ndim == 1 and a.shape[0] == 4:
            boxes.append(a)
        elif a.ndim == 2 and a.shape[1] >= 2 and a.shape[0] >= 2:  # shape vertices (row, col) [last 2 axes]
            yx = a[:, -2:]
            boxes.append(np.array([yx[:, 0].min(), yx[:, 1].min(), yx[:, 0].max(), yx[:, 1].max()]))
        else:
            raise InputError(f"cell {i}: expected a box (y0, x0, y1, x1) or polygon vertices, got shape {a.shape}")
    return np.array(boxes, dtype=float).reshape(-1, 4), None


def classify(image: Any, model_path: Any, cells: Any = None, device: str | None = None,
             cancel: CancelToken | None = None, batch_size: int = 32, **kw: Any) -> Job[dict[str, Any]]:
    """Classify every white cell of ``image`` (or the image as one cell when ``cells`` is None).

    ``cells``: a list of boxes (y0, x0, y1, x1), shape vertex arrays (a shapes
    layer's ``data``), or a labels array of the image's shape.  Returns class
    names, per-cell classes, probabilities (N, C), scores, boxes, label ids (for a
    labels input), the differential count and the device used.
    """
    if not isinstance(model_path, LoadedModel):
        yield Progress(0, None, "load", f"loading {Path(str(model_path)).name}")
    lm = load(model_path, device)  # a loaded model (smear analysis reuses one for many smears) is used as it is
    model, meta, policy = lm.net, lm.meta, lm.policy
    raw = image if isinstance(image, np.ndarray) else np.asarray(getattr(image, "data", image))
    img = D.require_stained_rgb(raw)  # gray or fluorescence: refuse, do not guess
    from ..io.limits import check_informative

    check_informative(img, "the blood image", min_side=4)  # a gray field is not a cell: refuse, do not guess
    boxes, label_ids = _boxes_from_cells(cells, img.shape[:2])
    from ..budget import MAX_OBJECTS_PER_IMAGE

    if boxes is not None and len(boxes) > MAX_OBJECTS_PER_IMAGE:  # work per image is bounded, like memory
        raise InputError(f"{len(boxes):,} cells to classify in one image, more than the {MAX_OBJECTS_PER_IMAGE:,} "
                         "one image may hold; is this a cell segmentation? split the image or the cells")
    if boxes is None:
        boxes_out = np.array([[0, 0, img.shape[0], img.shape[1]]], dtype=float)
        # a ready-made crop: fixed-scale models see its centre at their own pixel scale
        crops = model_crops(img, None, meta)
    else:
        crops = model_crops(img, boxes, meta)
        boxes_out = boxes
    check_cancel(cancel)
    t0 = time.monotonic()
    if len(crops):
        probs = yield from _probabilities(model, crops, policy, batch_size, cancel,
                                          int(meta.normalization.get("tta", 1) or 1))
    else:
        probs = np.zeros((0, len(meta.class_names)), np.float32)
    classes = [meta.class_names[i] for i in probs.argmax(1)] if len(probs) else []
    return {
        "class_names": list(meta.class_names),
        "classes": classes,
        "probabilities": probs,
        "scores": probs.max(1) if len(probs) else np.zeros(0, np.float32),
        "boxes": boxes_out,
        "label_ids": label_ids,
        "differential": differential_count(classes, meta.class_names),
        "device": policy.describe(),
        "seconds": round(time.monotonic() - t0, 3),
        "trained_on": meta.trained_on,
    }


def _is_smear(path: Path, window: float) -> bool:
    """A whole field (to search for cells) rather than a crop of one cell: wider than 1.5 classifier views."""
    from ..io.limits import probe

    try:
        return min(probe(path).shape[:2]) >= 1.5 * window  # the header only, through the one image reader
    except Exception:  # unreadable: smear analysis lists it with the reason and goes on
        return True


def predict(model: Path, inputs: list[Path], opts: TaskOptions) -> Job[dict[str, Any]]:
    """Classify white cells in images and folders (``cellclass predict wbc FOLDER --model NAME``).

    Smears (whole fields) are analysed end to end (:func:`napari_cellclass.tasks.blood.analyse_folder`):
    boxes from the smear's Pascal VOC file when it has one, else from the blood-cell
    detector (``--detector``, default the built-in); per smear ``<stem>_differential.csv``,
    ``<stem>_cells.csv`` and ``<stem>_report.pdf``, and ``summary.csv``/``summary.json``.
    Single-cell crops are classified whole.  ``--set boxes=auto|detector|sidecar|whole``
    forces one way (auto: as above); ``--set report=false`` skips the PDFs;
    ``--set score_threshold=S`` (every class) overrides the detector's operating point;
    ``wbc_threshold`` (white cells) and ``detector_tta`` (bool) come from the blood widget's
    folder mode, which passes its two thresholds.  Always
    written: ``predictions.csv`` (one row per white cell), ``differential.csv`` and
    ``predictions.json``.
    """
    from ..engine.atomic import atomic_path
    from . import blood

    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    from .blood import image_files

    files = image_files(inputs)
    mode = str(opts.get("boxes", "auto" if opts.get("sidecar", True) else "whole")).lower()
    if mode not in ("auto", "detector", "sidecar", "whole"):
        raise InputError(f"boxes must be auto, detector, sidecar or whole, got {mode!r}")
    model = load(model, opts.device)  # once, for every smear and crop
    meta = model.meta
    window = float((meta.normalization or {}).get("window_px") or D.FIXED_WINDOW)
    if mode == "whole":
        smears, crops = [], files
    elif mode in ("detector", "sidecar"):
        smears, crops = files, []
    else:
        smears = [f for f in files if blood.find_smear_sidecar(f) is not None or _is_smear(f, window)]
        crops = [f for f in files if f not in set(smears)]
    rows: list[dict[str, Any]] = []
    names: list[str] = list(meta.class_names)
    device = model.policy.describe()
    t0 = time.monotonic()
    smear_summary = None
    if smears:
        smear_summary = yield from blood.analyse_folder(
            smears, out, detector=opts.get("detector"), classifier=model, device=opts.device,
            score_threshold=opts.get("score_threshold"), report=bool(opts.get("report", True)), cancel=opts.cancel,
            boxes="auto" if mode == "auto" else mode, wbc_threshold=opts.get("wbc_threshold"),
            tta=None if opts.get("detector_tta") is None else bool(opts.get("detector_tta")))
        rows += smear_summary["cells"]
    refused: list[dict[str, str]] = []
    if smear_summary is not None:
        refused += [{"input": r["image"], "problem": r["problem"]} for r in smear_summary.get("refused", [])]
    for k, f in enumerate(crops):
        check_cancel(opts.cancel)
        try:  # unreadable, gray, blank or tiny: refused with the reason, the others go on
            from ..budget import WORK_BYTES_PER_PIXEL
            from ..io.limits import check_work

            check_work(f, WORK_BYTES_PER_PIXEL)  # over the memory budget: refused from its header
            img = D.read_rgb(f)
            res = yield from classify(img, model, cells=None, device=opts.device, cancel=opts.cancel,
                                      batch_size=int(opts.batch_size or 32))
        except InputError as exc:
            refused.append({"input": str(f), "problem": exc.problem})
            yield Progress(k + 1, len(crops), "predict", f"{f.name}: refused")
            continue
        names, device = res["class_names"], res["device"]
        for i, (c, p, b) in enumerate(zip(res["classes"], res["probabilities"], res["boxes"])):
            row = {"image": str(f), "cell": i, "y0": b[0], "x0": b[1], "y1": b[2], "x1": b[3], "class": c,
                   "score": round(float(p.max()), 4)}
            row.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, p)})
            rows.append(row)
        yield Progress(k + 1, len(crops), "predict", f.name)
    secs = time.monotonic() - t0
    diff = differential_count([r["class"] for r in rows], names)
    fields = ["image", "cell", "y0", "x0", "y1", "x1", "class", "score"] + [f"p_{n}" for n in names]
    with atomic_path(out / "predictions.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    with atomic_path(out / "differential.csv") as tmp:
        tmp.write_text(differential_csv(diff))
    outputs = [str(out / "predictions.csv"), str(out / "differential.csv"), str(out / "predictions.json")]
    summary = {"images": len(files), "smears": len(smears), "crops": len(crops), "cells": len(rows),
               "differential": diff, "device": device, "images_per_second": round(len(files) / max(secs, 1e-9), 2),
               "outputs": outputs, "analysed": len(files) - len(refused), "refused": refused}
    if smear_summary is not None:
        summary["smear_summary"] = {k: v for k, v in smear_summary.items() if k not in ("cells", "class_names")}
        outputs += [smear_summary["outputs"]["summary_csv"], smear_summary["outputs"]["summary_json"]]
    with atomic_path(out / "predictions.json") as tmp:
        tmp.write_text(json.dumps({**summary, "cells_table": rows}, indent=2, default=float) + "\n")
    return summary


# ----------------------------------------------------------------------------- synth / demo

def synth(out: Path, n: int, seed: int) -> Path:
    """``n`` synthetic crops per class, class-per-folder (``out/<CLASS>/*.png``)."""
    from ..synth.blood import write_dataset

    return write_dataset(out, n, seed)


def _overlay_png(image: np.ndarray, res: dict[str, Any], path: Path) -> None:
    from PIL import Image, ImageDraw

    from ..synth.blood import CLASS_COLOURS

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for (y0, x0, y1, x1), c, s in zip(res["boxes"], res["classes"], res["scores"]):
        col = tuple(int(255 * v) for v in CLASS_COLOURS.get(c, (1, 1, 0))[:3])
        draw.rectangle([x0, y0, x1, y1], outline=col, width=3)
        draw.text((x0 + 3, y0 + 3), f"{c} {s:.2f}", fill=col)
    im.save(path)


def demo(out: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Synth crops, train a tiny IBN-ResNet briefly, evaluate on new crops, classify a smear."""
    from ..synth.blood import make_smear, write_dataset

    out = Path(out)
    yield Progress(0, None, "synth", "generating synthetic white cells")
    write_dataset(out / "data" / "train", 30, seed=opts.seed)
    write_dataset(out / "data" / "test", 10, seed=opts.seed + 1)
    t_opts = dataclasses.replace(opts, out=out / "model", quick=True, epochs=opts.epochs or 4,
                                 extra={**opts.extra, "val_fraction": 0.15})
    trained = yield from train(out / "data" / "train", t_opts)
    ev = yield from evaluate(Path(trained["checkpoint"]), out / "data" / "test", dataclasses.replace(opts, extra={}))
    smear = make_smear(seed=opts.seed + 7, n_wbc=6)
    res = yield from classify(smear["image"], trained["checkpoint"], cells=smear["boxes"], device=opts.device,
                              cancel=opts.cancel)
    _overlay_png(smear["image"], res, out / "smear_classified.png")
    (out / "differential.csv").write_text(differential_csv(res["differential"]))
    (out / "metrics.json").write_text(json.dumps(ev, indent=2, default=str) + "\n")
    correct = sum(a == b for a, b in zip(res["classes"], smear["labels"]))
    return {
        "trained_on": "synthetic",
        "checkpoint": trained["checkpoint"],
        "test_accuracy": round(ev["accuracy"], 3),
        "test_macro_f1": round(ev["macro_f1"], 3),
        "smear_cells_correct": f"{correct}/{len(smear['labels'])}",
        "differential": {r["class"]: r["count"] for r in res["differential"]["rows"]},
        "files": [str(out / "smear_classified.png"), str(out / "differential.csv"), str(out / "metrics.json")],
    }
