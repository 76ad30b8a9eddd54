"""The chromosome task end to end on generated data: train, evaluate, predict, classify_crops, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import read_meta
from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, InputError
from napari_cellclass.synth.chromosomes import make_chromosome
from napari_cellclass.tasks import chromosome as task
from napari_cellclass.tasks.base import TaskOptions

TINY = {"input_size": [48, 52], "width": 0.125, "layers": [1, 1, 1, 1]}



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return task.synth(tmp_path_factory.mktemp("chr") / "data", 4, 0)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opts = TaskOptions(epochs=2, batch_size=32, out=out, quick=True, extra=dict(TINY, val_fraction=0.25))
    epochs = []
    res = run_sync(task.train(dataset, opts), lambda p: epochs.append(p) if p.stage == "epoch" else None)
    torch.set_num_threads(threads)
    return res, epochs


def test_train_writes_checkpoint(trained):
    res, epochs = trained
    assert len(epochs) == 2 and "accuracy" in epochs[-1].metrics and "loss" in epochs[-1].metrics
    meta = read_meta(res["checkpoint"])
    assert meta.task == "chromosome" and meta.arch == "gricol" and meta.in_channels == 1
    assert meta.input_size == [48, 52] and len(meta.class_names) == 24
    assert meta.normalization["canvas"] == "relative"
    assert meta.normalization["pad_rel"] == res["pad_rel"] > 1  # the canvas holds chromosomes longer than the median
    json.dumps(meta.arch_config)
    assert res["n_train"] + res["n_val"] == 4 * 46
    # calibrated after training; with one held-out cell it is fitted and measured there, and says so
    cal = meta.calibration
    assert cal == res["calibration"] and 0.01 <= cal["temperature"] <= 100
    assert cal["n_fit"] == cal["n_test"] == res["n_val"] and "same data" in cal["fit_on"]
    assert 0 <= cal["ece_after"] <= 1


def test_calibrated_probabilities_keep_the_argmax_and_change_the_confidence(trained, one_thread):
    ckpt = trained[0]["checkpoint"]
    crops = [make_chromosome(c, seed=7)[0] for c in range(24)]
    raw = run_sync(task.classify_crops(crops, ckpt, calibrated=False))
    cal = run_sync(task.classify_crops(crops, ckpt))
    t = read_meta(ckpt).calibration["temperature"]
    assert np.array_equal(raw.argmax(1), cal.argmax(1))
    assert np.allclose(cal.sum(1), 1, atol=1e-4)
    if abs(t - 1) > 0.05:  # softened (T > 1) or sharpened (T < 1) as fitted
        assert (cal.max(1).mean() < raw.max(1).mean()) == (t > 1)


def test_evaluate_and_predict(trained, dataset, tmp_path, one_thread):
    ckpt = trained[0]["checkpoint"]
    ev = run_sync(task.evaluate(ckpt, dataset, TaskOptions(out=tmp_path)))
    cm = np.array(ev["confusion_matrix"])
    assert cm.shape == (24, 24) and cm.sum() == ev["n"] == 184
    assert ev["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert not (tmp_path / "chromosome_eval.json").exists()  # evaluate writes nothing; `--out x.json` is the CLI's


def test_cli_evaluate_out_is_a_json_file(trained, dataset, tmp_path, one_thread, capsys):
    """`evaluate chromosome --out x.json` writes the file x.json (it used to make a folder and crash)."""
    from napari_cellclass import cli

    ckpt = trained[0]["checkpoint"]
    out = tmp_path / "sub" / "x.json"
    assert cli.main(["evaluate", "chromosome", str(ckpt), str(dataset), "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and json.loads(out.read_text())["n"] == 184
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text())
    # a folder given as --out is refused in one line, exit 2, before any work
    assert cli.main(["evaluate", "chromosome", str(ckpt), str(dataset), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder" in err and len(err.splitlines()) == 1
    res = run_sync(task.predict(ckpt, [dataset / "1"], TaskOptions(out=tmp_path / "pred")))
    assert res["n"] == 8 and (tmp_path / "pred" / "predictions.csv").exists()


def test_classify_crops(trained, one_thread):
    ckpt = trained[0]["checkpoint"]
    crops = [make_chromosome(c, seed=9, rotate=True) for c in (0, 5, 22)]
    probs = run_sync(task.classify_crops([c[0] for c in crops], ckpt))
    assert probs.shape == (3, 24) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    with_masks = run_sync(task.classify_crops(crops, ckpt, full_model=True))
    assert with_masks.shape == (3, 24) and np.allclose(with_masks.sum(1), 1, atol=1e-4)
    assert run_sync(task.classify_crops([], ckpt)).shape == (0, 24)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_sync(task.classify_crops([c[0] for c in crops], ckpt, cancel=token))


def test_classify_crops_with_module(one_thread):
    net = task.build_model("gril", num_classes=24, input_size=[48, 52], width=0.125, layers=[1, 1, 1, 1])
    net.eval()
    probs = run_sync(task.classify_crops([make_chromosome(3, seed=1)[0]], net))
    assert probs.shape == (1, 24)


def test_arch_names():
    assert task.arch_name("resnet50") == "resnet50_chromosome"
    assert task.arch_name(None) == "gricol" and task.arch_name("GRiL") == "gril"
    with pytest.raises(InputError):
        task.arch_name("vgg")


def test_cli_train_resnet50(dataset, tmp_path, one_thread):
    from napari_cellclass.cli import run

    rc = run(["train", "chromosome", str(dataset), "--arch", "resnet50", "--quick", "--epochs", "1",
              "--out", str(tmp_path), "--quiet", "--set", "input_size=40,40", "--set", "width=0.0625"])
    assert rc == 0
    meta = read_meta(tmp_path / "model.safetensors")
    assert meta.arch == "resnet50_chromosome" and meta.input_size == [40, 40]


def test_relative_canvas_ignores_magnification():
    """A cell imaged at twice the magnification prepares to the same network input."""
    from skimage.transform import rescale

    from napari_cellclass.io.chromosome_dataset import prepare_crop

    crops = [make_chromosome(k, seed=k)[0] for k in (0, 5, 11, 17, 20)]
    big = [rescale(c.astype(np.float32), 2.0, order=1, preserve_range=True) for c in crops]
    lengths, refs = task.cell_references(crops, ["a"] * len(crops))
    lengths2, refs2 = task.cell_references(big, ["b"] * len(big))
    assert np.allclose(lengths2 / refs2, lengths / refs, atol=0.08)
    pad_rel = 1.6
    for c, b, r, r2 in zip(crops, big, refs, refs2):
        x = prepare_crop(c, None, (48, 52), pad_rel * r)
        y = prepare_crop(b, None, (48, 52), pad_rel * r2)
        assert np.abs(x - y).mean() < 0.05
    # an absolute canvas does not: the magnified chromosome fills more of it
    x = prepare_crop(crops[-1], None, (48, 52), pad_rel * refs[0])  # a small chromosome (21)
    y = prepare_crop(big[-1], None, (48, 52), pad_rel * refs[0])
    assert (y > 0.1).sum() > 1.5 * (x > 0.1).sum()
