"""Screenshots of "Analyse smear" and the review gallery after a correction, on a real BCCD smear.

Runs the built-in detector and white-cell classifier on a held-out BCCD image
(one neither model saw) in a real napari viewer, at napari's default dock width:

* ``blood_analyse.png``: the viewer after one click on Analyse smear;
* ``blood_widget.png``: the blood panel alone, as docked (nothing may be clipped);
* ``blood_gallery.png``: the review gallery (docked on the other side) after a reviewer
  moved the least confident white cell to another class: the tile says what the model
  had said, and the differential in the panel has already changed.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/blood_screenshots.py [IMAGE ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer; see _compat.avoid_triton_llvm_clash)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
DEFAULT = ["BloodImage_00095.jpg"]


def _settle(app, n: int = 100) -> None:
    for _ in range(n):
        app.processEvents()


def main(names: list[str]) -> None:
    import napari
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.widgets.classify_blood import ClassifyBloodWidget

    out_dir = REPO / "docs" / "images"
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    name = names[0]
    viewer.add_image(read_rgb(DATA / name), name=Path(name).stem, rgb=True)
    w = ClassifyBloodWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Blood smear")  # napari's default dock width
    w.device_combo.setCurrentText("cpu")
    w.reviewer_edit.setText("reviewer A")
    viewer.window._qt_window.resize(1500, 950)
    w.analyse()
    while w.result is None:
        app.processEvents()
    _settle(app)
    print("analysis:", w.status.text())
    Image.fromarray(np.asarray(viewer.screenshot(canvas_only=False, flash=False))).save(out_dir / "blood_analyse.png")
    w.grab().save(str(out_dir / "blood_widget.png"))
    print("panel size:", w.width(), "x", w.height())
    g = w.open_gallery()
    _settle(app)
    if g.order:  # a reviewer moves the least confident cell to another class
        i = g.order[0]
        old = w.result["wbc_class"][i]
        new = "LYMPHOCYTE" if old != "LYMPHOCYTE" else "MONOCYTE"
        g.select(i, centre=False)
        g.reclassify(new)
        print(f"reviewed: object {i} {old} -> {new}")
    _settle(app)
    Image.fromarray(np.asarray(viewer.screenshot(canvas_only=False, flash=False))).save(out_dir / "blood_gallery.png")
    print("gallery:", g.title.text())
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
