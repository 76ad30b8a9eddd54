"""Folder-scale prediction: split the files across processes, stream results, skip what is done, merge.

``cellclass predict TASK MODEL FOLDER --out OUT --shard i/n`` (any scheduler; a
SLURM array passes ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) or
the same command under ``torchrun --nproc-per-node N`` (each rank is one shard)
runs the task's own ``predict`` on this shard's files a chunk at a time.  Each
chunk writes the task's usual outputs into ``OUT/parts/<chunk>/`` and then a
``.done.json`` manifest naming its files; only then does it count as done.  So:

* memory is one chunk's worth, whatever the number of files (nothing is gathered);
* a re-run (after a crash, a pre-empted job, or with more files) skips every file a
  manifest names, and redoes a chunk that was cut off before its manifest;
* whichever shard finishes last and finds every file done merges the per-chunk
  tables into ``OUT/<table>.csv`` in input order, streaming row by row (a WBC
  differential is recounted from the merged cell table, not added up).

``OUT/batch.json`` binds the folder to one task, model and settings: a re-run with
another model or other ``--set`` options is refused rather than mixed in.

Nothing here knows a task: the caller (:mod:`napari_cellclass.tasks.batch`) passes
the per-chunk function, how an input expands into units, the chunk size and the
tables to recount rather than concatenate; the CLI adds the options.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import CellClassError, InputError
from .atomic import atomic_path
from .progress import Job, Progress, check_cancel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
HEADER = "batch.json"
PARTS = "parts"
DONE = ".done.json"
DEFAULT_CHUNK = 64  # inputs per task call unless the caller says otherwise


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the index-th of ``count`` contiguous blocks of the sorted inputs.

    Contiguous blocks (not every count-th file) keep each chunk a run of consecutive
    inputs, so merging the chunks in order restores the input order exactly.
    """

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise InputError(f"--shard expects I/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: the index must be 0..N-1 (0-based; SLURM arrays: --array=0-{max(n - 1, 0)})")
    return Shard(i, n)


def resolve_shard(text: str | None) -> Shard | None:
    """The shard this process runs: ``--shard``, a torchrun rank, or both (shard x rank); None = no batch mode."""
    from . import distributed

    explicit = parse_shard(text) if text else None
    world = distributed.env_world_size()
    if world <= 1:
        return explicit
    rank = int(os.environ.get("RANK", "0") or 0)
    if explicit is None:
        return Shard(rank, world)
    return Shard(explicit.index * world + rank, explicit.count * world)


# ----------------------------------------------------------------------------- units of work

@dataclass(frozen=True)
class Unit:
    """One input the task treats as one item: an image file, or an HPA channel set."""

    key: str
    path: Path

    @property
    def stem(self) -> str:
        return Path(self.key).name


def list_units(inputs: Sequence[Path], expand: Callable[[Path], list[Unit] | None] | None = None,
               recursive: bool = True) -> list[Unit]:
    """Every input of the run in a fixed order (sorted by key), so all shards agree on the split.

    ``expand(path)`` may turn one input into its units (e.g. channel sets); None falls back to
    image files (a folder's, recursively unless ``recursive=False``).
    """
    units: dict[str, Unit] = {}
    for p in map(Path, inputs):
        if not p.exists():
            raise InputError("input does not exist", p)
        own = expand(p) if expand is not None else None
        if own is not None:
            for u in own:
                units.setdefault(u.key, u)
            continue
        if p.is_dir():
            walk = p.rglob("*") if recursive else p.iterdir()
            files: Iterator[Path] = (f for f in walk if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = iter([p])
        for f in files:
            key = str(f.resolve())
            units.setdefault(key, Unit(key, f))
    if not units:
        raise InputError(f"no input images found in {', '.join(map(str, inputs))}")
    return [units[k] for k in sorted(units)]


# ----------------------------------------------------------------------------- refused inputs

def refusal(path: Any, problem: str) -> dict[str, str]:
    """One refused input, as every task's result lists it under ``"refused"``."""
    return {"input": str(path), "problem": str(problem)}


def refused_inputs(result: Any) -> list[dict[str, str]]:
    """Every refused input a result names (its ``"refused"`` lists, at any depth), each once.

    Tasks list an input they could not use (unreadable, blank, gray, a refused sidecar)
    as ``{"input": path, "problem": why}`` (``"image"`` for smears) and go on with the
    others; the CLI prints one line per entry and exits with the "some inputs refused" code.
    """
    seen: dict[tuple[str, str], dict[str, str]] = {}

    def walk(obj: Any, depth: int = 0) -> None:
        if depth > 8:
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "refused" and isinstance(v, list):
                    for r in v:
                        if isinstance(r, dict):
                            name = str(r.get("input", r.get("image", r.get("spread", "?"))))
                            problem = str(r.get("problem", r.get("status", "refused")))
                            seen.setdefault((name, problem), {"input": name, "problem": problem})
                elif isinstance(v, (dict, list)):
                    walk(v, depth + 1)
        elif isinstance(obj, list):
            for v in obj[:100000]:
                if isinstance(v, (dict, list)):
                    walk(v, depth + 1)

    walk(result)
    return list(seen.values())


# ----------------------------------------------------------------------------- the folder's binding

def _fingerprint(model: Any) -> dict[str, Any]:
    model = getattr(model, "path", None) or model  # a loaded model: its checkpoint file
    p = Path(model)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return {"model": str(p.resolve()), "model_sha256": h.hexdigest()}
    return {"model": str(model), "model_sha256": None}  # a built-in name: the zoo checks its own hash


def _settings(opts: Any) -> dict[str, Any]:
    extra = {k: v for k, v in sorted((opts.extra or {}).items())}
    return json.loads(json.dumps({"extra": extra}, default=str))


def bind(out: Path, task: str, model: Path | str, opts: Any) -> dict[str, Any]:
    """Create ``OUT/batch.json``, or check that an existing one is for the same task/model/settings."""
    head = {"format": "napari-cellclass-batch", "task": task, **_fingerprint(model), "settings": _settings(opts)}
    path = out / HEADER
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CellClassError(f"{path} is unreadable ({exc}); choose another --out") from None
        for field in ("task", "model_sha256", "settings") + (("model",) if head["model_sha256"] is None else ()):
            if old.get(field) != head[field]:
                raise CellClassError(
                    f"{out} holds results of another run ({field}: {old.get(field)!r}, now {head[field]!r}); "
                    "use another --out so results of different runs are never mixed")
        return old
    if out.exists() and any(p.name not in (PARTS, HEADER) and not p.name.startswith(".") for p in out.iterdir()):
        raise CellClassError(f"{out} already holds other files; batch prediction needs a new or its own --out folder")
    out.mkdir(parents=True, exist_ok=True)
    head["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with atomic_path(path) as tmp:  # two shards starting together write the same content
        Path(tmp).write_text(json.dumps(head, indent=2) + "\n")
    return head


def done_keys(out: Path) -> set[str]:
    """Keys of every unit a finished chunk names."""
    keys: set[str] = set()
    for part, manifest in _manifests(out):
        keys.update(manifest.get("units", []))
    return keys


def _manifests(out: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    parts = out / PARTS
    if not parts.is_dir():
        return
    for d in sorted(parts.iterdir()):
        m = d / DONE
        if m.is_file():
            try:
                yield d, json.loads(m.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # cut off while written (atomic writes make this rare): the chunk is redone


def _chunk_id(first: Unit) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", first.stem)[:40] or "item"
    return f"{stem}-{hashlib.sha1(first.key.encode()).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- the run

def run_batch(
    task: str,
    predict: Callable[[Any, list[Path], Any], Job[dict[str, Any]]],
    model: Path | str,
    inputs: Sequence[Path],
    opts: Any,
    shard: Shard,
    *,
    chunk: int | None = None,
    units: Sequence[Unit] | None = None,
    recount: dict[str, Callable[[Path, str], Path | None]] | None = None,
) -> Job[dict[str, Any]]:
    """Run ``predict`` over this shard's not-yet-done inputs, chunk by chunk; merge when all are done.

    ``task`` only labels the folder (``batch.json``); ``units`` default to the image files of
    ``inputs``; ``recount`` names tables rebuilt from the merged ones instead of concatenated.
    """
    out = Path(opts.out or "cellclass-out")
    units = list(units) if units is not None else list_units(inputs)
    bind(out, task, model, opts)
    chunk = max(1, int(chunk or DEFAULT_CHUNK))
    from .distributed import _share

    block = _share(len(units), shard.index, shard.count)
    mine = units[block]
    done = done_keys(out)
    todo = [(block.start + k, u) for k, u in enumerate(mine) if u.key not in done]
    skipped = len(mine) - len(todo)
    chunks = _runs(todo, chunk)
    yield Progress(0, len(todo), "batch", f"shard {shard}: {len(mine)} of {len(units)} inputs, "
                                          f"{skipped} already done, {len(todo)} to do")
    t0 = time.monotonic()
    finished = 0
    for part_units in chunks:
        check_cancel(getattr(opts, "cancel", None))
        part = out / PARTS / _chunk_id(part_units[0])
        if part.exists():  # a chunk cut off before its manifest: ours to redo
            shutil.rmtree(part)
        part.mkdir(parents=True)
        sub = dataclasses.replace(opts, out=part)
        summary = yield from _predict_chunk(predict, model, part_units, sub)
        lifted = _lift_per_input_files(part, part_units, out)
        with atomic_path(part / DONE) as tmp:
            Path(tmp).write_text(json.dumps({"units": [u.key for u in part_units], "shard": str(shard),
                                             "per_input_files": lifted,
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "summary": summary}, default=str) + "\n")
        del summary
        finished += len(part_units)
        yield Progress(finished, len(todo), "batch", f"shard {shard}: {part.name} done")
    seconds = time.monotonic() - t0
    from . import distributed

    if distributed.active():  # torchrun: every rank has finished its shard; rank 0 merges and reports
        distributed.barrier()
    result: dict[str, Any] = {"out": str(out), "shard": str(shard), "inputs_total": len(units),
                              "inputs_in_shard": len(mine), "skipped_already_done": skipped,
                              "processed": len(todo), "seconds": round(seconds, 1),
                              "inputs_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
                              "refused": _shard_refusals(out, mine)}
    if distributed.active() and not distributed.is_main():
        result.update(merged=None, note="rank 0 merges")
        return result
    remaining = len(units) - len(done_keys(out) & {u.key for u in units})
    if remaining:
        result.update(merged=False, pending=remaining,
                      note="other shards are still running; the last one to finish merges "
                           "(or re-run any shard: done inputs are skipped, then it merges)")
        return result
    result.update(merged=True, pending=0, outputs=[str(p) for p in merge(out, units, recount)])
    return result


def _shard_refusals(out: Path, mine: Sequence[Unit]) -> list[dict[str, str]]:
    """The inputs of this shard that a chunk (of this run or an earlier one) refused."""
    keys = {u.key for u in mine}
    found: list[dict[str, str]] = []
    for _, manifest in _manifests(out):
        if keys.intersection(manifest.get("units", [])):
            found += refused_inputs(manifest.get("summary"))
    return refused_inputs({"refused": found})


def _predict_chunk(predict: Callable[[Any, list[Path], Any], Job[dict[str, Any]]], model: Any,
                   part_units: Sequence[Unit], opts: Any) -> Job[dict[str, Any]]:
    """The task's ``predict`` on one chunk; an input it refuses outright is listed, the others go on.

    Tasks list most refusals themselves; one that refuses a whole call naming an input
    (e.g. its only spread is blank) is run again without that input, so one bad file
    never ends the batch.  An error naming no input of the chunk (a setting) still ends it.
    """
    todo = list(part_units)
    refused: list[dict[str, str]] = []
    while todo:
        try:
            summary = yield from predict(model, [u.path for u in todo], opts)
        except InputError as exc:
            bad = [u for u in todo if exc.path is not None and _same_file(exc.path, u.path)]
            if not bad and len(todo) == 1:
                bad = todo  # a one-input call refused: that input
            if not bad:
                raise
            refused += [refusal(u.path, exc.problem) for u in bad]
            todo = [u for u in todo if u not in bad]
            part = Path(opts.out)
            for f in part.iterdir():  # what the refused call wrote is redone without it
                if f.name != DONE:
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
            continue
        if refused:
            summary = dict(summary)
            summary["refused"] = list(summary.get("refused") or []) + refused
        return summary
    return {"refused": refused}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _lift_per_input_files(part: Path, units: Sequence[Unit], out: Path) -> list[str]:
    """Move files named after one input (``<stem>_karyogram.png``, a per-smear report) from the chunk to ``OUT``.

    They land where a plain run puts them; tables for the whole call stay in the
    chunk to be merged.  A name already in ``OUT`` is left in the chunk, never replaced.
    """
    stems = {Path(u.key).stem for u in units} | {u.path.stem for u in units}
    lifted = []
    for f in sorted(part.iterdir()):
        if f.name == DONE or f.name.startswith("."):
            continue
        if f.name in stems or any(f.name.startswith(st + "_") for st in stems):
            dest = out / f.name
            if not dest.exists():
                os.replace(f, dest)
                lifted.append(f.name)
    return lifted


def _runs(todo: Sequence[tuple[int, Unit]], size: int) -> list[list[Unit]]:
    """Chunks of at most ``size`` inputs, each a run of consecutive input positions."""
    chunks: list[list[Unit]] = []
    last = None
    for i, u in todo:
        if not chunks or last is None or i != last + 1 or len(chunks[-1]) >= size:
            chunks.append([])
        chunks[-1].append(u)
        last = i
    return chunks


# ----------------------------------------------------------------------------- merging

def merge(out: Path, units: Sequence[Unit],
          recount: dict[str, Callable[[Path, str], Path | None]] | None = None) -> list[Path]:
    """Concatenate the per-chunk CSV tables into ``OUT/NAME.csv`` in input order (streamed);
    ``recount[NAME](out, NAME)`` rebuilds a table from the merged others instead."""
    recount = recount or {}
    order = {u.key: i for i, u in enumerate(units)}
    parts = sorted(((min((order.get(k, len(order)) for k in m.get("units", [])), default=len(order)), d)
                    for d, m in _manifests(out)), key=lambda t: (t[0], t[1].name))
    dirs = [d for _, d in parts]
    lifted = {d: {str(d / n): str(out / n) for n in m.get("per_input_files", [])} for d, m in _manifests(out)}
    names: dict[str, None] = {}
    for d in dirs:
        for f in sorted(d.glob("*.csv")):
            names.setdefault(f.name, None)
    written = []
    for name in names:
        if name in recount:
            continue
        written.append(_concat_csv(out / name, [(d / name, lifted.get(d, {})) for d in dirs if (d / name).is_file()]))
    for name, fn in recount.items():
        if name in names:
            w = fn(out, name)
            if w is not None:
                written.append(w)
    summary = {"inputs": len(units), "parts": len(dirs), "tables": [p.name for p in written],
               "merged": time.strftime("%Y-%m-%d %H:%M:%S"),
               "per_input_files": "in this folder, named after their input (as a plain run writes them)",
               "other_files": f"{PARTS}/<chunk>/ (each task call's JSON and any other output)"}
    with atomic_path(out / "batch_summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    return written + [out / "batch_summary.json"]


def _concat_csv(target: Path, sources: Sequence[tuple[Path, dict[str, str]]]) -> Path:
    """Rows of every source under one header; paths to files lifted out of a chunk are rewritten."""
    header: list[str] | None = None
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)  # the parts' cells are already escaped (csvsafe): copied as they are
            for src, moved in sources:
                with open(src, newline="") as fin:
                    r = csv.reader(fin)
                    h = next(r, None)
                    if h is None:
                        continue
                    if header is None:
                        header = h
                        w.writerow(h)
                    elif h != header:
                        raise CellClassError(f"cannot merge {src}: its columns differ from the other parts' {target.name}")
                    for row in r:
                        w.writerow([moved.get(v, v) for v in row] if moved else row)
    return target
