"""Detector on BCCD (RBC / WBC / Platelets): train within a time budget, AP@0.5 per class on held-out images.

The split is by image (seeded, 20% held out); training never sees those images.
CPU default: the tiny detector at half resolution (min side 240 px) for a few
minutes.  On a CUDA GPU the default is the seed's Faster R-CNN ResNet-50 FPN v2
at full size (480 px) with the full budget.  COCO transfer is used when the
weights are in the torch hub cache (``--pretrained``).
Published anchor on the full data: YOLOv8n mAP@0.5 0.90.

    python benchmarks/detection_bccd.py --budget-s 240
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_cellclass.engine.progress import run_sync
from napari_cellclass.io.detection_dataset import load_voc_folder
from napari_cellclass.tasks import detect as det
from napari_cellclass.tasks.base import TaskOptions

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--arch", default="fasterrcnn_resnet50_fpn_v2" if cuda else "fasterrcnn_tiny")
    ap.add_argument("--size", type=int, default=480 if cuda else 240, help="min side in pixels fed to the network")
    ap.add_argument("--budget-s", type=float, default=3600 if cuda else 240, help="training wall-clock budget")
    ap.add_argument("--epochs", type=int, default=60 if cuda else 40)
    ap.add_argument("--batch-size", type=int, default=8 if cuda else 4)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--pretrained", action="store_true", help="COCO transfer (weights must be cached)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-detect-bccd"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_voc_folder(args.data)
    train_idx, test_idx = det.split_by_image(len(ds), 0.2, seed=0)
    train_dir = args.out / "split.json"
    args.out.mkdir(parents=True, exist_ok=True)
    train_dir.write_text(json.dumps({"train": [ds.items[i].source.name for i in train_idx],
                                     "test": [ds.items[i].source.name for i in test_idx]}))
    extra = {"time_budget_s": args.budget_s, "validate": False}
    if args.arch == "fasterrcnn_tiny":
        extra.update({"width": 48, "anchor_sizes": [16, 32, 64, 128]})
    opts = TaskOptions(arch=args.arch, size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       pretrained=args.pretrained, out=args.out / "model", quick=args.arch == "fasterrcnn_tiny",
                       extra=extra)
    train_ds, test_ds = ds.subset(train_idx), ds.subset(test_idx)
    t0 = time.monotonic()

    def show(p):
        if p.stage == "epoch":
            print(f"  {p.message} loss={p.metrics.get('loss', float('nan')):.3f} t={time.monotonic() - t0:.0f}s",
                  flush=True)

    tr = run_sync(det._train_job(train_ds, None, opts, source=str(args.data), trained_on="BCCD trainval (80% by image)"),
                  show)
    net, meta = det.build_from_checkpoint(tr["checkpoint"], task="detect")
    test_ds.classes = list(meta.class_names)
    policy = det.resolve_device(None)
    t1 = time.monotonic()
    preds = run_sync(det._predict_dataset(net, meta, test_ds, policy, None, score_threshold=0.05))
    secs = time.monotonic() - t1
    m = det.coco_metrics(test_ds, preds, test_ds.classes)
    report = {
        "arch": args.arch, "min_size": args.size, "train_images": len(train_ds), "test_images": len(test_ds),
        "epochs_run": len(tr["history"]), "train_seconds": tr["seconds"], "device": tr["device"],
        "threads": args.threads, "mAP50": round(m["mAP50"], 3), "mAP50_95": round(m["mAP"], 3),
        "per_class_AP50": {c: round(v["AP50"], 3) for c, v in m["per_class"].items()},
        "test_images_per_s": round(len(test_ds) / secs, 2), "anchor": "YOLOv8n mAP@0.5 0.90 (full data)",
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
