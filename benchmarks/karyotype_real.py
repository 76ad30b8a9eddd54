"""Karyotyping on real data that no built-in saw: detection, crop accuracy, end to end, time, memory.

Everything is scored on the held-out part of the built-ins' own splits (seed 0, 20%):
- Tseng 2023 G-band spreads, split by spread (36 of 179): detection recall and precision at
  IoU 0.5 and the share of spreads counted exactly, for the learned detector and the
  classical threshold segmenter; G-band crop accuracy; end to end (detector + classifier +
  pairing) matched-class accuracy and the share of exactly right ISCN strings; seconds and
  peak memory per spread.
- BioImLab Q-band cells 1-89, split by cell (18 held out): crop accuracy.

Crop accuracies are printed with and without flip test-time augmentation.  Prints one JSON
document; ``--json PATH`` also writes it.

    python benchmarks/karyotype_real.py --json karyotype_real.json
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from napari_cellclass import zoo
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.tasks import chromosome, karyotype
from napari_cellclass.tasks.base import TaskOptions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chromosomes"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def crop_accuracy(model: str, data: Path) -> dict:
    out = {}
    for tta in (True, False):
        res = run_sync(chromosome.evaluate(zoo.resolve_model(model, "chromosome"), data,
                                           TaskOptions(extra={"split": "val", "tta": tta})))
        out["accuracy_tta" if tta else "accuracy"] = round(res["accuracy"], 4)
        out.update(n_crops=res["n"], cells=res["cells"])
    return out


def detection(data: Path, segmenter: str, detector: str | None) -> dict:
    extra = {"split": "val", "segmenter": segmenter}
    if detector:
        extra["detector_model"] = zoo.resolve_model(detector, "karyotype")
    t0 = time.monotonic()
    res = run_sync(karyotype.evaluate(None, data, TaskOptions(extra=extra)))
    keys = ("recall", "precision", "count_accuracy", "n_spreads", "n_true", "n_pred")
    return {**{k: res[k] for k in keys}, "seconds_per_spread": round((time.monotonic() - t0) / res["n_spreads"], 2)}


def end_to_end(data: Path, classifier: str, detector: str | None) -> dict:
    extra = {"split": "val", "segmenter": "detector" if detector else "threshold"}
    if detector:
        extra["detector_model"] = zoo.resolve_model(detector, "karyotype")
    t0 = time.monotonic()
    res = run_sync(karyotype.evaluate(zoo.resolve_model(classifier, "chromosome"), data, TaskOptions(extra=extra)))
    keys = ("recall", "precision", "count_accuracy", "class_accuracy_paired", "class_accuracy_argmax",
            "karyotype_string_accuracy", "n_spreads")
    return {**{k: res[k] for k in keys}, "seconds_per_spread": round((time.monotonic() - t0) / res["n_spreads"], 2),
            "peak_rss_mb": round(_peak_rss_mb())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--gband", default=karyotype.BUILTIN_CLASSIFIERS["G"])
    ap.add_argument("--qband", default=karyotype.BUILTIN_CLASSIFIERS["Q"])
    ap.add_argument("--detector", default=karyotype.BUILTIN_DETECTOR)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: qband,gband,detect,e2e")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tseng, bioimlab = args.data / "tseng2023_gband_spreads", args.data / "qband_bioimlab"
    report: dict = {"device": f"CPU, {torch.get_num_threads()} threads", "split": "held-out part of the "
                    "built-ins' split (seed 0, 20%): Tseng by spread, BioImLab by cell"}
    t0 = time.monotonic()
    if "qband" not in skip:
        report["qband_crops"] = crop_accuracy(args.qband, bioimlab)
        print(json.dumps({"qband_crops": report["qband_crops"]}), flush=True)
    if "gband" not in skip:
        report["gband_crops"] = crop_accuracy(args.gband, tseng)
        print(json.dumps({"gband_crops": report["gband_crops"]}), flush=True)
    if "detect" not in skip:
        report["detection_learned"] = detection(tseng, "detector", args.detector)
        print(json.dumps({"detection_learned": report["detection_learned"]}), flush=True)
        report["detection_threshold"] = detection(tseng, "threshold", None)
        print(json.dumps({"detection_threshold": report["detection_threshold"]}), flush=True)
    if "e2e" not in skip:
        report["end_to_end"] = end_to_end(tseng, args.gband, args.detector)
        print(json.dumps({"end_to_end": report["end_to_end"]}), flush=True)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
