"""Blood widget, own boxes, in a real napari viewer: new result layer, colours, differential table, CSV."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.io.wbc_dataset import IMAGENET_MEAN, IMAGENET_STD
from napari_cellclass.models.registry import build_model
from napari_cellclass.synth.blood import BLOOD_CLASSES, CLASS_COLOURS, boxes_to_rectangles, make_smear


@pytest.fixture
def checkpoint(tmp_path):
    model = build_model("ibn_resnet34", num_classes=4, width=8, layers=[1, 1, 1, 1])
    meta = CheckpointMeta(task="wbc", arch="ibn_resnet34", class_names=list(BLOOD_CLASSES), in_channels=3,
                          input_size=[64, 64], arch_config={"num_classes": 4, "width": 8, "layers": [1, 1, 1, 1]},
                          normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, trained_on="test")
    return save_checkpoint(tmp_path / "wbc.safetensors", model, meta)


@pytest.mark.viewer
def test_widget_classifies_shapes_in_worker(make_napari_viewer, qtbot, checkpoint, tmp_path):
    from napari_cellclass.widgets.classify_blood import CLASSIFIED_SUFFIX, ClassifyBloodWidget

    viewer = make_napari_viewer()
    smear = make_smear(3, n_wbc=4)
    viewer.add_image(smear["image"], name="smear", rgb=True)
    shapes = viewer.add_shapes(boxes_to_rectangles(smear["boxes"]), shape_type="rectangle", name="cells")
    w = ClassifyBloodWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.image_combo.currentText() == "smear" and w.cells_combo.currentText() == "cells"
    assert "cpu" in w.device_label.text()
    w.model_edit.setText(str(checkpoint))
    w.device_combo.setCurrentText("cpu")
    w.run()  # worker thread
    qtbot.waitUntil(lambda: w.result is not None, timeout=60000)
    qtbot.waitUntil(lambda: w.run_button.isEnabled(), timeout=10000)
    assert shapes.features.empty  # the user's layer gets nothing written into it
    out = viewer.layers["cells" + CLASSIFIED_SUFFIX]
    feats = out.features
    assert len(feats) == 4 and {"wbc_class", "wbc_score", *(f"p_{c}" for c in BLOOD_CLASSES)} <= set(feats.columns)
    assert np.allclose(feats[[f"p_{c}" for c in BLOOD_CLASSES]].sum(axis=1), 1, atol=1e-4)
    expected = np.array([CLASS_COLOURS[c] for c in feats["wbc_class"]])
    assert np.allclose(out.edge_color, expected)
    assert w.table.rowCount() == 5 and w.table.item(4, 1).text() == "4"
    counts = [int(w.table.item(i, 1).text()) for i in range(4)]
    assert counts == [int((feats["wbc_class"] == c).sum()) for c in BLOOD_CLASSES]
    out_csv = w.export_csv(tmp_path / "diff.csv")
    assert out_csv.read_text().startswith("class,count,percent")


@pytest.mark.viewer
def test_widget_labels_layer_and_errors(make_napari_viewer, checkpoint, monkeypatch):
    from napari_cellclass.widgets import classify_blood as cb

    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda msg: errors.append(msg))
    viewer = make_napari_viewer()
    smear = make_smear(4, n_wbc=2)
    viewer.add_image(smear["image"], name="smear", rgb=True)
    labels = np.zeros(smear["image"].shape[:2], np.int32)
    for i, (y0, x0, y1, x1) in enumerate(smear["boxes"].astype(int), start=1):
        labels[y0:y1, x0:x1] = i
    lab = viewer.add_labels(labels, name="cells")
    w = cb.ClassifyBloodWidget(viewer)
    w.model_edit.setText("")
    w.run(sync=True)  # no model chosen: a message, no traceback
    assert errors and "model" in errors[-1]
    w.model_edit.setText(str(checkpoint))
    w.device_combo.setCurrentText("cpu")
    w.run(sync=True)
    out = viewer.layers["cells" + cb.CLASSIFIED_SUFFIX]
    assert len(out.features) == 2 and list(out.features["label_id"]) == [1, 2]
    pd.testing.assert_frame_equal(lab.features, pd.DataFrame())  # the labels layer is not touched
