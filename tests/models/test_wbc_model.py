"""WBC model and loss: IBN layer layout, ImageNet mapping, the centre-triplet hinge."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_cellclass.models.ibn_resnet import IBN, build_ibn_resnet34, build_resnet34, map_imagenet_state
from napari_cellclass.models.registry import build_model
from napari_cellclass.models.wbc_losses import CenterTripletLoss, WBCLoss, center_triplet_hinge


def _first_norms(model, stage):
    return [blk.bn1 for blk in getattr(model, f"layer{stage}")]


def test_ibn_layer_splits_channels_and_keeps_shape():
    layer = IBN(64)
    assert layer.IN.num_features == 32 and layer.BN.num_features == 32
    assert layer.IN.affine
    x = torch.randn(2, 64, 8, 8)
    assert layer(x).shape == x.shape
    # the IN half normalises each image on its own: per-sample, per-channel mean ~ 0
    out = layer(x * 5 + 3)
    assert out[:, :32].mean(dim=(2, 3)).abs().max() < 1e-4


@pytest.fixture(scope="module")
def full_model():
    return build_ibn_resnet34(num_classes=5)


def test_ibn_resnet34_stages_1_to_3_ibn_stage_4_plain(full_model):
    model = full_model
    assert [len(getattr(model, f"layer{s}")) for s in range(1, 5)] == [3, 4, 6, 3]
    for stage in (1, 2, 3):
        assert all(isinstance(n, IBN) for n in _first_norms(model, stage))
    assert not any(isinstance(m, (nn.InstanceNorm2d, IBN)) for m in model.layer4.modules())
    assert not any(isinstance(m, (nn.InstanceNorm2d, IBN)) for m in build_resnet34().modules())
    x = torch.randn(2, 3, 96, 96)  # any size works (global pooling); 224 is the default input
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        assert model.forward_features(x).shape == (2, 512)


def test_tiny_config_from_registry_and_json_config():
    model = build_model("ibn_resnet34", num_classes=4, width=8, layers=[1, 1, 1, 1])
    logits, feats = model.forward_with_features(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 4) and feats.shape == (3, 64)


def test_imagenet_state_maps_bn_half_and_leaves_in_half(full_model):
    import torchvision

    model = full_model
    tv = torchvision.models.resnet34(weights=None).state_dict()
    for k in tv:  # make the source recognisable
        if tv[k].is_floating_point():
            tv[k] = torch.randn_like(tv[k])
    mapped = map_imagenet_state(model, tv)
    assert torch.equal(mapped["layer1.0.bn1.BN.weight"], tv["layer1.0.bn1.weight"][32:])
    assert torch.equal(mapped["layer2.1.bn1.BN.running_var"], tv["layer2.1.bn1.running_var"][64:])
    assert torch.equal(mapped["layer4.0.bn1.weight"], tv["layer4.0.bn1.weight"])
    assert "layer1.0.bn1.IN.weight" not in mapped and not any(k.startswith("fc.") for k in mapped)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected
    assert all(".IN." in k or k.startswith("fc.") for k in missing)


def test_pretrained_offline_says_so():
    from napari_cellclass.errors import PretrainedWeightsUnavailable

    with pytest.raises(PretrainedWeightsUnavailable, match="ResNet34"):
        build_ibn_resnet34(pretrained=True)


CENTERS = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)


def test_hinge_zero_when_separated_beyond_margin_positive_otherwise():
    y = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.1, 0.0], [-0.2, 0.1], [10.1, 0.0], [9.9, 0.2]], dtype=torch.float64)
    for mode in ("seed", "per_class"):
        assert center_triplet_hinge(far, y, CENTERS, margin=1.0, mode=mode).item() == 0.0
    near = torch.tensor([[0.1, 0.0], [3.0, 0.0], [4.0, 0.0], [9.9, 0.2]], dtype=torch.float64)
    # hardest positive: sample 1 (d=9 to c0, or sample 2 d=36 to c1) -> y* = 1; hardest negative to c1: sample 1 (d=49)
    val = center_triplet_hinge(near, y, CENTERS, margin=20.0)
    assert val.item() == pytest.approx(36 + 20 - 49)
    assert center_triplet_hinge(near, y, CENTERS, margin=1.0).item() == 0.0  # 36 + 1 < 49
    # per class: class 0 gives 9 + 8 - 16 = 1, class 1 gives 36 + 8 - 49 < 0 -> mean 0.5
    assert center_triplet_hinge(near, y, CENTERS, margin=8.0, mode="per_class").item() == pytest.approx(0.5)
    # a single class has no negative: zero, with a gradient path
    assert center_triplet_hinge(near[:2], y[:2], CENTERS).item() == 0.0


def test_hinge_gradcheck_double():
    torch.manual_seed(0)
    f = (torch.randn(6, 3, dtype=torch.float64) * 2).requires_grad_(True)
    c = torch.randn(3, 3, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for mode in ("seed", "per_class"):
        assert center_triplet_hinge(f, y, c, 10.0, mode).item() > 0  # active hinge: gradient is non-trivial
        assert torch.autograd.gradcheck(lambda a, b: center_triplet_hinge(a, y, b, 10.0, mode), (f, c))


def test_running_centres_and_combined_loss_train():
    torch.manual_seed(0)
    loss = WBCLoss("triplet", num_classes=3, feat_dim=4, lam=1.0, margin=0.5)
    feats = torch.randn(9, 4, requires_grad=True)
    logits = torch.randn(9, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2] * 3)
    total = loss(logits, y, feats)
    total.backward()
    assert feats.grad is not None and torch.isfinite(total)
    assert bool(loss.metric.seen.all())
    for kind in ("ce", "center"):
        assert torch.isfinite(WBCLoss(kind, 3, 4)(logits, y, feats))
    learned = CenterTripletLoss(3, 4, centers="learned")
    assert len(list(learned.parameters())) == 1
    with pytest.raises(ValueError, match="unknown WBC loss"):
        WBCLoss("focal", 3, 4)


def test_ensemble_averages_member_probabilities_and_refuses_mismatches(tmp_path):
    from napari_cellclass.engine.checkpoint import CheckpointMeta, build_from_checkpoint, save_checkpoint
    from napari_cellclass.errors import InputError
    from napari_cellclass.tasks.wbc import make_ensemble

    cfg = {"num_classes": 4, "width": 8, "layers": [1, 1, 1, 1]}
    paths, nets = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        net = build_model("ibn_resnet34", **cfg).eval()
        nets.append(net)
        meta = CheckpointMeta(task="wbc", arch="ibn_resnet34", class_names=["E", "L", "M", "N"], in_channels=3,
                              input_size=[32, 32], arch_config=cfg, training={"val_images": ["a.jpg", "b.jpg"]})
        paths.append(save_checkpoint(tmp_path / f"m{seed}.safetensors", net, meta))
    ens, meta = build_from_checkpoint(make_ensemble(paths, tmp_path / "ens.safetensors"), task="wbc")
    assert meta.arch == "wbc_ensemble" and meta.training["val_images"] == ["a.jpg", "b.jpg"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0)
        assert torch.allclose(torch.softmax(ens(x), 1), want, atol=1e-5)
    other = CheckpointMeta(task="wbc", arch="ibn_resnet34", class_names=["E", "L", "M", "N"], in_channels=3,
                           input_size=[32, 32], arch_config=cfg, training={"val_images": ["c.jpg"]})
    odd = save_checkpoint(tmp_path / "odd.safetensors", nets[0], other)
    with pytest.raises(InputError, match="different images"):
        make_ensemble([paths[0], odd], tmp_path / "bad.safetensors")
