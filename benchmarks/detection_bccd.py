"""Blood-cell detector on BCCD (RBC / WBC / Platelets): AP@0.5 per class on the images it never saw.

The held-out images are the ones the model's checkpoint lists (``training.val_images``:
the by-smear split of ``--set split=smear``, where overlapping fields of view stay
on one side), so the number is measured exactly where the model card says.
``--train`` first runs the built-in's own training command (CPU default: the
CenterNet detector) into ``--out``; it resumes when interrupted.

    python benchmarks/detection_bccd.py                       # the built-in detector
    python benchmarks/detection_bccd.py --model runs/det/model.safetensors
    OMP_NUM_THREADS=1 python benchmarks/detection_bccd.py --train --out runs/det --epochs 60

Published anchors on BCCD: YOLOv8n mAP@0.5 0.904, NBCDC-YOLOv8 0.947 (COCO-pretrained, GPU).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="checkpoint or built-in name (default: the built-in detector)")
    ap.add_argument("--train", action="store_true", help="train first with the built-in's command into --out")
    ap.add_argument("--out", type=Path, default=Path("runs/detect-bccd"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_cellclass import zoo
    from napari_cellclass.cli import main as cli
    from napari_cellclass.engine.checkpoint import read_meta

    if not (args.data / "Annotations").is_dir():
        print(f"BCCD data not found at {args.data}", file=sys.stderr)
        return 2
    model = args.model
    if args.train:
        cmd = ["train", "detect", str(args.data), "--set", "split=smear", "--seed", str(args.seed), "--out",
               str(args.out)] + (["--epochs", str(args.epochs)] if args.epochs else [])
        if (args.out / "resume.pt").is_file():
            cmd.append("--resume")
        t0 = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):
            if cli(cmd) != 0:
                return 1
        print(f"trained in {time.monotonic() - t0:.0f} s: cellclass {' '.join(cmd)}")
        model = str(args.out / "model.safetensors")
    model = model or zoo.default_model("detect")
    if model is None:
        print("no detector given and no built-in detector installed", file=sys.stderr)
        return 2
    path = zoo.resolve_model(model, task="detect")
    meta = read_meta(path)
    buf = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(buf):
        if cli(["evaluate", "detect", str(path), str(args.data), "--set", "split=val", "--quiet"]) != 0:
            return 1
    r = json.loads(buf.getvalue())
    secs = time.monotonic() - t0
    report = {
        "model": model, "arch": meta.arch, "split": meta.training.get("split"),
        "val_images": r["images"], "val_objects": r["objects"], "mAP50": round(r["mAP50"], 3),
        "mAP50_95": round(r["mAP"], 3),
        "per_class_AP50": {c: round(v["AP50"], 3) for c, v in r["per_class"].items()},
        "per_class_objects": {c: v.get("objects") for c, v in r["per_class"].items()},
        "images_per_s": r["images_per_s"], "device": r["device"], "eval_seconds": round(secs, 1),
        "validated_score_threshold": meta.training.get("score_threshold"),
        "anchors": "YOLOv8n mAP50 0.904, NBCDC-YOLOv8 0.947 (COCO-pretrained)",
    }
    print(json.dumps(report, indent=2))
    hist = [h for h in meta.training.get("history", []) if "mAP50" in h]
    if hist:
        last = hist[-5:]
        print(f"validation mAP50 over the last {len(last)} epochs: "
              f"{statistics.mean(h['mAP50'] for h in last):.3f} ± {statistics.pstdev(h['mAP50'] for h in last):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
