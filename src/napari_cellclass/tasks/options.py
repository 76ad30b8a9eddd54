"""Typed task options (``--set KEY=VALUE``): one table per task, one parser for the CLI and the Train widget.

Each task declares the options its ``train``, ``evaluate`` and ``predict`` read,
with a type, a default and one line of help.  :func:`parse_settings` turns
``KEY=VALUE`` text into typed values and refuses a key the command does not read,
naming the closest valid one (``lamda`` -> ``lam``), so a misspelt option is never
silently dropped.  Training also accepts every :class:`~napari_cellclass.recipes.Recipe`
field (``loss``, ``optimizer``, ``schedule``, ``l1``, ...) and their short aliases.

Defaults shown as ``auto`` depend on other choices (``--quick``, the data, the
architecture); the task documents how.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

TRAIN, EVALUATE, PREDICT = "train", "evaluate", "predict"
USE = (EVALUATE, PREDICT)
ALL = (TRAIN, EVALUATE, PREDICT)
AUTO = "auto"

TYPES = ("int", "float", "bool", "str", "list[int]", "list[float]", "list[str]", "int|list[int]",
         "float|list[float]")


@dataclass(frozen=True)
class Option:
    """One ``--set`` key: its type (one of :data:`TYPES`), default, help and the commands that read it."""

    name: str
    type: str
    default: Any
    help: str
    commands: tuple[str, ...] = (TRAIN,)
    choices: tuple[str, ...] = ()  # for text options with a fixed set of values
    #: allowed range of a number (each element of a list), e.g. ``"(0,1)"``, ``"[1,)"``, ``"(0,)"``, ``"[1,4096]"``;
    #: round brackets exclude the bound, an empty bound is unbounded; "" = any number
    range: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")
        if self.range:
            _parse_range(self.range)


def _opt(name: str, type_: str, default: Any, help_: str, commands: tuple[str, ...] = (TRAIN,),
         choices: tuple[str, ...] = (), range: str = "") -> Option:
    return Option(name, type_, default, help_, commands, choices, range)


def _parse_range(spec: str) -> tuple[float | None, float | None, bool, bool]:
    """``"(0,1)"`` -> (low, high, low included, high included); an empty bound is None (unbounded)."""
    m = re.fullmatch(r"\s*([\[(])\s*([^,]*?)\s*,\s*([^,]*?)\s*([\])])\s*", spec)
    if not m:
        raise ValueError(f"bad range {spec!r}")
    lo = float(m.group(2)) if m.group(2) else None
    hi = float(m.group(3)) if m.group(3) else None
    return lo, hi, m.group(1) == "[", m.group(4) == "]"


def range_words(name: str, spec: str) -> str:
    """``"(0,1)"`` -> ``"0 < val_fraction < 1"``; ``"[1,)"`` -> ``"batch_size >= 1"``."""
    lo, hi, lo_in, hi_in = _parse_range(spec)

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(v)

    if lo is not None and hi is not None:
        return f"{num(lo)} {'<=' if lo_in else '<'} {name} {'<=' if hi_in else '<'} {num(hi)}"
    if lo is not None:
        return f"{name} {'>=' if lo_in else '>'} {num(lo)}"
    if hi is not None:
        return f"{name} {'<=' if hi_in else '<'} {num(hi)}"
    return f"any {name}"


def check_range(name: str, spec: str, value: Any) -> None:
    """An :class:`InputError` naming the option and its allowed range when a number (or a list's element) is outside."""
    if not spec or value is None:
        return
    lo, hi, lo_in, hi_in = _parse_range(spec)
    for v in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        bad = (lo is not None and (v < lo or (v == lo and not lo_in))) or (
            hi is not None and (v > hi or (v == hi and not hi_in)))
        if bad:
            raise InputError(f"option {name}: {v!r} is out of range; allowed: {range_words(name, spec)}")


# options several tasks share
_VAL_FRACTION = _opt("val_fraction", "float", 0.2, "share held out for validation (also evaluate split=val)", ALL)
_TRAINED_ON = _opt("trained_on", "str", AUTO, "what the model card says the model learnt from (default: the data path)")
_TIME_BUDGET = _opt("time_budget_s", "float", None, "stop training after this many seconds (best checkpoint kept)")
_AMP = _opt("amp", "bool", AUTO, "mixed precision on a GPU (default: the device policy's choice)")
_SPLIT_SEED = _opt("split_seed", "int", AUTO, "seed of the train/validation split (default: --seed)")
_SPLIT_RULE = _opt("split_rule", "str", AUTO, "text describing the split in the checkpoint (normally written by the task)")
_TILED = [
    _opt("tiled", "bool", AUTO, "read a large image lazily and process it tile by tile (default: images over 64 Mpixel)",
         (PREDICT,)),
    _opt("tile", "int", AUTO, "tile size in pixels for large images / detection (default: per task)", (PREDICT, EVALUATE)),
    _opt("overlap", "int", AUTO, "tile overlap in pixels (must exceed the largest object)", (PREDICT, EVALUATE)),
]
_DETECTOR_OUT = [
    _opt("score_threshold", "float", AUTO, "keep detections above this score (default: the model's)", USE),
    _opt("nms_iou", "float", 0.5, "IoU above which overlapping detections are merged", USE),
]

TASK_OPTIONS: dict[str, list[Option]] = {
    "hpa": [
        _VAL_FRACTION, _TRAINED_ON, _TIME_BUDGET,
        _opt("depth", "int", 50, "ResNet depth (18, 34, 50; --quick: 10)"),
        _opt("width", "int", 64, "channels of the first stage (--quick: 8)"),
        _opt("field", "str", "resize", "large fields: resize to the model input, or tile", (PREDICT,),
             ("resize", "tile")),
        _opt("cell_model", "str", AUTO, "single-cell route: the cell-segmentation bioimage.io package", (PREDICT,)),
        _opt("nucleus_model", "str", AUTO, "single-cell route: the nucleus-segmentation bioimage.io package",
             (PREDICT,)),
        _opt("cell_classifier", "str", AUTO, "single-cell route: the single-cell classifier bioimage.io package",
             (PREDICT,)),
        *_TILED,
    ],
    "wbc": [
        _VAL_FRACTION, _TRAINED_ON, _TIME_BUDGET, _SPLIT_SEED, _SPLIT_RULE,
        _opt("loss", "str", "triplet", "ce, center or triplet (cross-entropy + lam * centre-triplet hinge)"),
        _opt("lam", "float", 0.5, "weight of the metric-learning term"),
        _opt("margin", "float", 0.5, "margin of the centre-triplet hinge"),
        _opt("centers", "str", "running", "class centres: running (moving average) or learned"),
        _opt("mode", "str", "seed", "triplet mining: seed (the paper's) or per_class"),
        _opt("normalize", "bool", True, "L2-normalise the features of the metric term"),
        _opt("balance", "str", "sampler", "class imbalance: sampler, weights or none", choices=("sampler", "weights", "none")),
        _opt("include_basophil", "bool", False, "learn BASOPHIL as a fifth class"),
        _opt("split", "str", "group", "train: group (by source image) or smear; evaluate: all, train, test or val", ALL),
        _opt("crop", "str", AUTO, "fixed (fixed pixel scale, for smears with boxes) or box", choices=("fixed", "box")),
        _opt("window", "float", 256.0, "fixed crops: source pixels the classifier sees"),
        _opt("arch", "str", "ibn_resnet34", "ibn_resnet34 or resnet34 (also --arch)"),
        _opt("width", "int", AUTO, "channels of the first stage (fixed crops: 16, --quick: 8, else 64)"),
        _opt("layers", "list[int]", AUTO, "blocks per stage, e.g. 3,4,6,3"),
        _opt("tta", "int", AUTO, "dihedral test-time views in validation (fixed crops: 8, else 1)"),
        _opt("epoch_size", "int", AUTO, "fixed crops: samples per epoch (512; --quick: 4 batches)"),
        _opt("select", "str", AUTO, "checkpoint kept: last (fixed crops) or best (by validation macro F1)",
             choices=("last", "best")),
        _opt("boxes", "str", AUTO, "smears: auto, detector, sidecar or whole (classify whole images)", (PREDICT,),
             ("auto", "detector", "sidecar", "whole")),
        _opt("sidecar", "bool", True, "use VOC/COCO box files beside smears", (PREDICT,)),
        _opt("detector", "str", AUTO, "blood-cell detector for smears (also --detector; default: the built-in)",
             (PREDICT,)),
        _opt("score_threshold", "float", AUTO, "detector score threshold (default: the detector's)", (PREDICT,)),
        _opt("wbc_threshold", "float", AUTO, "detector score threshold for white cells (default: the detector's "
             "operating point, chosen for white-cell recall)", (PREDICT,)),
        _opt("detector_tta", "bool", AUTO, "detect each smear twice (as is and turned 180 deg) and fuse the boxes "
             "(default: the detector's operating point)", (PREDICT,)),
        _opt("report", "bool", True, "write a PDF report per smear", (PREDICT,)),
        *_TILED,
    ],
    "chromosome": [
        _VAL_FRACTION, _TRAINED_ON, _TIME_BUDGET, _AMP,
        _opt("straighten", "bool", False, "straighten bent chromosomes before classifying"),
        _opt("canvas", "str", "relative", "crop canvas: relative (to the cell's chromosome length) or absolute",
             choices=("relative", "absolute")),
        _opt("pad_to", "int", AUTO, "absolute canvas size in pixels (default: 98th percentile of lengths)"),
        _opt("beta", "float", 0.1, "GRiCoL: weight of the grid (local) loss"),
        _opt("lam", "float", 150.0, "GRiCoL: weight of the consistency term (alias: lambda)"),
        _opt("lambda", "float", 150.0, "alias of lam"),
        _opt("input_size", "int|list[int]", AUTO, "network input H,W (448,456; --quick 64,68)"),
        _opt("width", "float", AUTO, "channel multiplier (GRiCoL 0.5, ResNet-50 1.0, --quick 0.125)"),
        _opt("layers", "int|list[int]", AUTO, "blocks per stage, e.g. 3,4,6,3"),
        _opt("grid", "int", 3, "GRiCoL/GRiL: grid of local heads"),
        _opt("overlap", "bool", True, "GRiCoL/GRiL: overlapping grid tiles"),
        _opt("tile", "int|list[int]", AUTO, "GRiCoL/GRiL: tile size H,W"),
        _opt("calibrate", "bool", True, "after training, fit the softmax temperature on half the validation "
             "cells and report the calibration error (ECE) on the other half"),
        _opt("degrade", "float", 0.0, "share of training crops blurred to a lower resolution and given noise "
             "(other labs' scanners)"),
        _opt("split", "str", "all", "evaluate: all crops, or val (the training split's validation cells)", USE),
        _opt("full_model", "bool", False, "use the full GRiCoL model (global + local heads)", USE),
        _opt("tta", "bool", True, "average with the flipped crop", USE),
    ],
    "detect": [
        _VAL_FRACTION, _TRAINED_ON, _TIME_BUDGET, _SPLIT_SEED, _SPLIT_RULE,
        _opt("classes", "list[str]", AUTO, "class names, in order (default: those in the annotations)"),
        _opt("allow_new_classes", "bool", False, "accept labels not in --set classes"),
        _opt("split", "str", "image", "train: image or smear (groups of overlapping fields); evaluate: all, train or val",
             ALL),
        _opt("validate", "bool", True, "score the validation images after each epoch"),
        _opt("pixel_scale", "float", AUTO, "CenterNet: resize factor of the images (default: from the boxes)"),
        _opt("min_size", "int", AUTO, "R-CNN: shorter image side (also --size)"),
        _opt("max_size", "int", AUTO, "R-CNN: longest image side"),
        _opt("masks", "bool", False, "fasterrcnn_tiny: also learn instance masks"),
        _opt("width", "int", AUTO, "fasterrcnn_tiny: backbone width"),
        _opt("anchor_sizes", "list[int]", AUTO, "fasterrcnn_tiny: anchor sizes in pixels"),
        _opt("widths", "list[int]", AUTO, "CenterNet: channels per stage"),
        _opt("depths", "list[int]", AUTO, "CenterNet: blocks per stage"),
        _opt("head", "int", AUTO, "CenterNet: head channels"),
        _opt("head_hidden", "int", AUTO, "CenterNet: hidden channels of the head"),
        *_DETECTOR_OUT,
        *_TILED,
    ],
    "karyotype": [
        _VAL_FRACTION, _TRAINED_ON, _TIME_BUDGET, _AMP,
        _opt("widths", "list[int]", AUTO, "detector U-Net channels per level (8,16,32,48,64; --quick smaller)"),
        _opt("patch", "int", 192, "training patch size in pixels (--quick: 128)"),
        _opt("per_spread", "int", 4, "patches per spread per epoch"),
        _opt("eval_every", "int", 5, "validate every N epochs (and after the last)"),
        _opt("segmenter", "str", AUTO, "auto (a detector where one exists), detector or threshold (classical)", USE,
             ("auto", "detector", "threshold")),
        _opt("detector_model", "str", AUTO, "chromosome detector (built-in name or checkpoint)", USE),
        _opt("detector_threshold", "float", AUTO, "chromosome detector score threshold (default: the detector's "
             "own, chosen on its training spreads; lower finds more chromosomes and more debris)", USE),
        _opt("report", "bool", True, "write a PDF report per spread", (PREDICT,)),
        _opt("pairing", "bool", True, "pair homologues (46 slots) after classifying", USE),
        _opt("reject", "bool", True, "set aside detected objects that are confidently not chromosomes (nuclei, "
             "debris, stain blobs)", USE),
        _opt("full_model", "bool", False, "use the full GRiCoL model", USE),
        _opt("split", "str", "all", "evaluate: all spreads, or val (those the built-ins held out)", (EVALUATE,)),
        _opt("step", "int", 1, "evaluate every K-th spread", (EVALUATE,)),
        _opt("limit", "int", AUTO, "evaluate the first N spreads", (EVALUATE,)),
        _opt("segment_only", "bool", False, "score segmentation alone (also MODEL none)", (EVALUATE,)),
    ],
}


#: allowed ranges (see :attr:`Option.range`), the same for every task that reads the option unless
#: a task names its own below; sizes are bounded so that no value asks for more memory than exists
_RANGES: dict[str, str] = {
    "val_fraction": "(0,1)", "time_budget_s": "(0,)", "split_seed": "[0,)",
    "depth": "[1,200]", "width": "[1,1024]", "layers": "[1,64]", "lam": "[0,)", "lambda": "[0,)",
    "margin": "[0,)", "window": "(0,4096]", "tta": "[1,64]", "epoch_size": "[1,)", "tile": "[16,16384]",
    "overlap": "[0,8192]", "pad_to": "[8,4096]", "beta": "[0,)", "input_size": "[8,2048]", "grid": "[1,16]",
    "degrade": "[0,1]", "pixel_scale": "(0,16]", "min_size": "[16,8192]", "max_size": "[16,8192]",
    "anchor_sizes": "[1,4096]", "widths": "[1,1024]", "depths": "[1,64]", "head": "[1,1024]",
    "head_hidden": "[1,1024]", "score_threshold": "[0,1]", "wbc_threshold": "[0,1]", "detector_threshold": "(0,1)", "nms_iou": "(0,1]", "patch": "[16,4096]",
    "per_spread": "[1,10000]", "eval_every": "[1,)", "step": "[1,)", "limit": "[1,)",
}
_TASK_RANGES: dict[str, dict[str, str]] = {
    "chromosome": {"width": "(0,16]", "tile": "[4,2048]"},  # a channel multiplier; GRiCoL tiles of the crop
}
for _task, _table in TASK_OPTIONS.items():
    for _i, _o in enumerate(_table):
        _r = _TASK_RANGES.get(_task, {}).get(_o.name, _RANGES.get(_o.name, ""))
        if _r and _o.type != "bool":
            _table[_i] = Option(_o.name, _o.type, _o.default, _o.help, _o.commands, _o.choices, _r)

#: ranges of the training-recipe fields given with ``--set`` (and of the CLI's own numbers)
RECIPE_RANGES: dict[str, str] = {
    "lr": "(0,10]", "momentum": "[0,1)", "weight_decay": "[0,)", "gamma": "(0,)", "decay_rate": "(0,)",
    "power": "(0,)", "min_lr": "[0,)", "warmup_epochs": "[0,)", "epochs": "[1,100000]", "batch_size": "[1,65536]",
    "label_smoothing": "[0,1)", "focal_gamma": "[0,)", "focal_alpha": "[0,1]", "center_weight": "[0,)",
    "center_alpha": "[0,1]", "margin": "[0,)", "scale": "(0,)", "l1": "[0,)", "dropout": "[0,1)",
    "dropconnect": "[0,1)", "grad_clip": "(0,)", "seed": "[0,)", "num_periods": "(0,)", "initial_variance": "[0,)",
    "variance_decay": "[0,)",
}
CLI_RANGES: dict[str, str] = {"epochs": "[1,100000]", "batch_size": "[1,65536]", "lr": "(0,10]",
                              "size": "[8,8192]", "seed": "[0,)", "workers": "[0,256]", "chunk": "[1,)", "n": "[1,)"}


def _recipe_options() -> list[Option]:
    """Every Recipe field as a training option (defaults: the task's recipe, shown as ``auto``)."""
    from dataclasses import fields

    from ..recipes.config import SCHEDULE_EXTRAS, Recipe

    kinds = {"float": "float", "int": "int", "bool": "bool", "str": "str"}
    out = []
    for f in fields(Recipe):
        if f.name in ("extra",):
            continue
        t = str(f.type).replace(" ", "")
        if f.name == "milestones":
            type_ = "list[float]"
        else:
            type_ = kinds.get(t.split("|")[0], "str")
        out.append(Option(f.name, type_, AUTO, _RECIPE_HELP + " (docs/training.md)", (TRAIN,)))
    out += [Option(k, "float", AUTO, "schedule parameter (docs/training.md)", (TRAIN,)) for k in SCHEDULE_EXTRAS]
    return out


def recipe_aliases() -> dict[str, str]:
    from ..recipes.config import _FIELD_ALIASES

    return dict(_FIELD_ALIASES)


def options_for(task: str, command: str = TRAIN) -> dict[str, Option] | None:
    """The options ``command`` of ``task`` reads, by name; None for a task without a table (accepts anything)."""
    table = TASK_OPTIONS.get(task)
    if table is None:
        return None
    out: dict[str, Option] = {}
    if command == TRAIN:
        out.update({o.name: o for o in _recipe_options()})
        aliases = recipe_aliases()
        for alias, target in aliases.items():
            if target in out:
                out[alias] = Option(alias, out[target].type, AUTO, f"{_RECIPE_HELP}: alias of {target}", (TRAIN,))
    out.update({o.name: o for o in table if command in o.commands})
    return out


def _split_items(items: Iterable[str] | str) -> list[str]:
    if isinstance(items, str):  # the widget's one line: "loss=focal, schedule=cosine" or space separated
        return [p.strip().rstrip(",") for p in items.replace(";", " ").split() if p.strip().rstrip(",")]
    return list(items)


def parse_settings(task: str, command: str, items: Iterable[str] | str) -> dict[str, Any]:
    """``KEY=VALUE`` items (a list, or one line) -> typed options for ``command`` of ``task``.

    A key the command does not read is an :class:`InputError` that names the closest valid
    key; a value that is not of the option's type is one too.  Keys are normalised
    (``max-size`` = ``max_size``).
    """
    raw: dict[str, str] = {}
    for item in _split_items(items):
        if "=" not in item:
            raise InputError(f"setting {item!r} is not key=value (--set KEY=VALUE)")
        k, v = item.split("=", 1)
        raw[k.strip().replace("-", "_")] = v.strip()
    return coerce_settings(task, command, raw)


def coerce_settings(task: str, command: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and type a mapping of options (text or already-typed values), as :func:`parse_settings`."""
    table = options_for(task, command)
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).strip().replace("-", "_")
        if table is None:
            out[key] = parse_value(value) if isinstance(value, str) else value
            continue
        opt = table.get(key)
        if opt is None:
            raise InputError(unknown_key_message(task, command, key, table))
        out[key] = _coerce_recipe(opt, value) if opt.help.startswith(_RECIPE_HELP) else coerce(opt, value)
    return out


_RECIPE_HELP = "training recipe"


def _coerce_recipe(opt: Option, value: Any) -> Any:
    """Recipe fields are typed by the Recipe itself (``early_stopping=true`` means patience 5)."""
    from ..recipes.config import _FIELD_NAMES
    from ..recipes.config import _coerce as recipe_coerce

    name = recipe_aliases().get(opt.name, opt.name)
    value = parse_value(value) if isinstance(value, str) else value
    if isinstance(value, float) and not math.isfinite(value):  # `augment=-inf` is no setting of anything
        raise InputError(f"option {opt.name}: {value!r} is not a finite number")
    if name not in _FIELD_NAMES:  # schedule extras
        return coerce(opt, value)
    try:
        typed = recipe_coerce(name, value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"option {opt.name}: {str(value)[:60]!r} is not {_type_words(opt.type)}") from None
    if isinstance(typed, float) and not math.isfinite(typed):
        raise InputError(f"option {opt.name}: {str(value)[:60]!r} is not a finite number")
    check_range(opt.name, RECIPE_RANGES.get(name, ""), typed)
    return value


def unknown_key_message(task: str, command: str, key: str, table: Mapping[str, Option]) -> str:
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown option {key!r} for {command} {task}{hint} (the options: `cellclass train {task} --help`)"


def coerce(opt: Option, value: Any) -> Any:
    """``value`` (text or a Python value) as ``opt``'s type, or an InputError naming the option."""
    try:
        out = _coerce(opt.type, value)
    except (TypeError, ValueError):
        raise InputError(f"option {opt.name}: {str(value)[:60]!r} is not {_type_words(opt.type)}") from None
    if opt.choices and out is not None and str(out).lower() not in opt.choices:
        close = difflib.get_close_matches(str(out).lower(), opt.choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"option {opt.name}: {str(out)[:60]!r} is not one of {', '.join(opt.choices)}{hint}")
    check_range(opt.name, opt.range, out)
    return out


def _coerce(type_: str, value: Any) -> Any:
    if value is None:
        return None
    if "|" in type_:  # one value or a list of them
        one, many = type_.split("|")
        if isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value):
            return _coerce(many, value)
        return _coerce(one, value)
    if type_.startswith("list["):
        inner = type_[5:-1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(inner, v) for v in value]
    if isinstance(value, (list, tuple, dict, set)):
        raise TypeError("one value expected")
    if type_ == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError(value)
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if type_ == "int":
        if isinstance(value, bool):
            raise ValueError(value)
        f = float(value)
        if not f.is_integer():
            raise ValueError(value)
        return int(f)
    if type_ == "float":
        if isinstance(value, bool):
            raise ValueError(value)
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(value)
        return f
    return str(value)


def _type_words(type_: str) -> str:
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
            "list[int]": "a comma list of whole numbers", "list[float]": "a comma list of numbers",
            "list[str]": "a comma list of names", "int|list[int]": "a whole number or a comma list of them",
            "float|list[float]": "a number or a comma list of numbers"}[type_]


def parse_value(text: str) -> Any:
    """Untyped ``--set`` values (tasks without an option table): ints, floats, booleans, comma lists, else text."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t]
    return text


def format_help(task: str) -> str:
    """The text of ``cellclass train TASK --help`` after argparse's own: the task's options and defaults."""
    table = TASK_OPTIONS.get(task)
    if table is None:
        return f"task {task!r} declares no --set options"
    lines = [f"--set options of task {task!r} (KEY=VALUE; default in brackets):", "", "  train:"]
    width = max(len(o.name) + len(o.type) for o in table) + 4

    def row(o: Option) -> str:
        default = "-" if o.default is None else (",".join(map(str, o.default)) if isinstance(o.default, list)
                                                  else str(o.default).lower() if isinstance(o.default, bool)
                                                  else str(o.default))
        head = f"{o.name} ({o.type})"
        allowed = f" (allowed: {range_words(o.name, o.range)})" if o.range else ""
        return f"    {head.ljust(width)} [{default}]  {o.help}{allowed}"

    lines += [row(o) for o in table if TRAIN in o.commands]
    for command in USE:
        rows = [row(o) for o in table if command in o.commands]
        if rows:
            lines += ["", f"  {command}:", *rows]
    recipe = sorted(o.name for o in _recipe_options())
    import textwrap

    lines += ["", "  training recipe (train; defaults: the task's recipe, see docs/training.md):",
              textwrap.fill(", ".join(recipe), 100, initial_indent="    ", subsequent_indent="    "),
              textwrap.fill("aliases: " + ", ".join(f"{a}={t}" for a, t in sorted(recipe_aliases().items())), 100,
                            initial_indent="    ", subsequent_indent="    ")]
    return "\n".join(lines)
