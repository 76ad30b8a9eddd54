"""Device policy with CUDA absent (the CI machine has no GPU; we also fake its absence)."""
from __future__ import annotations

import pytest
import torch

from napari_cellclass.engine import device as device_mod
from napari_cellclass.engine.device import resolve_device
from napari_cellclass.errors import CellClassError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    monkeypatch.delenv(device_mod.ENV_VAR, raising=False)


def test_auto_falls_back_to_cpu(no_gpu):
    p = resolve_device()
    assert p.device.type == "cpu"
    assert not p.amp and not p.channels_last
    assert "cpu" in p.describe() and "no GPU" in p.describe()


def test_mps_preferred_over_cpu(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    p = resolve_device("auto")
    assert p.device.type == "mps" and not p.amp


def test_asking_for_missing_cuda_is_an_error(no_gpu):
    with pytest.raises(CellClassError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(CellClassError, match="MPS is not available"):
        resolve_device("mps")


def test_unknown_device_name(no_gpu):
    with pytest.raises(CellClassError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_user_override_and_environment(no_gpu, monkeypatch):
    assert resolve_device("CPU").reason == "chosen by the user"
    monkeypatch.setenv(device_mod.ENV_VAR, "cpu")
    assert resolve_device(None).reason == "chosen by the user"


def test_cpu_policy_leaves_tensors_alone(no_gpu):
    p = resolve_device("cpu")
    x = torch.randn(2, 3, 8, 8)
    y = p.prepare_input(x)
    assert y.is_contiguous() and y.device.type == "cpu"
    with p.autocast():
        assert (torch.ones(2) * 2).dtype == torch.float32


def test_cuda_policy_when_present(monkeypatch):
    """With CUDA reported present, auto picks it with AMP and channels-last (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv(device_mod.ENV_VAR, raising=False)
    p = resolve_device("auto")
    assert p.device.type == "cuda" and p.amp and p.amp_dtype == torch.bfloat16 and p.channels_last
    assert not resolve_device("cuda", amp=False).amp
