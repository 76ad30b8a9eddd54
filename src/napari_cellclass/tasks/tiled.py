"""Whole images larger than memory, tile by tile: segmentation, detection and classification.

The task side of :mod:`napari_cellclass.engine.tiled` (which owns the loop and the
outputs' plumbing and knows no task).

``cellclass predict hpa|wbc|detect MODEL big.ome.zarr`` (or a TIFF over
:data:`~napari_cellclass.io.lazy.LARGE_PIXELS`, or any image with ``--set tiled=true``)
reads the image lazily (:mod:`napari_cellclass.io.lazy`) one window at a time:
each window is a core of ``tile`` pixels plus ``overlap`` pixels of context on
every side; the task's own per-image code runs on the window; an object is kept by
the tile whose core holds its centre (so objects on a border are found whole and
reported once); rows stream to CSV and labels into an on-disk Zarr.  Memory is set
by the window, not by the image (``benchmarks/large_image_memory.py``).  Tiles default
to 1024 px for detection (a window must hold fewer objects than the detector keeps
per image) and 2048 px for HPA fields.

Per task (outputs in ``--out``, named after the image):

* ``detect``: ``<stem>_detections.csv`` (label, score, box in image pixels);
* ``wbc``: the blood-smear analysis (detector + white-cell classifier) per window:
  ``<stem>_cells.csv`` and ``<stem>_differential.csv`` over the whole smear;
* ``hpa``: cells segmented per window (nuclei-seeded watershed) and classified:
  ``<stem>_cells.csv`` and ``<stem>_labels.zarr`` (int32, stitched);

plus ``<stem>_tiled.json`` (tiles, objects, seconds).  The overlap must exceed the
largest object (default 256 px; HPA 384 px).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine.atomic import atomic_path
from ..engine.progress import Job
from ..engine.tiled import RowWriter, as_uint8, centre, predict_tiled, rgb, rows_job, run_tiles
from ..errors import InputError

TILED_TASKS = ("hpa", "wbc", "detect")
# detectors keep at most a few hundred objects per image: a 1024 px core (1536 px window) of a
# dense smear stays below that; HPA cells are large and few per field
DEFAULT_TILE = {"hpa": 2048, "wbc": 1024, "detect": 1024}
DEFAULT_OVERLAP = {"hpa": 384, "wbc": 256, "detect": 256}


def wants_tiles(task: str, path: Path, opts: Any) -> bool:
    """True when ``path`` should go the tile-by-tile way for ``task``."""
    from ..io import lazy

    if task not in TILED_TASKS:
        return False
    if opts.get("tiled") is not None and not opts.get("tiled"):
        return False
    return bool(opts.get("tiled")) and path.is_file() or lazy.is_large(path)


def split_inputs(task: str, inputs: Sequence[Path], opts: Any) -> tuple[list[Path], list[Path]]:
    """(images to tile, inputs for the task's ordinary predict); folders are looked into for large images."""
    from ..io import lazy

    if task not in TILED_TASKS:
        return [], list(inputs)
    large: list[Path] = []
    rest: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir() and not lazy._is_zarr(p):
            inside = sorted(f for f in p.rglob("*") if (f.is_file() and f.suffix.lower() in lazy.TIFF_SUFFIXES)
                            or lazy._is_zarr(f))
            big = [f for f in inside if wants_tiles(task, f, opts)]
            if big:
                large += big
                rest += [f for f in sorted(p.rglob("*")) if f.is_file() and f not in set(big)
                         and not any(z in f.parents for z in big)
                         and f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")]
            else:
                rest.append(p)
        elif wants_tiles(task, p, opts):
            large.append(p)
        else:
            rest.append(p)
    return large, rest


def predict_large(task: str, model: Any, path: Path, opts: Any) -> Job[dict[str, Any]]:
    """Run ``task`` over one large image tile by tile; returns a summary (outputs, counts, seconds)."""
    from ..io import lazy

    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    path = Path(path)
    img = lazy.open_hpa_lazy(path) if task == "hpa" else lazy.open_lazy(path)
    tile = int(opts.get("tile") or DEFAULT_TILE[task])
    overlap = int(opts.get("overlap") if opts.get("overlap") is not None else DEFAULT_OVERLAP[task])
    grid = lazy.tile_grid(img.height, img.width, tile, overlap)
    stem = path.name.split(".")[0]
    scale = _uint8_scale(img)
    runner = {"detect": _detect_tiles, "wbc": _wbc_tiles, "hpa": _hpa_tiles}[task]
    return (yield from predict_tiled(img, grid, lambda: runner(img, grid, model, opts, out, stem, scale),
                                     path=path, out=out, stem=stem, tile=tile, overlap=overlap))


def _uint8_scale(img: Any) -> float | None:
    """One factor from the image's bit depth (sampled once), so every tile is scaled alike; None for uint8."""
    if img.dtype == np.uint8:
        return None
    from ..io.limits import effective_bits

    hi = img.intensity_max()
    if img.dtype.kind == "f" and hi <= 1.0:
        return 255.0
    return 255.0 / float((1 << effective_bits(np.asarray([int(np.ceil(hi))]))) - 1)


# ----------------------------------------------------------------------------- detection

@rows_job
def _detect_tiles(img, grid, model, opts, out: Path, stem: str, scale, *, opened) -> Job[dict[str, Any]]:
    from . import detect as det

    lm = det.load(model, opts.device)  # once for every tile
    thr = opts.get("score_threshold")
    rows = RowWriter(out / f"{stem}_detections.csv", ["label", "score", "y0", "x0", "y1", "x1", "tile"])
    opened.append(rows)
    counts: Counter[str] = Counter()

    def per_tile(k: int, t, block: np.ndarray) -> Job[str]:
        block = rgb(as_uint8(block, scale))
        r = yield from det.detect(block, lm, device=opts.device, score_threshold=None if thr is None else float(thr),
                                  nms_iou=float(opts.get("nms_iou", 0.5)), tile=max(block.shape[:2]),
                                  cancel=opts.cancel)
        for b, lab, s in zip(r["boxes"], r["labels"], r["scores"]):
            cy, cx = centre(b)
            if t.owns(cy + t.y0, cx + t.x0):
                y0, x0, y1, x1 = (float(v) for v in b)
                rows.write({"label": lab, "score": round(float(s), 4), "y0": y0 + t.y0, "x0": x0 + t.x0,
                            "y1": y1 + t.y0, "x1": x1 + t.x0, "tile": k})
                counts[lab] += 1
        return f"{rows.n} objects so far"

    yield from run_tiles(img, grid, per_tile, cancel=opts.cancel)
    return {"task": "detect", "objects": rows.n, "counts": dict(counts), "outputs": [str(rows.target)]}


# ----------------------------------------------------------------------------- white cells of a smear

@rows_job
def _wbc_tiles(img, grid, model, opts, out: Path, stem: str, scale, *, opened) -> Job[dict[str, Any]]:
    from . import blood
    from .wbc import differential_csv

    models = blood.SmearModels(opts.get("detector"), model, opts.device)
    names = list(models.class_names)
    rows = RowWriter(out / f"{stem}_cells.csv", ["object", "label", "score", "y0", "x0", "y1", "x1", "wbc_class",
                                                  "wbc_score", "tile"] + [f"p_{n}" for n in names])
    opened.append(rows)
    kinds: Counter[str] = Counter()
    classes: Counter[str] = Counter()

    def per_tile(k: int, t, block: np.ndarray) -> Job[str]:
        block = rgb(as_uint8(block, scale))
        if block.max() == block.min():  # blank glass / padding: nothing to find, and the classifier refuses it
            return "empty"
        res = yield from blood.analyse_smear(block, models=models, device=opts.device,
                                             score_threshold=opts.get("score_threshold"), cancel=opts.cancel)
        probs = {i: res["probabilities"][j] for j, i in enumerate(res["wbc_index"])}
        for i, (b, lab, s) in enumerate(zip(res["boxes"], res["labels"], res["scores"])):
            cy, cx = centre(b)
            if not t.owns(cy + t.y0, cx + t.x0):
                continue
            y0, x0, y1, x1 = (float(v) for v in b)
            row = {"object": rows.n, "label": lab, "score": round(float(s), 4), "y0": y0 + t.y0, "x0": x0 + t.x0,
                   "y1": y1 + t.y0, "x1": x1 + t.x0, "wbc_class": res["wbc_class"][i], "tile": k,
                   "wbc_score": "" if np.isnan(res["wbc_score"][i]) else round(float(res["wbc_score"][i]), 4)}
            if i in probs:
                row.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, probs[i])})
                classes[res["wbc_class"][i]] += 1
            rows.write(row)
            kinds[blood.count_kind(lab)] += 1
        return f"{rows.n} objects so far"

    yield from run_tiles(img, grid, per_tile, cancel=opts.cancel)
    total = sum(classes.values())
    order = names + [c for c in classes if c not in names]
    diff_rows = [{"class": n, "count": classes[n], "percent": round(100.0 * classes[n] / total, 1) if total else 0.0}
                 for n in order]
    diff_path = out / f"{stem}_differential.csv"
    with atomic_path(diff_path) as tmp:
        Path(tmp).write_text(differential_csv({"rows": diff_rows, "total": total}))
    return {"task": "wbc", "objects": rows.n, "counts": dict(kinds), "white_cells": total,
            "differential": {r["class"]: r["count"] for r in diff_rows}, "outputs": [str(rows.target), str(diff_path)]}


# ----------------------------------------------------------------------------- HPA cells

@rows_job
def _hpa_tiles(img, grid, model, opts, out: Path, stem: str, scale, *, opened) -> Job[dict[str, Any]]:
    import torch
    from scipy import ndimage as ndi

    from ..engine.inference import predict_batches
    from ..io import hpa_dataset as D
    from ..io import lazy
    from ..segmentation.cells import cell_boxes, segment_cells
    from . import hpa

    lm = hpa.load(model, opts.device)
    net, meta, policy = lm.net, lm.meta, lm.policy
    size = int(meta.input_size[-1])
    norm = lm.transform.normalize
    names = list(meta.class_names)
    rows = RowWriter(out / f"{stem}_cells.csv", ["label", "y0", "x0", "y1", "x1", "area", "predicted", "top_class",
                                                  "score", "tile"] + [f"p_{n}" for n in names])
    opened.append(rows)
    labels_path = out / f"{stem}_labels.zarr"
    if labels_path.exists():
        raise InputError(f"{labels_path} exists; choose another --out (results are never overwritten)")
    labels_tmp = out / f".{stem}_labels.zarr.partial"
    if labels_tmp.exists():
        import shutil

        shutil.rmtree(labels_tmp)
    glabels = lazy.create_labels(labels_tmp, img.height, img.width)
    state = {"next_id": 1}
    bs = int(opts.batch_size or 16)
    s = max(1.0, min(img.height, img.width, grid[0].cy1 - grid[0].cy0) / 512)  # parameters of a tile-sized field
    seg = {"sigma": 2.0 * s, "min_nucleus_area": int(150 * s * s), "max_distance": 128.0 * s}

    def per_tile(k: int, t, block: np.ndarray) -> Job[str]:
        field = np.moveaxis(as_uint8(block, scale), -1, 0)
        if field.shape[0] == 3:
            field = np.concatenate([field, field[:1] * 0], 0)
        lab = segment_cells(field, **seg)
        ids = np.unique(lab)
        ids = ids[ids > 0]
        if not len(ids):
            return "no cells"
        centres = ndi.center_of_mass(np.ones_like(lab), lab, ids)
        own = [int(i) for i, (cy, cx) in zip(ids, centres) if t.owns(cy + t.y0, cx + t.x0)]
        boxes = cell_boxes(lab)
        unit = D.to_unit_float(field)
        crops = [torch.from_numpy(np.ascontiguousarray(unit[:, y0:y1, x0:x1]))
                 for (y0, x0, y1, x1) in (boxes[i] for i in own)]
        probs = yield from predict_batches(net, crops, policy=policy, preprocess=lambda c: norm(D.resize(c, size)),
                                           batch_size=bs, postprocess=lambda o: list(torch.sigmoid(o).numpy()),
                                           cancel=opts.cancel, stage="cells")
        objects = ndi.find_objects(lab)
        for i, p in zip(own, probs):
            sl = objects[i - 1]
            gy0, gy1, gx0, gx1 = sl[0].start + t.y0, sl[0].stop + t.y0, sl[1].start + t.x0, sl[1].stop + t.x0
            mask = lab[sl] == i
            patch = np.asarray(glabels[gy0:gy1, gx0:gx1])
            patch[mask & (patch == 0)] = state["next_id"]
            glabels[gy0:gy1, gx0:gx1] = patch
            r = hpa._row(np.asarray(p), meta)
            y0, x0, y1, x1 = boxes[i]
            rows.write({"label": state["next_id"], "y0": y0 + t.y0, "x0": x0 + t.x0, "y1": y1 + t.y0,
                        "x1": x1 + t.x0, "area": int(mask.sum()), "predicted": "; ".join(r["predicted"]),
                        "top_class": r["top_class"], "score": round(r["score"], 4), "tile": k,
                        **{f"p_{n}": round(float(v), 4) for n, v in zip(names, r["probabilities"])}})
            state["next_id"] += 1
        return f"{rows.n} cells so far"

    yield from run_tiles(img, grid, per_tile, cancel=opts.cancel)
    labels_tmp.rename(labels_path)
    return {"task": "hpa", "cells": rows.n, "device": policy.describe(),
            "outputs": [str(rows.target), str(labels_path)]}
