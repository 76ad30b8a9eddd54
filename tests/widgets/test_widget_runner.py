"""The one widget job runner, in a real viewer: progress scale, Cancel as information, one error, busy buttons,
synchronous mode; and every widget runs its jobs through it."""
from __future__ import annotations

import time

import pytest
import torchvision.models  # noqa: F401  (before any viewer: see napari_cellclass._compat)

from napari_cellclass.engine.progress import Progress
from napari_cellclass.errors import CellClassError, InputError

pytestmark = pytest.mark.viewer

WIDGETS = [
    ("classify_hpa", "ClassifyHPAWidget"),
    ("classify_blood", "ClassifyBloodWidget"),
    ("detect", "DetectWidget"),
    ("karyotype", "KaryotypeWidget"),
    ("train", "TrainWidget"),
    ("explain", "ExplainWidget"),
]


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widgets show, by severity (napari's own error hooks included)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []
    original = notification_manager.dispatch
    monkeypatch.setattr(notification_manager, "dispatch",
                        lambda n: (seen.append((str(n.severity), str(n.message))), original(n))[-1])
    return seen


def _errors(notes):
    return [m for s, m in notes if s == "error"]


def _infos(notes):
    return [m for s, m in notes if s == "info"]


def counting_job(n=4, fail: BaseException | None = None):
    for i in range(n):
        yield Progress(i + 1, n, "step", f"{i + 1} of {n}")
    if fail is not None:
        raise fail
    return "done"


def waiting_job(token, seconds=30.0):
    """A job that runs until its token is set (or ``seconds`` pass), checking between 'batches'."""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        token.raise_if_cancelled()
        i += 1
        yield Progress(i, None, "work", "busy")
        time.sleep(0.02)
    return "ran out"


def _runner(qtbot):
    from qtpy.QtWidgets import QPushButton

    from napari_cellclass.widgets._runner import JobRunner

    button = QPushButton("Run")
    runner = JobRunner([button], context="test job failed", cancelled_text="cancelled (test)")
    qtbot.addWidget(button)
    return runner, button


def test_sync_mode_progress_scale_and_result(make_napari_viewer, qtbot, notes, monkeypatch):
    from napari_cellclass.widgets._runner import SCALE

    make_napari_viewer()
    runner, button = _runner(qtbot)
    seen = []
    runner.on_progress = lambda p: seen.append((runner.progress.value(), button.isEnabled(), runner.busy))
    got = []
    runner.min_interval = 0.0  # every report shown (throttling: test_progress_is_throttled)
    assert runner.start(lambda: counting_job(4), got.append, sync=True) == "done"
    assert got == ["done"] and SCALE == 100
    assert [v for v, _, _ in seen] == [25, 50, 75, 100]  # percent
    assert all(not enabled and busy for _, enabled, busy in seen)  # disabled while it ran
    assert button.isEnabled() and not runner.busy and runner.progress.value() == 100
    assert not _errors(notes)

    # CELLCLASS_SYNC_JOBS=1 runs inline even when the widget asks for a worker
    monkeypatch.setenv("CELLCLASS_SYNC_JOBS", "1")
    assert runner.start(lambda: counting_job(2), lambda r: None) == "done"


def test_errors_are_shown_once_with_buttons_back(make_napari_viewer, qtbot, notes):
    make_napari_viewer()
    runner, button = _runner(qtbot)

    # bad input while building the job: one line, nothing starts
    assert runner.start(lambda: (_ for _ in ()).throw(InputError("no such file: x.png")), print) is None
    assert _errors(notes) == ["no such file: x.png"] and runner.worker is None and button.isEnabled()

    # a CellClassError inside the worker thread: once, in its own words
    runner.start(lambda: counting_job(2, fail=CellClassError("the model wants 4 channels")), print)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert _errors(notes)[1:] == ["the model wants 4 channels"]
    assert runner.status.text() == "error: the model wants 4 channels" and button.isEnabled()

    # a bug (RuntimeError: superqt would drop it silently) is shown once, by type, with the context
    runner.start(lambda: counting_job(2, fail=RuntimeError("shape mismatch")), print)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert _errors(notes)[2:] == ["test job failed: RuntimeError: shape mismatch"]
    assert runner.last_error == "test job failed: RuntimeError: shape mismatch"

    # a failure while showing the result is one line too
    runner.start(lambda: counting_job(1), lambda r: 1 / 0)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert len(_errors(notes)) == 4 and "ZeroDivisionError" in _errors(notes)[-1]
    assert button.isEnabled() and not runner.cancel_button.isEnabled()


def test_cancel_is_information(make_napari_viewer, qtbot, notes):
    make_napari_viewer()
    runner, button = _runner(qtbot)
    done = []
    runner.start(lambda: waiting_job(runner.new_token()), done.append)
    assert not button.isEnabled() and runner.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: runner.status.text() == "work: busy", timeout=10000)
    runner.cancel_button.click()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert done == [] and runner.last_error == "cancelled" and runner.status.text() == "cancelled (test)"
    assert _infos(notes) == ["cancelled (test)"] and not _errors(notes)
    assert button.isEnabled() and not runner.cancel_button.isEnabled()

    # a job without a token stops at its next yield, reported the same way
    from napari_cellclass.engine.progress import CancelToken

    runner.start(lambda: waiting_job(CancelToken()), done.append)
    qtbot.waitUntil(lambda: runner.status.text() == "work: busy", timeout=10000)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert done == [] and _infos(notes) == ["cancelled (test)"] * 2 and not _errors(notes)


@pytest.mark.parametrize("module,name", WIDGETS)
def test_every_widget_runs_through_the_one_runner(make_napari_viewer, qtbot, notes, module, name):
    """Each widget's Cancel button stops a running job as information; a job error is one notification;
    its run buttons are disabled while busy and enabled after."""
    import importlib

    from qtpy.QtWidgets import QPushButton

    from napari_cellclass.widgets._runner import JobRunner

    viewer = make_napari_viewer()
    w = getattr(importlib.import_module(f"napari_cellclass.widgets.{module}"), name)(viewer)
    viewer.window.add_dock_widget(w)
    assert isinstance(w.runner, JobRunner) and w.runner.buttons
    assert all(isinstance(b, QPushButton) and b.isEnabled() for b in w.runner.buttons)
    cancel = w.runner.cancel_button
    assert not cancel.isEnabled() and cancel in w.findChildren(QPushButton)  # shown in the dock

    w.runner.start(lambda: waiting_job(w.runner.new_token()), lambda r: None)
    assert not any(b.isEnabled() for b in w.runner.buttons) and cancel.isEnabled()
    qtbot.waitUntil(lambda: "busy" in w.runner.status.text(), timeout=10000)
    cancel.click()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=10000)
    assert len(_infos(notes)) == 1 and not _errors(notes)
    assert "cancel" in w.runner.status.text().lower()
    assert all(b.isEnabled() for b in w.runner.buttons) and not cancel.isEnabled()

    w.runner.start(lambda: counting_job(2, fail=CellClassError("broken input file")), lambda r: None)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=10000)
    assert _errors(notes) == ["broken input file"]  # once: no second toast from the worker
    assert all(b.isEnabled() for b in w.runner.buttons)


def chatty_job(n=400, seconds=0.8, epochs=(100, 200, 300)):
    """Reports per 'tile' (hundreds a second, total unknown) with an epoch report now and then."""
    for i in range(n):
        time.sleep(seconds / n)
        yield Progress(i + 1, None, "tiles", f"tile {i + 1}")
        if i + 1 in epochs:
            yield Progress(i + 1, None, "epoch", f"epoch at {i + 1}", {"loss": 1.0})
    return n


def test_progress_is_throttled_and_never_a_busy_bar(make_napari_viewer, qtbot):
    """Each report shown repaints the window (20-40 ms of software GL); a per-tile job once showed hundreds
    a second and Qt's busy bar animated the window continuously (docs/performance.md)."""
    from napari_cellclass.engine.progress import MAX_REPORTS_PER_S
    from napari_cellclass.widgets._runner import SCALE

    make_napari_viewer()
    runner, _ = _runner(qtbot)
    seen, ranges = [], []
    runner.on_progress = lambda p: (seen.append(p), ranges.append(runner.progress.maximum()))
    got = []
    runner.start(lambda: chatty_job(), got.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=20000)
    assert got == [400]
    epochs = [p for p in seen if p.stage == "epoch"]
    assert [p.step for p in epochs] == [100, 200, 300]  # epochs always pass (the training curves)
    tiles = [p for p in seen if p.stage == "tiles"]
    # at most MAX_REPORTS_PER_S a second, plus one after each stage change (and a slow machine's slack)
    assert len(tiles) <= 0.8 * MAX_REPORTS_PER_S * 3 + 2 * len(epochs) + 2, len(tiles)
    assert set(ranges) == {SCALE}  # never setRange(0, 0)
    assert runner.progress.maximum() == SCALE


def test_cancel_stops_at_a_dropped_report(make_napari_viewer, qtbot):
    """A job without a token is closed at its next yield, even one the throttle does not show."""
    from napari_cellclass.engine.progress import throttled

    closed = []

    def job():
        try:
            for i in range(10_000):
                time.sleep(0.002)
                yield Progress(i, None, "tiles", "")
        finally:
            closed.append(True)

    make_napari_viewer()
    runner, button = _runner(qtbot)
    runner.min_interval = 3600.0  # only the first report is ever shown
    runner.start(job, lambda r: None)
    qtbot.waitUntil(lambda: runner.status.text() == "tiles", timeout=10000)
    t0 = time.monotonic()
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert time.monotonic() - t0 < 2.0 and closed == [True] and runner.last_error == "cancelled"

    # the generator helper alone: its result passes through, a stop request raises Cancelled
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.errors import Cancelled

    assert run_sync(throttled(counting_job(5), 0.0)) == "done"
    with pytest.raises(Cancelled):
        run_sync(throttled(counting_job(5), 0.0, stop=lambda: True))


def test_worker_runs_torch_with_the_policy_thread_count(make_napari_viewer, qtbot, monkeypatch):
    """The worker sets torch's intra-op thread count explicitly (the policy), not what a new thread inherits."""
    import torch

    from napari_cellclass.widgets import _runner as runner_mod

    main_threads = torch.get_num_threads()
    policy = 1 if main_threads != 1 else 2
    monkeypatch.setattr(runner_mod, "worker_threads", lambda: policy)
    make_napari_viewer()
    runner, _ = _runner(qtbot)
    inside = []

    def job():
        inside.append(torch.get_num_threads())
        yield Progress(1, 1, "x", "")
        return "ok"

    try:
        runner.start(job, lambda r: None)
        qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
        assert inside == [policy]
    finally:
        torch.set_num_threads(main_threads)
    monkeypatch.undo()
    assert runner_mod.worker_threads() == torch.get_num_threads()  # the policy: what a direct call gets


def test_status_line_keeps_its_height_while_a_job_runs(make_napari_viewer, qtbot):
    """A report that wraps onto more lines must not re-lay out the dock (plots below redraw in full)."""
    from qtpy.QtWidgets import QVBoxLayout, QWidget

    viewer = make_napari_viewer(show=True)  # laid out for real
    runner, button = _runner(qtbot)
    host = QWidget()
    lay = QVBoxLayout(host)
    for w in (button, runner.progress, runner.status):
        lay.addWidget(w)
    viewer.window.add_dock_widget(host)
    heights = []

    def wordy_job():
        for i in range(6):
            time.sleep(0.15)
            yield Progress(i + 1, 6, "segment", "a long report " * (1 + 8 * (i % 2)))
        return "ok"

    runner.min_interval = 0.0
    runner.on_progress = lambda p: heights.append(runner.status.height())
    runner.start(wordy_job, lambda r: runner.status.setText("the result, which may be long " * 8))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    assert len(heights) == 6 and len(set(heights[1:])) == 1, heights
    assert runner.status.maximumHeight() > 10_000  # released: the full result shows after the job
    qtbot.waitUntil(lambda: runner.status.height() > heights[-1], timeout=5000)
