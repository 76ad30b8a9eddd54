"""The one checkpoint format shared by every model.

A checkpoint is a single ``.safetensors`` file: the weights as tensors and, in
the safetensors header, one JSON document (:class:`CheckpointMeta`).  Loading
never unpickles anything, so a checkpoint from a stranger cannot run code, and
every mismatch (other task, wrong channel count, corrupt file, missing or extra
weights) is reported by name before any weight is touched.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import CheckpointError
from .atomic import atomic_path

#: Bounds on what checkpoint metadata may declare (more is a corrupt or hostile file).
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 1024
MAX_INPUT_SIDE = 65_536
MAX_CONFIG_INT = 1 << 20
MAX_DEPTH = 32

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
    ``preprocess`` names the registered transform that makes the network input,
    ``{"name": ..., "params": {...}}`` (see :mod:`napari_cellclass.preprocess`);
    empty in checkpoints written before it existed, where :func:`declared_preprocess`
    derives it from ``normalization``.
    ``calibration`` holds the softmax temperature fitted on held-out data
    (:mod:`napari_cellclass.engine.calibration`) and the calibration error it left;
    empty where the model was never calibrated.
    """

    task: str
    arch: str
    class_names: list[str]
    in_channels: int
    input_size: list[int]
    arch_config: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
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
    if not meta.preprocess:  # every new checkpoint names its transform explicitly
        try:
            meta = replace(meta, preprocess=declared_preprocess(meta))
        except (TypeError, ValueError, AttributeError):
            pass  # malformed metadata is written as given; reading it names the problem
    # safetensors wants contiguous CPU tensors that do not share storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: meta.to_json(), "format": FORMAT})
    return path


def rewrite_meta(path: str | Path, meta: CheckpointMeta) -> Path:
    """Give a checkpoint a new header, its tensors exactly as stored (float16 stays float16)."""
    from safetensors.torch import load_file

    return save_checkpoint(path, load_file(str(path)), meta)


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
    except RecursionError:
        raise CheckpointError("checkpoint metadata is nested too deeply to be genuine", path) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError("metadata is not a napari-cellclass checkpoint header", path)
    fv = raw.get("format_version", 0)
    if not _is_int(fv):
        raise CheckpointError(f"checkpoint metadata: format_version must be an integer, got {fv!r}", path)
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {raw.get('format_version')} is newer than this "
            f"napari-cellclass ({__version__}) understands; please upgrade",
            path,
        )
    meta = CheckpointMeta.from_dict(raw, path)
    validate_meta(meta, path)
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value (iterative: a hostile header cannot blow the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _big_ints(obj: Any, where: str = "arch_config") -> list[str]:
    out, stack = [], [(obj, where)]
    while stack:
        o, w = stack.pop()
        if isinstance(o, dict):
            stack.extend((v, f"{w}.{k}") for k, v in o.items())
        elif isinstance(o, list):
            stack.extend((v, f"{w}[{i}]") for i, v in enumerate(o))
        elif isinstance(o, float) and (o != o or abs(o) > MAX_CONFIG_INT):
            out.append(f"{w}={o!r}")
        elif _is_int(o) and abs(o) > MAX_CONFIG_INT:
            out.append(f"{w}={o}")
    return out


def validate_meta(meta: CheckpointMeta, path: Path | None = None) -> None:
    """Typed schema with bounds: every field has its type and a plausible size.

    Runs before anything is allocated, so a header that declares two billion classes or
    a 1e9-pixel input is refused by name instead of exhausting memory.
    """
    def bad(msg: str) -> None:
        raise CheckpointError(f"checkpoint metadata: {msg}", path)

    for name in ("task", "arch", "trained_on", "version", "format"):
        v = getattr(meta, name)
        if not isinstance(v, str) or (name in ("task", "arch") and not v.strip()) or len(v) > 1000:
            bad(f"{name} must be a short text, got {type(v).__name__} {str(v)[:40]!r}")
    names = meta.class_names
    if not isinstance(names, list) or not names:
        bad(f"class_names must be a non-empty list of names, got {type(names).__name__}")
    if len(names) > MAX_CLASSES:
        bad(f"class_names lists {len(names):,} classes (at most {MAX_CLASSES:,} are plausible)")
    if not all(isinstance(c, str) and len(c) <= 1000 for c in names):
        bad("class_names must all be texts")
    ch = meta.in_channels
    if not _is_int(ch) or not 1 <= ch <= MAX_IN_CHANNELS:
        bad(f"in_channels must be an integer in 1..{MAX_IN_CHANNELS}, got {ch!r}")
    size = meta.input_size
    if not isinstance(size, list) or not 1 <= len(size) <= 3 or not all(
            _is_int(v) and 1 <= v <= MAX_INPUT_SIDE for v in size):
        bad(f"input_size must be 1 to 3 integers in 1..{MAX_INPUT_SIDE}, got {str(size)[:60]}")
    from ..budget import max_pixels

    n = 1
    for v in size:
        n *= v
    if n * ch > max_pixels():
        bad(f"input_size {size} x {ch} channel(s) is over the pixel budget ({max_pixels():,})")
    for name in ("arch_config", "normalization", "training", "metrics"):
        v = getattr(meta, name)
        if not isinstance(v, dict):
            bad(f"{name} must be a mapping, got {type(v).__name__}")
        if _depth(v) > MAX_DEPTH:
            bad(f"{name} is nested more than {MAX_DEPTH} levels deep")
    pre = meta.preprocess
    if not isinstance(pre, dict):
        bad(f"preprocess must be a mapping, got {type(pre).__name__}")
    if pre:
        if not isinstance(pre.get("name"), str) or not pre["name"].strip() or len(pre["name"]) > 100:
            bad(f"preprocess.name must be a short text, got {str(pre.get('name'))[:40]!r}")
        if not isinstance(pre.get("params", {}), dict):
            bad(f"preprocess.params must be a mapping, got {type(pre.get('params')).__name__}")
        if _depth(pre) > MAX_DEPTH:
            bad(f"preprocess is nested more than {MAX_DEPTH} levels deep")
    big = _big_ints(meta.arch_config)
    if big:
        bad(f"arch_config values out of range: {', '.join(big[:3])} (at most {MAX_CONFIG_INT:,})")
    cal = meta.calibration
    if not isinstance(cal, dict):
        bad(f"calibration must be a mapping, got {type(cal).__name__}")
    elif "temperature" in cal:
        t = cal["temperature"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not (0.01 <= t <= 100):
            bad(f"calibration temperature must be a number in 0.01..100, got {t!r}")
    th = meta.thresholds
    if th is not None:
        if not isinstance(th, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                               and t == t for t in th):
            bad("thresholds must be a list of numbers")
        if len(th) != len(names):
            bad(f"{len(th)} thresholds for {len(names)} classes")
    outputs = declared_outputs(meta)
    if outputs is not None:
        if not _is_int(outputs) or outputs < 1:
            bad(f"num_classes must be a positive integer, got {outputs!r}")
        expected = len(names) + (1 if _has_background(meta) else 0)
        if outputs != expected:
            extra = " plus background" if _has_background(meta) else ""
            bad(f"class_names lists {len(names)} class(es){extra} but the network has {outputs} outputs; "
                "results would be cut or mislabelled")


def declared_preprocess(meta: CheckpointMeta) -> dict[str, Any]:
    """``{"name", "params"}`` of the transform that makes this model's input.

    The ``preprocess`` field when the checkpoint has one; otherwise derived from the
    free-form ``normalization`` that older checkpoints (the shipped built-ins among
    them) carry, giving the same input those checkpoints were trained and scored on.
    """
    pre = meta.preprocess
    if isinstance(pre, dict) and pre.get("name"):
        return {"name": str(pre["name"]), "params": dict(pre.get("params") or {})}
    norm = meta.normalization if isinstance(meta.normalization, dict) else {}
    size = [int(v) for v in meta.input_size]
    kind = norm.get("preprocess")
    if meta.task == "chromosome" or kind == "prepare_crop":
        pad_rel = norm.get("pad_rel")
        return {"name": "chromosome_canvas", "params": {
            "size": size[-2:], "canvas": "relative" if pad_rel else "absolute", "pad_to": norm.get("pad_to"),
            "pad_rel": pad_rel, "straighten": bool(norm.get("straighten", False))}}
    if meta.task == "hpa":
        return {"name": "hpa_rgby", "params": {"size": size[-1], "mean": list(norm.get("mean", [0.0] * 4)),
                                               "std": list(norm.get("std", [1.0] * 4))}}
    if meta.task == "wbc":
        params: dict[str, Any] = {"size": size[0], "crop": str(norm.get("crop", "box"))}
        if norm.get("window_px") is not None:
            params["window_px"] = float(norm["window_px"])
        if norm.get("crop_context") is not None:
            params["crop_context"] = float(norm["crop_context"])
        return {"name": "wbc_crop", "params": params}
    if kind == "spread_input":  # the karyotype detector: a whole spread, see karyotype.detector
        return {"name": "spread_input", "params": {k: norm[k] for k in ("work_scale", "max_side") if k in norm}}
    if meta.task == "detect":  # detectors: RGB uint8 / 255, normalised inside the network
        return {"name": "detector_rgb", "params": {"size": size}}
    params = {"in_channels": int(meta.in_channels), "size": size}
    if "mean" in norm and "std" in norm:
        params.update(mean=list(norm["mean"]), std=list(norm["std"]))
    return {"name": "generic", "params": params}


def _has_background(meta: CheckpointMeta) -> bool:
    """Detectors (Faster/Mask R-CNN) have one extra output for the background."""
    arch = meta.arch
    if arch == "recipe_model" and isinstance(meta.arch_config.get("base"), str):
        arch = meta.arch_config["base"]
    return "rcnn" in arch


def declared_outputs(meta: CheckpointMeta) -> Any:
    """``num_classes`` from ``arch_config`` (or the recipe wrapper's ``base_config``), else None."""
    cfg = meta.arch_config
    if meta.arch == "recipe_model" and isinstance(cfg.get("base_config"), dict):
        cfg = cfg["base_config"]
    return cfg.get("num_classes")


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
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"weights hold NaN or infinite values ({_short(sorted(bad))}); the model "
                              "diverged or the file is damaged, and its answers would be meaningless", path)
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
    # build a weightless skeleton first: its shapes must match the file before real memory is spent
    skeleton = _build(ckpt, "meta")
    if skeleton is not None:
        _check_shapes(skeleton, ckpt.state_dict, ckpt.path)
    model = _build(ckpt, None)
    load_state_strict(model, ckpt.state_dict, ckpt.path)
    model.eval()
    return model, ckpt.meta


def _build(ckpt: Checkpoint, device: str | None) -> torch.nn.Module | None:
    """Build the named network (on ``device="meta"``: shapes only, no memory; None if unsupported)."""
    from ..models.registry import build_model

    try:
        if device is None:
            return build_model(ckpt.meta.arch, **ckpt.meta.arch_config)
        with torch.device(device):
            return build_model(ckpt.meta.arch, **ckpt.meta.arch_config)
    except CheckpointError as exc:
        raise CheckpointError(exc.problem, ckpt.path) from None
    except (MemoryError, RecursionError) as exc:
        raise CheckpointError(f"architecture {ckpt.meta.arch!r} cannot be built from the metadata "
                              f"({type(exc).__name__})", ckpt.path) from None
    except Exception as exc:
        if device is not None:
            return None  # a builder that cannot run on the meta device; the real build decides
        raise CheckpointError(f"architecture {ckpt.meta.arch!r} cannot be built from the checkpoint's "
                              f"arch_config ({type(exc).__name__}: {str(exc)[:160]})", ckpt.path) from None


def _check_shapes(skeleton: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | None) -> None:
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    wrong = sorted(k for k in set(own) & set(state) if own[k] != tuple(state[k].shape))
    missing = sorted(set(own) - set(state))
    if wrong or missing:
        problems = []
        if missing:
            problems.append(f"missing weights: {_short(missing)}")
        if wrong:
            problems.append("shape mismatch: " + _short(
                [f"{k} {tuple(state[k].shape)} vs model {own[k]}" for k in wrong]))
        raise CheckpointError("weights do not fit the architecture: " + "; ".join(problems), path)


def check_run_folder(out: str | Path | None, task: str, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to train ``task`` into a folder that holds another task's trained model.

    ``train hpa --out runs/wbc1`` would replace a trained WBC model without a word;
    it needs ``--overwrite``.  ``--resume`` into another task's run is always refused
    (there is nothing of this task to resume).
    """
    from ..errors import CellClassError

    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CellClassError("--out must be a folder, but a file of that name exists", out)
    if not out.is_dir():
        return
    for ck in sorted(out.glob("*" + SUFFIX)):
        try:
            other = read_meta(ck).task
        except CheckpointError:
            continue  # not ours or damaged: nothing of a known task to protect
        if other == task:
            continue
        if resume:
            raise CellClassError(
                f"--resume: this folder holds a {other!r} run ({ck.name}), not a {task!r} run; "
                "resume with the task it was started with, or choose another --out", out)
        if not overwrite:
            raise CellClassError(
                f"this folder holds a trained {other!r} model ({ck.name}); training {task!r} here would "
                "replace it. Choose another --out, or pass --overwrite", out)
