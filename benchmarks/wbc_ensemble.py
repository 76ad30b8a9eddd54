"""Combine white-cell checkpoints (one recipe, several seeds, one held-out split) into one ensemble.

    python benchmarks/wbc_ensemble.py RUN_S0/model.safetensors RUN_S1/model.safetensors \\
        RUN_S2/model.safetensors --out runs/wbc-ensemble.safetensors

Then ``cellclass evaluate wbc runs/wbc-ensemble.safetensors ../shared/data/bccd --set split=val``
scores it on the cells none of its members saw.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from napari_cellclass.tasks.wbc import make_ensemble

    cmd = "python benchmarks/wbc_ensemble.py " + " ".join(map(str, args.checkpoints)) + f" --out {args.out}"
    print(make_ensemble(args.checkpoints, args.out, command=cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
