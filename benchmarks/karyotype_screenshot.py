"""Screenshot of the Karyotype widget on a held-out Tseng spread with the built-ins, for docs/karyotype.md.

    xvfb-run -a python benchmarks/karyotype_screenshot.py [SPREAD_ID] docs/images/karyotype_widget.png

Prints what the widget reports (count, flags, seconds), for the caption.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer; see engine.device.avoid_triton_llvm_clash)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chromosomes" / "tseng2023_gband_spreads"


def main(spread: str, out: str) -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_cellclass.tasks import karyotype as kt
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    image = kt._read_spread(DATA / "images" / f"{spread}.jpg")
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name=f"spread {spread}", rgb=image.ndim == 3)
    w = KaryotypeWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Karyotype")
    w.device_box.setCurrentText("cpu")
    w.run()
    app = QApplication.instance()
    while w.result is None and w.last_error is None:
        app.processEvents()
    for _ in range(50):
        app.processEvents()
    viewer.window._qt_window.resize(1500, 1000)
    viewer.reset_view()
    for _ in range(50):
        app.processEvents()
    viewer.window._qt_window.grab().save(out)
    res = w.session.result if w.session is not None else {}
    print("status:", w.status.text(), "| summary:", res.get("summary"), "| count:", res.get("count"),
          "| flagged:", int(np.sum(res.get("flagged", []))), "| model:", w._models[0].name, "| error:", w.last_error)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 2 else "1050683", sys.argv[-1])
