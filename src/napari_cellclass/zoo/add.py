"""Add a trained checkpoint to the built-in models and write its model card.

    python -m napari_cellclass.zoo.add runs/wbc/model.safetensors --name wbc-bccd-ibnresnet34 \\
        --command "cellclass train wbc ../shared/data/bccd --epochs 40 ..." --wall-time-s 3120 \\
        --device "cpu (2 threads)" --data-source "BCCD (Shenggan), trainval" --licence MIT \\
        --split-rule "by source image, 20% held out (seed 0)" --fp16 [--metrics-json heldout.json]

The card's metrics are the checkpoint's validation metrics (its best epoch on the
held-out split) unless ``--metrics-json`` gives the output of ``cellclass evaluate``
on that split.  An existing built-in of the same name is replaced only with
``--replace`` and only when the new primary metric is at least as good (``--force``
replaces anyway), so a retrained model that got worse is never committed by accident.

Nothing of the training machine ships: absolute paths in the checkpoint metadata are
replaced by their last component (the data set's folder name, say ``bccd``), path values
of ``meta.training`` likewise, and a ``--command`` with an absolute path is refused.
Card metrics are numbers only (tables and texts of ``cellclass evaluate`` belong in docs/).

    python -m napari_cellclass.zoo.add --restamp NAME|all

rewrites built-in(s) from their shipped weights: the weights are re-saved with identical
tensors and scrubbed metadata that names its transform (``meta.preprocess``), and the card
is rebuilt from that header plus the trainer-only fields of the existing card
(:func:`rebuild_card`), then docs/models.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import CheckpointMeta, declared_preprocess
from ..errors import CellClassError, InputError
from . import CARD_FORMAT, MAX_FILE_BYTES, MAX_TOTAL_BYTES, SUFFIX, WEIGHTS_DIR, primary_metric, zoo_dir
from ._fetch import sha256_of
from .provenance import is_synthetic

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
CARD_VERSION = 1
COUNT_KEYS = re.compile(r"^(n_\w+|\w+_(cells|images|spreads|crops|patients))$")
_SEG = r"[^\s/\\\"'`<>|,;()\[\]{}]"
#: an absolute path of some machine inside a text: ``/a/b...``, ``~/a...``, ``C:\\a\\...`` (two components
#: at least, not part of a word, a relative path or a URL: ``RBC/WBC``, ``doi:10.1/x`` and ``https://x/y`` stay)
ABS_PATH_RE = re.compile(rf"(?<![\w.~/\\-])(?:[A-Za-z]:[\\/]|~[\\/]|/)(?:{_SEG}+[\\/])+{_SEG}*")
_REL_PATH_RE = re.compile(r"^\.{1,2}[\\/]\S*$")


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """Top-level finite numbers of a metrics dict: no texts, flags, tables, histories or confusion matrices."""
    return {str(k): v for k, v in (d or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _last_component(path: str) -> str:
    parts = [p for p in re.split(r"[\\/]", path.rstrip("/\\")) if p]
    return parts[-1] if parts else ""


def portable(text: Any) -> Any:
    """``text`` with every absolute path replaced by its last component (non-texts unchanged)."""
    if not isinstance(text, str):
        return text
    return ABS_PATH_RE.sub(lambda m: _last_component(m.group(0)), text)


def _scrub(obj: Any, paths: bool = False) -> Any:
    """Absolute paths -> last component, recursively; with ``paths`` a text that *is* a (relative) path too."""
    if isinstance(obj, dict):
        return {k: _scrub(v, paths) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, paths) for v in obj]
    if isinstance(obj, str) and paths and (_REL_PATH_RE.match(obj) or ABS_PATH_RE.fullmatch(obj)):
        return _last_component(obj)
    return portable(obj)


def scrub_meta(meta: CheckpointMeta) -> CheckpointMeta:
    """A copy of ``meta`` without the training machine's paths.

    ``training`` values that are paths (``data``, ``source``, ...; absolute or ``./``/``../``)
    become their last component, i.e. the data set's folder name; any absolute path inside a
    text of ``training``, ``metrics`` or ``trained_on`` likewise. Nothing that shapes the
    network or its input (architecture, normalization, preprocess) is touched.
    """
    training = {k: _scrub(v, paths=True) if isinstance(v, str) else _scrub(v)
                for k, v in (meta.training or {}).items()}
    return _replace(meta, training=training, metrics=_scrub(meta.metrics or {}), trained_on=portable(meta.trained_on))


def check_command(command: str) -> str:
    """The training command, refused when it names an absolute path (it is published in the card)."""
    found = ABS_PATH_RE.findall(command or "")
    if found:
        raise InputError(f"--command names absolute path(s) of this machine ({', '.join(found[:3])}); write them "
                         "relative to the repository (e.g. ../shared/data/bccd) so no machine path ships")
    return command


def _counts(meta_training: dict[str, Any], given: list[str]) -> dict[str, int]:
    counts = {k: int(v) for k, v in (meta_training or {}).items()
              if COUNT_KEYS.match(k) and isinstance(v, int) and not isinstance(v, bool)}
    for item in given:
        if "=" not in item:
            raise InputError(f"--count expects KEY=N, got {item!r}")
        k, v = item.split("=", 1)
        try:
            counts[k.strip()] = int(v)
        except ValueError:
            raise InputError(f"--count {k.strip()}: {v!r} is not a whole number") from None
    return counts


def summary_line(c: dict[str, Any]) -> str:
    """One line for choosers and tables: data and validation quality."""
    name, value = primary_metric(c)
    metric = f"validation {name} {value:.3f}" if name else "no validation metric"
    src = (c.get("trained_on") or {}).get("source", "unknown data")
    return f"{c['task']} {c['arch']}, {len(c.get('classes', []))} classes; trained on {src}; {metric}"


def make_card(meta, *, name: str, sha256: str, size_bytes: int, dtype: str, command: str, wall_time_s: float,
              device: str, data_source: str, licence: str, split_rule: str, counts: dict[str, int],
              metrics: dict[str, Any], metrics_source: str, url: str | None = None,
              summary: str | None = None, primary: str | None = None, date: str | None = None,
              note: str | None = None) -> dict[str, Any]:
    """The model card for a checkpoint's metadata plus what only the trainer knows.

    Metrics are kept as finite numbers only; texts lose absolute paths; ``date`` defaults
    to today (UTC); ``note`` is an optional remark on the training run.
    """
    data_source, licence, split_rule, device = (portable(v) for v in (data_source, licence, split_rule, device))
    training = {"command": check_command(command), "wall_time_s": float(wall_time_s), "device": device,
                "napari_cellclass_version": meta.version}
    if note:
        training["note"] = portable(note)
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "name": name,
        "task": meta.task,
        "arch": meta.arch,
        "arch_config": meta.arch_config,
        "classes": list(meta.class_names),
        "input": {"size": list(meta.input_size), "channels": int(meta.in_channels)},
        "preprocessing": meta.normalization,
        "transform": declared_preprocess(meta),  # the registered transform that makes the input
        "trained_on": {"source": data_source, "licence": licence, "split_rule": split_rule,
                       "counts": {str(k): int(v) for k, v in (counts or {}).items()},
                       "synthetic": is_synthetic(meta.trained_on) or is_synthetic(data_source)},
        "metrics": _scalars(metrics),
        "metrics_source": portable(metrics_source),
        "training": training,
        "size_bytes": int(size_bytes),
        "sha256": sha256,
        "dtype": dtype,
        "date": date or _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
    }
    if meta.calibration:  # the softmax temperature and the calibration error it left, from the header
        card["calibration"] = {k: (portable(v) if isinstance(v, str) else v) for k, v in meta.calibration.items()}
    if primary:
        card["primary_metric"] = primary
    if url:
        card["url"] = url
    card["one_line"] = portable(summary) or summary_line(card)
    return card


def card_text(card: dict[str, Any]) -> str:
    """How the tool writes a card (one format, so a rebuilt card can be compared as text)."""
    return json.dumps(card, indent=2, sort_keys=False) + "\n"


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def add_model(checkpoint: Path, *, name: str, command: str, wall_time_s: float, device: str, data_source: str,
              licence: str, split_rule: str, fp16: bool = False, metrics_json: Path | None = None,
              counts: list[str] | None = None, summary: str | None = None, primary: str | None = None,
              url: str | None = None, export: Path | None = None, replace: bool = False, force: bool = False,
              folder: Path | None = None) -> dict[str, Any]:
    """Copy ``checkpoint`` into the zoo folder as ``name`` and write its card; returns the card.

    With ``url`` only the card goes into the zoo folder; the weights are written to
    ``export`` (default ``./NAME.safetensors``) for upload to that URL.
    """
    from ..engine.atomic import atomic_path
    from ..engine.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
    from ..models.registry import build_model

    folder = Path(folder) if folder is not None else zoo_dir()
    if not NAME_RE.match(name) or name.endswith(SUFFIX):
        raise InputError(f"model name {name!r}: use 2-64 lower-case letters, digits, '.', '_' or '-'")
    for label, value in (("--command", command), ("--device", device), ("--data-source", data_source),
                         ("--licence", licence), ("--split-rule", split_rule)):
        if not str(value or "").strip():
            raise InputError(f"{label} is required: the card must say how and on what the model was trained")
    check_command(command)
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta
    # the weights must rebuild into their architecture before they are published
    load_state_strict(build_model(meta.arch, **meta.arch_config), ckpt.state_dict, ckpt.path)

    if metrics_json is not None:
        try:
            metrics = _scalars(json.loads(Path(metrics_json).read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read metrics JSON: {exc}", metrics_json) from None
        metrics_source = f"cellclass evaluate on the held-out split ({Path(metrics_json).name})"
    else:
        metrics = _scalars(meta.metrics)
        metrics_source = "validation metrics of the best epoch on the held-out split (from the checkpoint)"

    card_path = folder / f"{name}.json"
    weights_path = folder / f"{name}{SUFFIX}"
    old = json.loads(card_path.read_text()) if card_path.is_file() else None
    if old is not None and not (replace or force):
        raise InputError(f"built-in model {name!r} exists; use --replace (only if better) or --force", card_path)

    state = _half(ckpt.state_dict) if fp16 else ckpt.state_dict
    if not is_synthetic(meta.trained_on):
        meta.trained_on = portable(data_source)  # a portable description instead of the trainer's local path
    meta = scrub_meta(meta)  # no path of the training machine in the shipped header
    out = Path(export) if (url and export) else (Path.cwd() / f"{name}{SUFFIX}" if url else weights_path)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights = out.with_name(out.name + ".new" + SUFFIX)
    save_checkpoint(tmp_weights, state, meta)
    try:
        size = tmp_weights.stat().st_size
        if not url and size > MAX_FILE_BYTES:
            raise InputError(f"weights are {size / 2**20:.1f} MiB; a shipped model may have at most "
                             f"{MAX_FILE_BYTES / 2**20:.0f} MiB (try --fp16, or register it by --url)")
        if not url:
            others = sum(p.stat().st_size for p in folder.glob(f"*{SUFFIX}")
                         if p != weights_path and not p.name.endswith(".new" + SUFFIX))
            if others + size > MAX_TOTAL_BYTES:
                raise InputError(f"all shipped weights would total {(others + size) / 2**20:.1f} MiB; "
                                 f"the limit is {MAX_TOTAL_BYTES / 2**20:.0f} MiB (register this one by --url)")
        card = make_card(meta, name=name, sha256=sha256_of(tmp_weights), size_bytes=size,
                         dtype="float16" if fp16 else "float32", command=command, wall_time_s=wall_time_s,
                         device=device, data_source=data_source, licence=licence, split_rule=split_rule,
                         counts=_counts(meta.training, counts or []), metrics=metrics,
                         metrics_source=metrics_source, url=url, summary=summary, primary=primary)
        if old is not None and not force:
            new_v, old_v = primary_metric(card)[1], primary_metric(old)[1]
            if old_v is not None and (new_v is None or new_v < old_v):
                raise InputError(f"the new {name!r} is not better than the built-in one "
                                 f"({primary_metric(card)[0]} {new_v} < {old_v}); kept the old one "
                                 "(--force replaces anyway)")
        tmp_weights.replace(out)
    finally:
        tmp_weights.unlink(missing_ok=True)
    if url and weights_path.exists():
        weights_path.unlink()  # the card now points at the URL; a stale local copy would shadow it
    with atomic_path(card_path) as tmp:
        tmp.write_text(card_text(card), encoding="utf-8")
    return card


# ----------------------------------------------------------------------------- restamp
def _stored_dtype(state: dict[str, torch.Tensor]) -> str:
    return "float16" if any(v.dtype == torch.float16 for v in state.values()) else "float32"


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same names, dtypes, shapes and bits (not just equal values: -0.0 vs 0.0 counts)."""
    if set(a) != set(b):
        return False
    for k, x in a.items():
        y = b[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            return False
        if x.numpy().tobytes() != y.numpy().tobytes():
            return False
    return True


def restamped_meta(meta: CheckpointMeta) -> CheckpointMeta:
    """The header a shipped checkpoint must carry: scrubbed, and naming its registered transform."""
    return _replace(scrub_meta(meta), preprocess=declared_preprocess(meta))


def restamp_weights(path: Path) -> bool:
    """Re-save shipped weights with bit-identical tensors and :func:`restamped_meta`; True when rewritten."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..engine.checkpoint import META_KEY, read_meta, save_checkpoint

    path = Path(path)
    meta = read_meta(path)
    with safe_open(str(path), framework="pt") as fh:
        raw = json.loads((fh.metadata() or {})[META_KEY])
    lost = set(raw) - set(CheckpointMeta.__dataclass_fields__)
    if lost:
        raise InputError(f"header field(s) {', '.join(sorted(lost))} are unknown to this version; not rewritten",
                         path)
    new = restamped_meta(meta)
    if json.loads(new.to_json()) == raw:
        return False
    state = load_file(str(path))  # as stored: float16 stays float16
    tmp = path.with_name(path.name + ".new" + SUFFIX)
    try:
        save_checkpoint(tmp, state, new)
        if not _same_tensors(state, load_file(str(tmp))) or read_meta(tmp).to_json() != new.to_json():
            raise InputError("re-saved weights differ from the original; kept the original", path)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def rebuild_card(name: str, folder: Path | None = None, *, old: dict[str, Any] | None = None,
                 weights: Path | None = None) -> dict[str, Any]:
    """The card the tool writes for built-in ``name``: derived from its weights' header, plus the
    trainer-only fields of the existing card (command, wall time, device, data source, licence,
    split rule, counts, metrics, metrics source, note, url, explicit one-line summary, primary
    metric, date). Pure: writes nothing. ``weights`` is the file of a URL-registered model.
    """
    from safetensors.torch import load_file

    from ..engine.checkpoint import read_meta

    folder = Path(folder) if folder is not None else zoo_dir()
    if old is None:
        card_path = folder / f"{name}.json"
        try:
            old = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read model card: {exc}", card_path) from None
    path = Path(weights) if weights is not None else folder / f"{name}{SUFFIX}"
    if not path.is_file():
        raise InputError(f"no weights for {name!r} to rebuild its card from (a URL model needs its file)", path)
    meta = read_meta(path)
    t, tr = old.get("trained_on") or {}, old.get("training") or {}
    kw = dict(name=name, sha256=sha256_of(path), size_bytes=path.stat().st_size,
              dtype=_stored_dtype(load_file(str(path))), command=str(tr.get("command", "")),
              wall_time_s=float(tr.get("wall_time_s", 0.0)), device=str(tr.get("device", "")),
              data_source=str(t.get("source", "")), licence=str(t.get("licence", "")),
              split_rule=str(t.get("split_rule", "")), counts=dict(t.get("counts") or {}),
              metrics=dict(old.get("metrics") or {}), metrics_source=str(old.get("metrics_source", "")),
              url=old.get("url"), primary=old.get("primary_metric"), date=old.get("date"), note=tr.get("note"))
    card = make_card(meta, **kw)
    given = old.get("one_line")
    if given and portable(given) != card["one_line"]:  # a summary written by hand at --summary
        card = make_card(meta, summary=given, **kw)
    return card


def restamp(name: str, folder: Path | None = None) -> dict[str, Any]:
    """Re-save built-in ``name``'s weights (:func:`restamp_weights`) and rewrite its card; returns the card.

    The metrics are the card's own, so the ranking metric cannot change; if dropping
    non-numbers would lose it (or make it worse), nothing is written.
    """
    from ..engine.atomic import atomic_path

    folder = Path(folder) if folder is not None else zoo_dir()
    card_path = folder / f"{name}.json"
    if not NAME_RE.match(name) or not card_path.is_file():
        raise InputError(f"no built-in model named {name!r}", card_path)
    old = json.loads(card_path.read_text(encoding="utf-8"))
    weights = folder / f"{name}{SUFFIX}"
    if not weights.is_file():
        raise InputError(f"{name!r} is registered by URL; restamp the exported file and re-add it with --url",
                         card_path)
    check_command(str((old.get("training") or {}).get("command", "")))
    preview = rebuild_card(name, folder, old=old)  # refuse before touching the weights
    new_v, old_v = primary_metric(preview)[1], primary_metric(old)[1]
    if old_v is not None and (new_v is None or new_v < old_v):
        raise InputError(f"restamping {name!r} would lose or lower its primary metric ({old_v} -> {new_v}); "
                         "nothing written", card_path)
    restamp_weights(weights)
    card = rebuild_card(name, folder, old=old)
    text = card_text(card)
    if card_path.read_text(encoding="utf-8") != text:
        with atomic_path(card_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return card


REQUIRED = ("checkpoint", "name", "command", "wall_time_s", "device", "data_source", "licence", "split_rule")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m napari_cellclass.zoo.add", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, nargs="?", help="the trained checkpoint (not with --restamp)")
    p.add_argument("--name", help="built-in model name (required)")
    p.add_argument("--command", help="the exact training command, paths relative (required)")
    p.add_argument("--wall-time-s", type=float, help="training wall time in seconds (required)")
    p.add_argument("--device", help="e.g. 'cpu (2 cores)' or 'NVIDIA H200' (required)")
    p.add_argument("--data-source", help="data set and where it comes from (required)")
    p.add_argument("--licence", help="licence of the training data (required)")
    p.add_argument("--split-rule", help="how the held-out split was made (by cell/spread/image) (required)")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision (half the size)")
    p.add_argument("--metrics-json", type=Path, default=None, help="`cellclass evaluate` JSON on the held-out split")
    p.add_argument("--count", action="append", default=[], metavar="KEY=N", help="training data counts")
    p.add_argument("--primary-metric", default=None, help="metric that ranks this model (default per task)")
    p.add_argument("--summary", default=None, help="one-line summary (default: generated)")
    p.add_argument("--url", default=None, help="register by URL: only the card ships; weights go to --export")
    p.add_argument("--export", type=Path, default=None, help="where to write the weights for --url")
    p.add_argument("--replace", action="store_true", help="replace a built-in of this name if not worse")
    p.add_argument("--force", action="store_true", help="replace a built-in of this name regardless")
    p.add_argument("--restamp", metavar="NAME|all", default=None,
                   help="rewrite built-in(s) from their weights: re-save the weights (same tensors, scrubbed "
                        "metadata naming its transform) and rebuild the card; nothing else is needed")
    p.add_argument("--zoo-dir", type=Path, default=None, help="model folder (default: the package's)")
    p.add_argument("--no-docs", action="store_true", help="do not regenerate docs/models.md")
    return p


def _write_docs(folder: Path | None) -> None:
    folder = folder or zoo_dir()
    if Path(folder).resolve() == WEIGHTS_DIR.resolve():
        from .docs import default_docs_path, write_docs

        docs = default_docs_path()
        if docs is not None:
            write_docs(docs)
            print(f"updated {docs}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.restamp:
        if args.checkpoint is not None:
            parser.error("--restamp rewrites built-ins from their own weights; give no checkpoint")
        folder = Path(args.zoo_dir) if args.zoo_dir else zoo_dir()
        names = (sorted(p.stem for p in folder.glob("*.json")) if args.restamp == "all" else [args.restamp])
        try:
            for name in names:
                card = restamp(name, folder)
                print(f"restamped {name}: sha256 {card['sha256']}, {card['size_bytes']} bytes", file=sys.stderr)
        except CellClassError as exc:
            print(f"zoo.add: error: {exc}", file=sys.stderr)
            return 2
        if not args.no_docs:
            _write_docs(args.zoo_dir)
        return 0
    missing = [k for k in REQUIRED if getattr(args, k) is None]
    if missing:
        parser.error("the following arguments are required: "
                     + ", ".join(k if k == "checkpoint" else "--" + k.replace("_", "-") for k in missing))
    try:
        card = add_model(args.checkpoint, name=args.name, command=args.command, wall_time_s=args.wall_time_s,
                         device=args.device, data_source=args.data_source, licence=args.licence,
                         split_rule=args.split_rule, fp16=args.fp16, metrics_json=args.metrics_json,
                         counts=args.count, summary=args.summary, primary=args.primary_metric, url=args.url,
                         export=args.export, replace=args.replace, force=args.force, folder=args.zoo_dir)
    except CellClassError as exc:
        print(f"zoo.add: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(card, indent=2))
    if not args.no_docs:
        _write_docs(args.zoo_dir)
    if card["trained_on"]["synthetic"]:
        print("zoo.add: warning: this model was trained on synthetic data only", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
