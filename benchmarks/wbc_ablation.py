"""The source paper's ablation on real BCCD white cells, at the built-in classifier's size.

Variants (same data, same recipe, same budget; only the named ingredient changes):

  resnet34    ResNet-34 depth (3-4-6-3), batch norm, cross-entropy
  ibn         IBN-ResNet-34 (instance+batch norm in stages 1-3), cross-entropy
  ibn+trip    IBN-ResNet-34, cross-entropy + 0.5 x hard-mining centre-triplet hinge (the built-in)

Every run is the exact CLI command the built-in was trained with
(``cellclass train wbc DATA --set split=smear ...``; only ``--arch``/``--set loss=``
and the seed differ), so the ibn+trip runs *are* the built-in's members.  All
seeds hold out the same smears (``--set split_seed=0``, the split the built-in
detector was validated on; groups of overlapping fields never straddle it), so
mean +- sd is the spread of training from scratch; ``--split-seed -1`` lets each
seed draw its own split instead (repeated hold-out).  Results are read from
``cellclass evaluate wbc RUN/model.safetensors DATA --set split=val`` (the exact
held-out images listed in the checkpoint).  Runs are resumable: a finished run
(its ``eval.json``) is not repeated.

    OMP_NUM_THREADS=1 python benchmarks/wbc_ablation.py --out runs/blood/ablation --seeds 0,1,2

Prints per run and a mean +- sd table (accuracy, macro F1, per-class recall).
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd"

VARIANTS = {
    "resnet34": ["--arch", "resnet34", "--set", "loss=ce"],
    "ibn": ["--arch", "ibn_resnet34", "--set", "loss=ce"],
    "ibn+trip": ["--arch", "ibn_resnet34", "--set", "loss=triplet"],
}
CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def train_command(data: Path, out: Path, variant: str, seed: int, epochs: int | None,
                  split_seed: int = 0) -> list[str]:
    """The CLI arguments of one run (the built-in's command plus the variant's switches)."""
    cmd = ["train", "wbc", str(data), "--set", "split=smear", "--seed", str(seed), "--out", str(out), "--quiet"]
    if split_seed >= 0 and split_seed != seed:
        cmd += ["--set", f"split_seed={split_seed}"]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    return cmd + VARIANTS[variant]


def run_one(data: Path, out: Path, variant: str, seed: int, epochs: int | None, split_seed: int = 0) -> dict:
    from napari_cellclass.cli import main

    done = out / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.monotonic()
    args = train_command(data, out, variant, seed, epochs, split_seed)
    resume = ["--resume"] if (out / "resume.pt").is_file() else []
    with contextlib.redirect_stdout(io.StringIO()):
        if main(args + resume) != 0:
            raise SystemExit(f"training failed: cellclass {' '.join(args)}")
    seconds = time.monotonic() - t0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if main(["evaluate", "wbc", str(out / "model.safetensors"), str(data), "--set", "split=val", "--quiet"]) != 0:
            raise SystemExit("evaluation failed")
    ev = json.loads(buf.getvalue())
    row = {"variant": variant, "seed": seed, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
           "recall": {c: ev["per_class"][c]["recall"] for c in CLASSES if c in ev["per_class"]},
           "support": {c: ev["per_class"][c]["support"] for c in CLASSES if c in ev["per_class"]},
           "n_val": ev["n"], "train_seconds": round(seconds, 1), "device": ev["device"],
           "command": "cellclass " + " ".join(a for a in args if a != "--quiet")}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("runs/wbc-ablation"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="ibn+trip,ibn,resnet34")
    p.add_argument("--epochs", type=int, default=None, help="default: the task's (the built-in's) schedule")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--split-seed", type=int, default=0, help="one held-out split for all seeds; -1: one per seed")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if not (args.data / "wbc_labels.csv").is_file():
        print(f"BCCD data not found at {args.data}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    rows = []
    for seed in seeds:  # seed-major: every variant gets seed 0 first, so a partial run is still a comparison
        for v in variants:
            row = run_one(args.data, args.out / f"{v}-s{seed}", v, seed, args.epochs, args.split_seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    held = "the same by-smear hold-out for every seed" if args.split_seed >= 0 else "a by-smear hold-out per seed"
    print(f"\nBCCD white cells, {held} ({rows[0]['n_val']} cells for seed {seeds[0]}), {rows[0]['device']}")
    print(f"{'variant':<10} {'runs':>4}  {'accuracy':>15}  {'macro F1':>15}  " +
          "  ".join(f"{c[:4].lower()} recall" for c in CLASSES) + "  train min")
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        rec = "  ".join(f"{_ms([r['recall'][c] for r in rs]):>11}" for c in CLASSES)
        mins = statistics.mean(r["train_seconds"] for r in rs) / 60
        print(f"{v:<10} {len(rs):>4}  {_ms([r['accuracy'] for r in rs]):>15}  {_ms([r['macro_f1'] for r in rs]):>15}  "
              f"{rec}  {mins:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
