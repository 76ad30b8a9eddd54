"""Calibration of a chromosome classifier on its own validation split: ECE before and after the temperature.

The validation cells (or patients) of the model's split are halved by group: the softmax
temperature is fitted on one half, the expected calibration error (15 bins, top-1) is
measured on the other.  ``--plot`` writes the reliability diagram of that half;
``--write`` stores the temperature in the checkpoint (do that on a run's checkpoint,
then add it to the zoo with ``python -m napari_cellclass.zoo.add``).

    python benchmarks/chromosome_calibration.py gricol-gband-tseng ../shared/data/chromosomes/tseng2023_gband_spreads \\
        --plot docs/images/calibration_gband.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from napari_cellclass import zoo
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.tasks import chromosome
from napari_cellclass.tasks.base import TaskOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="built-in name or checkpoint")
    ap.add_argument("data", type=Path, help="the data set (or sources.txt) the model was trained on")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None, help="reliability diagram PNG")
    ap.add_argument("--write", action="store_true", help="store the temperature in the checkpoint")
    args = ap.parse_args()
    path = zoo.resolve_model(args.model, "chromosome")
    if args.write and zoo.is_builtin(args.model):
        raise SystemExit("--write changes a checkpoint: give a run's checkpoint, not a built-in")
    t0 = time.monotonic()
    opts = TaskOptions(seed=args.seed, extra={"val_fraction": args.val_fraction})
    cal = run_sync(chromosome.calibrate(Path(path), args.data, opts, write=args.write, plot=args.plot))
    print(json.dumps({"model": args.model, "data": args.data.name, **cal,
                      "seconds": round(time.monotonic() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
