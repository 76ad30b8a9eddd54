"""Screenshots of the Classify-HPA widget's single-cell (bioimage.io) route on a real HPA field (run under Xvfb).

    xvfb-run -a python benchmarks/hpa_singlecell_screenshot.py docs/images/hpa_singlecell.png [LINK.png]

Uses the test fixture packages (tests/bioimageio_fixtures.py: community-shaped, tiny nets), so the
classes are meaningless; the wiring (segmentation packages, watershed, per-cell classifier,
image-level model, layer features) is the real one.  The optional second image shows the model
field's docs link (no HPA built-ins: an empty model folder) on the dark theme.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _pump(app, n=50):
    for _ in range(n):
        app.processEvents()


def main(out: str, link_out: str | None = None) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    import bioimageio_fixtures as F
    from napari_cellclass.widgets.classify_hpa import SINGLE_CELL, ClassifyHPAWidget

    tmp = Path(tempfile.mkdtemp())
    os.environ["CELLCLASS_TRUST_FILE"] = str(tmp / "trusted.json")
    pk = {"image": F.classifier_package(tmp, fmt="0.4", weights="torchscript"),
          "cls": F.classifier_package(tmp, fmt="0.5", weights="pytorch_state_dict", n_classes=19, labels="file",
                                      name="single cell fixture"),
          "cells": F.segmentation_package(tmp, "cells"), "nuclei": F.segmentation_package(tmp, "nuclei")}
    viewer = napari.Viewer(show=True)
    field = ROOT.parent / "shared" / "data" / "hpa" / "derived_kaggle_format_512" / "800_A6_1_red.png"
    viewer.open(str(field), plugin="napari-cellclass")
    w = ClassifyHPAWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Classify HPA field")
    w.model_edit.setText(str(pk["image"]))
    w.cell_seg_edit.setText(str(pk["cells"]))
    w.nucleus_edit.setText(str(pk["nuclei"]))
    w.cell_classifier_edit.setText(str(pk["cls"]))
    w.mode_box.setCurrentText(SINGLE_CELL)
    w.device_box.setCurrentText("cpu")
    w.ask_trust = lambda name, reason, sha: True  # the dialog is modal; consent given here
    w.run()
    app = QApplication.instance()
    while w.last_result is None and w.last_error is None:
        app.processEvents()
    _pump(app)
    viewer.window._qt_window.resize(1500, 1050)
    viewer.reset_view()
    _pump(app)
    bar = w.scroll_area.verticalScrollBar()
    bar.setValue(bar.maximum() // 2)
    _pump(app)
    viewer.window._qt_window.grab().save(out)
    print("result:", w.status.text(), "error:", w.last_error)
    if link_out:
        empty = tmp / "no_models"
        empty.mkdir()
        os.environ["CELLCLASS_ZOO_DIR"] = str(empty)
        w2 = ClassifyHPAWidget(viewer)
        dw = viewer.window.add_dock_widget(w2, area="right", name="Classify HPA (no built-ins)")
        _pump(app)
        w2.model_edit.grab().save(link_out)
        print("summary:", w2.model_edit.summary.text()[:120])
        viewer.window.remove_dock_widget(dw)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
