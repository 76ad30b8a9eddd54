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


#: Reports a GUI is shown per second at most (:func:`throttled`).  Each one shown repaints the
#: window; under software OpenGL (Xvfb, remote desktops) that costs 20-40 ms of CPU a time,
#: taken from the job (docs/performance.md), so twice a second, not per tile or batch.
MAX_REPORTS_PER_S = 2


def _always_shown(p: Progress) -> bool:
    """An epoch report is never dropped (the training curves need every one)."""
    return p.stage == "epoch"


def throttled(
    job: Generator[Progress, None, T],
    min_interval: float = 1.0 / MAX_REPORTS_PER_S,
    *,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Progress, None, T]:
    """Pass ``job``'s reports on at most once per ``min_interval`` seconds; return its result.

    A job may yield per tile or per batch, hundreds of times a second; a viewer that
    repaints for each one takes the CPU the job needs (docs/performance.md).  The first
    report and every ``epoch`` report always pass; a new stage waits its turn like any
    report (a job's result replaces its last report anyway).  ``stop`` is asked
    at *every* report the job makes, dropped or not: when it answers True the job is
    closed at that ``yield`` and :class:`Cancelled` raised, so stopping never waits
    for the next report that would have been shown.
    """
    last_t: float | None = None
    try:
        while True:
            if stop is not None and stop():
                job.close()
                raise Cancelled("cancelled by the user; nothing half-done was written")
            try:
                p = next(job)
            except StopIteration as done:
                return done.value
            now = clock()
            if last_t is None or _always_shown(p) or now - last_t >= min_interval:
                last_t = now
                yield p
    finally:
        job.close()  # closed from outside (GeneratorExit at our yield): close the job at its yield too


class TextProgress:
    """CLI progress on stderr, through tqdm.

    On a terminal: one tqdm bar per stage (rate, elapsed and ETA from tqdm, metrics as
    postfix).  In a log or CI (not a terminal): no bar redraws, one line per stage change,
    per ``epoch`` report, at the end of a stage and at most every ``heartbeat_s`` seconds
    otherwise, each with the ETA from the stage's own rate so far (``?`` until one step is
    done; never ``0s`` because the clock was just reset).  ``clock`` is injectable for tests.
    """

    #: Log line: no bar, but counts, elapsed<remaining and the rate, as tqdm formats them.
    LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
    LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]{postfix}"

    def __init__(self, stream=None, min_interval: float = 0.2, heartbeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None):
        import sys

        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._bar = None
        self._stage: str | None = None
        #: per stage name: (time, step) when it began, and its last step; interleaved stages
        #: (a batch's "spreads" around each spread's "segment"/"classify") keep their own clock
        self._starts: dict[str, tuple[float, int]] = {}
        self._steps: dict[str, int] = {}
        self._last_line = 0.0

    def __call__(self, p: Progress) -> None:
        if self._tty:
            self._bar_update(p)
        else:
            self._plain(p)

    @staticmethod
    def _postfix(p: Progress) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items())
        return " ".join(t for t in (p.message, metrics) if t)

    def _bar_update(self, p: Progress) -> None:
        from tqdm import tqdm

        if self._bar is None or p.stage != self._stage:
            self.close()
            self._stage = p.stage
            self._bar = tqdm(total=p.total, initial=p.step, desc=p.stage or None, file=self.stream,
                             mininterval=self.min_interval, dynamic_ncols=True, leave=True, unit="step")
        bar = self._bar
        if p.total != bar.total:
            bar.total = p.total
        bar.set_postfix_str(self._postfix(p), refresh=False)
        if p.step >= bar.n:
            bar.update(p.step - bar.n)
        else:  # a stage that went back (a retry): show where it is
            bar.n = p.step
            bar.refresh()
        if p.total is not None and p.step >= p.total:
            self.close()

    def close(self) -> None:
        """Finish the current terminal bar (a stage change or the end does this too)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def line(self, p: Progress, now: float | None = None) -> str:
        """The log line for ``p``: counts, elapsed<remaining (ETA) and rate since the stage began."""
        from tqdm import tqdm

        now = self.clock() if now is None else now
        t0, step0 = self._starts.get(p.stage, (now, p.step))
        postfix = self._postfix(p)
        return tqdm.format_meter(
            n=p.step, total=p.total, elapsed=max(0.0, now - t0), initial=step0, unit="step",
            prefix=p.stage or "progress", postfix=postfix or None,
            bar_format=self.LOG_FORMAT if p.total else self.LOG_FORMAT_NO_TOTAL)

    def _plain(self, p: Progress) -> None:
        """Logs and CI (no terminal): stage changes, epochs, stage ends and a heartbeat."""
        now = self.clock()
        final = p.total is not None and p.step >= p.total
        if p.stage not in self._starts or p.step < self._steps.get(p.stage, 0):
            self._starts[p.stage] = (now, p.step)  # a new run of this stage: its clock starts here
        self._steps[p.stage] = p.step
        if p.stage != self._stage:
            self._stage = p.stage
        elif not (final or p.stage == "epoch" or now - self._last_line >= self.heartbeat_s):
            return
        self._last_line = now
        self.stream.write(self.line(p, now).strip() + "\n")
        self.stream.flush()
