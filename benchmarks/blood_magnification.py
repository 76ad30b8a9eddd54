"""Analyse smear on held-out BCCD smears resized to simulate other microscopes, correction off and on.

For each zoom (e.g. 0.6x: a lower-magnification objective or a smaller camera
pixel count) every smear that both built-ins held out is resized, analysed with
``normalise_magnification`` False and True (optionally at several tolerances),
and scored like ``benchmarks/blood_bccd.py``: was the labelled white cell detected
(IoU >= 0.5, boxes scaled by the zoom) and given its class; mean absolute count
errors against the annotation.

    python benchmarks/blood_magnification.py --zooms 0.6 0.8 1 1.5 --tolerances 0 1.25
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from blood_bccd import _iou  # the same matching as the end-to-end benchmark (same folder)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--zooms", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.5])
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 1.25],
                    help="0 = correction off; else MAG_TOLERANCE")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from skimage.transform import rescale

    from napari_cellclass import zoo
    from napari_cellclass.engine.checkpoint import read_meta
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.annotations import read_voc
    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.tasks import blood

    det, cls = zoo.default_model("detect"), zoo.default_model("wbc")
    dm = read_meta(zoo.resolve_model(det, task="detect"))
    cm = read_meta(zoo.resolve_model(cls, task="wbc"))
    held = sorted(set(dm.training.get("val_images", [])) & set(cm.training.get("val_images", [])))
    labels = {r["image"]: r for r in csv.DictReader(open(args.data / "wbc_labels.csv"))}
    models = blood.SmearModels(det, cls)
    images = {n: read_rgb(args.data / "JPEGImages" / n) for n in held}
    for zoom in args.zooms:
        for tol in args.tolerances:
            blood.MAG_TOLERANCE = tol or blood.MAG_TOLERANCE
            found = right = labelled = resized = 0
            err: dict[str, list[int]] = {"RBC": [], "WBC": [], "Platelets": []}
            for name in held:
                img = images[name]
                if zoom != 1:
                    img = np.clip(rescale(img, zoom, order=1, channel_axis=-1, preserve_range=True), 0, 255)
                    img = img.round().astype(np.uint8)
                res = run_sync(blood.analyse_smear(img, models=models, device="cpu", normalise_magnification=tol > 0))
                resized += res["magnification"] != 1.0
                ann = read_voc(args.data / "Annotations" / (Path(name).stem + ".xml"))
                for k in err:
                    err[k].append(res["counts"][k] - sum(1 for lab in ann.labels if blood.count_kind(lab) == k))
                row = labels.get(name)
                if row and row["category"].upper() in cm.class_names:
                    labelled += 1
                    box = [float(row[k]) * zoom for k in ("ymin", "xmin", "ymax", "xmax")]
                    best = max(((i, _iou(box, res["boxes"][i])) for i in res["wbc_index"]), key=lambda t: t[1],
                               default=(None, 0.0))
                    if best[1] >= 0.5:
                        found += 1
                        right += res["wbc_class"][best[0]] == row["category"].upper()
            print(json.dumps({"zoom": zoom, "correction": f"tolerance {tol}" if tol else "off", "smears": len(held),
                              "resized": resized, "white_cells_found": round(found / max(labelled, 1), 3),
                              "end_to_end_accuracy": round(right / max(labelled, 1), 3),
                              "count_error_mean_abs": {k: round(float(np.mean(np.abs(v))), 2) for k, v in err.items()}}),
                  flush=True)


if __name__ == "__main__":
    main()
