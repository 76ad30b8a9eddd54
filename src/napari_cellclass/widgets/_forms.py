"""Form fields every widget shares, declared with magicgui.

* :class:`LayerChoice` - the viewer's layers of some kinds, kept up to date as
  layers come and go (the one replacement for each widget's ``_refresh_layers``);
  ``value`` is the layer itself.
* :class:`PathEdit` - a path and its Browse button (magicgui ``FileEdit``).
* :class:`DeviceChoice` - auto/cpu/cuda/mps plus a line that says, from the moment
  the widget opens, where the model will run.  "auto" is passed on as ``None`` so
  the device policy honours ``CELLCLASS_DEVICE``.
* :func:`form` lays fields out with their labels; :func:`scrolling_layout` puts a
  widget's content in a scroll area, so docked widgets never make the window taller
  than the screen.

The Qt-style ``currentText``/``setCurrentText``/``text``/``setText`` methods keep
the fields scriptable the way the widgets' earlier Qt fields were.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, FileEdit
from magicgui.widgets.bases import Widget as MagicWidget
from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QLayout, QScrollArea, QVBoxLayout, QWidget

from ..engine.device import DEVICE_CHOICES, ENV_VAR
from ..errors import CellClassError


def _native(w: Any) -> Any:
    return w.native if isinstance(w, MagicWidget) else w


class _QtStyle:
    """Qt combo-box style access to a magicgui ComboBox (scripts and tests used these)."""

    def currentText(self) -> str:
        return self.native.currentText()

    def setCurrentText(self, text: str) -> None:
        self.native.setCurrentText(text)

    def findText(self, text: str) -> int:
        return self.native.findText(text)

    def count(self) -> int:
        return self.native.count()

    def itemText(self, i: int) -> str:
        return self.native.itemText(i)

    def setToolTip(self, text: str) -> None:
        self.tooltip = text


class Choice(_QtStyle, ComboBox):
    """A magicgui combo box of fixed choices."""


class LayerChoice(_QtStyle, ComboBox):
    """The viewer's layers of ``kinds`` (napari layer classes) that pass ``where``.

    ``extra`` are leading ``(text, value)`` entries such as ``("(whole image)", None)``;
    ``guess(layers)`` names the layer to choose when nothing (or an extra entry) is
    chosen, e.g. the red channel of an HPA set.  ``watch_data`` also refreshes when a
    layer's data change (a shapes layer that gets its first shape becomes usable).
    """

    def __init__(self, viewer: Any, kinds: type | tuple[type, ...], *, where: Callable[[Any], bool] | None = None,
                 extra: Sequence[tuple[str, Any]] = (), guess: Callable[[list], str] | None = None,
                 watch_data: bool = False, **kwargs: Any):
        self._viewer = viewer
        self._kinds = kinds
        self._where = where
        self._extra = list(extra)
        self._guess = guess
        self._watch_data = watch_data
        super().__init__(choices=self._layer_choices, **kwargs)
        events = viewer.layers.events
        for name in ("inserted", "removed", "reordered", "renamed"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers)
        if watch_data:
            for layer in viewer.layers:
                layer.events.data.connect(self.reset_choices)
        self.reset_choices()

    def layers(self) -> list:
        return [ly for ly in self._viewer.layers
                if isinstance(ly, self._kinds) and (self._where is None or self._where(ly))]

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [*self._extra, *((ly.name, ly) for ly in self.layers())]

    def _on_layers(self, event: Any = None) -> None:
        value = getattr(event, "value", None)
        if self._watch_data and getattr(event, "type", "") == "inserted" and value is not None:
            value.events.data.connect(self.reset_choices)
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        if self._guess is not None and self.value is None:
            name = self._guess(self.layers())
            if name:
                self.native.setCurrentText(name)

    @property
    def layer(self) -> Any:
        """The chosen layer, or None (nothing, or an extra entry, chosen)."""
        value = self.value
        return value if value is not None and value in self._viewer.layers else None


class PathEdit(FileEdit):
    """A path and a Browse button (``mode``: "r" a file to read, "d" a folder)."""

    def __init__(self, mode: str = "d", placeholder: str = "", filter: str | None = None, **kwargs: Any):
        super().__init__(mode=mode, filter=filter, **kwargs)
        if placeholder:
            self.line_edit.native.setPlaceholderText(placeholder)

    def text(self) -> str:
        """The path as typed ("" when empty)."""
        return str(self.line_edit.value).strip()

    def setText(self, text: str | Path) -> None:
        self.line_edit.value = str(text)

    def path(self) -> Path | None:
        text = self.text()
        return Path(text).expanduser() if text else None

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = enabled


class DeviceChoice(_QtStyle, ComboBox):
    """auto/cpu/cuda/mps, and ``label``: the device the choice resolves to, shown from the start."""

    def __init__(self, **kwargs: Any):
        super().__init__(choices=list(DEVICE_CHOICES), value="auto", **kwargs)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.changed.connect(self.show_device)
        self.show_device()

    @property
    def device(self) -> str | None:
        """What to pass to a job: None for "auto", so the policy reads ``CELLCLASS_DEVICE``."""
        return None if self.value == "auto" else str(self.value)

    def describe(self) -> str:
        from ..engine.device import resolve_device

        try:
            text = resolve_device(self.device).describe()
        except CellClassError as exc:
            return f"unavailable ({exc})"
        env = os.environ.get(ENV_VAR, "").strip()
        if self.device is None and env:
            text += f" ({ENV_VAR}={env})"
        return text

    def show_device(self, *_: Any) -> None:
        self.label.setText(f"device: {self.describe()}")


def form(*rows: tuple[str | None, Any]) -> QFormLayout:
    """``(label, field)`` rows; a field is a magicgui widget, a Qt widget or a layout."""
    lay = QFormLayout()
    for label, field in rows:
        item = _native(field)
        if label is None:
            lay.addRow(item)
        elif isinstance(item, QLayout):
            lay.addRow(label, item)
        else:
            lay.addRow(label, item)
    return lay


class _VerticalScroll(QScrollArea):
    """Scrolls up and down only: as wide as its content needs, as tall as the dock gives it."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.LayoutRequest:  # the content's size hint changed: ask the dock again
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        inner = self.widget().minimumSizeHint()
        return QSize(inner.width() + self._extra_width(), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802
        inner = self.widget().sizeHint()
        return QSize(inner.width() + self._extra_width(), min(inner.height(), super().sizeHint().height()))


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """The layout to fill with ``widget``'s content, inside a vertical scroll area.

    Six docked widgets once asked for a window 3,950 px tall; in a scroll area each
    asks only for what fits and scrolls the rest.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    body = QWidget()
    scroll = _VerticalScroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(body)
    outer.addWidget(scroll)
    widget.scroll_area = scroll
    return QVBoxLayout(body)


def add_all(layout: QVBoxLayout, items: Iterable[Any]) -> None:
    """Add widgets and layouts (magicgui or Qt) in order."""
    for item in items:
        item = _native(item)
        if isinstance(item, QLayout):
            layout.addLayout(item)
        else:
            layout.addWidget(item)
