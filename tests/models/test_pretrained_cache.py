"""A poisoned torch-hub cache with ``--pretrained`` (issue 24, "non-packages and poisoned caches").

Torch refuses a cache file holding code objects (``weights_only=True``) with six lines of
advice, including "pass weights_only=False" (which would run the code).  The user sees one
line instead: the file, what is wrong, and what to do (delete it or place the right file).
"""
from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_cellclass.errors import PretrainedWeightsUnavailable
from napari_cellclass.models import pretrained


class _Payload:
    """Unpickling this would call print (harmless here); weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _poison(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "code":
        torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(), protocol=2))
    elif kind == "truncated":
        torch.save({"w": torch.zeros(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "not-tensors":
        torch.save([1, 2, 3], path)
    elif kind == "folder":
        path.mkdir()
    return path


def _check_one_line(exc: PretrainedWeightsUnavailable, path: Path) -> str:
    text = str(exc)
    assert "\n" not in text and "weights_only" not in text and "WeightsUnpickler" not in text
    assert str(path) in text and ("delete it" in text and "replace it" in text)
    return text


@pytest.mark.parametrize("kind", ["code", "pickle", "truncated", "not-tensors", "folder"])
def test_a_poisoned_cache_file_is_one_line_naming_it(tmp_path, kind, capsys):
    weights = types.SimpleNamespace(url="https://example.org/models/plain_weights.pth")  # no hash in the name
    path = _poison(tmp_path / "hub" / "checkpoints" / "plain_weights.pth", kind)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        pretrained.read_cached_weights(path, weights)
    _check_one_line(info.value, path)
    assert "unpickled!" not in capsys.readouterr().out  # nothing was executed


def test_good_tensors_under_a_plain_name_load(tmp_path):
    weights = types.SimpleNamespace(url="https://example.org/models/plain_weights.pth")
    path = tmp_path / "plain_weights.pth"
    torch.save({"w": torch.ones(2, 2)}, path)
    assert torch.equal(pretrained.read_cached_weights(path, weights)["w"], torch.ones(2, 2))


def test_train_pretrained_with_a_poisoned_cache_prints_one_line(tmp_path, monkeypatch, capsys):
    from torchvision.models import ResNet34_Weights

    from napari_cellclass.cli import main

    monkeypatch.setattr(pretrained, "hub_checkpoint_dir", lambda: tmp_path / "hub")
    monkeypatch.delenv(pretrained.ENV_ALLOW_DOWNLOAD, raising=False)
    path = _poison(pretrained.cached_weights_path(ResNet34_Weights.IMAGENET1K_V1), "code")
    assert str(tmp_path) in str(path)
    rng = np.random.default_rng(0)
    for cls in ("NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE", "EOSINOPHIL"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for k in range(6):
            img = rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{k}.png")
    code = main(["train", "wbc", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--pretrained",
                 "--epochs", "1", "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert path.name in lines[0] and "weights_only" not in captured.err and "unpickled!" not in captured.out
    assert not (tmp_path / "run" / "model.safetensors").exists()
