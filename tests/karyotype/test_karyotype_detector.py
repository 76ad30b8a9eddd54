"""The learned chromosome detector: targets, decoding, mask assignment, training and the segmenter door."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import read_meta
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.errors import InputError
from napari_cellclass.karyotype import detector as D
from napari_cellclass.karyotype.metrics import match_boxes
from napari_cellclass.tasks import karyotype as kt
from napari_cellclass.tasks.base import TaskOptions


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def test_targets_decode_round_trip():
    """Perfect network outputs (the training targets themselves) decode to the annotated boxes."""
    x = np.zeros((120, 160), np.float32)
    boxes = np.array([[10, 10, 50, 24], [60, 30, 110, 44], [20, 100, 40, 150]], float)
    for y0, x0, y1, x1 in boxes.astype(int):
        x[y0:y1, x0:x1] = 1.0
    t = D.make_targets(x, boxes)
    assert t["heat"].max() == 1.0 and int((t["heat"] == 1.0).sum()) == 3
    out = np.stack([_logit(t["fg"]), _logit(t["heat"]), t["size"][0], t["size"][1]])
    got, scores = D.decode(out, 0.3)
    assert len(got) == 3 and (scores > 0.9).all()
    assert len(match_boxes(got, boxes, 0.8)) == 3


def test_touching_chromosomes_get_their_own_masks():
    fg = np.zeros((60, 60), bool)
    fg[5:55, 10:20] = True  # a vertical chromosome ...
    fg[25:35, 20:55] = True  # ... touched by a horizontal one
    boxes = np.array([[5, 10, 55, 20], [25, 20, 35, 55]], float)
    lab = D.instance_labels(fg, boxes)
    assert lab.max() == 2
    assert (lab[5:55, 10:20] == lab[30, 15]).mean() > 0.9
    assert (lab[25:35, 25:55] == lab[30, 45]).all() and lab[30, 45] != lab[10, 15]


def test_blank_image_is_refused():
    with pytest.raises(InputError, match="no stained objects"):
        D.spread_input(np.full((100, 100), 200, np.uint8))


def test_either_polarity_gives_bright_chromosomes():
    img = np.full((80, 80), 220, np.uint8)
    img[20:60, 30:38] = 40
    a = D.spread_input(img)
    b = D.spread_input(255 - img)  # Q-band / DAPI: bright on dark
    assert a[40, 34] > 0.8 and a[5, 5] < 0.1
    assert np.abs(a - b).mean() < 0.05


@pytest.fixture(scope="module")
def spreads(tmp_path_factory):
    return kt.synth(tmp_path_factory.mktemp("spreads"), 4, 0)


def test_train_and_segment(spreads, tmp_path):
    """A tiny run writes a karyotype-task checkpoint that the karyotype segmenter door accepts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = TaskOptions(epochs=1, out=tmp_path / "run", quick=True, extra={"val_fraction": 0.25, "per_spread": 2})
        res = run_sync(kt.train(spreads, opts))
    finally:
        torch.set_num_threads(n)
    meta = read_meta(res["checkpoint"])
    assert meta.task == "karyotype" and meta.arch == "chromdet_unet"
    assert meta.normalization["preprocess"] == "spread_input"
    assert res["n_train"] == 3 and res["n_val"] == 1
    assert {"recall", "precision", "count_exact"} <= set(res["best_metrics"])
    img, _ = kt.annotated_spreads(spreads)[0]
    labels = run_sync(kt.segment(kt._read_spread(img), "detector", Path(res["checkpoint"])))
    assert labels.shape == kt._read_spread(img).shape[:2] and labels.dtype == np.int32



def test_blob_size_follows_magnification():
    """The scale estimate the detector normalises by grows linearly with the zoom of a spread."""
    from skimage.transform import rescale

    from napari_cellclass.karyotype.detector import blob_size, spread_input
    from napari_cellclass.synth.chromosomes import make_spread

    img = make_spread(seed=3)["image"]
    base = blob_size(spread_input(img))
    for z in (0.5, 2.0):
        big = rescale(img.astype(np.float32), z, order=1, channel_axis=-1 if img.ndim == 3 else None)
        assert blob_size(spread_input(big)) == pytest.approx(base * z, rel=0.2)


def test_flip_tta_flips_outputs_back_and_averages():
    """An equivariant network gives the same map with and without TTA; a position-dependent one is averaged."""
    from contextlib import nullcontext

    class Copy(torch.nn.Module):  # flip-equivariant: every output channel is the input
        def forward(self, x):
            return x.repeat(1, 4, 1, 1)

    class Ramp(torch.nn.Module):  # adds the column index: not equivariant under left-right flips
        def forward(self, x):
            ramp = torch.arange(x.shape[-1], dtype=x.dtype).view(1, 1, 1, -1)
            return (x + ramp).repeat(1, 4, 1, 1)

    x = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    one = D._forward_padded(Copy(), x, nullcontext, 1)
    assert np.allclose(D._forward_padded(Copy(), x, nullcontext, 4), one, atol=1e-6)
    assert np.allclose(one[0], x)
    two = D._forward_padded(Ramp(), x, nullcontext, 2)
    W = 32  # padded to a multiple of 16: the flipped ramp is W-1-col on the padded canvas
    assert np.allclose(two[0], x + (W - 1) / 2, atol=1e-5)  # the ramp averages to a constant
    with pytest.raises(InputError, match="tta"):
        D._forward_padded(Copy(), x, nullcontext, 3)


def test_an_image_with_more_objects_than_a_spread_can_hold_is_refused_before_the_per_object_work(monkeypatch):
    from napari_cellclass.synth.chromosomes import make_spread

    image = make_spread(0, "46,XY", size=(256, 256))["image"]
    many = D.MAX_OBJECTS + 100
    boxes = np.tile([[10.0, 10.0, 20.0, 14.0]], (many, 1))
    monkeypatch.setattr(D, "decode", lambda out, thr=0.3, nms_iou=0.5: (boxes, np.full(many, 0.9)))
    called = []
    monkeypatch.setattr(D, "instance_labels", lambda *a, **k: called.append(1))
    with pytest.raises(InputError, match=rf"{many} objects were found, more than the {D.MAX_OBJECTS}"):
        run_sync(D.detect_chromosomes(image, "chromdet-tseng", device="cpu"))
    assert not called


def test_the_detector_threshold_comes_from_its_checkpoint():
    """A detector's checkpoint carries the score threshold chosen on its training spreads; without one, the default."""
    from types import SimpleNamespace

    own = SimpleNamespace(meta=SimpleNamespace(normalization={"score_threshold": 0.08}))
    assert D.model_score_threshold(own) == 0.08
    assert D.model_score_threshold(SimpleNamespace(meta=SimpleNamespace(normalization={}))) == D.DEFAULT_SCORE
    assert D.model_score_threshold(SimpleNamespace(meta=None)) == D.DEFAULT_SCORE


def test_one_forward_pass_serves_several_thresholds(spreads):
    """network_output + objects_from_output are detect_chromosomes split in two: a lower threshold finds a superset."""
    from napari_cellclass.zoo.loaded import load_model

    lm = load_model("chromdet-tseng", task="karyotype", device="cpu", in_channels=1)
    img, _ = kt.annotated_spreads(spreads)[0]
    image = kt._read_spread(img)
    out, f, shape = D.network_output(image, lm)
    lo = D.objects_from_output(out, f, shape, 0.1)
    hi = D.objects_from_output(out, f, shape, 0.3)
    assert lo[0].shape == hi[0].shape == image.shape[:2]
    assert len(lo[1]) >= len(hi[1]) and (hi[2] > 0.3).all() and (lo[2] > 0.1).all()
    whole = run_sync(D.detect_chromosomes(image, lm, score_threshold=0.1))
    assert np.array_equal(whole["labels"], lo[0]) and np.allclose(whole["boxes"], lo[1])


def test_the_user_can_move_the_detector_threshold(spreads):
    """``detector_threshold`` reaches the detector: a lower one never finds fewer objects; out of (0, 1) is refused."""
    img, _ = kt.annotated_spreads(spreads)[0]
    image = kt._read_spread(img)
    low = run_sync(kt.karyotype(image, detector_threshold=0.05, reject=False))
    high = run_sync(kt.karyotype(image, detector_threshold=0.6, reject=False))
    assert len(low["boxes"]) >= len(high["boxes"])
    own = run_sync(kt.segment_with_boxes(image, "detector", "chromdet-tseng"))[1]
    at_own = run_sync(kt.segment_with_boxes(image, "detector", "chromdet-tseng", detector_threshold=0.15))[1]
    assert np.allclose(own, at_own)  # the built-in's own threshold is 0.15, from its checkpoint
    with pytest.raises(InputError, match="detector_threshold"):
        kt._detector_threshold(TaskOptions(extra={"detector_threshold": 1.5}))
    assert kt._detector_threshold(TaskOptions()) is None


def test_a_karyotype_folder_is_not_resumed_with_another_detector_threshold(spreads, tmp_path):
    """The run record names a changed detector threshold: resuming with another one is refused, not mixed."""
    img, _ = kt.annotated_spreads(spreads)[0]
    out = tmp_path / "k"
    run_sync(kt.predict("gricol-gband-2labs", [img], TaskOptions(out=out, extra={"report": False, "detector_threshold": 0.3})))
    with pytest.raises(InputError, match="detector_threshold"):
        run_sync(kt.predict("gricol-gband-2labs", [img], TaskOptions(out=out, extra={"report": False})))
