"""Fit and measure the rejection step (karyotype/reject.py) and the detector's score threshold.

Collects the features of every object a detector finds on both Tseng folders (the
classifier's probabilities included), at each score threshold of ``--thresholds``, from one
forward pass per spread.  Labels each object against the VOC boxes (IoU >= 0.5 with one: a
chromosome; under 20 % of its box on any: not a chromosome; the rest, parts and merges, is
left out of the fit).  At each threshold: fits a logistic model on the training spreads (the
built-ins' split, by spread, seed 0, 20 %), picks the rejection threshold whose out-of-fold
rejections (by spread) are >= 95 % right (else 0.995), and measures the counts after
rejection out of fold.  Keeps the detector threshold whose training counts are nearest the
truth, prints every threshold's effect on the held-out spreads of each folder, and with
``--write`` stores both in the detector's checkpoint (the built-in's numbers come from here).

    OMP_NUM_THREADS=1 python benchmarks/chromosome_rejection.py --detector runs/kdet2/model.safetensors \
        --thresholds 0.06,0.08,0.1,0.12,0.15,0.2 --features feats.json --write
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chromosomes"
FOLDERS = ("tseng2023_gband_spreads", "tseng2023_gband_spreads_more")


def collect(data: Path, detector: str, classifier: str, thresholds: tuple[float, ...] = (None,)) -> list[dict]:
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.spread_reader import annotated_spreads, read_spread_image, spread_truth
    from napari_cellclass.karyotype.detector import (model_score_threshold, network_output, objects_from_output,
                                                     split_spreads)
    from napari_cellclass.karyotype.reject import object_features
    from napari_cellclass.tasks.karyotype import classify_labels
    from napari_cellclass.zoo.loaded import load_model

    det = load_model(detector, task="karyotype")
    cls = load_model(classifier, task="chromosome")
    rows = []
    for folder in FOLDERS:
        pairs = annotated_spreads(data / folder)
        held = {p[0].name for p in split_spreads(pairs, 0.2, 0)[1]}
        for img_path, side in pairs:
            t0 = time.monotonic()
            img = read_spread_image(img_path)
            out, f, shape = network_output(img, det)
            bt = np.asarray(spread_truth(img_path, side)[0], float).reshape(-1, 4)
            for thr in thresholds:
                thr = model_score_threshold(det) if thr is None else float(thr)
                labels, boxes, scores = objects_from_output(out, f, shape, thr)
                n = int(labels.max())
                if n == 0:
                    continue
                probs = run_sync(classify_labels(img, labels, cls, boxes=boxes))
                feats, names = object_features(img, labels, boxes, scores, probs)
                y0, x0, y1, x1 = (boxes[:, i:i + 1] for i in range(4))
                inter = (np.clip(np.minimum(y1, bt[:, 2]) - np.maximum(y0, bt[:, 0]), 0, None)
                         * np.clip(np.minimum(x1, bt[:, 3]) - np.maximum(x0, bt[:, 1]), 0, None))
                area = (y1 - y0) * (x1 - x0)
                iou = inter / (area + (bt[:, 2] - bt[:, 0]) * (bt[:, 3] - bt[:, 1]) - inter + 1e-9)
                cover = inter.sum(1) / (area[:, 0] + 1e-9)
                for k in range(n):
                    rows.append(dict(folder=folder, spread=img_path.name, held=img_path.name in held, thr=thr,
                                     iou=float(iou[k].max()) if len(bt) else 0.0, cover=float(min(cover[k], 1.0)),
                                     n_true=len(bt), **{nm: float(v) for nm, v in zip(names, feats[k])}))
                print(folder, img_path.name, thr, n, len(bt), round(time.monotonic() - t0, 2), flush=True)
    return rows


def _counts(per: dict) -> dict:
    """Count errors per spread ([true, detected, kept] each) before and after rejection."""
    v = np.array(list(per.values()), float).reshape(-1, 3)
    return {"spreads": len(v),
            "count_exact": [round(float(np.mean(v[:, 1] == v[:, 0])), 3), round(float(np.mean(v[:, 2] == v[:, 0])), 3)],
            "mean_abs_count_error": [round(float(np.mean(np.abs(v[:, 1] - v[:, 0]))), 2),
                                     round(float(np.mean(np.abs(v[:, 2] - v[:, 0]))), 2)]}


def choose(rows: list[dict]) -> tuple[float | None, dict]:
    """Fit at each collected detector threshold; keep the one whose counts after rejection are nearest
    the truth out of fold on the training spreads: the least mean absolute count error (ties: the most
    exact counts).  The share of exact counts alone is a noisy criterion (a miss and an extra object
    cancel).  Held-out spreads play no part in the choice."""
    fits = {}
    for thr in sorted({r.get("thr") for r in rows}, key=lambda t: -1 if t is None else t):
        fits[thr] = fit([r for r in rows if r.get("thr") == thr])
        print("detector threshold", thr, json.dumps(fits[thr]["report"]), flush=True)
    best = min(fits, key=lambda t: (fits[t]["report"]["train_out_of_fold"]["mean_abs_count_error"][1],
                                    -fits[t]["report"]["train_out_of_fold"]["count_exact"][1]))
    return best, fits[best]


def fit(rows: list[dict], target_precision: float = 0.95) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    from napari_cellclass.karyotype.reject import FEATURES, rejection_probability

    X = np.array([[r[f] for f in FEATURES] for r in rows], float)
    iou = np.array([r["iou"] for r in rows])
    cover = np.array([r["cover"] for r in rows])
    held = np.array([r["held"] for r in rows])
    spread = np.array([r["folder"] + "/" + r["spread"] for r in rows])
    y = np.where(cover < 0.2, 1, np.where(iou >= 0.5, 0, -1))

    def fit_on(mask):
        Xm = X[mask]
        mu, sd = Xm.mean(0), Xm.std(0) + 1e-6
        lr = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit((Xm - mu) / sd, y[mask])
        return {"features": list(FEATURES), "mean": mu.tolist(), "scale": sd.tolist(),
                "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}

    train = np.flatnonzero(~held)
    oof = np.zeros(len(rows))
    for a, b in GroupKFold(5).split(train, groups=spread[train]):
        m = np.zeros(len(rows), bool)
        m[train[a]] = True
        oof[train[b]] = rejection_probability(X[train[b]], fit_on(m & (y >= 0)))
    threshold = 0.995
    for t in np.linspace(0.5, 0.995, 100):
        rej = ~held & (oof >= t)
        if rej.any() and 1 - (rej & (iou >= 0.5)).sum() / rej.sum() >= target_precision:
            threshold = float(t)
            break
    per_train = defaultdict(lambda: [0, 0, 0])  # spread: true count, detected, kept (out of fold)
    for i in train:
        v = per_train[spread[i]]
        v[0] = rows[i]["n_true"]
        v[1] += 1
        v[2] += int(oof[i] < threshold)
    model = fit_on(~held & (y >= 0))
    model["threshold"] = round(threshold, 4)
    p = rejection_probability(X, model)
    report = {"objects": len(rows), "not_chromosomes_train": int(((y == 1) & ~held).sum()),
              "chromosomes_train": int(((y == 0) & ~held).sum()), "threshold": model["threshold"],
              "train_out_of_fold": _counts(per_train)}
    for folder in FOLDERS:
        sel = held & np.array([r["folder"] == folder for r in rows])
        per = defaultdict(lambda: [0, 0, 0])
        for i in np.flatnonzero(sel):
            per[spread[i]][0] = rows[i]["n_true"]
            per[spread[i]][1] += 1
            per[spread[i]][2] += int(p[i] < threshold)
        rej = sel & (p >= threshold)
        n_true = sum(v[0] for v in per.values())
        report[folder] = {
            "held_out_spreads": len(per), "set_aside": int(rej.sum()),
            "set_aside_precision": round(1 - (rej & (iou >= 0.5)).sum() / max(rej.sum(), 1), 3),
            "not_chromosomes_found": int(((y == 1) & sel).sum()),
            "recall": [round(((iou >= 0.5) & sel).sum() / n_true, 3), round(((iou >= 0.5) & sel & ~rej).sum() / n_true, 3)],
            "precision": [round(((iou >= 0.5) & sel).sum() / sel.sum(), 3),
                          round(((iou >= 0.5) & sel & ~rej).sum() / (sel & ~rej).sum(), 3)],
            **_counts(per),
        }
    return {"model": model, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--detector", default="chromdet-tseng")
    ap.add_argument("--classifier", default="gricol-gband-2labs")
    ap.add_argument("--features", type=Path, default=None, help="JSON of collected features (read if present)")
    ap.add_argument("--out", type=Path, default=None, help="write the fitted model here")
    ap.add_argument("--write", action="store_true",
                    help="store the fitted model and the chosen threshold in --detector's checkpoint "
                         "(normalization: rejection, score_threshold); a run's checkpoint, not a built-in")
    ap.add_argument("--thresholds", default=None,
                    help="comma list of detector score thresholds: collect at each, choose the one whose counts "
                         "(after rejection, out of fold) are nearest the truth on the training spreads")
    args = ap.parse_args()
    if args.write and not Path(args.detector).is_file():
        raise SystemExit("--write changes a checkpoint: give a run's checkpoint file as --detector, not a built-in")
    thresholds = tuple(float(t) for t in args.thresholds.split(",")) if args.thresholds else (None,)
    if args.features is not None and args.features.is_file():
        rows = json.loads(args.features.read_text())
    else:
        rows = collect(args.data, args.detector, args.classifier, thresholds)
        if args.features is not None:
            args.features.write_text(json.dumps(rows))
    thr, res = choose(rows)
    print("chosen detector threshold", thr)
    print(json.dumps(res["report"], indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({**res["model"], "score_threshold": thr}, indent=1))
    if args.write:
        write_into(Path(args.detector), res["model"], thr)


def write_into(checkpoint: Path, model: dict, score_threshold: float | None) -> None:
    """The tensors as stored, the header with the rejection model (and the detector threshold it was fitted at)."""
    from dataclasses import replace

    from napari_cellclass.engine.checkpoint import read_meta, rewrite_meta

    meta = read_meta(checkpoint)
    norm = dict(meta.normalization or {})
    norm["rejection"] = {**model, "fitted_for": "this checkpoint (its own detections)"}
    if score_threshold is not None:
        norm["score_threshold"] = float(score_threshold)
    rewrite_meta(checkpoint, replace(meta, normalization=norm))
    print("wrote the rejection model into", checkpoint)


if __name__ == "__main__":
    main()
