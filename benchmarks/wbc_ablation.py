"""Ablation of the seed-001 ingredients on real BCCD white cells.

Variants, same data, same budget, same seed:
  plain    ResNet-34 (batch norm), cross-entropy
  ibn      IBN-ResNet-34, cross-entropy
  ibn+trip IBN-ResNet-34, cross-entropy + lambda * hard-mining centre-triplet hinge

Data: ``../shared/data/bccd`` (one WBC box per smear image, ``wbc_labels.csv``),
BASOPHIL (1 cell) left out.  A test set of 20% of the *images* (stratified) is
held out; training uses the rest, with its own by-image validation split for
checkpoint selection.  The subsets are written as small label tables next to a
symlink to the images (nothing is copied).

Usage::

    python benchmarks/wbc_ablation.py --size 112 --epochs 6 --width 32 [--threads 2]

Prints accuracy and macro F1 on the held-out images for each variant.  Without
ImageNet weights (offline) the networks start from random weights, so absolute
numbers are far below the seed's 92% (which used ImageNet transfer and 10k crops).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd"

VARIANTS = {
    "plain": {"arch": "resnet34", "loss": "ce"},
    "ibn": {"arch": "ibn_resnet34", "loss": "ce"},
    "ibn+trip": {"arch": "ibn_resnet34", "loss": "triplet"},
}


def _write_subset(records, image_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "JPEGImages"
    if not link.exists():
        link.symlink_to(image_dir.resolve(), target_is_directory=True)
    with open(folder / "wbc_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "category", "xmin", "ymin", "xmax", "ymax"])
        for r in records:
            w.writerow([r.path.name, r.label, *r.box])
    return folder


def _epoch_log(name: str):
    def show(p) -> None:
        if p.stage == "epoch":
            m = " ".join(f"{k}={v:.3g}" for k, v in p.metrics.items())
            print(f"  [{name}] {p.message}: {m}", flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=64, help="ResNet base width (64 = real ResNet-34)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights (must be cached)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io import wbc_dataset as D
    from napari_cellclass.tasks import wbc
    from napari_cellclass.tasks.base import TaskOptions

    if not (args.data / "wbc_labels.csv").is_file():
        print(f"BCCD data not found at {args.data}", file=sys.stderr)
        return 2
    records = D.read_label_table(args.data / "wbc_labels.csv")
    _, records = D.choose_classes(records)
    trainval, test = D.split_by_group(records, 0.2, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wbc-ablation-") as tmp:
        tmp = Path(tmp)
        image_dir = args.data / "JPEGImages"
        train_dir = _write_subset(trainval, image_dir, tmp / "trainval")
        test_dir = _write_subset(test, image_dir, tmp / "test")
        print(f"BCCD WBC crops: {len(trainval)} train+val images, {len(test)} test images; size {args.size}, "
              f"epochs {args.epochs}, width {args.width}, {args.threads} CPU threads", flush=True)
        for name in args.variants.split(","):
            v = VARIANTS[name]
            opts = TaskOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device="cpu",
                               arch=v["arch"], out=tmp / name, seed=args.seed, size=args.size,
                               pretrained=args.pretrained,
                               extra={"loss": v["loss"], "width": args.width, "val_fraction": 0.2})
            t0 = time.monotonic()
            tr = run_sync(wbc.train(train_dir, opts), _epoch_log(name))
            ev = run_sync(wbc.evaluate(Path(tr["checkpoint"]), test_dir, TaskOptions(device="cpu")))
            row = {"variant": name, "arch": v["arch"], "loss": v["loss"], "test_accuracy": round(ev["accuracy"], 3),
                   "test_macro_f1": round(ev["macro_f1"], 3), "val_macro_f1": round(tr["best_metrics"].get("macro_f1", 0), 3),
                   "best_epoch": tr["best_metrics"].get("epoch"), "seconds": round(time.monotonic() - t0, 1),
                   "per_class_f1": {k: round(c["f1"], 2) for k, c in ev["per_class"].items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nvariant    arch          loss     test acc  test macro-F1  seconds")
    for r in rows:
        print(f"{r['variant']:<10} {r['arch']:<13} {r['loss']:<8} {r['test_accuracy']:>8.3f}  {r['test_macro_f1']:>13.3f}  {r['seconds']:>7.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
