"""Smears imaged at another magnification are analysed at the built-in detector's training size."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import rescale

from napari_cellclass.engine.progress import run_sync
from napari_cellclass.samples import bccd_samples
from napari_cellclass.tasks import blood


def _zoom(img: np.ndarray, z: float) -> np.ndarray:
    return np.clip(rescale(img, z, order=1, channel_axis=-1, preserve_range=True), 0, 255).round().astype(np.uint8)


def test_cell_size_follows_magnification_on_a_real_smear():
    img = bccd_samples()[0].read()
    base = blood.cell_size(img)
    assert 30 < base < 70  # BCCD red cells: about 45 px radius by this measure
    for z in (0.5, 2.0):
        assert blood.cell_size(_zoom(img, z)) == pytest.approx(base * z, rel=0.15)


def test_magnification_is_one_within_tolerance_and_the_ratio_outside():
    img = bccd_samples()[0].read()
    size = blood.cell_size(img)
    assert blood.magnification(img, size * 1.1) == 1.0
    assert blood.magnification(img, size / 2) == pytest.approx(2.0)
    assert blood.magnification(img, None) == 1.0  # a detector without a known training size: untouched
    assert blood.magnification(np.full((64, 64, 3), 200, np.uint8), size) == 1.0  # nothing stained: no guess


def test_a_smear_at_0_6x_is_analysed_at_the_training_size_and_boxes_come_back_in_its_pixels():
    sample = bccd_samples()[0]  # shipped, held out from both built-ins' training
    img = _zoom(sample.read(), 0.6)
    truth, names = sample.boxes()
    wbc = truth[[i for i, n in enumerate(names) if blood.is_wbc(n)][0]] * 0.6
    models = blood.SmearModels()
    plain = run_sync(blood.analyse_smear(img, models=models, device="cpu", normalise_magnification=False))
    res = run_sync(blood.analyse_smear(img, models=models, device="cpu"))
    assert plain["magnification"] == 1.0 and res["magnification"] == pytest.approx(0.6, abs=0.15)
    assert "training size" in res["message"]
    assert res["counts"]["WBC"] == 1
    (i,) = res["wbc_index"]
    b = res["boxes"][i]
    inter = max(0, min(b[2], wbc[2]) - max(b[0], wbc[0])) * max(0, min(b[3], wbc[3]) - max(b[1], wbc[1]))
    union = np.prod(b[2:] - b[:2]) + np.prod(wbc[2:] - wbc[:2]) - inter
    assert inter / union > 0.5  # the box is in the user's (0.6x) pixels
    assert res["wbc_class"][i] == sample.wbc_class


def test_the_builtin_named_by_its_file_is_normalised_too():
    """The widget's model chooser passes the built-in's file, not its name."""
    from napari_cellclass import zoo

    path = zoo.resolve_model("bccd-blood-cells-centernet", task="detect")
    assert blood.SmearModels(detector=path).reference_cell_size == blood.KNOWN_CELL_SIZE["bccd-blood-cells-centernet"]
