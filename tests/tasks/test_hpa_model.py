"""HPA model: RGBY stem, ImageNet widening, training on generated fields, evaluate/predict/classify, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import read_meta
from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, CheckpointError, InputError
from napari_cellclass.models.registry import build_model
from napari_cellclass.tasks import hpa
from napari_cellclass.tasks.base import TaskOptions
from napari_cellclass.synth.hpa import HPA_CLASSES, render_field, write_dataset


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process thrash
    (measured: 6 tiny training steps 18 s with 2 threads under load, 0.35 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resnet50_rgby_shape_and_names():
    from torchvision.models import resnet50

    with torch.device("meta"):  # shapes and names only: no memory, no init cost
        net = build_model("resnet50_rgby")
        ref = resnet50()
    assert net.conv1.in_channels == 4
    assert net.fc.out_features == 28 and len(HPA_CLASSES) == 28
    ours, theirs = net.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)  # torchvision names: ImageNet weights fit
    assert all(ours[k].shape == theirs[k].shape for k in ours if k not in ("conv1.weight", "fc.weight", "fc.bias"))
    assert ours["conv1.weight"].shape == (64, 4, 7, 7)
    tiny = build_model("resnet50_rgby", depth=10, width=8)
    assert tiny(torch.zeros(2, 4, 64, 64)).shape == (2, 28)
    json.dumps({"depth": 10, "width": 8})  # builder kwargs are JSON-able


def test_imagenet_conv1_is_widened_with_mean_filter():
    """Fake 'ImageNet' weights in the (isolated) hub cache: the 4th channel's filters = mean of RGB."""
    from torchvision.models import ResNet18_Weights, resnet18

    from napari_cellclass.models.pretrained import cached_weights_path

    ref = resnet18().state_dict()
    path = cached_weights_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    try:
        net = build_model("resnet50_rgby", depth=18, pretrained=True)
    finally:
        path.unlink()
    w = net.conv1.weight.detach()
    assert torch.equal(w[:, :3], ref["conv1.weight"])
    assert torch.allclose(w[:, 3], ref["conv1.weight"].mean(1))
    assert torch.equal(net.layer1[0].conv1.weight, ref["layer1.0.conv1.weight"])


def test_pretrained_without_cache_says_what_to_do():
    from napari_cellclass.errors import PretrainedWeightsUnavailable

    with pytest.raises(PretrainedWeightsUnavailable, match="cache"):
        build_model("resnet50_rgby", depth=18, pretrained=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpa")
    data = write_dataset(root / "train", n=240, seed=11, size=64)
    test = write_dataset(root / "test", n=80, seed=12, size=64)
    opts = TaskOptions(quick=True, epochs=15, out=root / "run", seed=0, device="cpu")
    summary = run_sync(hpa.train(data, opts))
    return root, Path(summary["checkpoint"]), test, summary


@pytest.mark.slow
def test_tiny_model_learns_generated_fields(trained):
    root, ckpt, test, summary = trained
    meta = read_meta(ckpt)
    assert meta.task == "hpa" and meta.in_channels == 4 and meta.class_names == HPA_CLASSES
    assert len(meta.thresholds) == 28 and all(0 < t < 1 for t in meta.thresholds)
    assert (root / "run" / "resume.pt").exists()
    assert len(summary["history"]) == 15 and "val_macro_f1" in summary["history"][-1]
    res = run_sync(hpa.evaluate(ckpt, test, TaskOptions(device="cpu")))
    # chance: predicting each label with its prevalence gives macro F1 ~ 0.25 here
    truth = np.zeros((80, 28))
    from napari_cellclass.io.hpa_dataset import multilabel_metrics, read_labels

    for i, it in enumerate(read_labels(test / "train.csv")):
        truth[i, it.labels] = 1
    rng = np.random.default_rng(0)
    chance = multilabel_metrics(truth, rng.random(truth.shape) < truth.mean(0), 0.5)["macro_f1"]
    print(f"held-out macro F1 {res['macro_f1']:.3f} accuracy {res['accuracy']:.3f} (chance F1 {chance:.3f})")
    assert res["macro_f1"] > max(0.6, chance + 0.3)
    assert res["per_class_f1"]["Nucleoplasm"] > 0.7
    assert res["label_accuracy"] > 0.95


def test_predict_writes_csv_and_json(trained, tmp_path):
    _, ckpt, test, _ = trained
    res = run_sync(hpa.predict(ckpt, [test / "train"], TaskOptions(out=tmp_path, device="cpu")))
    assert res["n_images"] == 80
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("Id,Predicted,predicted_names,Nucleoplasm") and len(lines) == 81
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert len(doc["images"][0]["probabilities"]) == 28


def test_classify_whole_and_cells(trained):
    _, ckpt, _, _ = trained
    img, cells, labels = render_field(np.random.default_rng(99), 128, [0])
    whole = run_sync(hpa.classify(img, ckpt, device="cpu"))
    assert len(whole["probabilities"]) == 28 and whole["device"].startswith("cpu")
    tiled = run_sync(hpa.classify(list(img), ckpt, field="tile"))
    assert tiled["n_views"] == 4
    per_cell = run_sync(hpa.classify(img, ckpt, mode="cells"))
    assert per_cell["n_cells"] >= 0.8 * cells.max()
    feats = hpa.features_table(per_cell)
    assert len(feats["label"]) == per_cell["labels"].max() + 1 and "p_Nucleoplasm" in feats
    given = run_sync(hpa.classify(img, ckpt, mode="cells", cells=cells))
    assert given["n_cells"] == cells.max()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_sync(hpa.classify(img, ckpt, cancel=token))
    with pytest.raises(InputError, match="four channels"):
        run_sync(hpa.classify(img[:3], ckpt))


def test_cli_evaluate_prints_json(trained, capsys):
    from napari_cellclass.cli import main

    _, ckpt, test, _ = trained
    assert main(["evaluate", "hpa", str(ckpt), str(test), "--quiet", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"macro_f1", "accuracy", "per_class_f1"} <= set(out)


def test_wrong_checkpoint_refused(tmp_path):
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint

    net = build_model("tiny_cnn", in_channels=3, num_classes=4)
    path = save_checkpoint(tmp_path / "wbc.safetensors", net,
                           CheckpointMeta("wbc", "tiny_cnn", list("abcd"), 3, [64, 64], {"in_channels": 3, "num_classes": 4}))
    with pytest.raises(CheckpointError, match="hpa"):
        run_sync(hpa.classify(np.zeros((4, 32, 32), np.uint8), path))


def test_focal_loss_option_trains(tmp_path):
    data = write_dataset(tmp_path / "d", n=12, seed=1, size=32)
    opts = TaskOptions(quick=True, epochs=1, out=tmp_path / "r", size=32, extra={"loss": "focal"})
    res = run_sync(hpa.train(data, opts))
    meta = read_meta(res["checkpoint"])
    assert meta.training["recipe"]["loss"] == "focal"
