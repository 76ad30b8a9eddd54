"""What a training run has reported so far: per-epoch metrics and a time estimate.

Plain Python (no Qt), so the Train widget, scripts and tests read the same state;
the widget only draws it.  Fed with the job's :class:`Progress` reports.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..engine.progress import Progress

SKIP_METRICS = frozenset({"epoch", "lr", "loss"})  # not drawn as validation curves


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class TrainingHistory:
    """Epoch metrics (one dict per epoch, as the task reports them) and an ETA from the progress."""

    def __init__(self, clock=time.monotonic) -> None:
        self.epochs: list[dict[str, float]] = []
        self._clock = clock
        self._t0 = clock()
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first progress with a fraction

    def clear(self) -> None:
        self.epochs = []
        self._t0 = self._clock()
        self._first = None

    def load_resume(self, out: str | Path | None) -> None:
        """Start from the history saved in ``<out>/resume.pt`` (a resumed run continues its curves)."""
        if out is None:
            return
        path = Path(out) / "resume.pt"
        if not path.exists():
            return
        try:
            from ..engine.training import load_resume_state

            self.epochs = [dict(h) for h in load_resume_state(path).get("history", [])]
        except Exception:  # noqa: BLE001 - the task itself reports an unreadable resume file
            pass

    def add(self, p: Progress) -> bool:
        """Take one progress report; True when it closed an epoch (the curves changed)."""
        frac = p.fraction
        if frac is not None and self._first is None:
            self._first = (self._clock(), frac)
        if p.stage == "epoch":
            self.epochs.append(dict(p.metrics))
            return True
        return False

    def eta_text(self, p: Progress) -> str:
        """"epoch: 40%  elapsed 12 s  ETA 18 s" (the rate measured since the first report)."""
        frac = p.fraction
        now = self._clock()
        if frac is None or self._first is None:
            return f"{p.stage}: {p.message}"
        t_start, f_start = self._first
        if frac <= f_start:
            return f"{p.stage}: {100 * frac:.0f}%  elapsed {now - self._t0:.0f} s"
        eta = (now - t_start) * (1 - frac) / (frac - f_start)
        return f"{p.stage}: {100 * frac:.0f}%  elapsed {now - self._t0:.0f} s  ETA {eta:.0f} s"

    def epoch_numbers(self) -> list[float]:
        return [h.get("epoch", i + 1) for i, h in enumerate(self.epochs)]

    def losses(self) -> list[float]:
        return [h.get("loss", float("nan")) for h in self.epochs]

    def metric_names(self) -> list[str]:
        """Validation metrics reported in any epoch (numbers only), sorted."""
        return sorted({k for h in self.epochs for k, v in h.items() if k not in SKIP_METRICS and is_number(v)})

    def metric(self, name: str) -> list[float]:
        return [h.get(name, float("nan")) for h in self.epochs]

    def last_text(self) -> str:
        """The last epoch's metrics as one line."""
        if not self.epochs:
            return ""
        return ", ".join(f"{k}={v:.4g}" for k, v in self.epochs[-1].items() if k != "epoch" and is_number(v))
