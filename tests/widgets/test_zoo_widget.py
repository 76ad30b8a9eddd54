"""ModelChooser in a real viewer: built-ins first (best default), paths, the no-built-in hint, warnings."""
from __future__ import annotations

import torchvision.models  # noqa: F401  (before any viewer: see napari_cellclass._compat)
import numpy as np
import pytest

from napari_cellclass.errors import CellClassError
from zoo_utils import make_zoo, tiny_checkpoint

pytestmark = pytest.mark.viewer


@pytest.fixture
def zoo_folder(tmp_path, monkeypatch):
    return make_zoo(tmp_path, monkeypatch, {
        "wbc-best": {"metrics": {"macro_f1": 0.9}},
        "wbc-second": {"metrics": {"macro_f1": 0.3}, "seed": 2},
        "wbc-synth": {"metrics": {"macro_f1": 0.1}, "trained_on": "synthetic", "seed": 3},
    })


def test_chooser_lists_builtins_best_first_and_resolves(make_napari_viewer, qtbot, zoo_folder, tmp_path):
    from napari_cellclass.widgets._model_chooser import ModelChooser

    viewer = make_napari_viewer()
    w = ModelChooser("wbc")
    viewer.window.add_dock_widget(w)
    assert [w.combo.itemText(i) for i in range(w.combo.count())] == ["wbc-best", "wbc-second", "wbc-synth"]
    assert w.text() == "wbc-best" and w.is_builtin
    assert "macro_f1 0.900" in w.summary.text() and "BCCD test fixture" in w.summary.text()
    assert w.value == zoo_folder / "wbc-best.safetensors"

    seen = []
    w.changed.connect(lambda: seen.append(w.text()))
    w.combo.setCurrentIndex(2)
    assert seen and seen[-1] == "wbc-synth"
    assert "trained only on generated" in w.summary.text()

    own = tiny_checkpoint(tmp_path / "mine.safetensors", trained_on="my smears")
    w.setText(str(own))  # as Browse... does
    assert not w.is_builtin and w.value == own
    assert "wbc tiny_cnn, 4 classes; trained on my smears" in w.summary.text()

    other = tiny_checkpoint(tmp_path / "chromo.safetensors", task="chromosome", channels=1)
    w.setText(str(other))
    assert "needs 'wbc'" in w.summary.text()
    with pytest.raises(CellClassError, match="'chromosome' model, but 'wbc' needs"):
        w.value  # noqa: B018

    w.setText("wbc-nonexistent")
    assert "not a built-in" in w.summary.text()
    with pytest.raises(CellClassError, match="wbc-best, wbc-second"):
        w.value  # noqa: B018


def test_chooser_without_builtins_points_to_training_docs(make_napari_viewer, zoo_folder):
    from napari_cellclass.widgets._model_chooser import ModelChooser

    viewer = make_napari_viewer()
    w = ModelChooser("hpa")
    viewer.window.add_dock_widget(w)
    assert w.combo.count() == 0 and w.text() == "" and w.value is None
    text = w.summary.text()
    assert "No built-in HPA model" in text and "Kaggle" in text and "training.md" in text


def test_optional_chooser_starts_empty(make_napari_viewer, zoo_folder):
    from napari_cellclass.widgets._model_chooser import ModelChooser

    w = ModelChooser("wbc", optional=True)
    assert w.text() == "" and w.value is None and w.summary.text() == ""
    w.setText("wbc-second")
    assert w.value == zoo_folder / "wbc-second.safetensors"


def test_hpa_widget_model_field_is_a_chooser(make_napari_viewer, zoo_folder):
    from napari_cellclass.widgets.classify_hpa import ClassifyHPAWidget

    viewer = make_napari_viewer()
    for colour in ("red", "green", "blue", "yellow"):
        viewer.add_image(np.zeros((32, 32), np.uint8), name=colour)
    w = ClassifyHPAWidget(viewer)
    assert "Kaggle" in w.model_edit.summary.text()
    w.run()  # no model chosen: a clear message, no traceback
    assert "choose a checkpoint" in (w.last_error or "")


def test_karyotype_widget_defaults_to_the_builtin_and_warns_when_synthetic(make_napari_viewer, tmp_path,
                                                                            monkeypatch):
    from napari_cellclass.synth.chromosomes import make_spread
    from napari_cellclass.widgets.karyotype import KaryotypeWidget
    from karyotype_utils import tiny_checkpoint as tiny_gricol

    from zoo_utils import add

    folder = make_zoo(tmp_path, monkeypatch)
    add(tiny_gricol(tmp_path / "g.safetensors"), "chromo-synth", folder, data_source="synthetic spreads")
    import json

    card = json.loads((folder / "chromo-synth.json").read_text())
    assert card["trained_on"]["synthetic"] is True
    viewer = make_napari_viewer()
    viewer.add_image(make_spread(2, "46,XY", size=(384, 384))["image"], name="spread")
    w = KaryotypeWidget(viewer)
    assert w.model_edit.text() == "chromo-synth"  # the best (only) built-in is the default
    assert w.detector_edit.text() == ""  # optional, and no built-in detector
    assert "trained only on generated" in w.model_edit.summary.text()
    w.device_box.setCurrentText("cpu")
    res = w.run(sync=True)
    assert w.last_error is None and res is not None
    assert "trained only on generated" in w.status.text()

