"""The tasks' side of folder-scale prediction (:mod:`napari_cellclass.engine.batch`).

What a task's batch run needs beyond the engine's task-agnostic loop: how an input
becomes units (an HPA channel set is one unit; a karyotype folder is not searched
recursively), how many inputs go to one task call, which tables are recounted
over the whole folder (the WBC differential), and the routing of images too large
for memory to the tile-by-tile way (:mod:`napari_cellclass.tasks.tiled`).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from ..engine import batch as engine_batch
from ..engine import csvsafe
from ..engine.atomic import atomic_path
from ..engine.batch import Shard, Unit, done_keys, parse_shard, resolve_shard  # noqa: F401  (re-exported)
from ..engine.progress import Job
from ..errors import InputError

DEFAULT_CHUNK = {"karyotype": 1, "wbc": 8, "detect": 16}  # others: 64 files per task call


def list_units(task: str, inputs: Sequence[Path]) -> list[Unit]:
    """Every input of a ``task`` run in a fixed order, as the task itself lists folders."""
    expand = _hpa_units if task == "hpa" else None
    return engine_batch.list_units(inputs, expand, recursive=task != "karyotype")


def _hpa_units(p: Path) -> list[Unit]:
    from ..io.hpa_reader import find_set, find_sets

    if p.is_dir():
        folder = p / "train" if (p / "train").is_dir() and not find_sets(p) else p
        sets = find_sets(folder)
    else:
        s = find_set(p)
        if s is None:
            raise InputError("not an HPA channel file (<id>_red|green|blue|yellow.<png|tif|jpg>)", p)
        sets = [s]
    out = []
    for s in sets:
        first = sorted(s.paths.values())[0]
        out.append(Unit(f"{first.parent.resolve()}/{s.set_id}", first))
    return out


def _recount_differential(out: Path, name: str) -> Path | None:
    """WBC: the differential of the whole folder, counted from the merged cell table."""
    from .wbc import differential_csv

    table = out / "predictions.csv"
    if not table.is_file():
        return None
    counts: Counter[str] = Counter()
    with open(table, newline="") as fh:
        r = csv.DictReader(fh)
        classes = [c[2:] for c in (r.fieldnames or []) if c.startswith("p_")]
        if "class" not in (r.fieldnames or []):
            return None
        for row in r:
            counts[csvsafe.unescape_cell(row["class"])] += 1
    names = classes + [c for c in counts if c not in classes]
    total = sum(counts.values())
    rows = [{"class": n, "count": counts[n], "percent": round(100.0 * counts[n] / total, 1) if total else 0.0}
            for n in names]
    with atomic_path(out / name) as tmp:
        Path(tmp).write_text(differential_csv({"rows": rows, "total": total}))
    return out / name


RECOUNT: dict[str, Callable[[Path, str], Path | None]] = {"differential.csv": _recount_differential}


def run_batch(task: str, predict: Callable[[Any, list[Path], Any], Job[dict[str, Any]]], model: Any,
              inputs: Sequence[Path], opts: Any, shard: Shard, *, chunk: int | None = None) -> Job[dict[str, Any]]:
    """:func:`napari_cellclass.engine.batch.run_batch` with ``task``'s units, chunk size and recounted tables."""
    return (yield from engine_batch.run_batch(
        task, predict, model, inputs, opts, shard, chunk=chunk or DEFAULT_CHUNK.get(task),
        units=list_units(task, inputs), recount=RECOUNT))


def job_for(task: str, predict: Callable[..., Job[dict[str, Any]]], model: Any, inputs: Sequence[Path],
            opts: Any, args: Any) -> Job[dict[str, Any]]:
    """The task's plain ``predict``, or batch mode when ``--shard`` is given or torchrun started us.

    Images too large for memory (OME-Zarr, big TIFFs, or ``--set tiled=true``) go the
    tile-by-tile way (:mod:`napari_cellclass.tasks.tiled`), one shard each.
    """
    from .tiled import split_inputs

    shard = resolve_shard(getattr(args, "shard", None))
    large, rest = split_inputs(task, inputs, opts)
    if large:
        return _large_and_rest(task, predict, model, large, rest, opts, shard, getattr(args, "chunk", None))
    if shard is None:
        return predict(model, list(inputs), opts)
    return run_batch(task, predict, model, inputs, opts, shard, chunk=getattr(args, "chunk", None))


def _large_and_rest(task: str, predict: Callable[..., Job[dict[str, Any]]], model: Any, large: list[Path],
                    rest: list[Path], opts: Any, shard: Shard | None, chunk: int | None) -> Job[dict[str, Any]]:
    from .tiled import predict_large

    result: dict[str, Any] = {}
    if rest:  # first, so a batch run binds its --out folder before the tiled outputs land there
        if shard is None:
            result["images"] = yield from predict(model, rest, opts)
        else:
            result["images"] = yield from run_batch(task, predict, model, rest, opts, shard, chunk=chunk)
    mine = large if shard is None else large[shard.index::shard.count]
    result["large_images"] = []
    for p in mine:
        result["large_images"].append((yield from predict_large(task, model, p, opts)))
    return result
