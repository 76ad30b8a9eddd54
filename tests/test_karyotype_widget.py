"""Karyotype widget in a real viewer: layers appear; class changes and label edits update the summary."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.synth.chromosomes import make_spread

from test_karyotype_task import tiny_checkpoint  # noqa: E402  (tests dir is on sys.path)


@pytest.mark.viewer
def test_karyotype_widget_end_to_end(make_napari_viewer, qtbot, tmp_path):
    from napari_cellclass.widgets.karyotype import KARYOGRAM_NAME, LABELS_NAME, SHAPES_NAME, KaryotypeWidget

    ckpt = tiny_checkpoint(tmp_path / "model.safetensors")
    viewer = make_napari_viewer()
    s = make_spread(2, "46,XY", size=(384, 384))
    viewer.add_image(s["image"], name="spread")
    w = KaryotypeWidget(viewer)
    assert w.image_box.currentText() == "spread"
    w.model_edit.setText(str(ckpt))
    w.device_box.setCurrentText("cpu")
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.result is not None or w.last_error is not None, timeout=60000)
    assert w.last_error is None
    for name in (LABELS_NAME, SHAPES_NAME, KARYOGRAM_NAME):
        assert name in viewer.layers
    n = int(w.result["labels"].max())
    assert list(viewer.layers[SHAPES_NAME].features["class"]) == w.result["class_names"]
    assert w.table.rowCount() == n
    assert "cpu" in w.device_label.text().lower()

    # the user says chromosome 1 is a 21 (twice more): the summary follows, without re-classification
    before = w.summary_label.text()
    probs_before = w.result["probabilities"].copy()
    for lid in (1, 2, 3):
        w.table.cellWidget(lid - 1, 1).setCurrentText("21")
    qtbot.waitUntil(lambda: w.result["class_names"][:3] == ["21", "21", "21"], timeout=5000)
    assert np.array_equal(w.result["probabilities"], probs_before)
    counts = w.result["class_names"].count("21")
    assert counts >= 3 and "+21" in w.summary_label.text()
    assert w.summary_label.text() != before or "+21" in before
    # key binding on the selected label steps its class
    lab = viewer.layers[LABELS_NAME]
    lab.selected_label = 4
    old = w.result["classes"][3]
    w._step_class(+1)
    qtbot.waitUntil(lambda: w.result["classes"][3] == (max(old, 0) + 1) % 24, timeout=5000)

    # segmentation fix: erase one chromosome; only changed objects are re-classified
    data = lab.data.copy()
    data[data == n] = 0
    lab.data = data
    res = w.labels_edited(sync=True)
    assert res is not None and res["classified"] == 0
    assert int(w.result["labels"].max()) == n - 1

    png = w.export_png(tmp_path / "k.png")
    csv = w.export_csv(tmp_path / "k.csv")
    assert png.stat().st_size > 1000 and csv.read_text().count("\n") == n  # header + n-1 rows
