"""CSV cells a spreadsheet would run as formulas are written as text (issue 24, part 7).

A cell that is text and starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is a formula to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` from a
file name or a class label someone chose).  Every CSV the package writes passes its
cells through :func:`escape_cell`, which puts a single quote in front of such text, as
OWASP recommends.  Numbers stay numbers: ``-1.5`` (a float or the text of one) is not
touched, so tables still read back as numbers.  :func:`unescape_cell` is the inverse for
the plugin's own readers.
"""
from __future__ import annotations

import csv
import math
from typing import Any, Iterable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def unescape_cell(value: Any) -> Any:
    """The inverse of :func:`escape_cell` (for reading back tables the package wrote)."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1:].startswith(FORMULA_START) \
            and not _is_number(value[1:]):
        return value[1:]
    return value


def escape_text(text: str) -> str:
    """A reversible :func:`escape_cell` for files the plugin reads back exactly.

    As :func:`escape_cell`, and text that already starts with ``'`` gets a second one,
    so :func:`unescape_text` (drop one leading ``'``) gives back every string unchanged,
    ``"'=x"`` and ``"'"`` included.  Used by the shapes CSV (``io/writers.py``).
    """
    if text.startswith("'") or (text.startswith(FORMULA_START) and not _is_number(text)):
        return "'" + text
    return text


def unescape_text(text: str) -> str:
    """The inverse of :func:`escape_text`."""
    return text[1:] if text.startswith("'") else text


def escape_row(row: Iterable[Any]) -> list[Any]:
    return [escape_cell(v) for v in row]


class SafeWriter:
    """``csv.writer`` whose rows are escaped (:func:`escape_cell`)."""

    def __init__(self, fh: Any, *args: Any, **kw: Any):
        self._w = csv.writer(fh, *args, **kw)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow(escape_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for r in rows:
            self.writerow(r)


def writer(fh: Any, *args: Any, **kw: Any) -> SafeWriter:
    """A ``csv.writer`` that escapes formula-like text cells."""
    return SafeWriter(fh, *args, **kw)


class DictWriter(csv.DictWriter):
    """``csv.DictWriter`` that escapes formula-like text cells (the header too)."""

    def writeheader(self) -> Any:
        return self.writer.writerow(escape_row(self.fieldnames))

    def _dict_to_list(self, rowdict: Any) -> Any:  # csv's own hook for one row
        return escape_row(super()._dict_to_list(rowdict))


def escape_frame(df: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells (and column names) are escaped."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype) in ("string", "str", "category"):
            out[c] = [escape_cell(v) if not (isinstance(v, float) and math.isnan(v)) else v for v in out[c]]
    out.columns = [escape_cell(str(c)) for c in out.columns]
    return out
