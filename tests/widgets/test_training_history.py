"""The Train widget's state without Qt: epoch metrics, curves' series, ETA, resume."""
from __future__ import annotations

import sys

from napari_cellclass.engine.progress import Progress
from napari_cellclass.tasks.history import TrainingHistory


def test_history_collects_epochs_and_estimates_time():
    now = [100.0]
    h = TrainingHistory(clock=lambda: now[0])
    assert h.add(Progress(0, 10, "train", "batch 0")) is False
    now[0] = 110.0
    p = Progress(5, 10, "train", "batch 5")
    h.add(p)
    assert h.eta_text(p) == "train: 50%  elapsed 10 s  ETA 10 s"
    assert h.add(Progress(1, 2, "epoch", "epoch 1/2", {"epoch": 1, "loss": 0.9, "accuracy": 0.5, "lr": 0.1}))
    assert h.add(Progress(2, 2, "epoch", "epoch 2/2", {"epoch": 2, "loss": 0.5, "accuracy": 0.75, "lr": 0.1}))
    assert h.epoch_numbers() == [1, 2] and h.losses() == [0.9, 0.5]
    assert h.metric_names() == ["accuracy"] and h.metric("accuracy") == [0.5, 0.75]  # lr and loss not validation
    assert h.last_text() == "loss=0.5, accuracy=0.75, lr=0.1"
    h.clear()
    assert h.epochs == [] and h.eta_text(Progress(1, None, "export", "writing")) == "export: writing"


def test_history_imports_without_qt():
    import subprocess

    code = ("import sys, napari_cellclass.tasks.history; "
            "assert not any(m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari') "
            "for m in sys.modules), sorted(m for m in sys.modules if 'Qt' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_history_resumes_from_the_run_folder(tmp_path):
    import torch

    history = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.7}]
    torch.save({"model": {}, "optimizer": {}, "epoch": 2, "history": history}, tmp_path / "resume.pt")
    h = TrainingHistory()
    h.load_resume(tmp_path)
    assert h.epoch_numbers() == [1, 2] and h.losses() == [1.0, 0.7]
    h.load_resume(tmp_path / "missing")  # nothing there: unchanged
    assert len(h.epochs) == 2
