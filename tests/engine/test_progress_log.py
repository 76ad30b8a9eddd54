"""CLI progress (tqdm): a correct ETA in logs, bars on a terminal."""
from __future__ import annotations

import io
import re

from napari_cellclass.engine.progress import Progress, TextProgress, run_sync


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_carry_a_real_eta():
    clock, buf = Clock(), io.StringIO()
    tp = TextProgress(buf, clock=clock, tty=False)
    tp(Progress(0, 10, "epoch"))
    for i in range(1, 11):
        clock.t += 2.0
        tp(Progress(i, 10, "epoch", metrics={"loss": 1.0 / i}))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in buf.getvalue()
    assert "<?" in lines[0]  # nothing done yet: unknown, not 0 s
    assert "1/10 [00:02<00:18" in lines[1] and "loss=1" in lines[1]
    assert "5/10 [00:10<00:10" in lines[5]
    assert "10/10 [00:20<00:00" in lines[10]


def test_interleaved_stages_keep_their_own_clock():
    """A batch's outer stage around each item's inner stages: the outer ETA is not reset."""
    clock, buf = Clock(), io.StringIO()
    tp = TextProgress(buf, clock=clock, tty=False)
    for k in range(4):
        tp(Progress(k, 4, "spreads", f"s{k}"))
        tp(Progress(0, 1, "segment"))
        clock.t += 3.0
        tp(Progress(1, 1, "segment"))
    tp(Progress(4, 4, "spreads", "done"))
    outer = [ln for ln in buf.getvalue().splitlines() if ln.startswith("spreads")]
    assert "2/4 [00:06<00:06" in outer[2] and "4/4 [00:12<00:00" in outer[-1]
    assert not any(re.search(r"<00:00,", ln) for ln in outer[1:-1])


def test_quiet_middle_of_a_stage_in_logs_but_heartbeat():
    clock, buf = Clock(), io.StringIO()
    tp = TextProgress(buf, clock=clock, tty=False, heartbeat_s=60)
    for i in range(100):
        clock.t += 1.0
        tp(Progress(i, 100, "predict"))
    assert len(buf.getvalue().splitlines()) == 1 + 1  # the first line and one heartbeat at 60 s


def test_terminal_bar_and_run_sync():
    buf = io.StringIO()
    tp = TextProgress(buf, tty=True)

    def job():
        for i in range(6):
            yield Progress(i, 5, "train", metrics={"acc": 0.5})
        return "done"

    assert run_sync(job(), tp) == "done"
    out = buf.getvalue()
    assert "train" in out and "5/5" in out and "acc=0.5" in out
