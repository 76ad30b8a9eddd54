"""Plot every LR schedule of the recipe menu (docs/images/lr_schedules.png) and print key values.

Usage: python benchmarks/plot_lr_schedules.py [out.png]
Uses the same scheduler code as training (``napari_cellclass.recipes.lr_curve``):
base LR 0.1, 30 epochs x 20 steps, milestones at epochs 10 and 20, polynomial power 2,
decay_rate 0.85 (exponential), 0.15 (natural exp), 0.5 (inverse time) per epoch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from napari_cellclass.recipes import SCHEDULES, lr_curve  # noqa: E402

SPE, EPOCHS, LR = 20, 30, 0.1
KW = {"milestones": [10, 20], "power": 2.0}
# decay_rate per epoch, chosen so the curves are comparable on one axis
RATE = {"exponential": 0.85, "natural_exp": 0.15, "inverse_time": 0.5}


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in SCHEDULES:
        curve = lr_curve(name, SPE, EPOCHS, lr=LR, decay_rate=RATE.get(name, 0.5), **KW)
        epochs = [i / SPE for i in range(len(curve))]
        ax.plot(epochs, curve, label=name, lw=1.2 if name.startswith("noisy") else 1.8,
                alpha=0.6 if name.startswith("noisy") else 1.0)
        print(f"{name:22s} lr@0={curve[0]:.4f} lr@10ep={curve[10 * SPE]:.4f} lr@20ep={curve[20 * SPE]:.4f} "
              f"lr@end={curve[-1]:.5f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"LR schedules (base {LR}, {EPOCHS} epochs, stepped per batch)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs/images/lr_schedules.png")
