"""Screenshot of the Classify-HPA widget for docs/hpa.md (run under Xvfb).

    xvfb-run -a python benchmarks/hpa_screenshot.py MODEL.safetensors docs/images/hpa_widget.png
"""
from __future__ import annotations

import sys

import torchvision.models  # noqa: F401  (before the viewer; see widgets.classify_hpa.avoid_triton_llvm_clash)


def main(model: str, out: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellclass.synth.hpa import napari_sample
    from napari_cellclass.widgets.classify_hpa import ClassifyHPAWidget

    viewer = napari.Viewer(show=True)
    for data, kw, _ in napari_sample():
        viewer.add_image(data, **kw)
    w = ClassifyHPAWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Classify HPA field")
    w.model_edit.setText(model)
    w.device_box.setCurrentText("cpu")
    w.mode_box.setCurrentText("per cell")
    w.run()
    app = QApplication.instance()
    while w.last_result is None and w.last_error is None:
        app.processEvents()
    for _ in range(50):
        app.processEvents()
    viewer.window._qt_window.resize(1400, 1000)
    viewer.reset_view()
    for _ in range(50):
        app.processEvents()
    bar = w.scroll_area.verticalScrollBar()
    bar.setValue(bar.maximum())  # the dock scrolls: show the probability plot and its class names
    for _ in range(50):
        app.processEvents()
    viewer.window._qt_window.grab().save(out)
    print("result:", w.status.text(), "error:", w.last_error)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
