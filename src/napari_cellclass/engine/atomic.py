"""Atomic file writes: write beside the target, fsync, then rename into place.

A crash, a cancel or a full disk leaves either the old file or the new one, never
half of either.  Used by checkpoints and by every writer.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it over ``target``.

    On any exception the temporary is removed and ``target`` is untouched.  With
    ``directory=True`` the temporary is a fresh folder (for OME-Zarr); an existing
    target folder is swapped out only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if not directory:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            backup = None
            if target.exists():
                backup = target.parent / f".{target.name}.old"
                if backup.exists():
                    shutil.rmtree(backup) if backup.is_dir() else backup.unlink()
                os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:
                    os.replace(backup, target)
                raise
            if backup is not None:
                shutil.rmtree(backup) if backup.is_dir() else backup.unlink()
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        raise
