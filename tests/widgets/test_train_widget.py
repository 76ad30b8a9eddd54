"""Train widget: trains a real tiny WBC model in a real viewer; curves get points; cancel; layers export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.io.layers_dataset import export_class_folders, export_voc, label_boxes, shape_boxes


@pytest.fixture(scope="module")
def wbc_data(tmp_path_factory) -> Path:
    from napari_cellclass.tasks import wbc

    return Path(wbc.synth(tmp_path_factory.mktemp("wbc") / "data", 10, 0))


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.mark.viewer
def test_train_widget_trains_wbc_and_draws_curves(make_napari_viewer, qtbot, wbc_data, tmp_path):
    from napari_cellclass.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.task_box.setCurrentText("wbc")
    w.data_edit.setText(str(wbc_data))
    w.out_edit.setText(str(tmp_path / "runs"))
    w.quick_check.setChecked(True)
    w.epochs_spin.setValue(2)
    w.settings_edit.setText("schedule=cosine")
    assert "wbc-001" in w.run_label.text()  # the user sees where the run goes before starting
    assert w.start() is not None
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert len(w.history) == 2 and all("loss" in h and "accuracy" in h for h in w.history)
    xs, ys = w.ax_loss.lines[0].get_data()
    assert len(xs) == 2 and np.isfinite(ys).all()
    assert any(line.get_label() == "accuracy" for line in w.ax_metric.lines)
    run1 = tmp_path / "runs" / "wbc-001"
    assert Path(w.last_result["checkpoint"]).parent == run1 and (run1 / "resume.pt").exists()
    assert w.progress.value() == 100 and "cpu" in w.device_label.text().lower()
    assert "per epoch" in w.estimate_label.text()  # the run's own batches gave an estimate

    # resume: one more epoch continues the latest run's history from its resume.pt
    w.epochs_spin.setValue(3)
    w.resume_check.setChecked(True)
    assert str(run1) in w.run_label.text()
    w.start()
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert [h["epoch"] for h in w.history] == [1, 2, 3]
    assert len(w.last_result["history"]) == 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["wbc-001"]

    # a new run never replaces the earlier one: a new numbered folder
    before = (run1 / "model.safetensors").read_bytes()
    w.resume_check.setChecked(False)
    w.epochs_spin.setValue(1)
    w.start()
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert Path(w.last_result["checkpoint"]).parent == tmp_path / "runs" / "wbc-002"
    assert (run1 / "model.safetensors").read_bytes() == before


@pytest.mark.viewer
def test_train_widget_cancel_and_bad_input(make_napari_viewer, qtbot, wbc_data, tmp_path):
    from napari_cellclass.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.data_edit.setText(str(tmp_path / "missing"))
    assert w.start() is None and "does not exist" in w.last_error
    w.settings_edit.setText("not-a-setting")
    w.data_edit.setText(str(wbc_data))
    assert w.start() is None and "key=value" in w.last_error
    assert not (tmp_path / "cellclass-runs").exists()  # refused input makes no run folder
    w.settings_edit.setText("")
    w.quick_check.setChecked(True)
    w.epochs_spin.setValue(50)
    w.out_edit.setText(str(tmp_path / "cancel"))
    w.start()
    qtbot.waitUntil(lambda: len(w.history) >= 1, timeout=180_000)
    import time

    t0 = time.monotonic()
    w.cancel()
    _wait(qtbot, w)
    assert time.monotonic() - t0 < 10  # per batch, not per epoch (the benchmark measures < 2 s)
    assert w.last_error == "cancelled" and len(w.history) < 50
    assert (tmp_path / "cancel" / "wbc-001" / "model.safetensors").exists()  # best-so-far survives


@pytest.mark.viewer
def test_train_widget_from_layers(make_napari_viewer, qtbot, wbc_data, tmp_path):
    """An image + shapes layer whose 'label' feature names the class becomes a training set."""
    from skimage.io import imread

    from napari_cellclass.widgets.train import TrainWidget

    tiles, labels, rects = [], [], []
    for d in sorted(p for p in wbc_data.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.png"))[:6]:
            tiles.append(imread(f)[..., :3])
            labels.append(d.name)
    s = max(t.shape[0] for t in tiles)
    cols = 6
    mosaic = np.zeros((s * ((len(tiles) + cols - 1) // cols), s * cols, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        mosaic[r * s : r * s + t.shape[0], c * s : c * s + t.shape[1]] = t
        rects.append(np.array([[r * s + 4, c * s + 4], [r * s + s - 4, c * s + s - 4]]))
    viewer = make_napari_viewer()
    viewer.add_image(mosaic, name="smear", rgb=True)
    viewer.add_shapes(rects, shape_type="rectangle", name="cells", features={"label": labels})
    w = TrainWidget(viewer)
    w.source_box.setCurrentText("image + annotation layers")
    assert w.image_box.currentText() == "smear" and w.annot_box.currentText() == "cells"
    w.quick_check.setChecked(True)
    w.epochs_spin.setValue(1)
    w.out_edit.setText(str(tmp_path / "run"))
    w.start()
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert len(w.history) == 1
    ds = Path(w.last_result["dataset"])
    assert sorted(p.name for p in ds.iterdir()) == sorted(set(labels))


def test_layers_dataset_exports(tmp_path):
    img = (np.random.default_rng(0).random((60, 80)) * 1000).astype(np.uint16)
    shapes = [np.array([[5, 5], [5, 25], [25, 25], [25, 5]]), np.array([[30, 40], [55, 70]])]
    boxes = shape_boxes(shapes)
    assert boxes.tolist() == [[5, 5, 25, 25], [30, 40, 55, 70]]
    counts = export_class_folders(img, boxes, ["a", "b/c"], tmp_path / "cls")
    assert counts == {"a": 1, "b_c": 1} and len(list((tmp_path / "cls").rglob("*.png"))) == 2
    with pytest.raises(InputError, match="no labelled object"):
        export_class_folders(img, boxes, ["", "nan"], tmp_path / "none")
    lab = np.zeros((60, 80), int)
    lab[5:25, 5:25] = 3
    lb, ids = label_boxes(lab)
    assert ids == [3] and lb.tolist() == [[5, 5, 25, 25]]
    from napari_cellclass.io.annotations import read_voc

    export_voc(img, boxes, ["a", "b"], tmp_path / "voc")
    ann = read_voc(tmp_path / "voc" / "Annotations" / "image.xml")
    assert ann.labels == ["a", "b"] and np.allclose(ann.boxes, [[5, 5, 25, 25], [40, 30, 70, 55]])


# ---------------------------------------------------------------------- defaults, runs folder, estimate
def test_run_folders_are_numbered_and_never_reused(tmp_path):
    from napari_cellclass.widgets.train import latest_run, next_run_folder, numbered_runs

    base = tmp_path / "runs"
    assert next_run_folder(base, "wbc") == base / "wbc-001"
    (base / "wbc-001" / "model.safetensors").write_bytes(b"x")
    (base / "wbc-003").mkdir()
    (base / "chromosome-007").mkdir()
    (base / "wbc-notes").mkdir()
    assert next_run_folder(base, "wbc") == base / "wbc-004"  # past the highest, gaps are not refilled
    assert next_run_folder(base, "chromosome") == base / "chromosome-008"
    assert (base / "wbc-001" / "model.safetensors").read_bytes() == b"x"
    assert [n for n, _ in numbered_runs(base, "wbc")] == [1, 3, 4]
    assert latest_run(base, "wbc") is None  # nothing resumable yet
    (base / "wbc-001" / "resume.pt").write_bytes(b"")
    assert latest_run(base, "wbc") == base / "wbc-001"


def test_default_runs_folder_is_beside_the_data_never_the_cwd(tmp_path, monkeypatch):
    from napari_cellclass.widgets import train as tw

    data = tmp_path / "project" / "cells"
    data.mkdir(parents=True)
    cwd = tmp_path / "started-here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert tw.default_runs_folder(data) == tmp_path / "project" / "cellclass-runs"
    assert tw.default_runs_folder("../project/cells") == tmp_path / "project" / "cellclass-runs"  # resolved
    user = tw.user_runs_folder()
    assert user.name == "runs" and "napari-cellclass" in str(user)
    assert tw.default_runs_folder(None) == user
    monkeypatch.setattr(tw.os, "access", lambda path, mode: False)  # beside the data is read-only
    assert tw.default_runs_folder(data) == user
    assert cwd not in (tw.default_runs_folder(data), *tw.default_runs_folder(data).parents)


def test_estimate_text_and_batch_clock():
    from napari_cellclass.engine.progress import Progress
    from napari_cellclass.widgets.train import BatchClock, estimate_text

    t = [100.0]
    clock = BatchClock(clock=lambda: t[0])
    for step in (1, 4, 9):  # throttled reports: not every batch arrives; each says its step
        t[0] = 100.0 + 2.0 * step
        clock.add(Progress(step, 40, "train", "epoch 1/5", {"loss": 1.0}))
    assert clock.batches_per_epoch == 8 and clock.epochs == 5 and clock.seconds_per_batch == 2.0
    assert clock.text().startswith("about 16 s per epoch (8 batches of 2.00 s")
    assert "~1.3 min for 5 epochs" in clock.text()
    t[0] = 130.0  # the epoch ends (validation took a while): the measured epoch replaces the batch estimate
    clock.add(Progress(9, 40, "epoch", "epoch 1/5 done"))
    assert clock.seconds_per_batch == 2.0  # not a batch
    assert clock.text() == "about 28 s per epoch (measured over 1 epoch(s)), ~2.3 min for 5 epochs"
    text = estimate_text(30.0, 10, 20, budget_s=600)  # 300 s an epoch, 100 min in all, 10 min budget
    assert "about 300 s per epoch" in text and "~100.0 min for 20 epochs" in text
    assert "time budget (10 min) stops it after about 2 epoch(s)" in text
    assert "budget" not in estimate_text(1.0, 10, 2, budget_s=600)

    only_epochs = BatchClock(clock=lambda: t[0])  # a quick run: the throttle let no batch report through
    for k, when in ((1, 200.0), (2, 212.0)):
        t[0] = when
        only_epochs.add(Progress(8 * k, 16, "epoch", f"epoch {k}/2 done"))
    assert only_epochs.text().startswith("about 12 s per epoch (measured over 1 epoch(s))")


@pytest.mark.viewer
def test_train_widget_defaults_estimate_and_budget(make_napari_viewer, qtbot, wbc_data, tmp_path, monkeypatch):
    """Modest epochs and a time budget by default; Estimate times batches and keeps nothing; the runs
    folder is shown, follows the data, and a user's choice sticks."""
    from napari_cellclass.widgets.train import DEFAULT_BUDGET_MIN, DEFAULT_EPOCHS, TrainWidget

    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert 1 <= w.epochs_spin.value() == DEFAULT_EPOCHS <= 5
    assert w.budget_spin.value() == DEFAULT_BUDGET_MIN > 0
    assert w.runs_edit.text() == str(w.runs_folder())  # shown from the start (user data dir: no data yet)
    w.data_edit.setText(str(wbc_data))
    assert w.runs_folder() == wbc_data.parent / "cellclass-runs"
    assert str(wbc_data.parent / "cellclass-runs" / "wbc-001") in w.run_label.text()
    opts = w.options(tmp_path / "x")
    assert opts.extra["time_budget_s"] == DEFAULT_BUDGET_MIN * 60 and opts.epochs == DEFAULT_EPOCHS
    w.settings_edit.setText("time_budget_s=5")
    assert w.options(tmp_path / "x").extra["time_budget_s"] == 5  # settings win over the field
    w.settings_edit.setText("")
    w.budget_spin.setValue(0)
    assert "time_budget_s" not in w.options(tmp_path / "x").extra

    mine = tmp_path / "my-runs"
    w.runs_edit.setText(str(mine))
    w.data_edit.setText(str(tmp_path))  # other data: the user's own runs folder is kept
    assert w.runs_folder() == mine.resolve()
    w.data_edit.setText(str(wbc_data))

    w.quick_check.setChecked(True)
    w.batch_spin.setValue(4)  # 40 images -> several batches to time
    w.budget_spin.setValue(1)
    w.epochs_spin.setValue(30)
    tmp_before = set(Path(__import__("tempfile").gettempdir()).glob("cellclass-estimate-*"))
    w.estimate(sync=True)
    assert w.last_error is None, w.last_error
    spb, per_epoch, epochs = w.last_estimate
    assert spb > 0 and per_epoch >= 2 and epochs == 30
    assert "per epoch" in w.estimate_label.text() and "min for 30 epochs" in w.estimate_label.text()
    assert not mine.exists() and list(tmp_path.glob("*runs*")) == []  # the probe kept nothing
    assert set(Path(__import__("tempfile").gettempdir()).glob("cellclass-estimate-*")) == tmp_before
    assert not any(p.name.startswith("runs") for p in tmp_path.iterdir())  # nothing in the cwd
