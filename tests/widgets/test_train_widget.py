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
    w.out_edit.setText(str(tmp_path / "run"))
    w.quick_check.setChecked(True)
    w.epochs_spin.setValue(2)
    w.settings_edit.setText("schedule=cosine")
    assert w.start() is not None
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert len(w.history) == 2 and all("loss" in h and "accuracy" in h for h in w.history)
    xs, ys = w.ax_loss.lines[0].get_data()
    assert len(xs) == 2 and np.isfinite(ys).all()
    assert any(line.get_label() == "accuracy" for line in w.ax_metric.lines)
    assert Path(w.last_result["checkpoint"]).exists() and (tmp_path / "run" / "resume.pt").exists()
    assert w.progress.value() == 100 and "cpu" in w.device_label.text().lower()

    # resume: one more epoch continues the history from resume.pt
    w.epochs_spin.setValue(3)
    w.resume_check.setChecked(True)
    w.start()
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    assert [h["epoch"] for h in w.history] == [1, 2, 3]
    assert len(w.last_result["history"]) == 3


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
    w.settings_edit.setText("")
    w.quick_check.setChecked(True)
    w.epochs_spin.setValue(50)
    w.out_edit.setText(str(tmp_path / "cancel"))
    w.start()
    qtbot.waitUntil(lambda: len(w.history) >= 1, timeout=180_000)
    w.cancel()
    _wait(qtbot, w)
    assert w.last_error == "cancelled" and len(w.history) < 50
    assert (tmp_path / "cancel" / "model.safetensors").exists()  # best-so-far survives


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
