"""Analyse smear end to end on held-out BCCD smears: classifier numbers, counts, and the time per smear.

Measured on the images that *both* built-ins held out (the by-smear validation
split they share), with the models exactly as shipped:

* white-cell classifier on the annotated white-cell boxes (``cellclass evaluate wbc
  ... --set split=val``): accuracy, macro F1, per-class recall;
* end to end (detector boxes, not annotations): for each labelled white cell, was it
  detected (IoU >= 0.5 with a detected WBC) and did the detected box get the right
  class; red-cell, white-cell and platelet counts against the annotation;
* detector AP50 per class and mAP50 of the detections Analyse smear's detector step makes
  (with the operating point's flip TTA and box fusion; ``evaluate detect`` gives the one-pass figure);
* every labelled white cell: found by Analyse smear, and found with the right class;
  smears where no white cell was found (their candidates are offered for review);
* time per whole smear, detect + classify, median of warm runs and the first (cold) run.

``--before`` also runs Analyse smear as it was before issue 23 (one pass, the detector's
single threshold for every class), on the same smears in the same process.

    OMP_NUM_THREADS=1 python benchmarks/blood_bccd.py [--before] [--detector NAME] [--classifier NAME]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def _iou(a, b) -> float:
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on a busy shared CPU more threads only contend)")
    ap.add_argument("--before", action="store_true",
                    help="also run Analyse smear as before issue 23 (one detector pass, one threshold for all classes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_cellclass import zoo
    from napari_cellclass.cli import main as cli
    from napari_cellclass.engine.checkpoint import read_meta
    from napari_cellclass.tasks import blood

    t_start = time.monotonic()
    det = zoo.resolve_model(args.detector or zoo.default_model("detect"), task="detect")
    cls = zoo.resolve_model(args.classifier or zoo.default_model("wbc"), task="wbc")
    dmeta, cmeta = read_meta(det), read_meta(cls)
    # the detector's held-out smears; the classifier holds out the labelled ones among them (its split is the
    # detector's) and never trained on the unlabelled ones, so all of them are unseen by both
    held = sorted(dmeta.training.get("val_images", []))
    leak = set(held) & set(cmeta.training.get("train_images", []))
    if leak:
        raise SystemExit(f"{len(leak)} of the detector's held-out smears trained the classifier: {sorted(leak)[:3]}")
    print(f"held out by both models: {len(held)} smears (classifier's labelled ones among them: "
          f"{len(set(held) & set(cmeta.training.get('val_images', [])))})")

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli(["evaluate", "wbc", str(cls), str(args.data), "--set", "split=val", "--quiet"])
    ev = json.loads(buf.getvalue())
    print(json.dumps({"classifier_on_annotated_boxes": {
        "cells": ev["n"], "accuracy": round(ev["accuracy"], 3), "macro_f1": round(ev["macro_f1"], 3),
        "recall": {c: round(v["recall"], 3) for c, v in ev["per_class"].items()},
        "support": {c: v["support"] for c, v in ev["per_class"].items()},
        "confusion_matrix (rows truth)": ev["confusion_matrix"], "not_scored": ev.get("not_scored")}}, indent=2))

    labels = {r["image"]: r for r in csv.DictReader(open(args.data / "wbc_labels.csv"))}
    models = blood.SmearModels(det, cls)
    runs = {"shipped operating point": {}}
    if args.before:  # what Analyse smear did before issue 23: one pass, the detector's one threshold for all
        runs = {"before (one pass, one threshold)": {"score_threshold": read_meta(det).training.get(
            "score_threshold"), "tta": False}, **runs}
    print(json.dumps({"operating_point": models.operating_point}, indent=2))
    for label, kwargs in runs.items():
        print(json.dumps({label: _detector_ap(models, held, args.data, kwargs)}, indent=2), flush=True)
        print(json.dumps({label: _end_to_end(models, held, args.data, labels, cmeta, kwargs, args.threads)},
                         indent=2), flush=True)
    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; whole benchmark {time.monotonic() - t_start:.0f} s; "
          f"torch threads {args.threads}; device {models.classifier.policy.describe()}")
    return 0


def _detector_ap(models, held, data, kwargs) -> dict:
    """COCO AP50 per class of the detections Analyse smear's detector step makes (its flips and fusion),
    scored above 0.02 (AP integrates over every threshold)."""
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.detection_dataset import load_dataset
    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.tasks import blood
    from napari_cellclass.tasks.detect import coco_metrics

    classes = list(models.detector.meta.class_names)
    ds = load_dataset(data, classes=classes)
    ds.classes = classes
    index = {it.image_path.name: i for i, it in enumerate(ds.items)}
    ds = ds.subset([index[n] for n in held])
    op = models.operating_point
    flips = ["none"] if kwargs.get("tta") is False else op["flips"]
    preds = []
    for n in held:
        r = run_sync(blood.detect_cells(read_rgb(data / "JPEGImages" / n), models, score_threshold=0.02,
                                        wbc_threshold=0.02, flips=flips, fuse_iou=op.get("fuse_iou")))
        preds.append({"boxes": r["boxes"][:, [1, 0, 3, 2]].astype(np.float32),
                      "labels": np.array([classes.index(v) + 1 for v in r["labels"]], dtype=np.int64),
                      "scores": r["scores"].astype(np.float32)})
    m = coco_metrics(ds, preds, classes)
    return {"detector_mAP50": round(m["mAP50"], 3), "mAP50_95": round(m["mAP"], 3),
            "AP50": {c: round(v["AP50"], 3) for c, v in m["per_class"].items()}, "tta_passes": len(flips)}


def _end_to_end(models, held, data, labels, cmeta, kwargs, threads) -> dict:
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.annotations import read_voc
    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.tasks import blood

    times, first = [], None
    found = right = labelled = boxes_found = boxes_total = 0
    count_err = {"RBC": [], "WBC": [], "Platelets": []}
    missed, no_wbc = [], 0
    res = {}
    for name in held:
        img = read_rgb(data / "JPEGImages" / name)
        t0 = time.perf_counter()
        res = run_sync(blood.analyse_smear(img, models=models, device="cpu", **kwargs))
        dt = time.perf_counter() - t0
        if first is None:
            first = dt
        else:
            times.append(dt)
        no_wbc += not res["wbc_index"]
        ann = read_voc(data / "Annotations" / (Path(name).stem + ".xml"))
        truth = {k: sum(1 for lab in ann.labels if blood.count_kind(lab) == k) for k in count_err}
        for k in count_err:
            count_err[k].append(res["counts"][k] - truth[k])
        for b, lab in zip(np.asarray(ann.boxes, dtype=float).reshape(-1, 4), ann.labels):
            if blood.count_kind(lab) == "WBC":
                boxes_total += 1
                boxes_found += max((_iou(b[[1, 0, 3, 2]], res["boxes"][i]) for i in res["wbc_index"]),
                                   default=0.0) >= 0.5
        row = labels.get(name)
        if row and row["category"].upper() in cmeta.class_names:
            labelled += 1
            box = [float(row["ymin"]), float(row["xmin"]), float(row["ymax"]), float(row["xmax"])]
            best = max(((i, _iou(box, res["boxes"][i])) for i in res["wbc_index"]), key=lambda t: t[1],
                       default=(None, 0.0))
            if best[1] >= 0.5:
                found += 1
                right += res["wbc_class"][best[0]] == row["category"].upper()
            else:
                missed.append(name)
    return {
        "smears": len(held), "labelled_white_cells": labelled,
        "labelled_found_by_analyse_smear": f"{found}/{labelled}", "found_recall": round(found / max(labelled, 1), 3),
        "found_and_right_class_end_to_end": f"{right}/{labelled}",
        "end_to_end_accuracy": round(right / max(labelled, 1), 3),
        "annotated_WBC_boxes_found": f"{boxes_found}/{boxes_total}", "missed_labelled": missed,
        "smears_with_no_white_cell": no_wbc,
        "count_error_mean_abs": {k: round(float(np.mean(np.abs(v))), 2) for k, v in count_err.items()},
        "count_error_mean": {k: round(float(np.mean(v)), 2) for k, v in count_err.items()},
        "seconds_per_smear_median_warm": round(statistics.median(times), 3) if times else None,
        "seconds_per_smear_max_warm": round(max(times), 3) if times else None,
        "seconds_first_smear_cold": round(first, 3) if first else None,
        "threads": threads, "device": res.get("device", ""),
    }


if __name__ == "__main__":
    sys.exit(main())
