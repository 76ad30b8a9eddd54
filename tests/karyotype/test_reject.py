"""The rejection step: nuclei, debris and stain blobs the detector proposes are set aside, chromosomes kept."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.karyotype.reject import (
    FEATURES,
    object_features,
    reject_objects,
    rejection_model,
    rejection_probability,
)
from napari_cellclass.karyotype.segment import label_boxes
from napari_cellclass.synth.chromosomes import make_spread

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "chromosomes"


@pytest.fixture(scope="module")
def builtin_rejection():
    """The rejection model the built-in detector's checkpoint carries (fitted on its own detections)."""
    from napari_cellclass.zoo.loaded import load_model

    model = rejection_model(load_model("chromdet-tseng", task="karyotype", device="cpu"))
    assert model is not None and 0.5 <= model["threshold"] < 1
    return model


def _spread_with_nucleus(seed: int):
    s = make_spread(seed, "46,XY", size=(640, 640))
    labels = s["labels"].copy()
    n = int(labels.max())
    labels[s["nucleus"] & (labels == 0)] = n + 1  # the detector proposed the interphase nucleus too
    probs = np.full((n + 1, 24), 0.1 / 23)
    probs[np.arange(n), np.asarray(s["classes"])] = 0.9
    probs[n] = 1 / 24  # the classifier has no idea what it is
    return s["image"], labels, label_boxes(labels), np.full(n + 1, 0.7), probs, n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_nucleus_is_set_aside_and_every_chromosome_kept(seed, builtin_rejection):
    image, labels, boxes, scores, probs, n = _spread_with_nucleus(seed)
    kept, kept_probs, kept_boxes, rejected = reject_objects(image, labels, boxes, scores, probs, builtin_rejection)
    assert len(rejected) == 1 and rejected[0]["p_not_chromosome"] >= builtin_rejection["threshold"]
    assert rejected[0]["box"] == [float(v) for v in boxes[n]]
    assert int(kept.max()) == n and len(kept_probs) == n and len(kept_boxes) == n
    assert np.array_equal(kept > 0, (labels > 0) & (labels <= n))  # the chromosomes' pixels, untouched


def test_features_do_not_move_with_magnification():
    image, labels, boxes, scores, probs, _ = _spread_with_nucleus(0)
    big = np.kron(image, np.ones((2, 2), image.dtype))
    big_labels = np.kron(labels, np.ones((2, 2), labels.dtype))
    f1, names = object_features(image, labels, boxes, scores, probs)
    f2, _ = object_features(big, big_labels, boxes * 2, scores, probs)
    for name in ("log_area", "log_length", "log_width", "log_dist", "darkness"):
        k = names.index(name)
        assert np.allclose(f1[:, k], f2[:, k], atol=0.08), name


def test_nothing_is_set_aside_without_a_fitted_model_or_objects(builtin_rejection):
    class Other:  # a detector the rejection step was not fitted for: its scores mean something else
        name, meta = "my-detector", None

    assert rejection_model(Other()) is None
    assert rejection_model(type("B", (), {"name": "chromdet-tseng", "meta": None})()) is None  # the name alone is not enough
    from napari_cellclass import zoo
    from napari_cellclass.zoo.loaded import load_model

    by_file = load_model(zoo.resolve_model("chromdet-tseng", "karyotype"), task="karyotype")  # as evaluate loads it
    assert rejection_model(by_file) == builtin_rejection
    empty = np.zeros((64, 64), np.int32)
    assert reject_objects(np.ones((64, 64)), empty, np.zeros((0, 4)), None, np.zeros((0, 24)), builtin_rejection)[3] == []
    assert len(FEATURES) == len(builtin_rejection["coef"]) == len(builtin_rejection["mean"])
    assert rejection_probability(np.zeros((2, len(FEATURES))), builtin_rejection).shape == (2,)


@pytest.mark.realdata
@pytest.mark.slow
def test_on_a_held_out_spread_the_set_aside_objects_are_not_annotated_chromosomes():
    """Tseng 1054052 (held out by the built-ins' split) holds debris the detector proposes."""
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.spread_reader import read_spread_image, spread_truth
    from napari_cellclass.karyotype.metrics import match_boxes
    from napari_cellclass.tasks.karyotype import karyotype

    folder = SHARED / "tseng2023_gband_spreads_more"
    img_path = folder / "images" / "1054052.jpg"
    if not img_path.is_file():
        pytest.skip("../shared/data is absent")
    side = next(p for p in (folder / "annotations").glob("1054052.*"))
    truth, _ = spread_truth(img_path, side)
    image = read_spread_image(img_path)
    res = run_sync(karyotype(image))
    plain = run_sync(karyotype(image, reject=False))
    assert len(res["rejected"]) >= 3 and plain["rejected"] == []
    assert int(res["labels"].max()) == int(plain["labels"].max()) - len(res["rejected"])
    set_aside = np.array([r["box"] for r in res["rejected"]])
    assert len(match_boxes(set_aside, np.asarray(truth, float), 0.5)) <= 1  # at most one real chromosome lost
    assert abs(len(res["boxes"]) - len(truth)) < abs(len(plain["boxes"]) - len(truth))
