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
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..engine.checkpoint import declared_preprocess
from ..errors import CellClassError, InputError
from . import CARD_FORMAT, MAX_FILE_BYTES, MAX_TOTAL_BYTES, SUFFIX, WEIGHTS_DIR, primary_metric, zoo_dir
from ._fetch import sha256_of
from .provenance import is_synthetic

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
CARD_VERSION = 1
COUNT_KEYS = re.compile(r"^(n_\w+|\w+_(cells|images|spreads|crops|patients))$")


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """Top-level numbers/strings/bools of a metrics dict (no histories, no confusion matrices)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool) or isinstance(v, str):
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = v if (isinstance(v, int) or math.isfinite(v)) else None
    return out


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
              summary: str | None = None, primary: str | None = None) -> dict[str, Any]:
    """The model card for a checkpoint's metadata plus what only the trainer knows."""
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
        "trained_on": {"source": data_source, "licence": licence, "split_rule": split_rule, "counts": counts,
                       "synthetic": is_synthetic(meta.trained_on) or is_synthetic(data_source)},
        "metrics": metrics,
        "metrics_source": metrics_source,
        "training": {"command": command, "wall_time_s": float(wall_time_s), "device": device,
                     "napari_cellclass_version": meta.version},
        "size_bytes": int(size_bytes),
        "sha256": sha256,
        "dtype": dtype,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
    }
    if primary:
        card["primary_metric"] = primary
    if url:
        card["url"] = url
    card["one_line"] = summary or summary_line(card)
    return card


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
        meta.trained_on = data_source  # a portable description instead of the trainer's local path
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
        tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return card


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m napari_cellclass.zoo.add", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True, help="the exact training command")
    p.add_argument("--wall-time-s", type=float, required=True)
    p.add_argument("--device", required=True, help="e.g. 'cpu (2 cores)' or 'NVIDIA H200'")
    p.add_argument("--data-source", required=True, help="data set and where it comes from")
    p.add_argument("--licence", required=True, help="licence of the training data")
    p.add_argument("--split-rule", required=True, help="how the held-out split was made (by cell/spread/image)")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision (half the size)")
    p.add_argument("--metrics-json", type=Path, default=None, help="`cellclass evaluate` JSON on the held-out split")
    p.add_argument("--count", action="append", default=[], metavar="KEY=N", help="training data counts")
    p.add_argument("--primary-metric", default=None, help="metric that ranks this model (default per task)")
    p.add_argument("--summary", default=None, help="one-line summary (default: generated)")
    p.add_argument("--url", default=None, help="register by URL: only the card ships; weights go to --export")
    p.add_argument("--export", type=Path, default=None, help="where to write the weights for --url")
    p.add_argument("--replace", action="store_true", help="replace a built-in of this name if not worse")
    p.add_argument("--force", action="store_true", help="replace a built-in of this name regardless")
    p.add_argument("--zoo-dir", type=Path, default=None, help="model folder (default: the package's)")
    p.add_argument("--no-docs", action="store_true", help="do not regenerate docs/models.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    folder = args.zoo_dir or zoo_dir()
    if not args.no_docs and Path(folder).resolve() == WEIGHTS_DIR.resolve():
        from .docs import default_docs_path, write_docs

        docs = default_docs_path()
        if docs is not None:
            write_docs(docs)
            print(f"updated {docs}", file=sys.stderr)
    if card["trained_on"]["synthetic"]:
        print("zoo.add: warning: this model was trained on synthetic data only", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
