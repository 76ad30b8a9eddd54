"""Classify an HPA field (whole image or per cell) in a worker thread.

Thin: collects the four channel layers, checkpoint, device and mode; runs
:func:`napari_cellclass.tasks.hpa.classify` in a ``thread_worker``; turns the
result into a sortable table, a bar plot and layer features/metadata.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ._errors import error_message
from ._model_chooser import ModelChooser
from ..engine.device import DEVICE_CHOICES
from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError
from ..io.hpa_reader import CHANNELS
from ..zoo.provenance import synthetic_warning

AUTO_CELLS = "(segment automatically)"


class _Failed:
    """An error carried out of the worker as a value."""

    def __init__(self, error: Exception):
        self.error = error


class _NumItem(QTableWidgetItem):
    """Table item that sorts by its number, not its text."""

    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.value = value

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", 0.0)


class ClassifyHPAWidget(QWidget):
    """Pick the red/green/blue/yellow layers and a checkpoint; get the 28 location probabilities."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.cancel_token: CancelToken | None = None
        self.worker = None
        self.last_result: dict[str, Any] | None = None
        self.last_error: str | None = None

        form = QFormLayout()
        self.channel_boxes: dict[str, QComboBox] = {}
        for c in CHANNELS:
            box = QComboBox()
            self.channel_boxes[c] = box
            form.addRow(f"{c} layer", box)
        self.model_edit = ModelChooser("hpa")  # built-ins first (none for HPA yet: it says so), Browse...
        form.addRow("model", self.model_edit)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("device", self.device_box)
        self.mode_box = QComboBox()
        self.mode_box.addItems(["whole image", "per cell"])
        form.addRow("mode", self.mode_box)
        self.cells_box = QComboBox()
        form.addRow("cells", self.cells_box)
        self.field_box = QComboBox()
        self.field_box.addItems(["resize", "tile"])
        self.field_box.setToolTip("large fields: resize to the model's input, or classify tiles and average")
        form.addRow("large fields", self.field_box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Classify")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.device_label = QLabel(self._device_text())
        self.device_label.setWordWrap(True)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "probability", "threshold", "predicted"])
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(220)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.device_label)
        lay.addWidget(self.status)
        lay.addWidget(self.table)
        lay.addWidget(self.canvas)

        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layers
    def _device_text(self) -> str:
        from ..engine.device import resolve_device

        try:
            return "device: " + resolve_device(self.device_box.currentText()).describe()
        except CellClassError as exc:
            return f"device: {exc}"

    def _refresh_layers(self, event: Any = None) -> None:
        images = [layer for layer in self.viewer.layers if layer._type_string == "image" and not layer.rgb]
        for colour, box in self.channel_boxes.items():
            current = box.currentText()
            box.clear()
            box.addItem("")
            box.addItems([layer.name for layer in images])
            guess = current if current in [layer.name for layer in images] else self._guess(colour, images)
            box.setCurrentText(guess)
        labels = [layer.name for layer in self.viewer.layers if layer._type_string == "labels"]
        current = self.cells_box.currentText()
        self.cells_box.clear()
        self.cells_box.addItems([AUTO_CELLS] + labels)
        if current in labels:
            self.cells_box.setCurrentText(current)

    def _guess(self, colour: str, images: list) -> str:
        """Layer of this colour: from the HPA reader's metadata (same set as the others), else by name."""
        by_meta = [lyr for lyr in images if lyr.metadata.get("hpa_channel") == colour]
        if by_meta:
            return by_meta[-1].name
        by_name = [lyr for lyr in images if colour in lyr.name.lower()]
        return by_name[-1].name if by_name else ""

    def channel_data(self) -> list[np.ndarray]:
        missing = [c for c, box in self.channel_boxes.items() if box.currentText() not in self.viewer.layers]
        if missing:
            raise CellClassError("the HPA model needs four channels (red, green, blue, yellow); "
                                 f"choose a layer for: {', '.join(missing)}")
        return [np.asarray(self.viewer.layers[self.channel_boxes[c].currentText()].data) for c in CHANNELS]

    # ------------------------------------------------------------------ running
    def _job(self):
        # import the heavy modules here, in the GUI thread: first imports of torchvision's
        # C extensions from a worker thread have crashed Qt sessions
        from .. import recipes  # noqa: F401
        from ..models import hpa_resnet  # noqa: F401
        from ..segmentation import cells as _cells  # noqa: F401
        from ..tasks.hpa import classify

        image = self.channel_data()
        model = self.model_edit.value  # a built-in name or a path -> verified checkpoint path
        if model is None:
            raise CellClassError("choose a checkpoint file (.safetensors) for the HPA model")
        mode = "cells" if self.mode_box.currentText() == "per cell" else "whole"
        cells = None
        if mode == "cells" and self.cells_box.currentText() not in ("", AUTO_CELLS):
            cells = np.asarray(self.viewer.layers[self.cells_box.currentText()].data)
        self.cancel_token = CancelToken()
        return classify(image, model, cells=cells, device=self.device_box.currentText(), mode=mode,
                        cancel=self.cancel_token, field=self.field_box.currentText())

    def run(self) -> None:
        """Start classification in a worker thread (the viewer stays responsive)."""
        from napari.qt.threading import thread_worker

        self.last_result, self.last_error = None, None
        self.device_label.setText(self._device_text())
        try:
            job = self._job()
        except CellClassError as exc:
            self._on_error(exc)
            return

        @thread_worker
        def work():
            # errors come back as values: shown via show_error, never as a traceback dialog
            try:
                return (yield from job)
            except Exception as exc:  # noqa: BLE001
                return _Failed(exc)  # (superqt re-raises an Exception returned bare)

        self.worker = work()
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText("running...")
        self.worker.start()

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        self.status.setText("cancelling...")

    def _on_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setRange(0, int(p.total))
            self.progress.setValue(int(p.step))
        else:
            self.progress.setRange(0, 0)
        self.status.setText(f"{p.stage}: {p.message}".strip(": "))

    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.last_result is not None else 0)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        msg = error_message(exc, "unexpected error")
        self.last_error = msg
        self.status.setText(msg)
        show_error(msg)

    # ------------------------------------------------------------------ results
    def _on_result(self, result: "dict[str, Any] | _Failed") -> None:
        if isinstance(result, _Failed):
            self._on_error(result.error)
            return
        self.last_result = result
        names, thr = result["class_names"], result["thresholds"]
        if result["mode"] == "whole":
            probs = np.asarray(result["probabilities"])
            predicted = set(result["predicted"])
            for c in CHANNELS:
                name = self.channel_boxes[c].currentText()
                if name in self.viewer.layers:
                    self.viewer.layers[name].metadata["hpa_prediction"] = {
                        k: result[k] for k in ("probabilities", "predicted", "class_names", "thresholds", "device")}
            summary = ", ".join(result["predicted"]) or "no class above its threshold"
        else:
            self._add_cells_layer(result)
            rows = result["cells"]
            probs = np.mean([r["probabilities"] for r in rows], axis=0) if rows else np.zeros(len(names))
            counts = {n: sum(n in r["predicted"] for r in rows) for n in names}
            predicted = {n for n, k in counts.items() if k}
            summary = f"{len(rows)} cells; " + ", ".join(f"{n} ({counts[n]})" for n in names if counts[n])
        self._fill_table(names, probs, thr, predicted)
        self._plot(names, probs, thr)
        warning = synthetic_warning(result.get("trained_on"))
        self.status.setText(f"{summary}. {warning}" if warning else summary)
        self.device_label.setText("device: " + result["device"])

    def _add_cells_layer(self, result: dict[str, Any]) -> None:
        from ..tasks.hpa import features_table

        name = "HPA cells"
        feats = features_table(result)
        if name in self.viewer.layers and self.viewer.layers[name]._type_string == "labels":
            layer = self.viewer.layers[name]
            layer.data = result["labels"]
            layer.features = feats
        else:
            layer = self.viewer.add_labels(result["labels"], name=name, features=feats, opacity=0.4)
        layer.metadata["hpa_class_names"] = result["class_names"]

    def _fill_table(self, names: list[str], probs: np.ndarray, thr: list[float], predicted: set[str]) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(names))
        for i, name in enumerate(names):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, _NumItem(float(probs[i]), f"{probs[i]:.3f}"))
            self.table.setItem(i, 2, _NumItem(float(thr[i]), f"{thr[i]:.2f}"))
            self.table.setItem(i, 3, QTableWidgetItem("yes" if name in predicted else ""))
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.DescendingOrder)
        self.table.resizeColumnsToContents()

    def _plot(self, names: list[str], probs: np.ndarray, thr: list[float]) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        x = np.arange(len(names))
        colours = ["tab:green" if p >= t else "tab:gray" for p, t in zip(probs, thr)]
        ax.bar(x, probs, color=colours)
        ax.scatter(x, thr, marker="_", color="k", s=40, label="threshold")
        ax.set_ylim(0, 1)
        ax.set_xticks(x)
        ax.set_xticklabels([str(i) for i in x], fontsize=6)
        ax.set_xlabel("HPA class id", fontsize=7)
        ax.set_ylabel("probability", fontsize=7)
        ax.tick_params(labelsize=6)
        self.canvas.draw_idle()
