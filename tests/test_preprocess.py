"""Preprocessing declared in the checkpoint: one registered transform feeds classify and explain alike.

The core check hooks the network's forward input: Grad-CAM on a chromosome model must
run on exactly the tensor classification runs on (straightened, polarity-flipped,
padded on the relative canvas), not on the raw crop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import (
    CheckpointMeta,
    declared_preprocess,
    read_meta,
    save_checkpoint,
)
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.errors import CheckpointError
from napari_cellclass.explain.job import explain_job
from napari_cellclass.io.chromosome_dataset import canvas_crop, orient_crop
from napari_cellclass.models.registry import build_model
from napari_cellclass.preprocess import (
    ChromosomeCanvas,
    HPAField,
    WBCCrop,
    get_transform,
    register_transform,
    registered_transforms,
)
from napari_cellclass.synth.chromosomes import CHROMOSOME_CLASSES, make_chromosome


class _Inputs:
    """Records what every forward call of a network of one class receives (or of its BatchNorm-folded
    copy, a torch.fx GraphModule, which the inference fast path may run instead)."""

    def __init__(self, cls: type):
        self.cls, self.seen = cls, []

    def __enter__(self):
        def hook(module, args):
            if type(module) is self.cls or isinstance(module, torch.fx.GraphModule):
                self.seen.append(args[0].detach().float().cpu().clone())
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _gricol_ckpt(tmp_path: Path, normalization: dict, preprocess: dict | None = None) -> Path:
    cfg = {"num_classes": 24, "in_channels": 1, "input_size": [48, 50], "width": 0.0625, "layers": [1, 1, 1, 1],
           "grid": 3, "overlap": True}
    torch.manual_seed(0)
    model = build_model("gricol", **cfg)
    meta = CheckpointMeta(task="chromosome", arch="gricol", class_names=list(CHROMOSOME_CLASSES), in_channels=1,
                          input_size=[48, 50], arch_config=cfg, normalization=normalization,
                          preprocess=preprocess or {}, trained_on="synthetic (test)")
    return save_checkpoint(tmp_path / "gricol.safetensors", model, meta)


def _crop(cls: int = 0, seed: int = 1) -> np.ndarray:
    img, _ = make_chromosome(cls, seed, rotate=True)  # dark-on-light, tilted: polarity and angle both matter
    return img


def _classify_input(crop: np.ndarray, ckpt: Path) -> tuple[torch.Tensor, np.ndarray]:
    from napari_cellclass.tasks.chromosome import classify_crops

    cls = type(build_model(read_meta(ckpt).arch, **read_meta(ckpt).arch_config))
    with _Inputs(cls) as rec:
        probs = run_sync(classify_crops([crop], ckpt, device="cpu", tta=False))
    assert rec.seen  # the fast path may run a batch twice (bf16 probe, fp32 recheck): on one input
    assert all(torch.equal(x, rec.seen[0]) for x in rec.seen)
    return rec.seen[0], probs


def _explain_input(crop: np.ndarray, ckpt: Path, method: str = "gradcam") -> tuple[torch.Tensor, dict]:
    meta = read_meta(ckpt)
    cls = type(build_model(meta.arch, **meta.arch_config))
    with _Inputs(cls) as rec:
        res = run_sync(explain_job(ckpt, crop, None, method, None, "cpu"))
    assert rec.seen, "the explanation never ran the model"
    return rec.seen[0], res


NORM_OLD = {"preprocess": "prepare_crop", "canvas": "relative", "pad_to": None, "straighten": True,
            "pad_rel": 1.8, "range": [0.0, 1.0], "polarity": "auto (bright chromosome on dark)"}


def test_gradcam_sees_the_classifier_input_on_a_chromosome_model(tmp_path):
    ckpt = _gricol_ckpt(tmp_path, NORM_OLD)
    crop = _crop()
    x_cls, probs = _classify_input(crop, ckpt)
    x_exp, res = _explain_input(crop, ckpt)
    assert x_cls.shape == x_exp.shape == (1, 1, 48, 50)
    torch.testing.assert_close(x_exp, x_cls, rtol=0, atol=0)
    # and that tensor is the straightened, bright-on-dark, relative-canvas view, not the raw crop
    raw = torch.nn.functional.interpolate(torch.from_numpy(crop.astype(np.float32) / 255)[None, None], (48, 50))
    assert not torch.allclose(x_exp, raw, atol=0.05)
    assert x_exp[0, 0, 0, 0] == 0 and x_exp.max() > 0.5  # background dark, chromosome bright
    assert res["preprocess"] == "chromosome_canvas" and res["aligned"] is False
    assert res["model_input"].shape == (48, 50) and res["model_heatmap"].shape == (48, 50)
    assert res["probabilities"][res["class"]] == pytest.approx(float(probs[0].max()), abs=1e-4)


def test_old_metadata_and_declared_transform_give_the_same_input(tmp_path):
    old = _gricol_ckpt(tmp_path / "old", NORM_OLD)
    spec = declared_preprocess(read_meta(old))
    assert spec == {"name": "chromosome_canvas", "params": {"size": [48, 50], "canvas": "relative", "pad_to": None,
                                                             "pad_rel": 1.8, "straighten": True}}
    assert read_meta(old).preprocess == spec  # every checkpoint written now names its transform
    new = _gricol_ckpt(tmp_path / "new", {}, preprocess=spec)
    crop = _crop(5, 2)
    torch.testing.assert_close(_classify_input(crop, old)[0], _classify_input(crop, new)[0], rtol=0, atol=0)


def test_chromosome_transform_is_the_historic_preprocessing():
    """Relative canvas: pad = pad_rel x the spread's median length (one crop: its own length); absolute: pad_to."""
    crop = _crop(3, 4)
    x = orient_crop(crop)
    tf = get_transform({"name": "chromosome_canvas", "params": {"size": [64, 68], "pad_rel": 1.5}})
    np.testing.assert_array_equal(tf(crop)[0].numpy(), canvas_crop(x, (64, 68), 1.5 * x.shape[0]))
    np.testing.assert_array_equal(tf(crop, ref_length=80.0)[0].numpy(), canvas_crop(x, (64, 68), 1.5 * 80.0))
    tf = get_transform({"name": "chromosome_canvas", "params": {"size": [64, 68], "pad_to": 120}})
    np.testing.assert_array_equal(tf(crop)[0].numpy(), canvas_crop(x, (64, 68), 120))
    # a box picks the chromosome out of a larger image exactly as cutting it out first does
    big = np.full((200, 200), 230, np.uint8)
    big[50:50 + crop.shape[0], 60:60 + crop.shape[1]] = crop
    box = (50, 60, 50 + crop.shape[0], 60 + crop.shape[1])
    np.testing.assert_array_equal(tf(big, box).numpy(), tf(crop).numpy())


def test_registry_names_and_refusals():
    assert {"chromosome_canvas", "hpa_rgby", "wbc_crop", "generic"} <= set(registered_transforms())
    with pytest.raises(CheckpointError, match="not a registered transform"):
        get_transform({"name": "nope", "params": {}})
    with pytest.raises(CheckpointError, match="params do not fit"):
        get_transform({"name": "hpa_rgby", "params": {"colour": 3}})
    with pytest.raises(ValueError, match="already registered"):
        register_transform("generic")(type("Other", (), {}))
    bad = CheckpointMeta(task="toy", arch="tiny_cnn", class_names=["a"], in_channels=1, input_size=[8, 8],
                         preprocess={"params": {}})
    from napari_cellclass.engine.checkpoint import validate_meta

    with pytest.raises(CheckpointError, match="preprocess.name"):
        validate_meta(bad)


# ----------------------------------------------------------------------------- HPA
def _hpa_ckpt(tmp_path: Path, mean, std) -> Path:
    cfg = {"num_classes": 28, "in_channels": 4, "depth": 10, "width": 8, "pretrained": False}
    torch.manual_seed(0)
    model = build_model("resnet50_rgby", **cfg)
    meta = CheckpointMeta(task="hpa", arch="resnet50_rgby", class_names=[f"c{i}" for i in range(28)], in_channels=4,
                          input_size=[32, 32], arch_config=cfg, thresholds=[0.5] * 28,
                          normalization={"scale": "dtype_range", "mean": mean, "std": std})
    return save_checkpoint(tmp_path / "hpa.safetensors", model, meta)


def test_hpa_classify_train_and_explain_share_the_transform(tmp_path):
    from napari_cellclass.io import hpa_dataset as D
    from napari_cellclass.synth.hpa import render_field
    from napari_cellclass.tasks.hpa import classify

    mean, std = [0.1, 0.2, 0.3, 0.15], [0.2, 0.25, 0.3, 0.2]
    ckpt = _hpa_ckpt(tmp_path, mean, std)
    tf = get_transform(read_meta(ckpt))
    assert isinstance(tf, HPAField) and tf.size == 32
    field, _, _ = render_field(np.random.default_rng(3), 64, [0, 25])
    field = np.asarray(field)
    # training's dataset sample == the transform of the raw field
    ds = D.HPADataset(tmp_path, [D.HPAItem("a", [0])], 32, mean=mean, std=std, images=field[None])
    torch.testing.assert_close(ds[0][0], tf(field), rtol=0, atol=1e-6)
    cls = type(build_model("resnet50_rgby", num_classes=28, in_channels=4, depth=10, width=8))
    with _Inputs(cls) as rec:
        run_sync(classify(field, ckpt, device="cpu"))
    torch.testing.assert_close(rec.seen[0][0], tf(field), rtol=0, atol=1e-6)
    with _Inputs(cls) as rec:
        res = run_sync(explain_job(ckpt, np.moveaxis(field, 0, -1), None, "gradcam", None, "cpu"))
    torch.testing.assert_close(rec.seen[0][0], tf(field), rtol=0, atol=1e-6)
    assert res["aligned"] is True and res["heatmap"].shape == (64, 64)


# ----------------------------------------------------------------------------- WBC
def test_wbc_classify_and_explain_share_the_transform(tmp_path):
    from napari_cellclass.synth.blood import make_smear
    from napari_cellclass.tasks.wbc import classify

    cfg = {"num_classes": 4, "in_channels": 3, "width": 8, "layers": [1, 1, 1, 1]}
    torch.manual_seed(0)
    model = build_model("ibn_resnet34", **cfg)
    meta = CheckpointMeta(task="wbc", arch="ibn_resnet34", class_names=["E", "L", "M", "N"], in_channels=3,
                          input_size=[48, 48], arch_config=cfg,
                          normalization={"crop": "fixed", "window_px": 96.0, "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225], "scale": 255.0})
    ckpt = save_checkpoint(tmp_path / "wbc.safetensors", model, meta)
    tf = get_transform(read_meta(ckpt))
    assert isinstance(tf, WBCCrop) and tf.crop == "fixed" and tf.window == 96.0 and tf.aligned is False
    smear = make_smear(0)
    image = smear["image"]
    box = tuple(float(v) for v in smear["boxes"][0])
    with _Inputs(type(model)) as rec:
        run_sync(classify(image, ckpt, cells=[np.array(box)], device="cpu"))
    torch.testing.assert_close(rec.seen[0][0], tf(image, box), rtol=0, atol=1e-6)
    crop = image[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
    with _Inputs(type(model)) as rec:
        run_sync(explain_job(ckpt, crop, None, "gradcam", None, "cpu"))
    with _Inputs(type(model)) as rec2:
        run_sync(classify(crop, ckpt, device="cpu"))
    torch.testing.assert_close(rec.seen[0], rec2.seen[0], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- shipped built-in
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["gricol-qband-bioimlab", "gricol-gband-tseng", "gricol-gband-2labs"])
def test_builtin_chromosome_model_explain_sees_the_classifier_input(name, shared_data, tmp_path, monkeypatch):
    from napari_cellclass import zoo
    from napari_cellclass.io.chromosome_dataset import load_crop, scan_dataset

    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", str(tmp_path / "cache"))
    root = shared_data / "chromosomes" / ("qband_bioimlab" if "qband" in name else "tseng2023_gband_spreads")
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    ckpt = zoo.resolve_model(name, task="chromosome")
    meta = read_meta(ckpt)
    if meta.preprocess:  # weights saved since the registry landed declare it; it must be what the old notes say
        import dataclasses

        from napari_cellclass.engine.checkpoint import declared_preprocess

        assert meta.preprocess == declared_preprocess(dataclasses.replace(meta, preprocess={}))
    tf = get_transform(meta)
    assert isinstance(tf, ChromosomeCanvas) and tf.pad_rel and tf.straighten == ("qband" in name)
    crop = load_crop(scan_dataset(root)[0])
    x_cls, probs = _classify_input(crop, ckpt)
    x_exp, res = _explain_input(crop, ckpt)
    torch.testing.assert_close(x_exp, x_cls, rtol=0, atol=0)
    # the historic preprocessing of these models, by hand: the same tensor
    x = orient_crop(crop)
    if tf.straighten:
        from napari_cellclass.karyotype.straighten import straighten

        x = straighten(x)
    ref = canvas_crop(x, meta.input_size, meta.normalization["pad_rel"] * x.shape[0])
    np.testing.assert_array_equal(x_cls[0, 0].numpy(), ref)
    assert res["class"] == CHROMOSOME_CLASSES[int(probs[0].argmax())]
