"""Written files get the permissions the user's umask gives, not mkstemp's private 0600/0700."""
from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.engine.atomic import atomic_path, current_umask
from napari_cellclass.io import writers as W

RECT = np.array([[1.0, 2.0], [1.0, 8.0], [5.0, 8.0], [5.0, 2.0]])


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_current_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_files_and_folders_follow_the_umask(tmp_path, umask):
    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:4] = 1
    W.write_labels_tiff(str(tmp_path / "l.tif"), lab, {})
    W.write_labels_zarr(str(tmp_path / "l.zarr"), lab, {})
    W.write_shapes_csv(str(tmp_path / "s.csv"), [RECT], {"shape_type": ["rectangle"],
                                                        "features": pd.DataFrame({"label": ["a"]})})
    W.write_png_atomic(tmp_path / "k.png", np.zeros((4, 4), np.uint8))
    from napari_cellclass.karyotype.karyogram import save_png

    save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "karyogram.png")
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for name in ("l.tif", "s.csv", "k.png", "karyogram.png"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "l.zarr") == dir_mode
    for p in (tmp_path / "l.zarr").rglob("*"):  # zarr's own files and folders inside
        assert _mode(p) == (dir_mode if p.is_dir() else file_mode), p


def test_checkpoint_follows_the_umask(tmp_path, umask):
    import torch

    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint

    meta = CheckpointMeta(task="wbc", arch="tiny_cnn", class_names=["a", "b"], in_channels=3, input_size=[8, 8])
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta)
    assert _mode(path) == 0o666 & ~umask


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    """Like open(path, "w"): replacing a file the user made private keeps it private."""
    target = tmp_path / "r.json"
    target.write_text("{}")
    os.chmod(target, 0o600)
    W.write_json_atomic(target, {"a": 1})
    assert _mode(target) == 0o600 and target.read_text().startswith("{")


def test_failed_write_leaves_nothing(tmp_path, umask):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_zoo_weight_copy_and_card_follow_the_umask(tmp_path, umask):
    from zoo_utils import add, tiny_checkpoint

    ck = tiny_checkpoint(tmp_path / "src.safetensors")
    folder = tmp_path / "zoo"
    folder.mkdir()
    add(ck, "perm_test", folder)
    for name in ("perm_test.safetensors", "perm_test.json"):
        assert _mode(folder / name) == 0o666 & ~umask, name
