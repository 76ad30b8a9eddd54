"""Built-in models: trained weights that ship with the package (or are fetched once by URL).

Each built-in is a model card ``weights/NAME.json`` beside its weights
``weights/NAME.safetensors`` (the one checkpoint format of
:mod:`napari_cellclass.engine.checkpoint`).  A card may instead carry ``url`` and
``sha256`` for weights too large to ship; those are fetched once into the user
cache.  Everything that accepts a model (CLI, API, widgets, tasks) passes what the
user gave to :func:`load_model` (:mod:`napari_cellclass.zoo.loaded`), the one place
that turns a name into a file (:func:`resolve_model`), so a built-in name works
wherever a path does.

``CELLCLASS_ZOO_DIR`` replaces the packaged folder (tests, site-wide model
folders); ``CELLCLASS_CACHE_DIR`` replaces the download cache.  No Qt here.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, WrongTaskError
from .provenance import SYNTHETIC_WARNING, is_synthetic, synthetic_warning

__all__ = [
    "list_models", "card", "default_model", "resolve_model", "is_builtin", "zoo_dir", "cache_dir",
    "accepted_tasks", "primary_metric", "load_model", "is_synthetic", "synthetic_warning", "SYNTHETIC_WARNING",
    "MAX_FILE_BYTES", "MAX_TOTAL_BYTES",
]

ZOO_ENV = "CELLCLASS_ZOO_DIR"
CACHE_ENV = "CELLCLASS_CACHE_DIR"
WEIGHTS_DIR = Path(__file__).parent / "weights"
SUFFIX = ".safetensors"
MAX_FILE_BYTES = 10 * 1024 * 1024  # one shipped weight file
MAX_TOTAL_BYTES = 30 * 1024 * 1024  # all shipped weights together
CARD_FORMAT = "napari-cellclass-model-card"
REQUIRED_FIELDS = ("name", "task", "arch", "classes", "sha256")

# checkpoint tasks a job accepts: karyotyping runs a chromosome classifier and its own detector
ACCEPTED_TASKS = {"karyotype": ("chromosome", "karyotype")}
TASK_ORDER = ["wbc", "detect", "chromosome", "hpa"]
# the validation metric that ranks models of a task (first one present in the card's metrics)
PRIMARY_METRICS = {
    "wbc": ["macro_f1", "balanced_accuracy", "accuracy"],
    "chromosome": ["accuracy", "macro_f1"],
    "detect": ["mAP50", "map50", "mAP"],
    "hpa": ["val_macro_f1", "macro_f1", "val_accuracy"],
}
TRAINING_DOCS = "docs/training.md#training-an-hpa-model-on-the-public-kaggle-data"


def zoo_dir() -> Path:
    """The folder of model cards: ``$CELLCLASS_ZOO_DIR`` or the package's ``zoo/weights``."""
    env = os.environ.get(ZOO_ENV, "").strip()
    return Path(env).expanduser() if env else WEIGHTS_DIR


def cache_dir() -> Path:
    """Where URL-registered weights are kept: ``$CELLCLASS_CACHE_DIR`` or the user cache."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cellclass")) / "models"


def accepted_tasks(task: str | None) -> tuple[str, ...] | None:
    """Checkpoint tasks usable for job ``task`` (``karyotype`` also takes ``chromosome`` classifiers)."""
    return None if task is None else ACCEPTED_TASKS.get(task, (task,))


# ----------------------------------------------------------------------------- registry
def _read_cards(folder: Path) -> dict[str, dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        if folder != WEIGHTS_DIR:
            raise InputError(f"model folder given by {ZOO_ENV} does not exist", folder)
        return cards
    for path in sorted(folder.glob("*.json")):
        try:
            c = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"model card is not valid JSON: {exc}", path) from None
        if not isinstance(c, dict):
            raise InputError("model card is not a JSON object", path)
        missing = [k for k in REQUIRED_FIELDS if k not in c]
        if missing:
            raise InputError(f"model card lacks field(s): {', '.join(missing)}", path)
        if c["name"] != path.stem:
            raise InputError(f"model card name {c['name']!r} does not match its file name", path)
        if not (folder / (path.stem + SUFFIX)).is_file() and not c.get("url"):
            raise InputError(f"model card has neither a weights file {path.stem + SUFFIX} nor a url", path)
        cards[c["name"]] = c
    return cards


def _cards() -> dict[str, dict[str, Any]]:
    return _read_cards(zoo_dir())


def _community() -> dict[str, dict[str, Any]]:
    """The downloadable HPA community models (:mod:`.foreign`): part of the packaged registry only,
    so a model folder given by ``CELLCLASS_ZOO_DIR`` holds exactly its own cards."""
    if os.environ.get(ZOO_ENV, "").strip():
        return {}
    from .foreign import community_cards

    return {c["name"]: c for c in community_cards()}


def is_downloadable_package(c: dict[str, Any]) -> bool:
    """A card of a bioimage.io package (fetched into the cache), not of a napari-cellclass checkpoint."""
    return c.get("format") == "bioimageio"


def primary_metric(c: dict[str, Any]) -> tuple[str | None, float | None]:
    """(name, value) of the validation metric that ranks this card's model."""
    metrics = c.get("metrics") or {}
    names = [c["primary_metric"]] if c.get("primary_metric") else PRIMARY_METRICS.get(c.get("task"), [])
    for name in names:
        v = metrics.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return name, float(v)
    return None, None


def _rank(c: dict[str, Any]) -> tuple:
    task = c.get("task")
    t = TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)
    value = primary_metric(c)[1]
    return (t, str(task), -(value if value is not None else -1.0), c["name"])


def list_models(task: str | None = None) -> list[dict[str, Any]]:
    """Model cards (copies), best first within each task; only those whose card task is ``task`` when given."""
    cards = [copy.deepcopy(c) for c in _cards().values() if task is None or c.get("task") == task]
    if task is not None:  # the downloadable community models of that task, after the shipped ones
        return sorted(cards, key=_rank) + [c for c in _community().values() if c.get("task") == task]
    return sorted(cards, key=_rank)


def card(name: str) -> dict[str, Any]:
    """One model card (a copy); an unknown name is an InputError listing the built-ins."""
    cards = _cards()
    if name not in cards and name in _community():
        return copy.deepcopy(_community()[name])
    if name not in cards:
        raise InputError(f"no built-in model named {name!r}; {_available(cards.values())}")
    return copy.deepcopy(cards[name])


def default_model(task: str) -> str | None:
    """Name of the best built-in for ``task``, or None when there is none."""
    models = list_models(task)
    return models[0]["name"] if models else None


def is_builtin(spec: Any) -> bool:
    """True when ``spec`` names a built-in model (and is not an existing file of that name)."""
    if spec is None:
        return False
    text = str(spec).strip()
    return bool(text) and not Path(text).exists() and (text in _cards() or text in _community())


def _available(cards, task: str | None = None) -> str:
    want = accepted_tasks(task)
    names = [c["name"] for c in sorted(cards, key=_rank) if want is None or c.get("task") in want]
    if not names:
        return f"there are no built-in {task + ' ' if task else ''}models (see `cellclass models`)"
    return "built-in models" + (f" for {task!r}" if task else "") + ": " + ", ".join(names)


def resolve_model(spec: str | Path, task: str | None = None) -> Path:
    """A built-in name or a checkpoint path -> a local, verified ``.safetensors`` path.

    Built-ins are checked against their card's sha256 (once per process per file
    version); URL-registered ones are fetched into :func:`cache_dir` first.
    ``task`` is what the caller runs (``karyotype`` accepts ``chromosome`` models);
    a model for another task is refused here with a message naming both.
    """
    if spec is None or not str(spec).strip():
        raise InputError("no model given: name a built-in model (see `cellclass models`) or a checkpoint file")
    text = str(spec).strip()
    want = accepted_tasks(task)
    path = Path(text).expanduser()
    if path.exists():
        return _check_path(path, want, task)
    cards = _cards()
    if text not in cards and text in _community():
        c = _community()[text]
        if want is not None and c["task"] not in want:
            raise InputError(f"bioimage.io model {text!r} is a {c['task']!r} model, but {task!r} needs {_needs(want)}")
        from .foreign import fetch_package

        return fetch_package(c, cache_dir())
    if text not in cards:
        hint = _available(cards.values(), task)
        if text.endswith(SUFFIX) or "/" in text or os.sep in text:
            raise InputError(f"checkpoint file does not exist (nor is it a built-in model name; {hint})", path)
        raise InputError(f"{text!r} is neither a checkpoint file nor a built-in model; {hint}")
    c = cards[text]
    if want is not None and c["task"] not in want:
        raise InputError(
            f"built-in model {text!r} is a {c['task']!r} model, but {task!r} needs {_needs(want)}; "
            + _available(cards.values(), task)
        )
    from ._fetch import fetch, verify

    local = zoo_dir() / (text + SUFFIX)
    if local.is_file():
        verify(local, c["sha256"], what=f"built-in model {text!r}")
        return local
    return fetch(c, cache_dir())


def _needs(want: tuple[str, ...]) -> str:
    return "a " + " or ".join(repr(t) for t in want) + " model"


def _check_path(path: Path, want: tuple[str, ...] | None, task: str | None) -> Path:
    from .foreign import HPA_TASKS, is_package_path

    if is_package_path(path):  # a bioimage.io package: checked when it is opened (zoo.foreign)
        if want is not None and not set(want) & set(HPA_TASKS):
            raise WrongTaskError(f"a bioimage.io package runs in the HPA route only; {task!r} needs {_needs(want)}",
                                 path)
        return path
    if path.is_dir():
        raise InputError("expected a checkpoint file (.safetensors), got a folder", path)
    if want is not None:
        from ..engine.checkpoint import read_meta

        meta = read_meta(path)
        if meta.task not in want:
            raise WrongTaskError(f"this checkpoint is a {meta.task!r} model, but {task!r} needs {_needs(want)}", path)
    return path


def load_model(spec: Any, task: str | None = None, device: Any = None, **kw: Any):
    """The one model loader (:func:`napari_cellclass.zoo.loaded.load_model`): a cached
    :class:`~napari_cellclass.zoo.loaded.LoadedModel`, which also unpacks as ``(network, meta)``.

    ``map_location=`` (older name of ``device``) is still accepted.
    """
    from .loaded import load_model as _load

    if "map_location" in kw:
        device = kw.pop("map_location") if device is None else device
    return _load(spec, task=task, device=device, **kw)
