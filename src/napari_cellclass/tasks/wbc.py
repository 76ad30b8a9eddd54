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

from ..engine.checkpoint import CheckpointMeta, build_from_checkpoint
from ..engine.device import resolve_device
from ..engine.inference import predict_batches
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..engine.training import fit, restore_resume_state
from ..errors import InputError
from ..io import wbc_dataset as D
from .base import TaskOptions

TASK = "wbc"
DEFAULT_SIZE = 224
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
    w = csv.writer(buf)
    w.writerow(["class", "count", "percent"])
    for r in diff["rows"]:
        w.writerow([r["class"], r["count"], f"{r['percent']:.1f}"])
    w.writerow(["TOTAL", diff["total"], "100.0" if diff["total"] else "0.0"])
    return buf.getvalue()


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    per_class, f1s = {}, []
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(cm[i].sum())}
        if cm[i].sum():
            f1s.append(f1)
    n = int(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": n,
    }


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
                   cancel: CancelToken | None) -> Job[np.ndarray]:
    items = list(range(len(crops)))
    probs = yield from predict_batches(
        model, items, policy=policy, batch_size=batch_size, cancel=cancel, stage="classify",
        preprocess=lambda i: D.to_tensor(crops[i : i + 1])[0],
        postprocess=lambda out: list(torch.softmax(out, dim=1).numpy()),
    )
    return np.stack(probs) if probs else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------- train

def _without(opts: TaskOptions, *keys: str) -> TaskOptions:
    return dataclasses.replace(opts, extra={k: v for k, v in opts.extra.items() if k not in keys})


def train(data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Train a WBC classifier on a class-per-folder or BCCD-style dataset."""
    from ..models.registry import build_model
    from ..models.wbc_losses import WBCLoss, canonical_wbc_loss
    from ..recipes import Recipe

    t0 = time.monotonic()
    data = Path(data)
    policy = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    out = Path(opts.out) if opts.out is not None else Path("runs") / f"{TASK}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    size = int(opts.size or (QUICK_SIZE if opts.quick else DEFAULT_SIZE))
    try:
        loss_kind = canonical_wbc_loss(opts.get("loss", "triplet"))
    except ValueError as exc:
        raise InputError(str(exc)) from None

    records = D.find_records(data, split=opts.get("split", "train") if _has_split_folders(data) else None)
    class_names, records = D.choose_classes(records, bool(opts.get("include_basophil", False)))
    train_recs, val_recs = D.split_by_group(records, float(opts.get("val_fraction", 0.2)), opts.seed)
    yield Progress(0, None, "load", f"{len(train_recs)} training / {len(val_recs)} validation cells, {class_names}")
    x_train = D.load_crops(train_recs, size, opts.cancel)
    x_val = D.load_crops(val_recs, size, opts.cancel)
    y_train = [class_names.index(r.label) for r in train_recs]
    y_val = [class_names.index(r.label) for r in val_recs]

    arch, cfg = _arch(opts, len(class_names))
    model = build_model(arch, **cfg, pretrained=bool(opts.pretrained))
    quick = opts.quick
    recipe = Recipe.from_options(
        _without(opts, "loss"),
        optimizer="momentum" if opts.pretrained else "adam", lr=1e-3, momentum=0.9,
        epochs=3 if quick else 20, batch_size=16 if quick else 32,
    )
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
    batches = D.CropBatches(x_train, y_train, recipe.batch_size, augment=recipe.augment,
                            balance="sampler" if balance == "sampler" else "none", seed=opts.seed,
                            num_classes=len(class_names))
    scheduler, per_batch = recipe.make_scheduler(optimizer, len(batches), recipe.epochs)

    def loss_fn(m: torch.nn.Module, batch: Any, epoch: int) -> torch.Tensor:
        x, y = batch
        criterion.train()
        logits, f = _forward_features(m, x)
        return criterion(logits, y, f)

    x_val_t = D.to_tensor(x_val) if len(x_val) else None

    def evaluate(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        if x_val_t is None:
            return {}
        preds = []
        for s in range(0, len(x_val_t), 64):
            preds.append(m(policy.prepare_input(x_val_t[s : s + 64])).argmax(1).cpu())
        met = classification_metrics(y_val, torch.cat(preds).tolist(), class_names)
        return {"accuracy": met["accuracy"], "macro_f1": met["macro_f1"]}

    stored_arch, stored_cfg = recipe.arch_config(arch, cfg)
    trained_on = "synthetic" if (data / SYNTH_MARKER).exists() else str(data)
    training = {
        "recipe": recipe.to_dict(), "loss": loss_kind, "lam": criterion.lam, "balance": balance,
        "pretrained": bool(opts.pretrained), "n_train": len(train_recs), "n_val": len(val_recs),
        "split": "by source image", "augment": "flips, 90-degree rotations, transposes" if recipe.augment else "none",
        "device": policy.describe(),
    }

    def make_meta(best: dict[str, float], history: list[dict[str, float]]) -> CheckpointMeta:
        return CheckpointMeta(
            task=TASK, arch=stored_arch, class_names=class_names, in_channels=3, input_size=[size, size],
            arch_config=stored_cfg,
            normalization={"mean": list(D.IMAGENET_MEAN), "std": list(D.IMAGENET_STD), "scale": 255.0,
                           "crop_context": D.CONTEXT},
            training={**training, "epochs_run": len(history)}, metrics=dict(best), trained_on=trained_on,
        )

    ckpt_path = out / "model.safetensors"
    resume_path = out / "resume.pt"
    start_epoch, history = restore_resume_state(resume_path, model, optimizer, enabled=opts.resume)
    has_val = x_val_t is not None
    result = yield from fit(
        model, batches, loss_fn=loss_fn, optimizer=optimizer, epochs=recipe.epochs, policy=policy,
        evaluate=evaluate if has_val else None, monitor="macro_f1" if has_val else "loss",
        mode="max" if has_val else "min", scheduler=scheduler, scheduler_per_batch=per_batch,
        checkpoint_path=ckpt_path, make_meta=make_meta, cancel=opts.cancel,
        early_stopping_patience=recipe.early_stopping_patience, regularizer=recipe.regularizer(),
        resume_path=resume_path, start_epoch=start_epoch, history=history, grad_clip=recipe.grad_clip,
    )
    return {
        "checkpoint": str(result.checkpoint or ckpt_path), "best_metrics": result.best_metrics,
        "history": result.history, "device": policy.describe(), "seconds": round(time.monotonic() - t0, 1),
        "class_names": class_names, "n_train": len(train_recs), "n_val": len(val_recs), "loss": loss_kind,
        "arch": arch, "recipe": recipe.summary(),
    }


def _has_split_folders(data: Path) -> bool:
    return data.is_dir() and any(p.is_dir() and p.name.upper() in ("TRAIN", "TEST") for p in data.iterdir())


# ----------------------------------------------------------------------------- evaluate

def evaluate(model: Path, data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Accuracy, macro F1, per-class precision/recall/F1 and confusion matrix on a dataset.

    ``--set split=val`` evaluates only the validation part of the by-image split
    that ``train`` makes with the same ``--seed``/``val_fraction``; ``split=test``
    the TEST folder of a Kaggle-layout dataset.
    """
    data = Path(data)
    policy = resolve_device(opts.device)
    net, meta = build_from_checkpoint(model, task=TASK, in_channels=3)
    split = str(opts.get("split", "all")).lower()
    folder_split = split if split in ("train", "test") else None
    if folder_split is None and _has_split_folders(data) and split == "all":
        folder_split = "test" if (data / "TEST").is_dir() else None
    records = D.find_records(data, split=folder_split)
    known = [r for r in records if r.label in meta.class_names]
    skipped = sorted({r.label for r in records} - set(meta.class_names))
    if split == "val":
        known = D.split_by_group(known, float(opts.get("val_fraction", 0.2)), opts.seed)[1]
    if not known:
        raise InputError(f"no cells of the model's classes {meta.class_names} in the dataset", data)
    size = int(meta.input_size[0])
    crops = D.load_crops(known, size, opts.cancel)
    t0 = time.monotonic()
    probs = yield from _probabilities(net, crops, policy, int(opts.batch_size or 32), opts.cancel)
    secs = time.monotonic() - t0
    y_true = [meta.class_names.index(r.label) for r in known]
    metrics = classification_metrics(y_true, probs.argmax(1).tolist(), meta.class_names)
    metrics.update({"device": policy.describe(), "split": split, "skipped_classes": skipped,
                    "images_per_second": round(len(known) / max(secs, 1e-9), 1), "model": str(model),
                    "trained_on": meta.trained_on})
    return metrics


# ----------------------------------------------------------------------------- classify / predict

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


def classify(image: Any, model_path: str | Path, cells: Any = None, device: str | None = None,
             cancel: CancelToken | None = None, batch_size: int = 32, **kw: Any) -> Job[dict[str, Any]]:
    """Classify every white cell of ``image`` (or the image as one cell when ``cells`` is None).

    ``cells``: a list of boxes (y0, x0, y1, x1), shape vertex arrays (a shapes
    layer's ``data``), or a labels array of the image's shape.  Returns class
    names, per-cell classes, probabilities (N, C), scores, boxes, label ids (for a
    labels input), the differential count and the device used.
    """
    policy = resolve_device(device)
    yield Progress(0, None, "load", f"loading {Path(model_path).name} on {policy.device}")
    model, meta = build_from_checkpoint(model_path, task=TASK, in_channels=3)
    img = D.as_rgb(image if isinstance(image, np.ndarray) else getattr(image, "data", image))
    boxes, label_ids = _boxes_from_cells(cells, img.shape[:2])
    size = int(meta.input_size[0])
    context = float(meta.normalization.get("crop_context", D.CONTEXT))
    if boxes is None:
        crops = D.crop_cell(img, None, size)[None]
        boxes_out = np.array([[0, 0, img.shape[0], img.shape[1]]], dtype=float)
    else:
        crops = np.stack([D.crop_cell(img, b, size, context) for b in boxes]) if len(boxes) else np.zeros((0, size, size, 3), np.uint8)
        boxes_out = boxes
    check_cancel(cancel)
    t0 = time.monotonic()
    if len(crops):
        probs = yield from _probabilities(model, crops, policy, batch_size, cancel)
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


def _sidecar_boxes(path: Path) -> np.ndarray | None:
    """WBC boxes (y0, x0, y1, x1) from ``<stem>.xml`` beside the image or in ``../Annotations``."""
    for xml in (path.with_suffix(".xml"), path.parent.parent / "Annotations" / f"{path.stem}.xml"):
        if xml.is_file():
            from ..io.annotations import read_voc

            ann = read_voc(xml)
            sel = [i for i, lab in enumerate(ann.labels) if lab.upper() in ("WBC", *D.WBC_CLASSES, *D.OPTIONAL_CLASSES)]
            b = ann.boxes[sel]
            return b[:, [1, 0, 3, 2]] if len(b) else np.zeros((0, 4))
    return None


def _image_files(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in D.IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise InputError("input does not exist", p)
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def predict(model: Path, inputs: list[Path], opts: TaskOptions) -> Job[dict[str, Any]]:
    """Classify images; a smear with a VOC sidecar is classified cell by cell (its WBC boxes).

    Writes ``predictions.csv`` (one row per cell), ``differential.csv`` and
    ``predictions.json`` into ``opts.out``.
    """
    from ..engine.atomic import atomic_path

    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    files = _image_files(inputs)
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    device = ""
    t0 = time.monotonic()
    for k, f in enumerate(files):
        check_cancel(opts.cancel)
        img = D.read_rgb(f)
        boxes = _sidecar_boxes(f) if opts.get("sidecar", True) else None
        res = yield from classify(img, model, cells=boxes, device=opts.device, cancel=opts.cancel,
                                  batch_size=int(opts.batch_size or 32))
        names, device = res["class_names"], res["device"]
        for i, (c, p, b) in enumerate(zip(res["classes"], res["probabilities"], res["boxes"])):
            row = {"image": str(f), "cell": i, "y0": b[0], "x0": b[1], "y1": b[2], "x1": b[3], "class": c,
                   "score": round(float(p.max()), 4)}
            row.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, p)})
            rows.append(row)
        yield Progress(k + 1, len(files), "predict", f.name)
    secs = time.monotonic() - t0
    diff = differential_count([r["class"] for r in rows], names)
    fields = ["image", "cell", "y0", "x0", "y1", "x1", "class", "score"] + [f"p_{n}" for n in names]
    with atomic_path(out / "predictions.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    with atomic_path(out / "differential.csv") as tmp:
        tmp.write_text(differential_csv(diff))
    summary = {"images": len(files), "cells": len(rows), "differential": diff, "device": device,
               "images_per_second": round(len(files) / max(secs, 1e-9), 2),
               "outputs": [str(out / "predictions.csv"), str(out / "differential.csv"), str(out / "predictions.json")]}
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
