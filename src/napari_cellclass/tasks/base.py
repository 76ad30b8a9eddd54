"""Options shared by every task and the lookup from task name to module."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine.progress import CancelToken
from ..errors import CellClassError, NotImplementedTaskError
from .options import parse_value  # noqa: F401  (the one --set value parser, re-exported)

TASKS: dict[str, str] = {
    "hpa": "napari_cellclass.tasks.hpa",
    "wbc": "napari_cellclass.tasks.wbc",
    "detect": "napari_cellclass.tasks.detect",
    "chromosome": "napari_cellclass.tasks.chromosome",
    "karyotype": "napari_cellclass.tasks.karyotype",
}


@dataclass
class TaskOptions:
    """Knobs common to all tasks; task-specific ones go in ``extra`` (``--set k=v``)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str | None = None
    arch: str | None = None
    out: Path | None = None
    seed: int = 0
    size: int | None = None
    recipe: Path | None = None
    pretrained: bool = False
    workers: int = 0
    quick: bool = False
    resume: bool = False
    model: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cancel: CancelToken | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)


def task_module(task: str) -> ModuleType:
    if task not in TASKS:
        raise CellClassError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    try:
        return importlib.import_module(TASKS[task])
    except ModuleNotFoundError as exc:
        if exc.name == TASKS[task]:
            raise NotImplementedTaskError(f"task {task!r} is not available in this version") from None
        raise


def task_function(task: str, name: str):
    mod = task_module(task)
    fn = getattr(mod, name, None)
    if fn is None:
        raise NotImplementedTaskError(f"'{name}' is not implemented for task {task!r} in this version")
    return fn
