"""The one way a widget runs a job.

Every long job in the package is a generator that yields
:class:`~napari_cellclass.engine.progress.Progress` and returns its result.  A
:class:`JobRunner` drives one in a napari ``thread_worker`` and owns what every
widget used to wire by hand:

* one progress scale (0-100 %), fed at most :data:`MAX_REPORTS_PER_S` times a second
  (:func:`~napari_cellclass.engine.progress.throttled`); a job that does not know its
  total leaves the bar where it is and says its stage in the status line - never
  Qt's animated "busy" bar, which repaints the whole window without pause;
* the worker thread runs torch with the same intra-op thread count as a direct call
  (:func:`worker_threads`), set explicitly, not left to what a new thread inherits;
* Cancel through the job's :class:`CancelToken` and, for every job, by closing it at
  its next ``yield`` (shown or not), reported as information, not as an error;
* one error path: a :class:`CellClassError` in its own words, anything else by
  its type, shown once (status line + one notification), never a traceback;
* the widget's run buttons disabled while a job runs and enabled again after it,
  whatever the outcome;
* a synchronous mode for tests and scripts (``sync=True``, or the environment
  variable ``CELLCLASS_SYNC_JOBS=1``) that drives the same generator in the
  calling thread.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from ..engine.progress import MAX_REPORTS_PER_S, CancelToken, Progress, run_sync, throttled
from ..errors import Cancelled
from ._errors import error_message

SYNC_ENV = "CELLCLASS_SYNC_JOBS"
SCALE = 100  # the progress bar's maximum: percent, in every widget


def sync_default() -> bool:
    """True when ``CELLCLASS_SYNC_JOBS`` asks for jobs in the calling thread (tests, scripts)."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def worker_threads() -> int | None:
    """The torch intra-op thread count for a job in a worker: what a direct call would use.

    Read on the GUI thread when the job starts (``torch.get_num_threads()``, which
    honours ``OMP_NUM_THREADS`` and ``torch.set_num_threads``) and set again inside the
    worker, so the worker never runs with a different count than the same job called
    directly (OpenMP keeps the count per thread in some builds).  None before torch
    is imported (nothing to match).
    """
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _with_threads(job, threads: int | None):
    """Run ``job`` with ``threads`` torch threads in this (worker) thread."""
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return (yield from job)


def progress_text(p: Progress) -> str:
    """One status line for a progress report: stage, message and the headline metrics."""
    metrics = " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items()
                       if k in ("loss", "mAP50", "accuracy", "macro_f1") and isinstance(v, (int, float)))
    head = f"{p.stage}: {p.message}" if p.stage and p.message else (p.stage or p.message)
    return f"{head} {metrics}".strip()


class _Outcome:
    """What came out of a job: its value or its exception (kept out of superqt's error handling,
    which drops a RuntimeError raised by a job without a signal)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error


def _guarded(job):
    try:
        value = yield from job
    except Exception as exc:  # noqa: BLE001 - shown to the user by JobRunner.fail
        return _Outcome(error=exc)
    return _Outcome(value=value)


def wrapping_label(text: str = "", style: str = "") -> QLabel:
    """A label that wraps long text instead of widening the dock."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(120)
    if style:
        label.setStyleSheet(style)
    return label


class JobRunner:
    """Runs a widget's jobs; creates its progress bar, status line and Cancel button.

    ``buttons`` are disabled while a job runs.  ``context`` prefixes unexpected
    errors ("classification failed: ValueError: ..."); ``cancelling_text`` and
    ``cancelled_text`` say what Cancel does and did for this widget's jobs.
    """

    def __init__(self, buttons: Iterable[QWidget] = (), *, context: str | None = None,
                 cancelling_text: str = "cancelling...", cancelled_text: str = "cancelled",
                 status: QLabel | None = None, on_progress: Callable[[Progress], Any] | None = None):
        self.buttons = list(buttons)
        self.context = context
        self.cancelling_text = cancelling_text
        self.cancelled_text = cancelled_text
        self.on_progress = on_progress
        self.progress = QProgressBar()
        self.progress.setRange(0, SCALE)
        self.progress.setValue(0)
        self.status = status if status is not None else wrapping_label()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.busy = False
        self.worker = None
        self.token: CancelToken | None = None
        self.last_error: str | None = None
        self._outcome_seen = False
        self._cancel_requested = False
        self._stop = threading.Event()  # set by Cancel; the job is closed at its next yield
        self.min_interval = 1.0 / MAX_REPORTS_PER_S

    # ------------------------------------------------------------------ starting
    def new_token(self) -> CancelToken:
        """A fresh cancel token for the job about to be built (Cancel sets it)."""
        self.token = CancelToken()
        return self.token

    def start(self, make_job: Callable[[], Any], on_done: Callable[[Any], Any], *, sync: bool = False,
              busy_text: str = "running...") -> Any:
        """Build the job on this (GUI) thread and run it.

        ``make_job`` reads the form and returns the generator; a problem with the
        input (any exception) is reported through :meth:`fail` and nothing starts.
        Returns the result (synchronous mode; None on error or cancel), else the
        worker; a second start while a job runs returns the running worker.
        """
        if self.busy:
            return None if sync else self.worker
        self.last_error = None
        self.token = None
        try:
            job = make_job()
        except Exception as exc:  # noqa: BLE001 - bad input: one line, no traceback dialog
            return self.fail(exc)
        self._outcome_seen = False
        self._cancel_requested = False
        self._stop = stop = threading.Event()
        self._set_busy(True)
        self.progress.setRange(0, SCALE)
        self.progress.setValue(0)
        self.status.setText(busy_text)
        self._hold_status_height(True)
        job = throttled(job, self.min_interval, stop=stop.is_set)
        if sync or sync_default():
            try:
                outcome = run_sync(_guarded(job), self._progress)
            finally:
                self._set_busy(False)
            return self._finish(outcome, on_done)
        from napari.qt.threading import create_worker

        worker = create_worker(_guarded, _with_threads(job, worker_threads()), _start_thread=False,
                               _ignore_errors=True)
        worker.yielded.connect(self._progress)
        worker.returned.connect(lambda outcome: self._finish(outcome, on_done))
        worker.errored.connect(lambda exc: self._finish(_Outcome(error=exc), on_done))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop: its token (checked inside long steps) and, for any job,
        closing it at its next ``yield``, whether or not that report would be shown."""
        if not self.busy:
            return
        self._cancel_requested = True
        if self.token is not None:
            self.token.cancel()
        self._stop.set()
        self.status.setText(self.cancelling_text)

    # ------------------------------------------------------------------ outcomes
    def fail(self, exc: BaseException | str) -> None:
        """The one error path: a status line and one notification; Cancel is information."""
        from napari.utils.notifications import show_error, show_info

        if isinstance(exc, Cancelled):
            self.last_error = "cancelled"
            self.status.setText(self.cancelled_text)
            self.progress.setRange(0, SCALE)
            self.progress.setValue(0)
            show_info(self.cancelled_text)
            return
        msg = exc if isinstance(exc, str) else error_message(exc, self.context)
        self.last_error = msg
        self.status.setText(f"error: {msg}")
        show_error(msg)
        return

    def _finish(self, outcome: _Outcome, on_done: Callable[[Any], Any]) -> Any:
        self._outcome_seen = True
        if outcome.error is not None:
            return self.fail(outcome.error)
        self.progress.setRange(0, SCALE)
        self.progress.setValue(SCALE)
        try:
            on_done(outcome.value)
        except Exception as exc:  # noqa: BLE001 - a bug in showing the result: one line too
            return self.fail(exc)
        return outcome.value

    def _finished(self) -> None:
        if not self._outcome_seen and self._cancel_requested:  # stopped at a yield: no outcome came back
            self.fail(Cancelled("cancelled by the user"))
        self._set_busy(False)

    def _progress(self, p: Progress) -> None:
        frac = p.fraction
        # no busy (0, 0) range: Qt animates it by repainting the window continuously, which
        # under a software-GL viewer took more CPU than the job (docs/performance.md)
        if frac is not None:
            value = int(round(SCALE * frac))
            if value != self.progress.value():
                # QProgressBar.setValue repaints at once; with updates off it only schedules
                # one, which Qt paints together with the status line's (one window repaint)
                self.progress.setUpdatesEnabled(False)
                self.progress.setValue(value)
                self.progress.setUpdatesEnabled(True)
        text = progress_text(p)
        if not self._cancel_requested and text != self.status.text():
            self.status.setText(text)
        if self.on_progress is not None:
            self.on_progress(p)

    def _hold_status_height(self, hold: bool) -> None:
        """While a job runs the status line keeps its height (two lines; longer reports are cut).

        A report that wrapped onto one more line re-laid out the dock, and every plot below
        the line (a matplotlib canvas) redrew in full for it: more CPU on the GUI thread
        than some jobs took (docs/performance.md).  The full text is back when the job ends.
        """
        label = self.status
        if hold:
            lines = 2 * label.fontMetrics().lineSpacing() + 2 * label.margin() + 2
            label.setFixedHeight(max(lines, label.height() if label.isVisible() else 0))
        else:
            label.setMinimumHeight(0)
            label.setMaximumHeight(16777215)  # QWIDGETSIZE_MAX

    def _set_busy(self, busy: bool) -> None:
        if not busy:
            self._hold_status_height(False)
        self.busy = busy
        for b in self.buttons:
            b.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)


class RunsJobs:
    """What every job widget exposes from its :class:`JobRunner` (``self.runner``)."""

    runner: JobRunner

    @property
    def running(self) -> bool:
        return self.runner.busy

    @property
    def last_error(self) -> str | None:
        return self.runner.last_error

    @property
    def worker(self):
        return self.runner.worker

    @property
    def progress(self) -> QProgressBar:
        return self.runner.progress

    @property
    def status(self) -> QLabel:
        return self.runner.status

    @property
    def cancel_button(self) -> QPushButton:
        return self.runner.cancel_button

    def cancel(self) -> None:
        self.runner.cancel()
