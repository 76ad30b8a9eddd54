"""Tile-by-tile runs over images larger than memory, task-agnostic.

The task (:mod:`napari_cellclass.tasks.tiled`) opens the image lazily, plans the
windows (a core of ``tile`` pixels plus ``overlap`` pixels of context, from
:func:`napari_cellclass.io.lazy.tile_grid`) and hands :func:`run_tiles` a per-tile
function; this module owns only the loop (cancel checks, progress), the CSV that
is written row by row and put in place when the job ends well
(:class:`RowWriter`, :func:`rows_job`), and the run's ``<stem>_tiled.json``.
An object is kept by the tile whose core holds its centre (``tile.owns``), so
objects on a border are found whole and reported once.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import csvsafe
from .atomic import atomic_path
from .progress import CancelToken, Job, Progress, check_cancel

#: per-tile function: (index, tile, window array) -> Job whose result is a short progress message
PerTile = Callable[[int, Any, np.ndarray], Job[str]]


def run_tiles(img: Any, grid: Sequence[Any], per_tile: PerTile, *, cancel: CancelToken | None = None,
              read: Callable[[Any], np.ndarray] | None = None) -> Job[None]:
    """Call ``per_tile`` on every window of ``grid`` in turn (``read(tile)``, default ``img.region``)."""
    for k, t in enumerate(grid):
        check_cancel(cancel)
        block = read(t) if read is not None else img.region(t.y0, t.y1, t.x0, t.x1)
        msg = yield from per_tile(k, t, block)
        yield Progress(k + 1, len(grid), "tiles", f"tile {k + 1}/{len(grid)}: {msg}")


def predict_tiled(img: Any, grid: Sequence[Any], job: Callable[[], Job[dict[str, Any]]], *, path: Path,
                  out: Path, stem: str, tile: int, overlap: int) -> Job[dict[str, Any]]:
    """Run ``job`` (which calls :func:`run_tiles`), then write ``<stem>_tiled.json``; returns the summary."""
    yield Progress(0, len(grid), "tiles", f"{Path(path).name}: {img.height} x {img.width} x {img.channels}, "
                                          f"{len(grid)} tiles of {tile} px (+{overlap} px context)")
    t0 = time.monotonic()
    summary = yield from job()
    summary.update({"image": str(path), "height": img.height, "width": img.width, "channels": img.channels,
                    "tiles": len(grid), "tile": tile, "overlap": overlap,
                    "seconds": round(time.monotonic() - t0, 1)})
    with atomic_path(out / f"{stem}_tiled.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["outputs"] = summary.get("outputs", []) + [str(out / f"{stem}_tiled.json")]
    return summary


def as_uint8(block: np.ndarray, scale: float | None) -> np.ndarray:
    """``block`` scaled by one factor for the whole image (None: already uint8)."""
    if scale is None:
        return block
    return np.clip(np.round(block.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def rgb(block: np.ndarray) -> np.ndarray:
    if block.ndim == 2:
        return np.repeat(block[..., None], 3, axis=2)
    if block.shape[2] == 1:
        return np.repeat(block, 3, axis=2)
    return block[..., :3]


def centre(box: Sequence[float]) -> tuple[float, float]:
    y0, x0, y1, x1 = (float(v) for v in box)
    return (y0 + y1) / 2, (x0 + x1) / 2


class RowWriter:
    """A CSV written row by row into a temporary file, put in place when the job ends well."""

    def __init__(self, target: Path, fields: Sequence[str]):
        self.target = target
        self._ctx = atomic_path(target)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "w", newline="")
        self.writer = csvsafe.DictWriter(self._fh, fieldnames=list(fields), extrasaction="ignore")
        self.writer.writeheader()
        self.n = 0

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.n += 1

    def close(self, ok: bool = True) -> None:
        self._fh.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def rows_job(body):
    """Close every :class:`RowWriter` a tile job opened (its ``opened`` list) on success; on error or
    cancel keep nothing half-written."""
    def wrapper(*args, **kwargs):
        opened: list[RowWriter] = []
        try:
            result = yield from body(*args, opened=opened, **kwargs)
        except BaseException:
            for r in opened:
                r.close(ok=False)
            raise
        for r in opened:
            r.close()
        return result
    return wrapper
