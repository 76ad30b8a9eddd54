"""Chromosome classification (24 classes: 1-22, X, Y) with GRiCoL, GRiL or a ResNet-50.

``train`` / ``evaluate`` / ``predict`` / ``synth`` / ``demo`` for the CLI and API, and
:func:`classify_crops`, the door the karyotype task uses: raw crops in, (N, 24)
probabilities out.  Every crop goes through
:func:`napari_cellclass.io.chromosome_dataset.prepare_crop`, in training and at
inference alike; the canvas size it needs (``pad_to``) is stored in the checkpoint.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..engine import csvsafe
from ..engine.augment import affine_gamma_batch as augment_batch  # the chromosome batch augmenter
from ..engine.checkpoint import CheckpointMeta
from ..engine.data import SeededBatches
from ..engine.device import resolve_device
from ..engine.inference import predict_batches
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError, WrongTaskError
from ..io.chromosome_dataset import (
    ChromosomeSample,
    load_crop,
    prepare_crop,
    scan_dataset,
    split_by_cell,
)
from ..metrics import classification_metrics
from ..models.gricol import GRiCoLLoss, full_model_logits, has_full_model
from ..models.registry import build_model
from ..preprocess import ChromosomeCanvas, Oriented, crop_lengths, orient_all, reference_length
from ..synth.chromosomes import CHROMOSOME_CLASSES, write_dataset
from ..zoo.loaded import LoadedModel, load_model

TASK = "chromosome"
ARCH_ALIASES = {"resnet50": "resnet50_chromosome", "resnet": "resnet50_chromosome", "gricol": "gricol",
                "gril": "gril", "resnet50_chromosome": "resnet50_chromosome"}
FULL_SIZE = (448, 456)
SMALL = dict(input_size=(64, 68), width=0.125, layers=(1, 1, 1, 1))
CACHE_LIMIT_BYTES = 1_500_000_000


# ----------------------------------------------------------------------------- configuration
def arch_name(name: str | None) -> str:
    key = (name or "gricol").lower()
    if key not in ARCH_ALIASES:
        raise InputError(f"unknown chromosome architecture {name!r}; choose gricol, gril or resnet50")
    return ARCH_ALIASES[key]


def _input_size(opts) -> tuple[int, int]:
    if opts.get("input_size") is not None:
        v = opts.get("input_size")
        return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(round(v * 456 / 448)))
    if opts.size:
        return (int(opts.size), int(round(opts.size * 456 / 448)))
    return SMALL["input_size"] if opts.quick else FULL_SIZE


def _layers(v, small: bool) -> list[int]:
    if v is None:
        return list(SMALL["layers"] if small else (3, 4, 6, 3))
    if isinstance(v, (int, float)):
        return [int(v)] * 4
    if len(v) != 4:
        raise InputError(f"layers must list 4 stage depths (e.g. 3,4,6,3), got {v}")
    return [int(x) for x in v]


def arch_config(arch: str, opts) -> dict[str, Any]:
    """JSON-able builder kwargs from the options (``--set width=0.125 --set layers=1,1,1,1 ...``)."""
    size = _input_size(opts)
    small = opts.quick
    default_width = SMALL["width"] if small else (1.0 if arch == "resnet50_chromosome" else 0.5)
    cfg: dict[str, Any] = {
        "num_classes": len(CHROMOSOME_CLASSES),
        "in_channels": 1,
        "input_size": [size[0], size[1]],
        "width": float(opts.get("width", default_width)),
        "layers": _layers(opts.get("layers"), small),
    }
    if arch != "resnet50_chromosome":
        cfg["grid"] = int(opts.get("grid", 3))
        cfg["overlap"] = bool(opts.get("overlap", True))
        if opts.get("tile") is not None:
            t = opts.get("tile")
            cfg["tile"] = [int(t[0]), int(t[1])] if isinstance(t, (list, tuple)) else [int(t), int(t)]
    return cfg


# ----------------------------------------------------------------------------- data
class CropBatches(SeededBatches):
    """Shuffled, augmented mini-batches of prepared crops; prepared once when they fit in memory."""

    def __init__(self, crops: Sequence[np.ndarray], labels: Sequence[int], size: Sequence[int],
                 pad_to: int | Sequence[float] | None, batch_size: int, shuffle: bool = True,
                 augment: bool = True,
                 seed: int = 0, cancel: CancelToken | None = None, degrade: float = 0.0):
        self.crops = list(crops)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.size = (int(size[0]), int(size[1]))
        # one canvas for all crops (absolute scale) or one per crop (relative to its cell)
        self.pad_to = list(pad_to) if isinstance(pad_to, (list, tuple, np.ndarray)) else [pad_to] * len(self.crops)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment = shuffle, augment
        self.degrade = float(degrade)
        self.seed = seed
        self.epoch = 0
        self.cache: torch.Tensor | None = None
        if len(self.crops) * self.size[0] * self.size[1] * 4 <= CACHE_LIMIT_BYTES:
            out = torch.empty(len(self.crops), 1, *self.size)
            for i, c in enumerate(self.crops):
                if i % 64 == 0:
                    check_cancel(cancel)
                out[i, 0] = torch.from_numpy(self._prep(i))
            self.cache = out

    def _prep(self, i: int) -> np.ndarray:
        crop = self.crops[i]
        if isinstance(crop, Oriented):
            return ChromosomeCanvas.canvas(crop, self.size, self.pad_to[i])
        img, mask = crop if isinstance(crop, tuple) else (crop, None)
        return prepare_crop(img, mask, self.size, self.pad_to[i])

    def __len__(self) -> int:
        return (len(self.crops) + self.batch_size - 1) // self.batch_size

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[idx]
        return torch.stack([torch.from_numpy(self._prep(int(i)))[None] for i in idx])

    def order(self) -> torch.Tensor:
        """This epoch's order; its generator (seed, epoch) then draws the epoch's augmentation."""
        self._g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        self.epoch += 1
        n = len(self.crops)
        return torch.randperm(n, generator=self._g) if self.shuffle else torch.arange(n)

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.get(idx)
        if self.augment:
            x = augment_batch(x, self._g, strength=self.augment if isinstance(self.augment, float) else 1.0,
                              degrade=self.degrade)
        return x, self.labels[idx]


def cell_references(crops: Sequence, cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, refs)``: each crop's chromosome length and its cell's median length.

    Spreads are imaged at different magnifications (Tseng's are 500-1360 px wide),
    so an absolute canvas makes chromosome 1 of a small spread look like a 21 of a
    large one.  Lengths relative to the cell's median keep the size cue the
    classifier needs and make it independent of the microscope's resolution.
    """
    lengths = crop_lengths(crops)
    cells = np.asarray(list(cells))
    refs = np.empty_like(lengths)
    for c in np.unique(cells):
        refs[cells == c] = reference_length(lengths[cells == c])
    return lengths, refs


def load_samples(samples: Sequence[ChromosomeSample], cancel: CancelToken | None = None) -> list[np.ndarray]:
    cache: dict = {}
    out = []
    for i, s in enumerate(samples):
        if i % 200 == 0:
            check_cancel(cancel)
        out.append(load_crop(s, cache))
    return out


def _metrics_from(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """The shared classification metrics; per-class numbers without data are None (JSON null)."""
    return classification_metrics(y_true, y_pred, CHROMOSOME_CLASSES, undefined=None)


# ----------------------------------------------------------------------------- train
def train(data: Path, opts) -> Job[dict[str, Any]]:
    """Train GRiCoL (default), GRiL or ResNet-50 on a chromosome dataset folder, split by cell.

    ``data`` may be a ``sources.txt`` listing several folders (labs); each is split on
    its own and validation reports each one's accuracy too.  ``opts.model`` (a
    built-in name or checkpoint) fine-tunes that network: its architecture is kept.
    """
    from ..engine.run import train_run

    amp = opts.get("amp")
    policy = resolve_device(opts.device, amp=None if amp is None else bool(amp))
    summary = yield from train_run(TASK, opts, lambda ctx: _train_spec(data, ctx), policy=policy)
    ckpt = Path(summary["checkpoint"])
    if bool(opts.get("calibrate", True)) and ckpt.is_file() and not summary.get("stopped_by_time_budget"):
        cal = yield from calibrate(ckpt, data, opts)
        summary["calibration"] = cal
    return summary


def calibrate(checkpoint: Path, data: Path, opts, *, write: bool = True,
              plot: Path | None = None) -> Job[dict[str, Any]]:
    """Fit the softmax temperature on the validation split and store it in ``checkpoint``.

    The validation cells (the training split's, same seed and ``val_fraction``) are
    halved by group: the temperature is fitted on one half, the expected calibration
    error (ECE) reported on the other, before and after.  The probabilities are the
    ones :func:`classify_crops` gives (flip TTA), before any earlier temperature.
    """
    from ..engine.calibration import calibrate_held_out
    from ..engine.checkpoint import read_meta, rewrite_meta

    samples = scan_dataset(data)
    _, val = split_by_cell(samples, float(opts.get("val_fraction", 0.2)), opts.seed)
    yield Progress(0, None, "calibrate", f"temperature on {len(val)} held-out chromosomes")
    lm = load(checkpoint, opts.device, cache=False)
    crops = lm.transform.orient(load_samples(val, opts.cancel), opts.cancel)
    refs = cell_references(crops, [s.cell for s in val])[1]
    probs = yield from classify_crops(crops, lm, opts.device, opts.cancel, ref_length=refs, calibrated=False)
    labels = np.array([s.label for s in val])
    groups = ["/".join(s.split_group) for s in val]
    cal = calibrate_held_out(probs, labels, groups,
                             fit_on="every other held-out cell/patient (sorted); ECE on the rest").to_dict()
    if plot is not None:  # the reliability diagram of the half the temperature was not fitted on
        from ..engine.calibration import fit_and_test_halves, plot_reliability, scale_probs

        test = fit_and_test_halves(groups)[1]
        plot_reliability({"softmax": (probs[test], labels[test]),
                          f"T = {cal['temperature']:.2f}": (scale_probs(probs[test], cal["temperature"]),
                                                            labels[test])},
                         plot, f"{Path(checkpoint).name}: {int(test.sum())} held-out chromosomes")
    if write:  # the tensors as stored, the header with the calibration
        rewrite_meta(checkpoint, replace(read_meta(checkpoint), calibration=cal))
    return cal


def _fine_tune_start(opts) -> LoadedModel | None:
    """The model ``opts.model`` names (a built-in or a checkpoint), as the caller's own copy on the CPU."""
    source = getattr(opts, "model", None)
    if not source:
        return None
    if isinstance(source, LoadedModel):  # shared with other callers: train a copy, never the shared network
        if source.path is None:
            import copy

            return replace(load(source), net=copy.deepcopy(source.net).cpu())
        source = source.path
    try:
        return load_model(source, task=TASK, device="cpu", in_channels=1, cache=False)
    except WrongTaskError as exc:
        raise InputError(f"cannot fine-tune from it for chromosome classification: {exc.problem}",
                         opts.model) from None


def _train_spec(data: Path, ctx) -> Job[Any]:
    """The chromosome task's part of a run (:mod:`napari_cellclass.engine.run`): GRiCoL loss, accuracy."""
    from ..engine.run import TrainSpec
    from ..recipes import Recipe

    opts, policy = ctx.opts, ctx.policy
    start = _fine_tune_start(opts)
    init = start.meta if start is not None else None
    arch = init.arch if init is not None else arch_name(opts.arch)
    recipe = Recipe.from_options(opts, lr=1e-3, batch_size=28, optimizer="adam",
                                 epochs=3 if opts.quick else 30)
    samples = scan_dataset(data)
    yield Progress(0, None, "load", f"{len(samples)} chromosomes in {data}")
    train_s, val_s = split_by_cell(samples, float(opts.get("val_fraction", 0.2)), opts.seed)
    yield Progress(0, None, "prepare", "orienting crops")
    straight = bool(opts.get("straighten", False))
    train_c = orient_all(load_samples(train_s, opts.cancel), opts.cancel, straight)
    val_c = orient_all(load_samples(val_s, opts.cancel), opts.cancel, straight)
    cfg = dict(init.arch_config) if init is not None else arch_config(arch, opts)
    size = cfg["input_size"]
    canvas = str(opts.get("canvas", "relative"))
    if canvas not in ("relative", "absolute"):
        raise InputError(f"canvas must be 'relative' or 'absolute', got {canvas!r}")
    pad_to = opts.get("pad_to")
    pad_rel = None
    if canvas == "relative":
        yield Progress(0, None, "prepare", "measuring chromosome lengths per cell")
        lengths, refs = cell_references(train_c, [s.cell for s in train_s])
        pad_rel = float(np.percentile(lengths / refs, 98))  # a canvas that holds nearly every chromosome
        train_pad = list(pad_rel * refs)
        val_pad = list(pad_rel * cell_references(val_c, [s.cell for s in val_s])[1])
        note = f"canvas {pad_rel:.2f} x the cell's median chromosome length"
    else:
        pad_to = int(pad_to) if pad_to is not None else int(np.ceil(np.percentile(crop_lengths(train_c), 98)))
        train_pad, val_pad = pad_to, pad_to
        note = f"canvas {pad_to} px"
    yield Progress(0, None, "prepare", f"preparing crops at {size[0]}x{size[1]} ({note})")
    batches = CropBatches(train_c, [s.label for s in train_s], size, train_pad, recipe.batch_size,
                          augment=recipe.augment, seed=opts.seed, cancel=opts.cancel,
                          degrade=float(opts.get("degrade", 0.0)))
    val_b = CropBatches(val_c, [s.label for s in val_s], size, val_pad, max(recipe.batch_size, 32),
                        shuffle=False, augment=False, cancel=opts.cancel)
    val_sources = np.array([s.source for s in val_s])
    if start is not None:
        model = start.net
        model.train()
        yield Progress(0, None, "prepare", f"fine-tuning {start.name}")
    else:
        model = build_model(arch, **cfg)
    loss_obj = GRiCoLLoss(beta=float(opts.get("beta", 0.1)), lam=float(opts.get("lam", opts.get("lambda", 150))),
                          label_smoothing=recipe.label_smoothing)

    def loss_fn(m: torch.nn.Module, batch, epoch: int) -> torch.Tensor:
        x, y = batch
        return loss_obj(m.forward_all(x), y, epoch)

    def evaluate_fn(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        hits = []
        for x, y in val_b:
            check_cancel(opts.cancel)
            pred = m(policy.prepare_input(x)).argmax(1).cpu()
            hits.append((pred == y).numpy())
        hit = np.concatenate(hits) if hits else np.zeros(0, bool)
        out = {"accuracy": float(hit.mean()) if len(hit) else 0.0}
        if len(set(val_sources)) > 1:  # each lab on its own: the mean hides a lab left behind
            out.update({f"accuracy_{src}": float(hit[val_sources == src].mean()) for src in sorted(set(val_sources))})
        return out

    def make_meta(best: dict[str, float], hist: list[dict[str, float]]) -> CheckpointMeta:
        return CheckpointMeta(
            task=TASK, arch=arch, class_names=list(CHROMOSOME_CLASSES), in_channels=1, input_size=list(size),
            arch_config=cfg,
            normalization={"preprocess": "prepare_crop", "canvas": canvas, "pad_to": pad_to,
                           "straighten": straight,
                           "pad_rel": pad_rel, "range": [0.0, 1.0],
                           "polarity": "auto (bright chromosome on dark)"},
            training={"recipe": recipe.to_dict(), "beta": loss_obj.beta, "lambda": loss_obj.lam,
                      "data": Path(data).name, "sources": sorted({s.source for s in samples if s.source}),
                      "fine_tuned_from": start.name if start is not None else None,
                      "degrade": float(opts.get("degrade", 0.0)), "train_cells": len({s.cell for s in train_s}),
                      "val_cells": len({s.cell for s in val_s}), "n_train": len(train_s), "n_val": len(val_s),
                      "history": hist},
            metrics=dict(best), trained_on=str(opts.get("trained_on", Path(data).name)),
        )

    return TrainSpec(model=model, batches=batches.loader(), loss_fn=loss_fn, recipe=recipe, make_meta=make_meta,
                     evaluate=evaluate_fn, monitor="accuracy", mode="max",
                     summary={"arch": arch, "arch_config": cfg, "n_train": len(train_s), "n_val": len(val_s),
                              "pad_to": pad_to, "pad_rel": pad_rel})


# ----------------------------------------------------------------------------- inference
def load(model: Any, device: str | None = None, cache: bool = True) -> LoadedModel:
    """The chromosome classifier as a :class:`LoadedModel` (a name, a path, a loaded model or a bare
    network; a bare network is fed on an absolute canvas at its input size)."""
    lm = load_model(model, task=TASK, device=device, in_channels=1, cache=cache)
    if lm.transform is None:  # a bare network: the absolute canvas its input size implies
        lm = replace(lm, transform=ChromosomeCanvas(size=list(getattr(lm.net, "input_size", FULL_SIZE)),
                                                    pad_to=None))
    return lm


def _plain_probs(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(m(x).float(), -1)


def _full_probs(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(full_model_logits(m, x), -1)


def _flip_views(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])


def _forward(full: bool, tta: bool):
    probs = _full_probs if full else _plain_probs
    if not tta:
        return probs

    def flip_tta(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return probs(m, _flip_views(x)).view(4, x.shape[0], -1).mean(0)

    return flip_tta


def classify_crops(crops: list, model: Any, device: str | None = None,
                   cancel: CancelToken | None = None, full_model: bool = False,
                   batch_size: int = 32, tta: bool = True,
                   ref_length: float | Sequence[float] | None = None,
                   context: Sequence | None = None, calibrated: bool = True) -> Job[np.ndarray]:
    """Class probabilities (N, 24) for raw gray chromosome crops.

    ``calibrated``: soften them by the temperature the checkpoint carries (fitted on
    held-out data by :func:`calibrate`), so that "0.9" means right 9 times in 10.

    ``tta`` averages the probabilities of the crop and its three flips (the
    network was trained on flipped crops, so each flip is an equally valid view).
    ``ref_length``: for models trained with a relative canvas, the median
    chromosome length of the spread or cell the crops come from, one number or
    one per crop (default: the median of ``context``, all crops of the spread,
    or else of ``crops``, right when they are one whole spread or cell).

    ``crops``: 2-D arrays, or ``(image, mask)`` pairs (the mask marks the
    chromosome when neighbours intrude into the box).  ``model``: a built-in name,
    a checkpoint path, a :class:`LoadedModel` or a network.  ``full_model`` uses every
    GRiCoL head instead of the global branch alone (for this call only).
    """
    lm = load(model, device)
    crops = list(crops)
    if not len(crops):
        return np.zeros((0, len(CHROMOSOME_CLASSES)), np.float32)
    preprocess = lm.transform.tensors(crops, ref_length, context, cancel)  # the checkpoint's declared transform
    rows = yield from predict_batches(
        lm.net, list(range(len(crops))), policy=lm.policy, preprocess=preprocess, batch_size=batch_size,
        forward=_forward(bool(full_model) and has_full_model(lm.net), tta), cancel=cancel, stage="classify")
    probs = torch.stack(list(rows)).numpy().astype(np.float32)
    temperature = (lm.meta.calibration or {}).get("temperature") if lm.meta is not None else None
    if calibrated and temperature and not full_model:
        from ..engine.calibration import scale_probs

        probs = scale_probs(probs, float(temperature))
    return probs


def evaluate(model: Path, data: Path, opts) -> Job[dict[str, Any]]:
    """Accuracy, per-class accuracy/precision and the confusion matrix on a dataset folder.

    ``--set split=val`` scores only the validation cells of the training split
    (same seed and ``val_fraction``); default: every crop in ``data``.
    """
    t0 = time.monotonic()
    samples = scan_dataset(data)
    if opts.get("split") == "val":
        _, samples = split_by_cell(samples, float(opts.get("val_fraction", 0.2)), opts.seed)
    lm = load(model, opts.device)
    crops = lm.transform.orient(load_samples(samples, opts.cancel), opts.cancel)
    refs = cell_references(crops, [s.cell for s in samples])[1]  # each cell at its own scale
    probs = yield from classify_crops(crops, lm, opts.device, opts.cancel,
                                      full_model=bool(opts.get("full_model", False)),
                                      batch_size=opts.batch_size or 32, tta=bool(opts.get("tta", True)),
                                      ref_length=refs)
    y_true = np.array([s.label for s in samples])
    y_pred = probs.argmax(1)
    res = _metrics_from(y_true, y_pred)
    from ..engine.calibration import expected_calibration_error

    res["ece"] = expected_calibration_error(probs, y_true)  # of the probabilities a user sees
    res["temperature"] = float((lm.meta.calibration or {}).get("temperature", 1.0)) if lm.meta else 1.0
    res.update({"model": str(lm.path or model), "data": str(data), "device": lm.policy.describe(),
                "cells": len({s.cell for s in samples}), "seconds": round(time.monotonic() - t0, 1),
                "full_model": bool(opts.get("full_model", False))})
    return res  # the CLI prints it and writes `evaluate --out FILE.json`, as for every task


def _input_files(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in {".png", ".bmp", ".jpg", ".jpeg",
                                                                         ".tif", ".tiff"})
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("input does not exist", p)
    if not files:
        raise InputError("no chromosome images found in the inputs")
    return files


def predict(model: Path, inputs: list[Path], opts) -> Job[dict[str, Any]]:
    """Classify single-chromosome images; writes ``predictions.csv`` and ``.json`` into ``opts.out``."""
    from ..engine.atomic import atomic_path
    from ..io.chromosome_dataset import read_gray8

    files = _input_files(inputs)
    crops = []
    for f in files:  # through io/limits: size checked before decoding, 16-bit/float rescaled, not clipped
        crops.append(read_gray8(f))
    probs = yield from classify_crops(crops, load(model, opts.device), opts.device, opts.cancel,
                                      full_model=bool(opts.get("full_model", False)),
                                      batch_size=opts.batch_size or 32, tta=bool(opts.get("tta", True)))
    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f, p in zip(files, probs):
        k = int(p.argmax())
        rows.append({"file": str(f), "class": CHROMOSOME_CLASSES[k], "score": float(p[k]),
                     **{f"p_{n}": float(v) for n, v in zip(CHROMOSOME_CLASSES, p)}})
    with atomic_path(out / "predictions.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    with atomic_path(out / "predictions.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
    return {"n": len(rows), "out": str(out), "csv": str(out / "predictions.csv"),
            "classes": {n: sum(r["class"] == n for r in rows) for n in CHROMOSOME_CLASSES}}


# ----------------------------------------------------------------------------- synth / demo
def synth(out: Path, n: int, seed: int) -> Path:
    """``n`` synthetic cells (alternately 46,XX and 46,XY) as class-per-folder crops."""
    return write_dataset(Path(out), n_cells=int(n), seed=int(seed))


def demo(out: Path, opts) -> Job[dict[str, Any]]:
    """Synthesize cells, train a tiny GRiCoL for a few seconds, classify held-out cells."""
    from ..tasks.base import TaskOptions

    out = Path(out)
    # 24 cells x 30 epochs: about a minute on a 2-core CPU, ~0.9 held-out accuracy, enough
    # for the karyotype demo's pairing to have something to work with
    data = synth(out / "data", 24, opts.seed)
    yield Progress(0, None, "demo", f"synthetic chromosomes of 24 cells in {data}")
    extra = {"trained_on": "synthetic (napari-cellclass demo)", "val_fraction": 0.2}
    t_opts = TaskOptions(epochs=30, batch_size=32, lr=3e-3, device=opts.device, arch="gricol", out=out / "model",
                         seed=opts.seed, quick=True, cancel=opts.cancel, extra=extra)
    summary = yield from train(data, t_opts)
    ev_opts = TaskOptions(device=opts.device, seed=opts.seed, cancel=opts.cancel,
                          extra={"split": "val", "val_fraction": 0.2})
    res = yield from evaluate(Path(summary["checkpoint"]), data, ev_opts)
    (out / "confusion_matrix.json").write_text(json.dumps(
        {"class_names": res["class_names"], "confusion_matrix": res["confusion_matrix"]}) + "\n")
    _plot_confusion(np.array(res["confusion_matrix"]), out / "confusion_matrix.png")
    return {"note": "tiny GRiCoL trained only on synthetic chromosomes for about a minute",
            "val_accuracy": round(res["accuracy"], 3), "chance": round(1 / 24, 3), "n_val": res["n"],
            "checkpoint": summary["checkpoint"], "confusion_png": str(out / "confusion_matrix.png"),
            "train_seconds": summary["seconds"]}


def _plot_confusion(cm: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5), dpi=80)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(CHROMOSOME_CLASSES)), CHROMOSOME_CLASSES, fontsize=6)
    ax.set_yticks(range(len(CHROMOSOME_CLASSES)), CHROMOSOME_CLASSES, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("chromosome classes (synthetic demo)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
