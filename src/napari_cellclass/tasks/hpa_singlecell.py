"""HPA with the community's bioimage.io models: whole-field classes, and the 2021 single-cell route.

The single-cell route (what the HPA 2021 pipeline does):

1. the nucleus model on the blue channel (given as many times as the model has input
   channels) -> nucleus foreground -> connected nuclei, small ones dropped -> seeds;
2. the cell model on red, yellow, blue -> boundary and foreground maps -> a seeded
   watershed (skimage) of the boundary map from the nuclei, inside the foreground;
3. each cell's bounding box, pixels outside the cell zeroed, resized to the
   classifier's input, in the value range the package states -> the single-cell
   classifier -> per-cell probabilities;
4. optionally an image-level model (the 2019 winner) on the whole field.

The result has the shape of :func:`napari_cellclass.tasks.hpa.classify`'s cells mode
(``labels`` + one row per cell), so :func:`napari_cellclass.layers.hpa_layers` makes the
same ``HPA cells`` labels layer with per-cell classes and scores in ``features``; the
image-level classes ride along under ``image_level``.  The packages run through
``bioimageio.core`` with their own pre- and post-processing (:mod:`napari_cellclass.zoo.foreign`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError
from ..preprocess import as_rgby, scale01
from ..zoo.foreign import ForeignModel, as_foreign

CHANNEL_INDEX = {"red": 0, "green": 1, "blue": 2, "yellow": 3}
DEFAULT_CELL_CHANNELS = ("red", "yellow", "blue")  # microtubules, ER, nuclei (HPA cell segmentation)


def _need(spec: Any, role: str, task: str, device: Any) -> ForeignModel:
    fm = as_foreign(spec, task=task, device=device)
    if fm is None:
        raise InputError(f"the {role} must be a bioimage.io package (a .zip, an rdf.yaml or a community model "
                         f"name such as hpa-cell-segmentation), got {spec!r}")
    return fm


def _probs(fm: ForeignModel, out: np.ndarray) -> np.ndarray:
    """(B, K, ...) outputs -> (B, K) probabilities with the package's (or card's) activation."""
    out = out.reshape(out.shape[0], out.shape[1], -1).mean(-1) if out.ndim > 2 else out
    act = fm.activation()
    if act == "softmax":
        e = np.exp(out - out.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-out))
    return out


def _classes(fm: ForeignModel, k: int) -> list[str]:
    if len(fm.classes) == k:
        return list(fm.classes)
    if fm.classes:
        raise InputError(f"bioimage.io package {fm.name!r} names {len(fm.classes)} classes but outputs {k} scores")
    raise InputError(f"bioimage.io package {fm.name!r} names no classes (no labels file, no output channel names)")


def _row(probs: np.ndarray, names: list[str], softmax: bool) -> dict[str, Any]:
    top = int(np.argmax(probs))
    pred = [top] if softmax else [i for i in range(len(probs)) if probs[i] >= 0.5]
    return {"probabilities": [float(p) for p in probs], "predicted_ids": pred,
            "predicted": [names[i] for i in pred], "top_class": names[top], "score": float(probs[top])}


def _resize(a: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    from skimage.transform import resize

    if a.shape[-2:] == tuple(shape):
        return a
    out_shape = a.shape[:-2] + tuple(shape)
    return resize(a, out_shape, order=order, preserve_range=True, anti_aliasing=order > 0 and
                  (shape[0] < a.shape[-2])).astype(a.dtype if order == 0 else np.float32)


# ----------------------------------------------------------------------------- whole field
def whole_field(fm: ForeignModel, unit: np.ndarray, trust: bool = False) -> dict[str, Any]:
    """One image-level row from an image classifier package; ``unit`` is (4, H, W) in [0, 1]."""
    c = fm.input_channels()
    if c not in (None, 4):
        raise InputError(f"bioimage.io package {fm.name!r} takes {c} channels; an HPA field has 4 (RGBY)")
    size = fm.input_size()
    x = _resize(unit, size)[None] * fm.input_scale()
    p = _probs(fm, fm.predict(x.astype(np.float32), trust))[0]
    names = _classes(fm, len(p))
    return {"model": fm.name, "class_names": names, **_row(p, names, fm.activation() == "softmax")}


# ----------------------------------------------------------------------------- segmentation
def _run_dense(fm: ForeignModel, x: np.ndarray, trust: bool) -> np.ndarray:
    """(1, C, h, w) -> (K, h, w): padded (reflect) to a size the package takes, cropped back."""
    h, w = x.shape[-2:]
    H, W = fm.valid_shape(h, w)
    if (H, W) != (h, w) and H >= h and W >= w:
        xp = np.pad(x, ((0, 0), (0, 0), (0, H - h), (0, W - w)), mode="reflect" if min(h, w) > 1 else "edge")
        return fm.predict(xp, trust)[0][..., :h, :w]
    if (H, W) != (h, w):  # a fixed input smaller than the field: resize there and back
        y = fm.predict(_resize(x, (H, W)), trust)[0]
        return _resize(y, (h, w))
    return fm.predict(x, trust)[0]


def _channels(unit: np.ndarray, names, n: int) -> np.ndarray:
    names = list(names)[:n] if names else []
    if len(names) < n:
        names = (names + list(DEFAULT_CELL_CHANNELS) * n)[:n]
    return np.stack([unit[CHANNEL_INDEX[c]] for c in names])


def segment(unit: np.ndarray, cell_fm: ForeignModel, nucleus_fm: ForeignModel, *, scale: float | None = None,
            threshold: float = 0.5, min_nucleus_px: int | None = None, trust: bool = False,
            cancel: CancelToken | None = None) -> np.ndarray:
    """Cell labels (H, W) of a (4, H, W) [0, 1] field from the two segmentation packages and a seeded watershed.

    ``scale`` (0, 1] resizes the field first (default: the card's ``work_size`` for the longer
    side, else full resolution); labels come back at the field's size.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    H, W = unit.shape[1:]
    # the community models see fields at 0.25 of the 2048 px originals: the longer side at ``work_size``
    work_size = (cell_fm.card or {}).get("expects", {}).get("work_size")
    s = float(scale or (min(1.0, work_size / max(H, W)) if work_size else 1.0))
    if not 0 < s <= 1:
        raise InputError(f"segmentation scale must be in (0, 1], got {s}")
    h, w = max(8, round(H * s)), max(8, round(W * s))
    work = _resize(unit, (h, w))
    n_exp = (nucleus_fm.card or {}).get("expects", {})
    c_exp = (cell_fm.card or {}).get("expects", {})
    nuc_in = _channels(work, n_exp.get("channels") or ["blue"] * 3, nucleus_fm.input_channels() or 3)
    nuc = _run_dense(nucleus_fm, (nuc_in * nucleus_fm.input_scale())[None].astype(np.float32), trust)
    check_cancel(cancel)
    fg_n = nuc[int(n_exp.get("outputs", {}).get("foreground", -1))]
    nuclei, _ = ndi.label(fg_n > threshold)
    min_px = int(min_nucleus_px if min_nucleus_px is not None else max(4, round(250 * h * w / 512 ** 2)))
    if nuclei.max():
        small = np.bincount(nuclei.ravel()) < min_px
        small[0] = False
        nuclei[small[nuclei]] = 0
    cell_in = _channels(work, c_exp.get("channels") or DEFAULT_CELL_CHANNELS, cell_fm.input_channels() or 3)
    maps = _run_dense(cell_fm, (cell_in * cell_fm.input_scale())[None].astype(np.float32), trust)
    check_cancel(cancel)
    outs = c_exp.get("outputs", {})
    if maps.shape[0] >= 3:
        bd, fg = maps[int(outs.get("boundaries", 1))], maps[int(outs.get("foreground", 2))]
    else:  # foreground only: its inverse is the landscape
        fg = maps[-1]
        bd = 1.0 - fg
    mask = (fg > threshold) | (nuclei > 0)
    labels = watershed(bd, markers=nuclei, mask=mask).astype(np.int32)
    if (h, w) != (H, W):
        labels = _resize(labels, (H, W), order=0).astype(np.int32)
    return labels


# ----------------------------------------------------------------------------- cells
def classify_cells(unit: np.ndarray, labels: np.ndarray, fm: ForeignModel, *, trust: bool = False,
                   batch_size: int = 16, cancel: CancelToken | None = None) -> Job[list[dict[str, Any]]]:
    """One row per label: the cell's box, outside-the-cell zeroed, resized, scaled, classified."""
    from ..segmentation.cells import cell_boxes

    c = fm.input_channels()
    if c not in (None, 4):
        raise InputError(f"bioimage.io package {fm.name!r} takes {c} channels; an HPA cell crop has 4 (RGBY)")
    boxes = cell_boxes(labels, margin=0.0)
    ids = sorted(boxes)
    size = fm.input_size()
    scale = fm.input_scale()
    softmax = fm.activation() == "softmax"
    rows: list[dict[str, Any]] = []
    names: list[str] | None = None
    for start in range(0, len(ids), batch_size):
        check_cancel(cancel)
        chunk = ids[start:start + batch_size]
        crops = []
        for i in chunk:
            y0, x0, y1, x1 = boxes[i]
            crop = unit[:, y0:y1, x0:x1] * (labels[y0:y1, x0:x1] == i)[None]
            crops.append(_resize(crop.astype(np.float32), size) * scale)
        p = _probs(fm, fm.predict(np.stack(crops).astype(np.float32), trust))
        names = names or _classes(fm, p.shape[1])
        rows += [{"label": int(i), "box": list(boxes[i]), **_row(p[k], names, softmax)} for k, i in enumerate(chunk)]
        yield Progress(min(start + batch_size, len(ids)), len(ids), "cells", f"{len(rows)} cells classified")
    return rows


def classify(image: Any, model: Any, cells: Any = None, device: str | None = None, mode: str = "whole",
             cancel: CancelToken | None = None, *, cell_model: Any = None, nucleus_model: Any = None,
             cell_classifier: Any = None, image_model: Any = None, trust: bool = False, scale: float | None = None,
             batch_size: int = 16, field: str = "resize", **_: Any) -> Job[dict[str, Any]]:
    """:func:`napari_cellclass.tasks.hpa.classify` for bioimage.io packages (same arguments and result shape).

    ``mode="whole"``: ``model`` classifies the field.  ``mode="cells"``: cells come from
    ``cells`` (labels), else from ``cell_model`` + ``nucleus_model`` (the community
    segmentation; both or neither), else from the plugin's own segmentation; each is
    classified by ``cell_classifier`` (default: ``model``); when ``cell_classifier`` is
    given, ``model`` (or ``image_model``) also gives the image-level classes.
    ``trust=True`` consents to running a package's own code (remembered per sha256).
    """
    if mode not in ("whole", "cells"):
        raise InputError(f"mode must be 'whole' or 'cells', got {mode!r}")
    fld = as_rgby(image)
    unit = scale01(np.asarray(fld))
    if not np.isfinite(unit).all():
        raise InputError("the HPA field holds NaN or infinite values")
    main = _need(model, "model", "hpa" if mode == "whole" or cell_classifier is not None else None, device) \
        if model is not None else None
    yield Progress(0, None, "classify", "bioimage.io packages on " + (main.policy.describe() if main else "cpu"))
    if mode == "whole":
        if main is None:
            raise InputError("no model given")
        row = whole_field(main, unit, trust)
        return {**row, "class_names": row["class_names"], "thresholds": [0.5] * len(row["class_names"]),
                "device": main.policy.describe(), "mode": "whole", "trained_on": _provenance(main),
                "input_size": main.input_size()[0], "n_views": 1, "field": "resize"}
    classifier = _need(cell_classifier, "cell classifier", None, device) if cell_classifier is not None else main
    if classifier is None:
        raise InputError("no cell classifier given")
    image_fm = _need(image_model, "image-level model", "hpa", device) if image_model is not None else (
        main if cell_classifier is not None else None)
    for fm in (classifier, image_fm):  # consent first: nothing is segmented for a refused package
        if fm is not None:
            fm.require_trust(trust)
    if cells is not None:
        labels = np.asarray(getattr(cells, "data", cells))
        if labels.shape != unit.shape[1:]:
            raise InputError(f"cells labels have shape {labels.shape}, the image {unit.shape[1:]}")
        labels = labels.astype(np.int32)
        how = "given labels"
    elif cell_model is not None or nucleus_model is not None:
        if cell_model is None or nucleus_model is None:
            raise InputError("the community segmentation needs both a cell and a nucleus model")
        cfm = _need(cell_model, "cell segmentation model", "hpa-cells", device)
        nfm = _need(nucleus_model, "nucleus segmentation model", "hpa-nuclei", device)
        cfm.require_trust(trust)
        nfm.require_trust(trust)
        yield Progress(0, None, "segment", f"nuclei ({nfm.name}) and cells ({cfm.name}), seeded watershed")
        labels = segment(unit, cfm, nfm, scale=scale, trust=trust, cancel=cancel)
        how = f"{cfm.name} + {nfm.name}, seeded watershed"
    else:
        from ..segmentation.cells import segment_cells

        yield Progress(0, None, "segment", "segmenting cells (nuclei-seeded watershed)")
        labels = segment_cells(fld)
        how = "napari-cellclass nuclei-seeded watershed"
    check_cancel(cancel)
    rows = yield from classify_cells(unit, labels, classifier, trust=trust, batch_size=batch_size, cancel=cancel)
    names = _classes(classifier, len(rows[0]["probabilities"])) if rows else list(classifier.classes)
    res: dict[str, Any] = {
        "class_names": names, "thresholds": [0.5] * len(names), "device": classifier.policy.describe(),
        "mode": "cells", "trained_on": _provenance(classifier), "input_size": classifier.input_size()[0],
        "labels": labels, "cells": rows, "n_cells": len(rows), "segmentation": how, "cell_model": classifier.name}
    if image_fm is not None:
        check_cancel(cancel)
        res["image_level"] = whole_field(image_fm, unit, trust)
    return res


def _provenance(fm: ForeignModel) -> str:
    return f"bioimage.io package {fm.name} (not re-validated by napari-cellclass)"


# ----------------------------------------------------------------------------- CLI predict
def predict(model: Any, inputs: list[Path], opts) -> Job[dict[str, Any]]:
    """``cellclass predict hpa PACKAGE FILES``: image-level rows, plus per-cell rows with ``--set cell_model=...``.

    ``--set cell_classifier=PKG --set cell_model=PKG --set nucleus_model=PKG`` runs the
    single-cell route on every set; ``--set trust=true`` consents to a package's code.
    Writes predictions.csv/json (image level) and cells.csv (per cell) in ``--out``.
    """
    from ..engine import csvsafe
    from ..engine.atomic import atomic_path
    from ..io.hpa_reader import read_set, stack_channels
    from ..io.limits import check_informative
    from .hpa import _collect_sets

    out = Path(opts.out or "cellclass-out")
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(getattr(opts, "extra", {}) or {})
    trust = str(extra.get("trust", "")).lower() in ("1", "true", "yes")
    single = {k: extra.get(k) for k in ("cell_model", "nucleus_model", "cell_classifier") if extra.get(k)}
    main = _need(model, "model", "hpa", opts.device)
    main.require_trust(trust)
    sets = _collect_sets(inputs)
    images, cell_rows, refused = [], [], []
    for k, s in enumerate(sets):
        check_cancel(opts.cancel)
        try:
            arrays, _ = read_set(s, warn=False)
            stack = stack_channels(arrays, s.set_id)
            check_informative(np.moveaxis(np.asarray(stack), 0, -1), f"HPA set {s.set_id}", min_side=8)
        except InputError as exc:
            refused.append({"input": str(sorted(s.paths.values())[0]), "problem": exc.problem})
            continue
        if single:
            res = yield from classify(stack, model, device=opts.device, mode="cells", cancel=opts.cancel,
                                      trust=trust, **single)
            img = res.get("image_level")
            for r in res["cells"]:
                cell_rows.append({"id": s.set_id, **r})
            cell_names = res["class_names"]
        else:
            img = whole_field(main, scale01(np.asarray(stack)), trust)
        if img is not None:
            images.append({"id": s.set_id, **img})
        yield Progress(k + 1, len(sets), "predict", s.set_id)
    written: dict[str, str] = {}
    if images:
        names = images[0]["class_names"]
        csv_path = out / "predictions.csv"
        with atomic_path(csv_path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csvsafe.writer(fh)
                w.writerow(["Id", "Predicted", "predicted_names"] + list(names))
                for r in images:
                    w.writerow([r["id"], " ".join(map(str, r["predicted_ids"])), "; ".join(r["predicted"])]
                               + [f"{p:.5f}" for p in r["probabilities"]])
        written["csv"] = str(csv_path)
    if cell_rows:
        cells_path = out / "cells.csv"
        with atomic_path(cells_path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csvsafe.writer(fh)
                w.writerow(["Id", "label", "y0", "x0", "y1", "x1", "class", "score", "predicted"] + list(cell_names))
                for r in cell_rows:
                    w.writerow([r["id"], r["label"], *r["box"], r["top_class"], f"{r['score']:.5f}",
                                "; ".join(r["predicted"])] + [f"{p:.5f}" for p in r["probabilities"]])
        written["cells_csv"] = str(cells_path)
    json_path = out / "predictions.json"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps({"model": main.name, "format": "bioimage.io", "device": main.policy.describe(),
                                   "images": images, "cells": cell_rows, "refused": refused,
                                   "note": "community bioimage.io models; accuracy not re-measured here"},
                                  indent=1, default=str))
    written["json"] = str(json_path)
    return {**written, "n_images": len(images), "n_cells": len(cell_rows), "device": main.policy.describe(),
            "predictions": {r["id"]: r["predicted"] for r in images}, "refused": refused}


__all__ = ["classify", "predict", "segment", "classify_cells", "whole_field"]
