"""One exception family for everything the user can get wrong.

Widgets and the CLI catch :class:`CellClassError` and show its message; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class CellClassError(Exception):
    """A problem with the user's input, files or settings, explained in words.

    ``path`` (when given) is the file the problem is about; it is put in front of
    the message so the user knows which of many files to look at.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class CheckpointError(CellClassError):
    """A checkpoint is corrupt, incomplete, or does not fit what it is used for."""


class InputError(CellClassError):
    """An image, annotation or dataset cannot be used as given."""


class WrongTaskError(CheckpointError, InputError):
    """A model given for a job it was not trained for (a WBC classifier where an HPA one is needed)."""


class OutputError(CellClassError):
    """A result could not be written (disk full, read-only folder); the path is the target."""


class PretrainedWeightsUnavailable(CellClassError):
    """ImageNet/COCO weights are neither cached nor downloadable."""


class NotImplementedTaskError(CellClassError):
    """A CLI/API entry exists in the contract but this task does not provide it yet."""


class Cancelled(CellClassError):
    """Work was cancelled by the user; nothing half-done was written."""
