"""Pretrained weights: cache lookup, clear offline error, never a silent download."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import ResNet18_Weights

from napari_cellclass.models import pretrained
from napari_cellclass.errors import PretrainedWeightsUnavailable


def test_uncached_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv(pretrained.ENV_ALLOW_DOWNLOAD, "0")
    with pytest.raises(PretrainedWeightsUnavailable) as exc:
        pretrained.load_pretrained_state(ResNet18_Weights.IMAGENET1K_V1)
    msg = str(exc.value)
    assert ResNet18_Weights.IMAGENET1K_V1.url in msg
    assert str(pretrained.cached_weights_path(ResNet18_Weights.IMAGENET1K_V1)) in msg
    assert "random weights" in msg


def test_cached_file_is_used_without_network(monkeypatch):
    w = ResNet18_Weights.IMAGENET1K_V1
    path = pretrained.cached_weights_path(w)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.bias": torch.arange(3.0)}, path)

    def no_network(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(type(w), "get_state_dict", no_network)
    state = pretrained.load_pretrained_state(w)
    assert torch.equal(state["fc.bias"], torch.arange(3.0))


def test_corrupt_cache_file_is_named():
    w = ResNet18_Weights.IMAGENET1K_V1
    path = pretrained.cached_weights_path(w)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage")
    try:
        with pytest.raises(PretrainedWeightsUnavailable, match="unreadable"):
            pretrained.load_pretrained_state(w)
    finally:
        path.unlink()


def test_failed_download_is_explained(monkeypatch):
    w = ResNet18_Weights.IMAGENET1K_V1

    def offline(*a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(type(w), "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="download failed: no route to host"):
        pretrained.load_pretrained_state(w, allow_download=True)
