"""How every widget words a failed job: the user's problem in its own words, a bug by its type."""
from __future__ import annotations

from ..errors import CellClassError


def error_message(exc: BaseException, context: str | None = None) -> str:
    """A :class:`CellClassError` already names the file and the problem; anything else is a bug,
    shown with its type (and ``context``, e.g. "classification failed") instead of a traceback."""
    if isinstance(exc, CellClassError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    return f"{context}: {text}" if context else text
