"""Analyse smear end to end on held-out BCCD smears: classifier numbers, counts, and the time per smear.

Measured on the images that *both* built-ins held out (the by-smear validation
split they share), with the models exactly as shipped:

* white-cell classifier on the annotated white-cell boxes (``cellclass evaluate wbc
  ... --set split=val``): accuracy, macro F1, per-class recall;
* end to end (detector boxes, not annotations): for each labelled white cell, was it
  detected (IoU >= 0.5 with a detected WBC) and did the detected box get the right
  class; red-cell, white-cell and platelet counts against the annotation;
* time per whole smear, detect + classify, median of warm runs and the first (cold) run.

    python benchmarks/blood_bccd.py [--detector NAME] [--classifier NAME]
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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_cellclass import zoo
    from napari_cellclass.cli import main as cli
    from napari_cellclass.engine.checkpoint import read_meta
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.annotations import read_voc
    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.tasks import blood

    det = zoo.resolve_model(args.detector or zoo.default_model("detect"), task="detect")
    cls = zoo.resolve_model(args.classifier or zoo.default_model("wbc"), task="wbc")
    dmeta, cmeta = read_meta(det), read_meta(cls)
    held = sorted(set(dmeta.training.get("val_images", [])) & set(cmeta.training.get("val_images", [])))
    print(f"held out by both models: {len(held)} smears "
          f"(detector {len(dmeta.training.get('val_images', []))}, classifier {len(cmeta.training.get('val_images', []))})")

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
    times, first = [], None
    found = right = labelled = 0
    count_err = {"RBC": [], "WBC": [], "Platelets": []}
    for name in held:
        img = read_rgb(args.data / "JPEGImages" / name)
        t0 = time.perf_counter()
        res = run_sync(blood.analyse_smear(img, models=models, device="cpu"))
        dt = time.perf_counter() - t0
        if first is None:
            first = dt
        else:
            times.append(dt)
        ann = read_voc(args.data / "Annotations" / (Path(name).stem + ".xml"))
        truth = {k: sum(1 for lab in ann.labels if blood.count_kind(lab) == k) for k in count_err}
        for k in count_err:
            count_err[k].append(res["counts"][k] - truth[k])
        row = labels.get(name)
        if row and row["category"].upper() in cmeta.class_names:
            labelled += 1
            box = [float(row["ymin"]), float(row["xmin"]), float(row["ymax"]), float(row["xmax"])]
            best = max(((i, _iou(box, res["boxes"][i])) for i in res["wbc_index"]), key=lambda t: t[1],
                       default=(None, 0.0))
            if best[1] >= 0.5:
                found += 1
                right += res["wbc_class"][best[0]] == row["category"].upper()
    report = {
        "smears": len(held), "labelled_white_cells": labelled,
        "detected_at_iou_0.5": found, "detected_and_right_class": right,
        "end_to_end_accuracy": round(right / max(labelled, 1), 3),
        "count_error_mean_abs": {k: round(float(np.mean(np.abs(v))), 2) for k, v in count_err.items()},
        "count_error_mean": {k: round(float(np.mean(v)), 2) for k, v in count_err.items()},
        "seconds_per_smear_median_warm": round(statistics.median(times), 3) if times else None,
        "seconds_per_smear_max_warm": round(max(times), 3) if times else None,
        "seconds_first_smear_cold": round(first, 3) if first else None,
        "threads": args.threads, "device": res["device"] if held else "",
    }
    print(json.dumps({"end_to_end": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
