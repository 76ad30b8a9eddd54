"""Classify blood cells: every white cell of a smear gets a class, and the differential count.

Thin Qt widget: it collects the image, the cells (a shapes layer of rectangles,
e.g. drawn by hand or produced by the detector, or a labels layer) and a
checkpoint, runs :func:`napari_cellclass.tasks.wbc.classify` in a worker thread,
and writes the result into layers: ``features`` (class, score, one probability
column per class) drive the rectangles' edge colour and text.  The differential
(number and percent per class) is shown as a table and a bar plot and can be
exported as CSV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._errors import error_message
from ..engine.device import DEVICE_CHOICES
from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError
from ..synth.blood import CLASS_COLOURS, boxes_to_rectangles

NO_CELLS = "(whole image = one cell)"
RESULT_LAYER = "white cells (classified)"


class ClassifyBloodWidget(QWidget):
    """Dock widget: image + cells + model -> per-cell classes and the WBC differential."""

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.cancel_token: CancelToken | None = None
        self.worker = None
        self.result: dict[str, Any] | None = None
        self.output_layer = None

        self.image_combo = QComboBox()
        self.cells_combo = QComboBox()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("checkpoint (.safetensors) trained with 'cellclass train wbc'")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICE_CHOICES))
        self.run_button = QPushButton("Classify cells")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.device_label = QLabel(f"device: {self._device_text('auto')}")
        self.device_label.setWordWrap(True)
        self.device_combo.currentTextChanged.connect(lambda t: self.device_label.setText(f"device: {self._device_text(t)}"))
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "count", "percent"])
        self.export_button = QPushButton("Export differential (CSV)...")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.export_csv())

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("cells", self.cells_combo)
        form.addRow("model", model_row)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.device_label)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Differential count"))
        layout.addWidget(self.table)
        layout.addWidget(self.canvas)
        layout.addWidget(self.export_button)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _device_text(choice: str) -> str:
        from ..engine.device import resolve_device

        try:
            return resolve_device(choice).describe()
        except CellClassError as exc:
            return f"unavailable ({exc})"

    def _refresh_layers(self, event: Any = None) -> None:
        img, cells = self.image_combo.currentText(), self.cells_combo.currentText()
        self.image_combo.clear()
        self.cells_combo.clear()
        self.cells_combo.addItem(NO_CELLS)
        for layer in self.viewer.layers:
            kind = layer._type_string
            if kind == "image":
                self.image_combo.addItem(layer.name)
            elif kind in ("shapes", "labels") and layer.name != RESULT_LAYER:
                self.cells_combo.addItem(layer.name)
        if img:
            self.image_combo.setCurrentText(img)
        if cells and cells != NO_CELLS:
            self.cells_combo.setCurrentText(cells)
        elif self.cells_combo.count() > 1:
            self.cells_combo.setCurrentIndex(1)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "WBC checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.model_edit.setText(path)

    def _inputs(self) -> tuple[Any, Any, Any, Path]:
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise CellClassError("choose an image layer (an RGB smear)")
        image_layer = self.viewer.layers[name]
        cells_layer = None
        if self.cells_combo.currentText() not in ("", NO_CELLS):
            cells_layer = self.viewer.layers[self.cells_combo.currentText()]
        model = self.model_edit.text().strip()
        if not model:
            raise CellClassError("choose a model file (train one with 'cellclass train wbc DATA')")
        cells = None
        if cells_layer is not None:
            cells = [np.asarray(d) for d in cells_layer.data] if cells_layer._type_string == "shapes" else np.asarray(cells_layer.data)
            if cells_layer._type_string == "shapes" and not cells:
                raise CellClassError(f"shapes layer {cells_layer.name!r} has no shapes; draw rectangles around the cells")
        image = np.asarray(image_layer.data)
        if image.ndim == 3 and not image_layer.rgb and image.shape[0] in (3, 4):  # channel-first stack
            image = np.moveaxis(image, 0, -1)
        return image, cells, cells_layer, Path(model)

    # ------------------------------------------------------------------ running
    def job(self):
        """The generator the worker runs (also used by tests to run synchronously)."""
        from ..tasks.wbc import classify

        image, cells, cells_layer, model = self._inputs()
        self._cells_layer = cells_layer
        self.cancel_token = CancelToken()
        return classify(image, model, cells=cells, device=self.device_combo.currentText(), cancel=self.cancel_token)

    def run(self, sync: bool = False) -> None:
        """Start classification in a worker thread (``sync=True`` runs in this thread)."""
        try:
            job = self.job()
        except CellClassError as exc:
            self._error(exc)
            return
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("classifying...")
        if sync:
            from ..engine.progress import run_sync

            try:
                self._done(run_sync(job, self._on_progress))
            except CellClassError as exc:
                self._error(exc)
            finally:
                self._finished()
            return
        from napari.qt.threading import create_worker

        self.worker = create_worker(lambda: (yield from job), _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._error)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        self.status.setText("cancelling...")

    def _on_progress(self, p: Progress) -> None:
        if p.fraction is not None:
            self.progress.setValue(int(100 * p.fraction))
        if p.message:
            self.status.setText(p.message)

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        msg = error_message(exc, "classification failed")
        self.status.setText(f"error: {msg}")
        show_error(msg)

    # ------------------------------------------------------------------ results
    def _done(self, res: dict[str, Any]) -> None:
        self.result = res
        self.progress.setValue(100)
        self.device_label.setText(f"device: {res['device']}")
        names = res["class_names"]
        probs = np.asarray(res["probabilities"]).reshape(-1, len(names))
        features = pd.DataFrame({"class": pd.Categorical(res["classes"], categories=names),
                                 "score": np.asarray(res["scores"], dtype=float)})
        for j, n in enumerate(names):
            features[f"p_{n}"] = probs[:, j]
        colours = np.array([CLASS_COLOURS.get(c, (1.0, 1.0, 0.0, 1.0)) for c in res["classes"]]).reshape(-1, 4)
        text = {"string": "{class} {score:.2f}", "color": "white", "size": 9, "anchor": "upper_left"}
        layer = getattr(self, "_cells_layer", None)
        if layer is not None and layer._type_string == "shapes":
            layer.features = features
            layer.edge_color = colours
            layer.edge_width = 3
            layer.text = text
            self.output_layer = layer
        else:
            if layer is not None and res.get("label_ids") is not None:  # labels input: its features too
                layer.features = features.assign(index=np.asarray(res["label_ids"]))
            rects = boxes_to_rectangles(res["boxes"])
            if RESULT_LAYER in self.viewer.layers:
                self.viewer.layers.remove(RESULT_LAYER)
            self.output_layer = self.viewer.add_shapes(
                rects, shape_type="rectangle", name=RESULT_LAYER, features=features, edge_color=colours,
                face_color="transparent", edge_width=3, text=text)
        self._show_differential(res["differential"])
        self.export_button.setEnabled(True)
        n = len(res["classes"])
        self.status.setText(f"{n} cell(s) classified; model trained on: {res.get('trained_on', 'unknown')}")

    def _show_differential(self, diff: dict[str, Any]) -> None:
        rows = diff["rows"]
        self.table.setRowCount(len(rows) + 1)
        for i, r in enumerate(rows + [{"class": "TOTAL", "count": diff["total"], "percent": 100.0 if diff["total"] else 0.0}]):
            for j, v in enumerate((r["class"], str(r["count"]), f"{r['percent']:.1f}")):
                self.table.setItem(i, j, QTableWidgetItem(v))
        self.table.resizeColumnsToContents()
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        names = [r["class"] for r in rows]
        ax.bar(range(len(rows)), [r["percent"] for r in rows],
               color=[CLASS_COLOURS.get(n, (0.5, 0.5, 0.5, 1.0)) for n in names])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([n[:4] for n in names], fontsize=8)
        ax.set_ylabel("% of WBCs", fontsize=8)
        ax.tick_params(labelsize=8)
        self.canvas.draw_idle()

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the differential count (class, count, percent) to ``path`` (asks when None)."""
        if self.result is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save differential", "differential.csv", "CSV (*.csv)")
            if not path:
                return None
        from ..engine.atomic import atomic_path
        from ..tasks.wbc import differential_csv

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(differential_csv(self.result["differential"]))
        self.status.setText(f"differential written to {path}")
        return path
