"""Karyotyping on real data that no built-in saw: detection, crop accuracy, end to end, time, memory.

Everything is scored on the held-out part of the built-ins' own splits (seed 0, 20%):
- Tseng 2023 G-band spreads, split by spread (36 of 179): detection recall and precision at
  IoU 0.5 and the share of spreads counted exactly, for the learned detector and the
  classical threshold segmenter; G-band crop accuracy; end to end (detector + classifier +
  pairing) matched-class accuracy and the share of exactly right ISCN strings; seconds and
  peak memory per spread.
- BioImLab Q-band cells 1-89, split by cell (18 held out): crop accuracy.
- The 100 later Tseng spreads (``tseng2023_gband_spreads_more``), split by spread on their own
  (20 held out): crops, detection and end to end, as above.
- The second lab's G-band crops (``gband612_lab2``), split by patient (50 of 248 held out):
  crop accuracy.
- Scale: held-out spreads resized to 0.5x, 1x, 2x and 4x; the count at each size against the
  count at 1x (the target: within +-1 at every size).

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
        if tta:
            out["ece"] = round(res["ece"], 4)  # of the (calibrated) probabilities a user sees
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


def end_to_end(data: Path, classifier: str, detector: str | None, reject: bool = True) -> dict:
    extra = {"split": "val", "segmenter": "detector" if detector else "threshold", "reject": reject}
    if detector:
        extra["detector_model"] = zoo.resolve_model(detector, "karyotype")
    t0 = time.monotonic()
    res = run_sync(karyotype.evaluate(zoo.resolve_model(classifier, "chromosome"), data, TaskOptions(extra=extra)))
    keys = ("recall", "precision", "count_accuracy", "class_accuracy_paired", "class_accuracy_argmax",
            "karyotype_string_accuracy", "karyotype_string_accuracy_if_unsure_confirmed", "confident_share",
            "confident_string_precision", "rejected_as_not_chromosomes", "n_spreads")
    return {**{k: res[k] for k in keys}, "seconds_per_spread": round((time.monotonic() - t0) / res["n_spreads"], 2),
            "peak_rss_mb": round(_peak_rss_mb())}


def scale_check(data: Path, detector: str, n: int = 12, factors=(0.5, 1.0, 2.0, 4.0)) -> dict:
    """Counts of held-out spreads detected at several sizes: the same spread must give the same count."""
    from skimage.transform import rescale

    from napari_cellclass.io.spread_reader import annotated_spreads, read_spread_image
    from napari_cellclass.karyotype.detector import detect_chromosomes, split_spreads
    from napari_cellclass.zoo.loaded import load_model

    det = load_model(detector, task="karyotype")
    _, val = split_spreads(annotated_spreads(data), 0.2, 0)
    rows, within = [], 0
    t0 = time.monotonic()
    for img_path, _ in val[:n]:
        gray = read_spread_image(img_path)
        counts = {}
        for f in factors:
            x = gray if f == 1 else rescale(gray, f, order=1, anti_aliasing=f < 1, preserve_range=True).astype(gray.dtype)
            counts[f] = int(run_sync(detect_chromosomes(x, det))["labels"].max())
        ok = all(abs(c - counts[1.0]) <= 1 for c in counts.values())
        within += ok
        rows.append({"spread": img_path.stem, **{f"{f}x": c for f, c in counts.items()}})
    return {"spreads": len(rows), "within_1_at_every_size": within / max(len(rows), 1),
            "mean_abs_change": round(sum(abs(r[f"{f}x"] - r["1.0x"]) for r in rows for f in factors)
                                     / max(len(rows) * (len(factors) - 1), 1), 3),
            "seconds": round(time.monotonic() - t0, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--gband", default=karyotype.BUILTIN_CLASSIFIERS["G"])
    ap.add_argument("--qband", default=karyotype.BUILTIN_CLASSIFIERS["Q"])
    ap.add_argument("--detector", default=karyotype.BUILTIN_DETECTOR)
    ap.add_argument("--no-reject", action="store_true", help="end to end without the rejection step")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: qband,gband,lab2,detect,e2e,more,scale")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tseng, bioimlab = args.data / "tseng2023_gband_spreads", args.data / "qband_bioimlab"
    more, lab2 = args.data / "tseng2023_gband_spreads_more", args.data / "gband612_lab2"
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
        report["end_to_end"] = end_to_end(tseng, args.gband, args.detector, not args.no_reject)
        print(json.dumps({"end_to_end": report["end_to_end"]}), flush=True)
    if "lab2" not in skip and lab2.is_dir():
        report["gband_lab2_crops"] = crop_accuracy(args.gband, lab2)
        print(json.dumps({"gband_lab2_crops": report["gband_lab2_crops"]}), flush=True)
    if "more" not in skip and more.is_dir():
        if "gband" not in skip:
            report["more_gband_crops"] = crop_accuracy(args.gband, more)
        if "detect" not in skip:
            report["more_detection_learned"] = detection(more, "detector", args.detector)
        if "e2e" not in skip:
            report["more_end_to_end"] = end_to_end(more, args.gband, args.detector, not args.no_reject)
        print(json.dumps({k: report[k] for k in ("more_gband_crops", "more_detection_learned",
                                                 "more_end_to_end") if k in report}), flush=True)
    if "scale" not in skip:
        report["scale"] = scale_check(tseng, args.detector)
        print(json.dumps({"scale": {k: v for k, v in report["scale"].items() if k != "rows"}}), flush=True)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
