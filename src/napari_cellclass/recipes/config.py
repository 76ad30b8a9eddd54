"""The :class:`Recipe`: one JSON/YAML-able description of how a model is trained.

Precedence (lowest to highest): built-in defaults < the task's defaults < the
recipe file (``opts.recipe``) < command-line knobs (``opts.lr``, ``opts.epochs``,
``opts.batch_size``, ``--set key=value`` in ``opts.extra``). Tasks call::

    recipe = Recipe.from_options(opts, loss="focal", lr=3e-4, epochs=20)
    recipe.apply_to_model(model)                 # activation swap, dropout, cosine head
    loss = recipe.make_loss(num_classes, multilabel=False)
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler, per_batch = recipe.make_scheduler(optimizer, len(batches), recipe.epochs)
    fit(..., regularizer=recipe.regularizer(),
        early_stopping_patience=recipe.early_stopping_patience)
    arch, arch_config = recipe.arch_config(arch, arch_config)   # for CheckpointMeta
    meta.training["recipe"] = recipe.to_dict()
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InputError
from . import losses as L
from .activations import ACTIVATIONS, swap_activations
from .regularization import add_dropout_before, find_head, l1_penalty, make_dropconnect
from .schedules import canonical_schedule
from .schedules import make_scheduler as _make_scheduler

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw")
_OPT_ALIASES = {"adam_w": "adamw", "rms": "rmsprop", "rmsprop": "rmsprop", "nag": "nesterov"}

# short names accepted in --set / recipe files
_FIELD_ALIASES = {
    "early_stopping": "early_stopping_patience", "patience": "early_stopping_patience",
    "wd": "weight_decay", "l2": "weight_decay", "scheduler": "schedule", "lr_schedule": "schedule",
    "opt": "optimizer", "drop_connect": "dropconnect", "batch": "batch_size", "aug": "augment",
    "augmentation": "augment", "norm": "normalization",
}


@dataclass
class Recipe:
    """How to train: loss, optimiser, LR schedule, regularisation, activation, budget."""

    loss: str = "cross_entropy"
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: list[float] | None = None
    gamma: float = 0.1
    decay_rate: float = 0.5
    power: float = 1.0
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    center_weight: float = 0.01
    center_alpha: float = 0.5
    margin: float | None = None
    scale: float = 16.0
    l1: float = 0.0
    dropout: float = 0.0
    dropconnect: float = 0.0
    activation: str | None = None
    normalization: str = "batchnorm"
    augment: bool = True
    early_stopping_patience: int | None = None
    grad_clip: float | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path | None = None) -> "Recipe":
        r = cls()
        r.update(d, source=source)
        return r

    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        """Read a ``.json`` or ``.yaml``/``.yml`` recipe (a flat mapping of fields)."""
        return cls.from_dict(_read_mapping(Path(path)), source=path)

    @classmethod
    def from_options(cls, opts: Any, **task_defaults: Any) -> "Recipe":
        """Recipe for a task run: defaults < task_defaults < opts.recipe file < opts knobs."""
        r = cls()
        r.update(task_defaults, strict=False)
        recipe_path = getattr(opts, "recipe", None)
        if recipe_path:
            r.update(_read_mapping(Path(recipe_path)), source=recipe_path)
        knobs: dict[str, Any] = {}
        for name in ("lr", "epochs", "batch_size"):
            v = getattr(opts, name, None)
            if v is not None:
                knobs[name] = v
        if getattr(opts, "seed", None) is not None:
            knobs["seed"] = opts.seed
        extra = dict(getattr(opts, "extra", None) or {})
        for k, v in extra.items():
            key = _FIELD_ALIASES.get(k, k)
            if key in _FIELD_NAMES and key != "extra":
                knobs[key] = v
        r.update(knobs, strict=False, source="options")
        return r

    def update(self, d: dict[str, Any], *, strict: bool = True, source: str | Path | None = None) -> "Recipe":
        """Set fields from a mapping, each coerced to its type.

        With ``strict`` (recipe files, :meth:`from_dict`) an unknown key is an error
        naming it (with the closest known field); task-specific knobs belong under
        ``extra:``.  Without ``strict`` (task defaults) unknown keys go to ``extra``.
        """
        if not isinstance(d, dict):
            raise InputError(f"a recipe must be a mapping of option: value, got {type(d).__name__}", source)
        unknown = []
        for k, v in d.items():
            key = _FIELD_ALIASES.get(str(k), str(k))
            if key == "extra":
                if not isinstance(v, dict):
                    raise InputError(f"recipe 'extra' must be a mapping, got {type(v).__name__}", source)
                self.extra.update(v)
            elif key in _FIELD_NAMES:
                try:
                    setattr(self, key, _coerce(key, v))
                except (TypeError, ValueError, OverflowError):
                    raise InputError(f"bad training recipe: {k} = {str(v)[:60]!r} is not a valid "
                                     f"{_type_name(key)}", source) from None
            elif key in SCHEDULE_EXTRAS:
                self.extra[key] = v
            else:
                self.extra[key] = v
                unknown.append(str(k))
        if strict and unknown and str(source) != "options":
            import difflib

            known = sorted((_FIELD_NAMES - {"extra"}) | set(_FIELD_ALIASES) | set(SCHEDULE_EXTRAS))
            hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, known, 1)) else "")
                     for u in unknown[:5]]
            raise InputError(f"unknown recipe key(s): {', '.join(hints)}; task-specific options go under "
                             "'extra:'", source)
        try:
            self.validate()
        except ValueError as exc:
            raise InputError(f"bad training recipe: {exc}", source) from None
        return self

    def validate(self) -> None:
        self.loss = L.canonical_loss(self.loss)
        self.optimizer = _canonical_optimizer(self.optimizer)
        self.schedule = canonical_schedule(self.schedule)
        if self.activation is not None and self.activation.lower().replace("-", "_") not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if self.normalization not in ("batchnorm", "bn", "batch_renorm", "renorm", "none"):
            raise ValueError(f"unknown normalization {self.normalization!r}; choose batchnorm or batch_renorm")
        for name in ("dropout", "dropconnect", "label_smoothing"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            self.early_stopping_patience = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in the checkpoint's ``training`` summary)."""
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else _yaml_dump(self.to_dict())
        path.write_text(text)
        return path

    # ------------------------------------------------------------------ pieces
    def make_loss(self, num_classes: int, multilabel: bool = False) -> nn.Module:
        """The loss module, called as ``loss(logits, targets[, features])``."""
        ls = self.label_smoothing
        if self.loss == "label_smoothing" and ls == 0:
            ls = 0.1
        if self.loss in ("cross_entropy", "label_smoothing"):
            return L.CrossEntropy(multilabel=multilabel, label_smoothing=ls)
        if self.loss == "focal":
            return L.FocalLoss(self.focal_gamma, self.focal_alpha, multilabel=multilabel, label_smoothing=ls)
        if self.loss == "hinge":
            return L.HingeLoss(self.margin if self.margin is not None else 1.0, multilabel=multilabel)
        if multilabel:
            raise InputError(f"loss {self.loss!r} is for single-label classification; use cross_entropy or focal")
        if self.loss == "cosface":
            return L.CosineMarginLoss(self.margin if self.margin is not None else 0.35, self.scale, ls)
        # centre loss: cross-entropy + weighted centre term on the head's input features
        return L.WithCenter(L.CrossEntropy(label_smoothing=ls), num_classes, self.center_weight, self.center_alpha)

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """torch's own optimiser; ``weight_decay`` is the L2 penalty (decoupled for AdamW)."""
        if isinstance(params, nn.Module):
            params = params.parameters()
        params = [p for p in params if getattr(p, "requires_grad", True)] if not _is_groups(params) else params
        o, lr, wd = self.optimizer, self.lr, self.weight_decay
        if o == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd)
        if o == "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=wd)
        if o == "nesterov":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=True, weight_decay=wd)
        if o == "adagrad":
            return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
        if o == "adadelta":
            return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
        if o == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
        if o == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd if wd else 0.01)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int | None = None) -> tuple[Any, bool]:
        """``(scheduler, per_batch)`` for ``fit``; ``(None, False)`` for a constant rate."""
        return _make_scheduler(
            optimizer, self.schedule, steps_per_epoch, epochs or self.epochs,
            milestones=self.milestones, gamma=self.gamma, decay_rate=self.decay_rate, power=self.power,
            min_lr=self.min_lr, warmup_epochs=self.warmup_epochs, seed=self.seed,
            **{k: v for k, v in self.extra.items() if k in ("num_periods", "alpha", "beta", "initial_variance", "variance_decay")},
        )

    def regularizer(self) -> Callable[[nn.Module], torch.Tensor] | None:
        """Extra loss term for ``fit(regularizer=...)`` (L1); None when unused."""
        return l1_penalty(self.l1) if self.l1 > 0 else None

    def apply_to_model(self, model: nn.Module) -> nn.Module:
        """Change the network in place as the recipe says; call before ``make_optimizer``.

        Training-only changes (dropout, DropConnect) keep the weight names; the
        inference-relevant ones (activation, cosine head, batch renorm) are also
        recorded by :meth:`arch_config` so the checkpoint can be rebuilt.
        """
        _apply_structure(model, self.structure())
        found = find_head(model)
        if found is not None:
            head = found[2]
            if self.dropout > 0:
                add_dropout_before(head, self.dropout)
            if self.dropconnect > 0 and type(head) is nn.Linear:
                make_dropconnect(head, self.dropconnect)
        return model

    def structure(self) -> dict[str, Any]:
        """Inference-relevant changes to the architecture (empty when none)."""
        s: dict[str, Any] = {}
        if self.activation and self.activation.lower() != "relu":
            s["activation"] = self.activation.lower().replace("-", "_")
        if self.loss == "cosface":
            s["cosine_head"] = self.scale
        if self.normalization in ("batch_renorm", "renorm"):
            s["batch_renorm"] = True
        return s

    def arch_config(self, arch: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The (arch, arch_config) to store in CheckpointMeta so the trained net can be rebuilt.

        Returns the inputs unchanged when the recipe does not alter the architecture;
        otherwise wraps them in the ``"recipe_model"`` builder.
        """
        s = self.structure()
        if not s:
            return arch, config
        return "recipe_model", {"base": arch, "base_config": dict(config), "structure": s}

    def summary(self) -> str:
        bits = [f"loss={self.loss}", f"optimizer={self.optimizer}", f"lr={self.lr:g}", f"schedule={self.schedule}"]
        for name in ("weight_decay", "l1", "dropout", "dropconnect", "label_smoothing"):
            if getattr(self, name):
                bits.append(f"{name}={getattr(self, name):g}")
        if self.activation:
            bits.append(f"activation={self.activation}")
        if self.early_stopping_patience:
            bits.append(f"early_stopping={self.early_stopping_patience}")
        return ", ".join(bits)


_FIELD_NAMES = {f.name for f in fields(Recipe)}
#: Extra knobs of some schedules, accepted at the top level of a recipe (kept in ``extra``).
SCHEDULE_EXTRAS = ("num_periods", "alpha", "beta", "initial_variance", "variance_decay")
#: A recipe file larger than this is not a recipe.
MAX_RECIPE_BYTES = 1 << 20
_FIELD_TYPES = {f.name: f.type for f in fields(Recipe)}


def _apply_structure(model: nn.Module, s: dict[str, Any]) -> nn.Module:
    if s.get("activation"):
        swap_activations(model, s["activation"])
    if s.get("batch_renorm"):
        from .normalization import convert_to_batch_renorm

        convert_to_batch_renorm(model)
    if s.get("cosine_head"):
        found = find_head(model)
        if found is None:
            raise InputError("the cosine-margin loss needs a model with a Linear head")
        L.make_cosine_head(found[2], float(s["cosine_head"]))
    return model


def build_recipe_model(base: str, base_config: dict[str, Any] | None = None, structure: dict[str, Any] | None = None) -> nn.Module:
    """Builder for checkpoints whose recipe changed the architecture (see ``Recipe.arch_config``)."""
    from ..models.registry import build_model

    model = build_model(base, **(base_config or {}))
    return _apply_structure(model, structure or {})


def _register() -> None:
    from ..models.registry import register

    register("recipe_model")(build_recipe_model)


_register()


def _canonical_optimizer(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    key = _OPT_ALIASES.get(key, key)
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return key


def _is_groups(params: Any) -> bool:
    return isinstance(params, (list, tuple)) and bool(params) and isinstance(params[0], dict)


def _type_name(key: str) -> str:
    t = str(_FIELD_TYPES.get(key, "value")).split(" ")[0].replace("|", "").strip()
    return {"float": "number", "int": "whole number", "bool": "true/false", "str": "text"}.get(t, t)


def _coerce(key: str, v: Any) -> Any:
    """The field's declared type, or TypeError/ValueError (mappings and lists only where lists belong)."""
    t = str(_FIELD_TYPES.get(key, ""))
    if v is None:
        return None
    if isinstance(v, (dict, set)) or (isinstance(v, list) and key != "milestones"):
        raise TypeError(f"{key} cannot be a {type(v).__name__}")
    if t.startswith(("float", "int")) and isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{key} must be finite")
    if key == "milestones":
        if isinstance(v, (int, float)):
            return [float(v)]
        if isinstance(v, str):
            return [float(x) for x in v.split(",") if x]
        return [float(x) for x in v]
    if key == "early_stopping_patience":
        if isinstance(v, bool):
            return 5 if v else None
        return int(v)
    if key == "activation":
        return str(v)
    if t.startswith("float"):
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{key} must be finite")
        return f
    if t.startswith("int"):
        if isinstance(v, str):
            v = float(v) if any(c in v for c in ".eE") else int(v)
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{key} must be a whole number")
        return int(v)
    if t.startswith("bool"):
        if isinstance(v, str):
            return v.lower() in ("1", "true", "yes", "on")
        return bool(v)
    if t.startswith("str"):
        return str(v)
    return v


def _read_mapping(path: Path) -> dict[str, Any]:
    """A recipe file as a mapping: at most 1 MB, YAML without aliases/anchors (no alias bombs)."""
    if not path.exists():
        raise InputError("recipe file does not exist", path)
    from ..io.limits import check_regular_file

    check_regular_file(path, "recipe file")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise InputError(f"recipe file is larger than {MAX_RECIPE_BYTES // 1024} KB; a recipe is a short "
                         "list of options", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"recipe file could not be read as UTF-8 text ({exc.__class__.__name__})", path) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = _safe_yaml(text)
    except InputError as exc:
        raise InputError(exc.problem, path) from None
    except RecursionError:
        raise InputError("recipe file is nested too deeply", path) from None
    except Exception as exc:
        raise InputError(f"recipe file could not be parsed: {' '.join(str(exc).split())[:200]}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("recipe file must hold a mapping of option: value", path)
    return data


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses anchors/aliases: a 1 KB alias bomb cannot expand to gigabytes."""
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.AliasEvent):
                raise InputError("recipe file uses YAML aliases (*name); write the values out instead")
            event = self.peek_event()
            if getattr(event, "anchor", None):
                raise InputError("recipe file uses YAML anchors (&name); write the values out instead")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_dump(d: dict[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(d, sort_keys=False)
    except ImportError:
        return json.dumps(d, indent=2)
