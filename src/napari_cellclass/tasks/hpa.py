"""HPA multi-label localisation (seed 000): train / evaluate / predict / synth / demo / classify.

Data: Kaggle-2018 layout (``train.csv`` + ``train/<id>_<colour>.png``).  Model:
``resnet50_rgby`` (``--set depth=18 --set width=32`` for smaller variants).  Loss:
BCE (default) or focal (``--set loss=focal``).  Per-class thresholds are fitted on
the validation split (F1-optimal) and stored in the checkpoint.  Large fields are
resized to the model's input (default) or tiled (``--set field=tile``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..engine import csvsafe
from ..engine.checkpoint import CheckpointMeta
from ..engine.inference import predict_batches
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError
from ..io import hpa_dataset as D
from ..preprocess import as_rgby, get_transform
from ..synth.hpa import HPA_CLASSES
from ..zoo.loaded import LoadedModel, load_model
from .base import TaskOptions

TASK = "hpa"
ARCH = "resnet50_rgby"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------- training

def _budget(opts: TaskOptions) -> dict[str, Any]:
    """Task defaults; ``quick`` is a tiny net at 64 px for smoke tests and demos."""
    if opts.quick:
        return {"depth": 10, "width": 8, "size": 64, "epochs": 6, "batch_size": 16, "lr": 3e-3}
    return {"depth": 50, "width": 64, "size": 512, "epochs": 20, "batch_size": 16, "lr": 1e-4 if opts.pretrained else 1e-3}


def train(data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Train on a Kaggle-layout folder; best checkpoint (macro F1 on validation) in ``opts.out``."""
    from ..engine.run import train_run

    return (yield from train_run(TASK, opts, lambda ctx: _train_spec(Path(data), ctx)))


def _train_spec(data: Path, ctx) -> Job[Any]:
    """HPA's part of a run (:mod:`napari_cellclass.engine.run`): ResNet-RGBY, BCE, macro F1."""
    from ..engine.run import TrainSpec
    from ..recipes import Recipe

    opts, policy = ctx.opts, ctx.policy
    b = _budget(opts)
    recipe = Recipe.from_options(opts, loss="cross_entropy", optimizer="adam", schedule="cosine", lr=b["lr"], epochs=b["epochs"],
                                 batch_size=b["batch_size"])
    size = int(opts.size or b["size"])
    depth, width = int(opts.get("depth", b["depth"])), int(opts.get("width", b["width"]))

    csv_path = D.find_csv(data)
    items = D.read_labels(csv_path)
    folder = D.image_folder(data)
    if not any(it.labels for it in items):
        raise InputError(f"no image has a label (every Target of the {len(items)} rows is empty); there is "
                         "nothing to learn", csv_path)
    tr_items, va_items = D.split_by_id(items, float(opts.get("val_fraction", 0.2)), opts.seed)
    if not va_items:
        raise InputError("need at least two images to split off validation data", csv_path)
    yield Progress(0, None, "load", f"{len(tr_items)} train / {len(va_items)} validation images; device {policy.describe()}")

    arch_config = {"num_classes": D.NUM_CLASSES, "in_channels": 4, "depth": depth, "width": width, "pretrained": False}
    from ..io.limits import check_training_signal

    probe_ds = D.HPADataset(folder, tr_items, size, mean=[0] * 4, std=[1] * 4)
    idx = np.linspace(0, len(probe_ds) - 1, min(64, len(probe_ds))).astype(int)
    check_training_signal((probe_ds.unit_image(int(i)).numpy() for i in idx), csv_path, "training image set")
    model = _build_model(arch_config, opts.pretrained)
    if opts.pretrained:
        mean, std = IMAGENET_MEAN + [float(np.mean(IMAGENET_MEAN[:2]))], IMAGENET_STD + [float(np.mean(IMAGENET_STD[:2]))]
    else:
        mean, std = D.channel_stats(probe_ds)  # the images it checked are cached
    train_ds = D.HPADataset(folder, tr_items, size, mean=mean, std=std, train=recipe.augment, seed=opts.seed)
    val_ds = D.HPADataset(folder, va_items, size, mean=mean, std=std)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=recipe.batch_size, shuffle=True, num_workers=opts.workers,
                                         generator=torch.Generator().manual_seed(opts.seed), drop_last=len(train_ds) > recipe.batch_size)
    recipe.apply_to_model(model)
    loss_mod = recipe.make_loss(D.NUM_CLASSES, multilabel=True)
    val_truth = val_ds.targets()
    last: dict[str, Any] = {}

    def loss_fn(m: torch.nn.Module, batch: Any, epoch: int) -> torch.Tensor:
        x, y = batch
        return loss_mod(m(x), y)

    def evaluate(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        probs = _probs(m, val_ds, policy, recipe.batch_size)
        thr = D.fit_thresholds(val_truth, probs)
        last["thresholds"] = thr
        at_half = D.multilabel_metrics(val_truth, probs, 0.5)
        tuned = D.multilabel_metrics(val_truth, probs, thr)
        return {"val_macro_f1": tuned["macro_f1"], "val_accuracy": tuned["accuracy"],
                "val_macro_f1_at_0.5": at_half["macro_f1"], "val_accuracy_at_0.5": at_half["accuracy"]}

    s_arch, s_config = recipe.arch_config(ARCH, arch_config)

    def make_meta(best: dict[str, float], history: list[dict[str, float]]) -> CheckpointMeta:
        return CheckpointMeta(
            task=TASK, arch=s_arch, class_names=list(HPA_CLASSES), in_channels=4, input_size=[size, size],
            arch_config=s_config, normalization={"scale": "dtype_range", "mean": mean, "std": std,
                                                 "channels": ["red", "green", "blue", "yellow"]},
            thresholds=list(last.get("thresholds", [0.5] * D.NUM_CLASSES)),
            training={"recipe": recipe.to_dict(), "data": str(Path(data).resolve()), "n_train": len(tr_items),
                      "n_val": len(va_items), "seed": opts.seed, "pretrained": bool(opts.pretrained),
                      "threshold_fit": "F1-optimal per class on the validation split"},
            metrics=dict(best), trained_on=str(opts.get("trained_on", "user data")),
        )

    return TrainSpec(model=model, batches=loader, loss_fn=loss_fn, recipe=recipe, make_meta=make_meta,
                     evaluate=evaluate, monitor="val_macro_f1", mode="max")


def _build_model(arch_config: dict[str, Any], pretrained: bool) -> torch.nn.Module:
    from ..models.hpa_resnet import build_resnet_rgby

    return build_resnet_rgby(**{**arch_config, "pretrained": bool(pretrained)})


def _probs(model: torch.nn.Module, ds: D.HPADataset, policy, batch_size: int) -> np.ndarray:
    model.eval()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(ds), batch_size):
            x = torch.stack([ds[i][0] for i in range(s, min(len(ds), s + batch_size))])
            with policy.autocast():
                outs.append(torch.sigmoid(model(policy.prepare_input(x)).float()).cpu())
    return torch.cat(outs).numpy()


# ---------------------------------------------------------------------------- inference

def load(model: Any, device: str | None = None) -> LoadedModel:
    """The HPA classifier: a built-in name, a checkpoint path or a :class:`LoadedModel`."""
    import napari_cellclass.recipes  # noqa: F401  (registers "recipe_model" for recipe-changed nets)

    return load_model(model, task=TASK, device=device, in_channels=4)


def _foreign(model: Any, device: str | None = None):
    """The :class:`~napari_cellclass.zoo.foreign.ForeignModel` when ``model`` is a bioimage.io package, else None."""
    from ..zoo.foreign import as_foreign

    return as_foreign(model, task="hpa", device=device)


#: (4, H, W) from a (4, H, W) array or a list of 4 arrays; clear errors otherwise.
_as_field = as_rgby


def _normalizer(meta: CheckpointMeta):
    """The declared transform's mean/std step (for callers that resize themselves)."""
    return get_transform(meta).normalize


def _row(probs: np.ndarray, meta: CheckpointMeta) -> dict[str, Any]:
    thr = np.asarray(meta.thresholds or [0.5] * len(probs))
    pred = [i for i in range(len(probs)) if probs[i] >= thr[i]]
    top = int(np.argmax(probs))
    return {
        "probabilities": [float(p) for p in probs],
        "predicted_ids": pred,
        "predicted": [meta.class_names[i] for i in pred],
        "top_class": meta.class_names[top],
        "score": float(probs[top]),
    }


def classify(
    image: Any,
    model_path: str | Path,
    cells: Any = None,
    device: str | None = None,
    mode: str = "whole",
    cancel: CancelToken | None = None,
    *,
    field: str = "resize",
    batch_size: int = 16,
    **kw: Any,
) -> Job[dict[str, Any]]:
    """Classify an HPA field (``mode="whole"``) or each of its cells (``mode="cells"``).

    ``image`` is (4, H, W) RGBY or a list of four 2-D arrays.  ``cells`` (cells
    mode) is a labels array; when None the cells are segmented from the blue,
    red and yellow channels.  Returns class names, thresholds, the device, and
    either ``probabilities``/``predicted`` (whole) or ``cells`` rows plus the
    ``labels`` array (cells).
    """
    if mode not in ("whole", "cells"):
        raise InputError(f"mode must be 'whole' or 'cells', got {mode!r}")
    if _foreign(model_path, device) is not None or kw.get("cell_classifier") is not None:
        from . import hpa_singlecell  # bioimage.io packages: their own processing, the single-cell route

        return (yield from hpa_singlecell.classify(image, model_path, cells=cells, device=device, mode=mode,
                                                   cancel=cancel, field=field, batch_size=batch_size, **kw))
    fld = _as_field(image)
    lm = load(model_path, device)
    model, meta, policy = lm.net, lm.meta, lm.policy
    size = int(meta.input_size[-1])
    tf = lm.transform  # the checkpoint's declared preprocessing
    yield Progress(0, None, "classify", f"device: {policy.describe()}")
    base = {"class_names": list(meta.class_names), "thresholds": list(meta.thresholds or [0.5] * len(meta.class_names)),
            "device": policy.describe(), "mode": mode, "trained_on": meta.trained_on, "input_size": size}
    if mode == "whole":
        views = tf.views(tf.unit(fld), field)
        probs = yield from predict_batches(model, views, policy=policy, preprocess=tf.normalize, batch_size=batch_size,
                                           postprocess=lambda out: list(torch.sigmoid(out).numpy()),
                                           cancel=cancel, stage="classify")
        p = np.mean(np.stack(probs), axis=0)
        return {**base, **_row(p, meta), "n_views": len(views), "field": field}
    from ..segmentation.cells import cell_boxes, segment_cells

    if cells is None:
        yield Progress(0, None, "segment", "segmenting cells (nuclei-seeded watershed)")
        labels = segment_cells(fld)
    else:
        labels = np.asarray(getattr(cells, "data", cells))
        if labels.shape != fld.shape[1:]:
            raise InputError(f"cells labels have shape {labels.shape}, the image {fld.shape[1:]}")
        labels = labels.astype(np.int32)
    check_cancel(cancel)
    boxes = cell_boxes(labels)
    ids = sorted(boxes)
    unit = tf.unit(fld)
    crops = [torch.from_numpy(np.ascontiguousarray(unit[:, y0:y1, x0:x1])) for (y0, x0, y1, x1) in (boxes[i] for i in ids)]
    probs = yield from predict_batches(model, crops, policy=policy, preprocess=lambda t: tf.normalize(tf.resize(t)),
                                       batch_size=batch_size, postprocess=lambda out: list(torch.sigmoid(out).numpy()),
                                       cancel=cancel, stage="cells")
    rows = [{"label": int(i), "box": list(boxes[i]), **_row(np.asarray(p), meta)} for i, p in zip(ids, probs)]
    return {**base, "labels": labels, "cells": rows, "n_cells": len(rows)}


def features_table(result: dict[str, Any]) -> dict[str, list]:
    """Per-cell rows as a column dict for a labels layer's ``features`` (one row per label 0..max)."""
    names = result["class_names"]
    n = int(result["labels"].max()) + 1 if result["labels"].size else 1
    cols: dict[str, list] = {"label": list(range(n)), "class": ["background"] + [""] * (n - 1),
                             "predicted": [""] * n, "score": [0.0] * n}
    for name in names:
        cols[f"p_{name}"] = [0.0] * n
    for row in result["cells"]:
        i = row["label"]
        cols["class"][i] = row["top_class"]
        cols["predicted"][i] = "; ".join(row["predicted"])
        cols["score"][i] = row["score"]
        for name, p in zip(names, row["probabilities"]):
            cols[f"p_{name}"][i] = p
    return cols


# ---------------------------------------------------------------------------- CLI jobs

def _dataset_for_eval(data: Path) -> tuple[Path, list[D.HPAItem]]:
    return D.image_folder(data), D.read_labels(D.find_csv(data))


def evaluate(model: Path, data: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Macro F1, accuracy and per-class F1 (stored thresholds) on a Kaggle-layout folder."""
    lm = load(model, opts.device)
    net, meta, policy, tf = lm.net, lm.meta, lm.policy, lm.transform
    model = lm.path or model
    folder, items = _dataset_for_eval(data)
    ds = D.HPADataset(folder, items, tf.size, mean=tf.mean.flatten().tolist(), std=tf.std.flatten().tolist())
    bs = opts.batch_size or 16
    probs = yield from predict_batches(net, list(range(len(ds))), policy=policy, preprocess=lambda i: ds[i][0],
                                       batch_size=bs, postprocess=lambda out: list(torch.sigmoid(out).numpy()),
                                       cancel=opts.cancel, stage="evaluate")
    probs = np.stack(probs)
    truth = ds.targets()
    thr = meta.thresholds or [0.5] * D.NUM_CLASSES
    m = D.multilabel_metrics(truth, probs, thr)
    f1 = D.f1_per_class(truth.astype(bool), probs >= np.asarray(thr))
    present = truth.any(0)
    return {
        "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "label_accuracy": m["label_accuracy"],
        "at_0.5": D.multilabel_metrics(truth, probs, 0.5),
        "per_class_f1": {meta.class_names[c]: (None if np.isnan(f1[c]) else float(f1[c]))
                         for c in range(len(meta.class_names)) if present[c] or not np.isnan(f1[c])},
        "n_images": len(items), "classes_present": int(present.sum()), "device": policy.describe(),
        "model": str(model), "trained_on": meta.trained_on,
        "note": "macro F1 averages the classes present in this data; accuracy = all 28 labels right",
    }


def _collect_sets(inputs: Sequence[Path]):
    from ..io.hpa_reader import find_set, find_sets

    sets = {}
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            folder = p / "train" if (p / "train").is_dir() and not find_sets(p) else p
            found = find_sets(folder)
        else:
            s = find_set(p)
            found = [s] if s is not None else []
            if not found:
                raise InputError("not an HPA channel file (<id>_red|green|blue|yellow.<png|tif|jpg>)", p)
        for s in found:
            sets[(str(next(iter(s.paths.values())).parent), s.set_id)] = s
    if not sets:
        raise InputError("no HPA channel sets found", inputs[0] if inputs else None)
    return list(sets.values())


def predict(model: Path, inputs: list[Path], opts: TaskOptions) -> Job[dict[str, Any]]:
    """Per-image probabilities for every HPA set in ``inputs`` -> predictions.csv/.json in ``opts.out``."""
    from ..engine.atomic import atomic_path
    from ..io.hpa_reader import read_set, stack_channels

    if _foreign(model, opts.device) is not None:
        from . import hpa_singlecell

        return (yield from hpa_singlecell.predict(model, inputs, opts))
    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    lm = load(model, opts.device)
    net, meta, policy, tf = lm.net, lm.meta, lm.policy, lm.transform
    sets = _collect_sets(inputs)
    how = str(opts.get("field", "resize"))
    rows = []
    refused: list[dict[str, str]] = []
    bs = opts.batch_size or 16
    from ..budget import WORK_BYTES_PER_PIXEL
    from ..io.limits import check_informative

    for start in range(0, len(sets), bs):  # a chunk of sets at a time: memory stays bounded
        check_cancel(opts.cancel)
        chunk = sets[start:start + bs]
        views, owner = [], []
        for k, s in enumerate(chunk):
            try:  # unreadable, blank (every channel one value) or tiny: refused with the reason
                arrays, _ = read_set(s, warn=False, work=WORK_BYTES_PER_PIXEL)  # the whole-image bound too
                stack = stack_channels(arrays, s.set_id)
                check_informative(np.moveaxis(np.asarray(stack), 0, -1), f"HPA set {s.set_id}", min_side=8)
                v = tf.views(tf.unit(stack), how)
            except InputError as exc:
                refused.append({"input": str(sorted(s.paths.values())[0]), "problem": exc.problem})
                continue
            views += v
            owner += [k] * len(v)
        if not views:
            continue
        probs = yield from predict_batches(net, views, policy=policy, preprocess=tf.normalize, batch_size=bs,
                                           postprocess=lambda o: list(torch.sigmoid(o).numpy()), cancel=opts.cancel)
        probs, owner = np.stack(probs), np.asarray(owner)
        for k, s in enumerate(chunk):
            if (owner == k).any():
                rows.append({"id": s.set_id, **_row(probs[owner == k].mean(0), meta)})
        yield Progress(start + len(chunk), len(sets), "predict", chunk[-1].set_id)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["Id", "Predicted", "predicted_names"] + list(meta.class_names))
            for r in rows:
                w.writerow([r["id"], " ".join(map(str, r["predicted_ids"])), "; ".join(r["predicted"])]
                           + [f"{p:.5f}" for p in r["probabilities"]])
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps({"model": str(model), "class_names": meta.class_names, "thresholds": meta.thresholds,
                                   "device": policy.describe(), "trained_on": meta.trained_on, "images": rows}, indent=1))
    return {"csv": str(csv_path), "json": str(json_path), "n_images": len(rows), "device": policy.describe(),
            "predictions": {r["id"]: r["predicted"] for r in rows}, "refused": refused}


def synth(out: Path, n: int, seed: int) -> Path:
    """Synthetic HPA-like fields (128 px) in the Kaggle layout."""
    from ..synth.hpa import write_dataset

    return write_dataset(out, n, seed, size=128)


def demo(out: Path, opts: TaskOptions) -> Job[dict[str, Any]]:
    """Synthesize, train a tiny RGBY ResNet briefly, evaluate on held-out fields, predict, classify cells."""
    from ..engine.progress import run_sync  # noqa: F401
    from ..synth.hpa import render_field, write_dataset

    out = Path(out)
    data = write_dataset(out / "data", 240, opts.seed, size=64)
    test = write_dataset(out / "test", 60, opts.seed + 1000, size=64)
    topts = TaskOptions(**{**opts.__dict__, "out": out / "model", "quick": True, "epochs": opts.epochs or 15,
                           "extra": {**opts.extra, "trained_on": "synthetic (napari-cellclass demo)"}})
    summary = yield from train(data, topts)
    ev = yield from evaluate(Path(summary["checkpoint"]), test, TaskOptions(device=opts.device, cancel=opts.cancel))
    popts = TaskOptions(device=opts.device, out=out / "predictions", cancel=opts.cancel)
    pred = yield from predict(Path(summary["checkpoint"]), [test / "train"], popts)
    (out / "metrics.json").write_text(json.dumps(ev, indent=2))
    img, _, labels = render_field(np.random.default_rng(opts.seed + 7), 128, [0, 25])
    cells = yield from classify(img, summary["checkpoint"], device=opts.device, mode="cells", cancel=opts.cancel)
    _save_demo_png(out / "field_cells.png", img, cells)
    return {"checkpoint": summary["checkpoint"], "test_macro_f1": round(ev["macro_f1"], 3),
            "test_accuracy": round(ev["accuracy"], 3), "n_test_images": ev["n_images"],
            "predictions_csv": pred["csv"], "cells_found": cells["n_cells"], "device": summary["device"],
            "train_seconds": summary["seconds"]}


def _save_demo_png(path: Path, img: np.ndarray, cells: dict[str, Any]) -> None:
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    from ..io.hpa_reader import rgb_merge

    rgb = rgb_merge(img[0], img[1], img[2], img[3])
    rgb[find_boundaries(cells["labels"])] = 1.0
    iio.imwrite(path, (rgb * 255).astype(np.uint8))
