"""The one checkpoint format: round trip and every validation error by name."""
from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch

from napari_cellclass.engine.checkpoint import (
    declared_preprocess,
    CheckpointMeta,
    build_from_checkpoint,
    load_checkpoint,
    load_state_strict,
    read_meta,
    save_checkpoint,
)
from napari_cellclass.errors import CellClassError, CheckpointError
from napari_cellclass.models.registry import build_model


def _meta(**kw) -> CheckpointMeta:
    base = dict(
        task="wbc",
        arch="tiny_cnn",
        arch_config={"in_channels": 3, "num_classes": 4, "width": 4},
        class_names=["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"],
        in_channels=3,
        input_size=[32, 32],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
        thresholds=None,
        training={"epochs": 1},
        metrics={"accuracy": 0.5},
        trained_on="synthetic",
    )
    base.update(kw)
    return CheckpointMeta(**base)


@pytest.fixture
def saved(tmp_path):
    meta = _meta()
    model = build_model(meta.arch, **meta.arch_config)
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    return path, model, meta


def test_round_trip_weights_and_metadata(saved):
    path, model, meta = saved
    rebuilt, meta2 = build_from_checkpoint(path, task="wbc", in_channels=3)
    # everything comes back; the file also names its preprocessing transform (derived when not given)
    assert meta2.preprocess == declared_preprocess(meta) and meta2.preprocess["name"] == "wbc_crop"
    assert dataclasses.replace(meta2, preprocess={}) == meta
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model(x), rebuilt(x))
    assert not rebuilt.training


def test_suffix_added_and_meta_cheap_to_read(tmp_path):
    meta = _meta()
    p = save_checkpoint(tmp_path / "noext", build_model("tiny_cnn", **meta.arch_config), meta)
    assert p.name == "noext.safetensors"
    assert read_meta(p).class_names == meta.class_names


def test_other_task_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match=r"'wbc' model .* but a 'hpa' model is needed"):
        load_checkpoint(path, task="hpa")


def test_wrong_channel_count_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="expects 3 input channel.*data has 4"):
        load_checkpoint(path, in_channels=4)


def test_missing_file_empty_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt|not a readable") as exc:
        load_checkpoint(bad)
    assert str(bad) in str(exc.value)


def test_truncated_weights(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(cut)


def test_safetensors_from_another_tool(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="without napari-cellclass metadata"):
        load_checkpoint(p)


def _rewrite_header(path, tmp_path, mutate):
    """Edit the JSON header of a safetensors file (the way a hand-edited file looks)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    new = json.dumps(header).encode()
    out = tmp_path / "edited.safetensors"
    out.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    return out


def test_missing_metadata_fields(saved, tmp_path):
    path, _, _ = saved

    def drop(h):
        meta = json.loads(h["__metadata__"]["cellclass"])
        del meta["class_names"], meta["task"]
        h["__metadata__"]["cellclass"] = json.dumps(meta)

    with pytest.raises(CheckpointError, match="lacks required field.*task.*class_names|class_names.*task"):
        load_checkpoint(_rewrite_header(path, tmp_path, drop))


def test_newer_format_refused(saved, tmp_path):
    path, _, _ = saved

    def bump(h):
        meta = json.loads(h["__metadata__"]["cellclass"])
        meta["format_version"] = 99
        h["__metadata__"]["cellclass"] = json.dumps(meta)

    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(_rewrite_header(path, tmp_path, bump))


def test_missing_and_unexpected_keys_named(saved):
    path, _, meta = saved
    ckpt = load_checkpoint(path)
    state = dict(ckpt.state_dict)
    first = next(iter(state))
    state.pop(first)
    state["extra.weight"] = torch.zeros(1)
    model = build_model(meta.arch, **meta.arch_config)
    with pytest.raises(CheckpointError) as exc:
        load_state_strict(model, state)
    assert first in str(exc.value) and "extra.weight" in str(exc.value)


def test_shape_mismatch_named(saved):
    path, _, _ = saved
    ckpt = load_checkpoint(path)
    other = build_model("tiny_cnn", in_channels=3, num_classes=7, width=4)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_strict(other, ckpt.state_dict)


def test_unknown_architecture(saved, tmp_path):
    path, _, _ = saved

    def rename(h):
        meta = json.loads(h["__metadata__"]["cellclass"])
        meta["arch"] = "no_such_net"
        h["__metadata__"]["cellclass"] = json.dumps(meta)

    with pytest.raises(CheckpointError, match="unknown architecture 'no_such_net'"):
        build_from_checkpoint(_rewrite_header(path, tmp_path, rename))


def test_all_errors_are_cellclass_errors():
    assert issubclass(CheckpointError, CellClassError)


def test_failed_save_keeps_previous_file(saved, monkeypatch):
    path, model, meta = saved
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, model, _meta(metrics={"accuracy": 0.9}))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
