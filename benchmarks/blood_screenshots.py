"""Screenshots of "Analyse smear" and the review gallery on a real BCCD smear, for docs/blood.md.

Runs the built-in detector and white-cell classifier on a held-out BCCD image
(one neither model saw), opens the review gallery and reclassifies nothing:
what a user sees after one click.  Run under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/blood_screenshots.py [IMAGE ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer; see _compat.avoid_triton_llvm_clash)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
DEFAULT = ["BloodImage_00095.jpg"]


def main(names: list[str]) -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.widgets.classify_blood import ClassifyBloodWidget

    out_dir = REPO / "docs" / "images"
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    name = names[0]
    viewer.add_image(read_rgb(DATA / name), name=Path(name).stem, rgb=True)
    w = ClassifyBloodWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Blood smear")
    w.device_combo.setCurrentText("cpu")
    viewer.window._qt_window.resize(1500, 950)
    w.analyse()
    while w.result is None:
        app.processEvents()
    for _ in range(100):
        app.processEvents()
    print("analysis:", w.status.text())
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    Image.fromarray(np.asarray(shot)).save(out_dir / "blood_analyse.png")
    g = w.open_gallery()
    for _ in range(100):
        app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(np.asarray(shot)).save(out_dir / "blood_gallery.png")
    print("gallery:", g.title.text())
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
