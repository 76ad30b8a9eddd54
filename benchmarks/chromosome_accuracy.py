"""GRiCoL vs GRiL vs ResNet-50 on BioImLab Q-band chromosomes, split by cell, same budget.

Every model gets the same cells, the same preprocessing (``prepare_crop``),
optimiser (Adam), learning rate, batch size and number of epochs.  Accuracy is
measured on held-out cells (20%, seeded) with the global branch alone (GRiCoL's
default inference) and with all heads ("full").

CPU default (stated in the output): input 64x68, backbone width 1/8, one
bottleneck per stage, a few epochs, one thread: minutes, not hours; the numbers
show relative behaviour at toy scale, not the seed's.  On CUDA (or ``--full``)
the seed configuration: 448x456, half-width ResNet-50 (3,4,6,3) for GRiCoL/GRiL,
a standard-width ResNet-50 baseline, batch 28, lr 1e-3.
Seed anchors (Q-band, full size, hundreds of epochs): GRiCoL 97.3%, GRiL 95.9%, ResNet-50 95.3%.

    python benchmarks/chromosome_accuracy.py --epochs 3 --json chromosome_accuracy.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_cellclass.engine.progress import run_sync
from napari_cellclass.models.gricol import count_parameters
from napari_cellclass.models.registry import build_model
from napari_cellclass.tasks import chromosome as task
from napari_cellclass.tasks.base import TaskOptions

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chromosomes" / "qband_bioimlab"
ANCHORS = {"gricol": 0.973, "gril": 0.959, "resnet50": 0.953}


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--archs", default="gricol,gril,resnet50")
    ap.add_argument("--full", action="store_true", default=cuda, help="seed configuration (default on CUDA)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (tiny nets run best on 1)")
    ap.add_argument("--out", type=Path, default=Path("runs/chromosome-bench"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not cuda:
        torch.set_num_threads(args.threads)
    if args.full:
        cfg = {}
        epochs, bs, lr = args.epochs or 60, args.batch_size or 28, args.lr or 1e-3
        label = "seed configuration: 448x456, half-width ResNet-50 (3,4,6,3); ResNet-50 baseline at full width"
    else:
        cfg = {"input_size": [64, 68], "width": 0.125, "layers": [1, 1, 1, 1]}
        epochs, bs, lr = args.epochs or 3, args.batch_size or 32, args.lr or 3e-3
        label = "CPU toy configuration: 64x68 input, width 1/8, (1,1,1,1) bottlenecks"
    print(f"{label}; epochs={epochs} batch={bs} lr={lr} device={'cuda' if cuda else 'cpu'}")
    rows = []
    for arch in args.archs.split(","):
        t0 = time.monotonic()
        opts = TaskOptions(epochs=epochs, batch_size=bs, lr=lr, arch=arch, out=args.out / arch, seed=args.seed,
                           quick=not args.full, extra=dict(cfg, val_fraction=0.2))
        res = run_sync(task.train(args.data, opts))
        train_s = time.monotonic() - t0
        ev_opts = TaskOptions(seed=args.seed, extra={"split": "val", "val_fraction": 0.2})
        ev = run_sync(task.evaluate(Path(res["checkpoint"]), args.data, ev_opts))
        full = None
        if arch != "resnet50":
            ev_opts.extra["full_model"] = True
            full = run_sync(task.evaluate(Path(res["checkpoint"]), args.data, ev_opts))["accuracy"]
        net = build_model(res["arch"], **res["arch_config"])
        rows.append({"arch": arch, "accuracy_global": ev["accuracy"], "accuracy_full": full,
                     "n_val": ev["n"], "val_cells": ev["cells"], "params": count_parameters(net),
                     "train_seconds": round(train_s, 1), "best_epoch": res["best_metrics"].get("epoch"),
                     "seed_anchor": ANCHORS.get(arch)})
        print(json.dumps(rows[-1]))
    print(f"\n{label}; {epochs} epochs each, batch {bs}, lr {lr}")
    print("| model | held-out acc. (global branch) | acc. (all heads) | params | train s | seed anchor |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        full = "-" if r["accuracy_full"] is None else f"{r['accuracy_full']:.3f}"
        print(f"| {r['arch']} | {r['accuracy_global']:.3f} | {full} | {r['params'] / 1e6:.2f} M | "
              f"{r['train_seconds']} | {r['seed_anchor']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"config": label, "epochs": epochs, "batch_size": bs, "lr": lr,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
