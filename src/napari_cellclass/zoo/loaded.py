"""One loaded model: the network, its card, its transform, its classes and its device, together.

:func:`load_model` is the one place where a model given by the user (a built-in
name, a checkpoint path, or an object already loaded) becomes something a task
can run: the name is resolved to a file (:func:`model_file`, through
:func:`napari_cellclass.zoo.resolve_model`, which verifies a built-in's sha256 and
fetches URL-registered weights; callers that need only the file use :func:`model_file`), the
checkpoint is read (:func:`napari_cellclass.engine.checkpoint.build_from_checkpoint`),
the task is checked, the device policy resolved
(:func:`napari_cellclass.engine.device.resolve_device`) and the network moved there
in eval mode.  The result is cached per (file, file version, device policy): a
second call for the same checkpoint returns the same object, so karyotyping a
spread reads each checkpoint once.

A :class:`LoadedModel` is shared between callers: nothing may change it in place
(no attributes patched onto the network, no flags flipped).  Per-call choices,
such as running every GRiCoL head, are arguments of the call that runs it.
Training that starts from a checkpoint asks for its own copy (``cache=False``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..engine.checkpoint import CheckpointMeta, build_from_checkpoint
from ..engine.device import DevicePolicy, resolve_device
from ..errors import CheckpointError, InputError, WrongTaskError

__all__ = ["LoadedModel", "load_model", "model_file", "clear_cache", "CACHE_SIZE"]

#: how many loaded models stay in memory (least recently used dropped first)
CACHE_SIZE = 8


@dataclass(eq=False)
class LoadedModel:
    """A ready model: ``net`` in eval mode on ``policy.device``, with what it needs to be fed and read.

    ``transform`` is the input transform the checkpoint declares
    (:func:`napari_cellclass.preprocess.get_transform`), or None where the model's
    input is not a registered transform (detectors feed whole images).  ``source``
    is what the user gave (a built-in name or a path); ``path`` the checkpoint file
    (None for a network wrapped with :meth:`from_network`).

    For code written against the older ``(network, meta)`` pair, the object
    unpacks as one: ``net, meta = load_model(...)``.
    """

    net: torch.nn.Module
    meta: CheckpointMeta | None
    transform: Any
    classes: list[str]
    policy: DevicePolicy
    source: str
    path: Path | None = None
    card: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def task(self) -> str | None:
        return self.meta.task if self.meta is not None else None

    @property
    def name(self) -> str:
        """A short name for reports: the built-in name, else the file name."""
        return self.source if self.card is not None else (self.path.name if self.path is not None else self.source)

    def __iter__(self) -> Iterator[Any]:
        yield self.net
        yield self.meta

    def describe(self) -> str:
        return f"{self.name} on {self.policy.describe()}"

    @classmethod
    def from_network(cls, net: torch.nn.Module, meta: CheckpointMeta | None = None, *, transform: Any = None,
                     device: str | DevicePolicy | None = None, source: str = "network") -> LoadedModel:
        """Wrap a network already in memory (tests, scripts, a model being trained) without loading anything."""
        policy = device if isinstance(device, DevicePolicy) else resolve_device(device)
        if transform is None and meta is not None:
            transform = _transform(meta)
        classes = list(meta.class_names) if meta is not None else list(getattr(net, "class_names", []) or [])
        net.eval()
        return cls(net=net, meta=meta, transform=transform, classes=classes, policy=policy, source=source)


_CACHE: OrderedDict[tuple, LoadedModel] = OrderedDict()
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every loaded model (tests; after replacing weights in place the file version changes anyway)."""
    with _LOCK:
        _CACHE.clear()


def _transform(meta: CheckpointMeta) -> Any:
    from ..preprocess import get_transform

    try:
        return get_transform(meta)
    except CheckpointError:
        return None  # detectors: their input is the whole image, prepared by their task


def _check_task(meta: CheckpointMeta, task: str | None, where: Any) -> None:
    from . import accepted_tasks

    want = accepted_tasks(task)
    if want is not None and meta.task not in want:
        needs = " or ".join(repr(t) for t in want)
        raise WrongTaskError(f"this checkpoint is a {meta.task!r} model, but {task!r} needs a {needs} model", where)


def model_file(source: Any, task: str | None = None) -> Path:
    """The verified local checkpoint file of a built-in name, a path or a loaded model, without loading it.

    The one name -> file step (:func:`load_model` uses it too): built-ins are checked
    against their card's sha256 and URL-registered ones fetched
    (:func:`napari_cellclass.zoo.resolve_model`); a model for another ``task`` is
    refused.  For callers that need only the file: the CLI's early check of a name,
    the model field of a widget, a bioimage.io export.
    """
    if isinstance(source, LoadedModel):
        if source.path is None:
            raise InputError(f"the model {source.source!r} was not loaded from a file, so it has no checkpoint file")
        if source.meta is not None:
            _check_task(source.meta, task, source.path)
        return source.path
    from . import resolve_model

    return Path(resolve_model(source, task=task))


def load_model(source: Any, task: str | None = None, device: str | DevicePolicy | None = None, *,
               in_channels: int | None = None, cache: bool = True) -> LoadedModel:
    """A :class:`LoadedModel` for a built-in name, a checkpoint path or a loaded model.

    ``task`` is the job that will run it (``karyotype`` accepts ``chromosome``
    classifiers); a model for another task is refused with a message naming both.
    ``device``: "auto"/None (``CELLCLASS_DEVICE``), "cpu", "cuda", ... or a resolved
    :class:`DevicePolicy`.  ``in_channels`` checks the network's input channels.
    A :class:`LoadedModel` given is returned unchanged (after the task check); a bare
    network is wrapped (:meth:`LoadedModel.from_network`).  ``cache=False`` loads a
    fresh copy that the caller may change (fine-tuning).
    """
    if isinstance(source, LoadedModel):
        if source.meta is not None:
            _check_task(source.meta, task, source.path)
            _check_channels(source.meta, in_channels, source.path)
        return source
    if isinstance(source, torch.nn.Module):
        return LoadedModel.from_network(source, device=device)
    from . import card as _card
    from . import is_builtin

    path = model_file(source, task=task)  # names -> verified files; wrong task refused here
    card = _card(str(source).strip()) if is_builtin(source) else None
    from .foreign import is_package_path

    if is_package_path(path):  # a bioimage.io package (zoo.foreign): checked and described, no code run
        from .foreign import load_foreign

        return load_foreign(path, task=task, device=device, card=card, source=str(source), cache=cache)
    policy = device if isinstance(device, DevicePolicy) else resolve_device(device)
    try:
        st = path.stat()
        version = (st.st_mtime_ns, st.st_size)
    except OSError:
        version = None
    key = (str(path.resolve()), version, policy)
    if cache:
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
        if hit is not None:
            _check_channels(hit.meta, in_channels, path)
            return hit
    net, meta = build_from_checkpoint(path, map_location="cpu")
    _check_task(meta, task, path)
    _check_channels(meta, in_channels, path)
    net = net.to(policy.device).eval()  # channels-last and the like are the inference runner's choice
    lm = LoadedModel(net=net, meta=meta, transform=_transform(meta), classes=list(meta.class_names), policy=policy,
                     source=str(source), path=path, card=card)
    if cache:
        with _LOCK:
            _CACHE[key] = lm
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return lm


def _check_channels(meta: CheckpointMeta | None, in_channels: int | None, where: Any) -> None:
    if meta is not None and in_channels is not None and meta.in_channels != in_channels:
        raise CheckpointError(f"model expects {meta.in_channels} input channel(s) but the data has {in_channels}",
                              where)
