"""The one checkpoint format shared by every model.

A checkpoint is a single ``.safetensors`` file: the weights as tensors and, in
the safetensors header, one JSON document (:class:`CheckpointMeta`).  Loading
never unpickles anything, so a checkpoint from a stranger cannot run code, and
every mismatch (other task, wrong channel count, corrupt file, missing or extra
weights) is reported by name before any weight is touched.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import CheckpointError
from .atomic import atomic_path

FORMAT = "napari-cellclass-checkpoint"
FORMAT_VERSION = 1
META_KEY = "cellclass"
SUFFIX = ".safetensors"


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild, run and judge a model, as plain JSON.

    ``arch`` names a builder in :mod:`napari_cellclass.models.registry`;
    ``arch_config`` are its keyword arguments, enough to rebuild the network.
    ``trained_on`` says where the weights come from (e.g. "synthetic" for models
    trained only on generated data), so results can be labelled honestly.
    """

    task: str
    arch: str
    class_names: list[str]
    in_channels: int
    input_size: list[int]
    arch_config: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: str = "unknown"
    version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> "CheckpointMeta":
        required = ["task", "arch", "class_names", "in_channels", "input_size"]
        missing = [k for k in required if k not in d]
        if missing:
            raise CheckpointError(f"metadata lacks required field(s): {', '.join(missing)}", path)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Checkpoint:
    meta: CheckpointMeta
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None


def save_checkpoint(
    path: str | Path,
    model_or_state: torch.nn.Module | dict[str, torch.Tensor],
    meta: CheckpointMeta,
) -> Path:
    """Write weights + metadata atomically; an existing file is replaced only on success."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    # safetensors wants contiguous CPU tensors that do not share storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: meta.to_json(), "format": FORMAT})
    return path


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata (cheap: the header), validating the format."""
    path = Path(path)
    _check_file(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # safetensors raises several types for garbage
        raise CheckpointError(f"not a readable checkpoint (corrupt or not safetensors): {exc}", path) from None
    return _meta_from_header(header, path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError("checkpoint file does not exist", path)
    if path.is_dir():
        raise CheckpointError("expected a checkpoint file, got a folder", path)
    if path.stat().st_size == 0:
        raise CheckpointError("checkpoint file is empty", path)


def _meta_from_header(header: dict[str, str], path: Path) -> CheckpointMeta:
    if META_KEY not in header:
        raise CheckpointError(
            "safetensors file without napari-cellclass metadata (weights from another tool?)", path
        )
    try:
        raw = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint metadata is not valid JSON: {exc}", path) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError("metadata is not a napari-cellclass checkpoint header", path)
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {raw.get('format_version')} is newer than this "
            f"napari-cellclass ({__version__}) understands; please upgrade",
            path,
        )
    return CheckpointMeta.from_dict(raw, path)


def load_checkpoint(
    path: str | Path,
    *,
    task: str | None = None,
    in_channels: int | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Load and validate a checkpoint.

    ``task``/``in_channels`` are what the caller needs; a checkpoint made for
    something else is refused with a message naming both sides.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    if task is not None and meta.task != task:
        raise CheckpointError(
            f"this checkpoint is a {meta.task!r} model ({meta.arch}), but a {task!r} model is needed",
            path,
        )
    if in_channels is not None and meta.in_channels != in_channels:
        raise CheckpointError(
            f"model expects {meta.in_channels} input channel(s) but the data has {in_channels}", path
        )
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:
        raise CheckpointError(f"weights could not be read (truncated or corrupt file): {exc}", path) from None
    # built-in models may be stored in half precision to halve their size; compute runs in float32
    state = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()}
    return Checkpoint(meta=meta, state_dict=state, path=path)


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | None = None) -> None:
    """Load weights, naming missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing weights: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected weights: {_short(unexpected)}")
    if wrong:
        problems.append(
            "shape mismatch: "
            + _short([f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong])
        )
    if problems:
        raise CheckpointError("weights do not fit the architecture: " + "; ".join(problems), path)
    model.load_state_dict(state, strict=True)


def _short(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def build_from_checkpoint(
    path: str | Path,
    *,
    task: str | None = None,
    in_channels: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the network named in the metadata and load its weights (eval mode)."""
    from ..models.registry import build_model

    ckpt = load_checkpoint(path, task=task, in_channels=in_channels, map_location=map_location)
    model = build_model(ckpt.meta.arch, **ckpt.meta.arch_config)
    load_state_strict(model, ckpt.state_dict, ckpt.path)
    model.eval()
    return model, ckpt.meta
