"""Progress reports and cancellation for generator-style long jobs.

Every long job in the package is a generator that *yields* :class:`Progress` and
*returns* its result (``StopIteration.value``).  The same generator serves the
napari widgets (via ``napari.qt.threading.thread_worker``), the CLI (text progress
bar) and the tests (:func:`run_sync`).  A job stops cleanly either when its
:class:`CancelToken` is set (checked between batches) or when the consumer closes
the generator at a ``yield`` (``GeneratorExit``); jobs therefore only write files
atomically and at safe points.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

from ..errors import Cancelled

T = TypeVar("T")
Job = Generator["Progress", None, T]


@dataclass
class Progress:
    """One progress report. ``total`` is None when unknown."""

    step: int
    total: int | None = None
    stage: str = ""
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.step / self.total))


class CancelToken:
    """Thread-safe flag a GUI or signal handler sets and a job polls between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user; nothing half-done was written")


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def run_sync(
    job: Generator[Progress, None, T],
    on_progress: Callable[[Progress], Any] | None = None,
) -> T:
    """Drive a job to completion in this thread and return its result."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


class TextProgress:
    """A dependency-free one-line progress bar for the CLI (writes to stderr)."""

    def __init__(self, stream=None, width: int = 30, min_interval: float = 0.2):
        import sys

        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._last = 0.0
        self._last_stage = None
        self._t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, p: Progress) -> None:
        if not self._tty:
            self._plain(p)
            return
        now = time.monotonic()
        final = p.total is not None and p.step >= p.total
        if not final and p.stage == self._last_stage and now - self._last < self.min_interval:
            return
        if p.stage != self._last_stage:
            self._t0 = now
        self._last, self._last_stage = now, p.stage
        self.stream.write(f"\r{self._line(p, now)}"[:160].ljust(100))
        if final:
            self.stream.write("\n")
        self.stream.flush()

    def _line(self, p: Progress, now: float) -> str:
        frac = p.fraction
        if frac is not None:
            filled = int(round(frac * self.width))
            bar = "#" * filled + "-" * (self.width - filled)
            elapsed = now - self._t0
            eta = elapsed / frac - elapsed if frac > 0 else float("nan")
            head = f"[{bar}] {p.step}/{p.total} eta {eta:5.0f}s"
        else:
            head = f"[{p.step}]"
        metrics = " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items())
        return f"{p.stage:>10} {head} {p.message} {metrics}"

    def _plain(self, p: Progress) -> None:
        """Logs and CI (no terminal): one line per stage change, epoch and end, no bar redraws."""
        now = time.monotonic()
        final = p.total is not None and p.step >= p.total
        if p.stage != self._last_stage:
            self._t0 = now
        elif not (final or p.stage == "epoch"):
            return
        self._last_stage = p.stage
        self.stream.write(self._line(p, now).strip() + "\n")
        self.stream.flush()
