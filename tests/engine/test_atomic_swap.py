"""Folder swaps (OME-Zarr and other result folders): ``NAME`` is on disk at every instant.

Issue 24 item 8: a kill between the two renames of the old swap left ``NAME.zarr``
absent until the plugin next touched it.  Linux now exchanges the two folders in one
step (``renameat2(RENAME_EXCHANGE)``); elsewhere the documented recovery (any reader
restores ``.NAME.old``) still holds, tested here by forcing the fallback.
"""
from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

from napari_cellclass.engine import atomic
from napari_cellclass.io.layer_reader import get_reader
from napari_cellclass.io.writers import write_labels_zarr


class _Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` handler sees it."""


def _labels(value: int) -> np.ndarray:
    return np.full((6, 5), value, np.uint8)


def _read_max(target) -> int:
    reader = get_reader(str(target))
    assert reader is not None, f"{target} is missing or not recognisable"
    return int(np.asarray(reader(str(target))[0][0]).max())


def _exchange_offered(folder) -> bool:
    a, b = folder / "probe_a", folder / "probe_b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    try:
        return atomic.exchange(a, b) and (b / "x").exists()
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


def test_exchange_swaps_two_folders_or_says_it_cannot(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "old").touch()
    (b / "new").touch()
    if atomic.exchange(b, a):
        assert (a / "new").exists() and (b / "old").exists()
    else:  # not offered here: nothing may have changed
        assert (a / "old").exists() and (b / "new").exists()
    monkeypatch.setattr(atomic, "_EXCHANGE_FN", [None])  # e.g. macOS
    assert atomic.exchange(a, b) is False


def test_target_present_at_every_step_of_a_folder_swap(tmp_path, monkeypatch):
    """Every file-system step of an overwrite finds NAME.zarr on disk, before and after it."""
    if not _exchange_offered(tmp_path):
        pytest.skip("this OS or file system offers no atomic exchange; the fallback is tested below")
    target = tmp_path / "cells.zarr"
    write_labels_zarr(str(target), _labels(1), {})
    steps = {"n": 0}

    def watched(fn):
        def inner(*a, **k):
            assert target.is_dir(), f"{target} absent before {fn.__name__}{a[:2]}"
            try:
                return fn(*a, **k)
            finally:
                steps["n"] += 1
                assert target.is_dir(), f"{target} absent after {fn.__name__}{a[:2]}"
        return inner

    for mod, name in ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"),
                      (shutil, "rmtree"), (atomic, "exchange")):
        monkeypatch.setattr(mod, name, watched(getattr(mod, name)))
    write_labels_zarr(str(target), _labels(2), {})
    monkeypatch.undo()
    assert steps["n"] >= 2
    assert _read_max(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]


def test_a_reader_in_another_thread_never_finds_the_folder_missing(tmp_path):
    if not _exchange_offered(tmp_path):
        pytest.skip("this OS or file system offers no atomic exchange")
    target = tmp_path / "cells.zarr"
    write_labels_zarr(str(target), _labels(1), {})
    stop, missing, looks = threading.Event(), [], [0]

    def poll():
        while not stop.is_set():
            looks[0] += 1
            if not os.path.isdir(target):
                missing.append(looks[0])

    t = threading.Thread(target=poll)
    t.start()
    try:
        for v in range(2, 14):
            write_labels_zarr(str(target), _labels(v), {})
    finally:
        stop.set()
        t.join()
    assert looks[0] > 100 and not missing
    assert _read_max(target) == 13


def test_kill_after_the_exchange_leaves_the_new_version_and_no_debris(tmp_path, monkeypatch):
    if not _exchange_offered(tmp_path):
        pytest.skip("this OS or file system offers no atomic exchange")
    target = tmp_path / "cells.zarr"
    write_labels_zarr(str(target), _labels(1), {})
    real_remove = atomic._remove_hard

    def killed(p, *a, **k):
        raise _Killed()

    monkeypatch.setattr(atomic, "_remove_hard", killed)
    with pytest.raises(_Killed):
        write_labels_zarr(str(target), _labels(2), {})
    monkeypatch.setattr(atomic, "_remove_hard", real_remove)
    assert _read_max(target) == 2  # the old version sits in a temporary; the next open removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]


@pytest.mark.parametrize("reader", ["layer_reader", "recover"])
def test_fallback_kill_between_the_two_renames_is_restored_by_the_reader(tmp_path, monkeypatch, reader):
    """No exchange (macOS, NFS): a kill after the first rename leaves only .NAME.old; reading restores it."""
    monkeypatch.setattr(atomic, "_EXCHANGE_FN", [None])
    target = tmp_path / "cells.zarr"
    write_labels_zarr(str(target), _labels(1), {})
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(target) or calls["n"]:  # the process dies before the second rename
            calls["n"] += 1
            raise _Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        write_labels_zarr(str(target), _labels(2), {})
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls["n"] >= 1 and not target.exists() and (tmp_path / ".cells.zarr.old").is_dir()
    if reader == "recover":
        assert atomic.recover(target) == "restored"
    assert _read_max(target) == 1  # the old version, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]


def test_fallback_swap_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_EXCHANGE_FN", [None])
    target = tmp_path / "cells.zarr"
    write_labels_zarr(str(target), _labels(1), {})
    write_labels_zarr(str(target), _labels(4), {})
    assert _read_max(target) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]
