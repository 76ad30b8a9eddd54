"""Defects a new user met in the viewer, each driven through a real napari viewer:
docks that did not scroll, no device until a run, CELLCLASS_DEVICE ignored, exports enabled before a result,
class ids on the HPA plot, an RGB merge defaulting to one layer three times."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torchvision.models  # noqa: F401  (before any viewer: see napari_cellclass._compat)
from test_hpa_widget import checkpoint, hpa_files  # noqa: F401  (fixtures)
from test_widget_runner import WIDGETS

from napari_cellclass.synth.hpa import HPA_CLASSES

pytestmark = pytest.mark.viewer


def _widget(viewer, module, name):
    return getattr(importlib.import_module(f"napari_cellclass.widgets.{module}"), name)(viewer)


def test_six_docked_widgets_scroll_instead_of_growing_the_window(make_napari_viewer):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    widgets = [_widget(viewer, m, n) for m, n in WIDGETS]
    for w, (_, name) in zip(widgets, WIDGETS):
        viewer.window.add_dock_widget(w, name=name, area="right")
        assert isinstance(w.scroll_area, QScrollArea) and w.scroll_area.widget().isAncestorOf(w.runner.progress)
    # each dock asks only for a little height; before, the six asked for a 3,950 px tall window
    assert viewer.window._qt_window.minimumSizeHint().height() < 1200
    assert all(w.minimumSizeHint().height() < 200 for w in widgets)


@pytest.mark.parametrize("module,name", WIDGETS)
def test_device_shown_at_open_and_env_var_honoured(make_napari_viewer, monkeypatch, module, name):
    monkeypatch.setenv("CELLCLASS_DEVICE", "cpu")
    viewer = make_napari_viewer()
    w = _widget(viewer, module, name)
    text = w.device_label.text()
    assert text.startswith("device: cpu") and "CELLCLASS_DEVICE=cpu" in text  # before any run
    assert w.device_label.isVisibleTo(w) or w.device_label.parent() is not None
    box = {"classify_blood": "device_combo", "detect": "device_combo"}.get(module, "device_box")
    assert getattr(w, box).value == "auto" and getattr(w, box).device is None  # None: the policy reads the env


def test_hpa_run_uses_cellclass_device(make_napari_viewer, monkeypatch, hpa_files, checkpoint):  # noqa: F811
    """'auto' in the widget means the environment's choice: an unavailable device is named, not ignored."""
    from napari_cellclass.widgets.classify_hpa import ClassifyHPAWidget

    monkeypatch.setenv("CELLCLASS_DEVICE", "mps")  # never available on Linux
    folder, _, _ = hpa_files
    viewer = make_napari_viewer()
    viewer.open(str(folder / "f01_red.png"), plugin="napari-cellclass")
    w = ClassifyHPAWidget(viewer)
    assert "unavailable" in w.device_label.text() and "mps" in w.device_label.text()
    w.model_edit.setText(str(checkpoint))
    assert w.run(sync=True) is None
    assert "mps" in w.last_error and w.last_result is None
    monkeypatch.setenv("CELLCLASS_DEVICE", "cpu")
    assert w.run(sync=True) is not None and "cpu" in w.last_result["device"]


def test_hpa_plot_axis_names_the_classes(make_napari_viewer, hpa_files, checkpoint):  # noqa: F811
    from napari_cellclass.widgets.classify_hpa import ClassifyHPAWidget

    folder, _, _ = hpa_files
    viewer = make_napari_viewer()
    viewer.open(str(folder / "f01_red.png"), plugin="napari-cellclass")
    w = ClassifyHPAWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_edit.setText(str(checkpoint))
    w.device_box.setCurrentText("cpu")
    assert w.run(sync=True) is not None
    ax = w.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(HPA_CLASSES)
    assert "id" not in ax.get_xlabel()


def test_karyotype_exports_wait_for_a_result(make_napari_viewer, tmp_path):
    from karyotype_utils import tiny_checkpoint

    from napari_cellclass.synth.chromosomes import make_spread
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    viewer = make_napari_viewer()
    viewer.add_image(make_spread(2, "46,XY", size=(384, 384))["image"], name="spread")
    w = KaryotypeWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.export_buttons and not any(b.isEnabled() for b in w.export_buttons)
    w.model_edit.setText(str(tiny_checkpoint(tmp_path / "m.safetensors")))
    w.segmenter_box.setCurrentText("threshold")
    assert w.run(sync=True) is not None
    assert all(b.isEnabled() for b in w.export_buttons)
    assert w.export_png(tmp_path / "k.png").stat().st_size > 1000


def test_blood_exports_wait_for_a_result(make_napari_viewer):
    from napari_cellclass.widgets.classify_blood import ClassifyBloodWidget

    viewer = make_napari_viewer()
    w = ClassifyBloodWidget(viewer)
    assert not any(b.isEnabled() for b in (w.export_button, w.report_button, w.gallery_button))


def test_rgb_merge_defaults_to_three_different_layers(make_napari_viewer, hpa_files):  # noqa: F811
    folder, _, _ = hpa_files
    viewer = make_napari_viewer()
    viewer.open(str(folder / "f01_red.png"), plugin="napari-cellclass")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellclass", "Merge HPA set to RGB")
    assert [widget.red.value.name, widget.green.value.name, widget.blue.value.name] == [
        viewer.layers[i].name for i in range(3)]
    assert widget.red.value.metadata["hpa_channel"] == "red" and widget.blue.value.metadata["hpa_channel"] == "blue"
    widget()
    merged = viewer.layers[-1]
    assert merged.rgb and not np.allclose(merged.data[..., 0], merged.data[..., 2])


def test_rgb_merge_guesses_channels_by_name(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("DAPI blue", "antibody green", "microtubules red"):  # no reader metadata, another order
        viewer.add_image(np.zeros((16, 16), np.uint8), name=name)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellclass", "Merge HPA set to RGB")
    assert (widget.red.value.name, widget.green.value.name, widget.blue.value.name) == (
        "microtubules red", "antibody green", "DAPI blue")
    widget.green.value = viewer.layers["DAPI blue"]  # the user's choice stays when layers change
    viewer.add_image(np.zeros((16, 16), np.uint8), name="another green")
    assert widget.green.value.name == "DAPI blue" and widget.red.value.name == "microtubules red"


@pytest.mark.viewer
def test_no_button_text_is_clipped_at_the_default_dock_width(make_napari_viewer, qtbot):
    """Every dock widget, docked as napari docks it: each visible button shows its whole text."""
    import importlib
    import inspect

    from qtpy.QtWidgets import QApplication, QPushButton

    viewer = make_napari_viewer(show=True)
    seen = 0
    for module in ("classify_blood", "detect", "karyotype", "classify_hpa", "explain", "train"):
        mod = importlib.import_module(f"napari_cellclass.widgets.{module}")
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not name.endswith("Widget"):
                continue
            w = cls(viewer)
            dock = viewer.window.add_dock_widget(w, name=name)
            QApplication.processEvents()
            for b in w.findChildren(QPushButton):
                if b.isVisible() and b.text():
                    seen += 1
                    need = b.fontMetrics().horizontalAdvance(b.text().replace("&", ""))
                    assert b.width() >= need + 6, (name, b.text(), b.width(), need)
            viewer.window.remove_dock_widget(dock)
    assert seen >= 12
