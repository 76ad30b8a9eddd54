"""Karyotype a metaphase spread: segment, classify, pair, karyogram; correct by hand.

Thin: the pipeline is :func:`napari_cellclass.tasks.karyotype.karyotype` (run in a
``thread_worker``) and :func:`napari_cellclass.karyotype.pipeline.finish_karyotype`
(pairing + karyogram, fast enough to run on the GUI thread after a class change).
Editing the labels layer re-classifies only the chromosomes whose pixels changed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ._errors import error_message
from ._model_chooser import ModelChooser
from ..engine.device import DEVICE_CHOICES
from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError
from ..karyotype.assign import CLASS_NAMES
from ..zoo.provenance import synthetic_warning

LABELS_NAME = "chromosomes"
SHAPES_NAME = "chromosome classes"
KARYOGRAM_NAME = "karyogram"


def _show_error(msg: str) -> None:
    from napari.utils.notifications import show_error

    show_error(msg)


def _trained_on(model: Path) -> str:
    from ..engine.checkpoint import read_meta

    try:
        return read_meta(model).trained_on
    except CellClassError:
        return "unknown"  # the job itself reports an unreadable checkpoint


class KaryotypeWidget(QWidget):
    """Spread layer + chromosome classifier -> labels, class boxes, karyogram and ISCN summary."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.worker = None
        self.cancel_token: CancelToken | None = None
        self._known: dict[int, np.ndarray] = {}  # label id -> probabilities
        self._fixed: dict[int, int] = {}  # label id -> class chosen by the user
        self._snapshot: np.ndarray | None = None  # labels the current result was computed on
        self._image: np.ndarray | None = None
        self._updating = False
        self._trained_on: str | None = None  # of the classifier behind the shown result (for the warning)
        self._edit_timer = QTimer(self)
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(600)
        self._edit_timer.timeout.connect(self.labels_edited)

        form = QFormLayout()
        self.image_box = QComboBox()
        form.addRow("spread", self.image_box)
        self.model_edit = ModelChooser("chromosome")  # built-in chromosome classifiers first, Browse...
        form.addRow("model", self.model_edit)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("device", self.device_box)
        self.segmenter_box = QComboBox()
        self.segmenter_box.addItems(["auto", "threshold", "detector"])  # auto: the detector, else threshold
        form.addRow("segmenter", self.segmenter_box)
        # built-in chromosome detectors (task 'karyotype'); any detector checkpoint can be browsed
        self.detector_edit = ModelChooser("karyotype", optional=True, check_task=False,
                                          placeholder="detector (only for the 'detector' segmenter)")
        form.addRow("detector", self.detector_edit)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Karyotype")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.device_label = QLabel("")
        self.summary_label = QLabel("no result yet")
        self.summary_label.setStyleSheet("font-size: 16pt; font-weight: bold")
        self.findings_label = QLabel("")
        self.findings_label.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["id", "class", "confidence", "flag"])
        self.table.itemSelectionChanged.connect(self._select_from_table)
        exports = QHBoxLayout()
        self.png_button = QPushButton("Export karyogram PNG")
        self.png_button.clicked.connect(lambda: self.export_png())
        self.csv_button = QPushButton("Export CSV")
        self.csv_button.clicked.connect(lambda: self.export_csv())
        exports.addWidget(self.png_button)
        exports.addWidget(self.csv_button)
        hint = QLabel("Fix classes in the table, or select a label and press K / Shift-K in the viewer. "
                      "Edit the labels layer to fix the segmentation; the karyogram updates.")
        hint.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        for w in (self.progress, self.status, self.device_label, self.summary_label, self.findings_label,
                  self.table):
            lay.addWidget(w)
        lay.addLayout(exports)
        lay.addWidget(hint)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ helpers
    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image

        current = self.image_box.currentText()
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and ly.name != KARYOGRAM_NAME]
        self.image_box.blockSignals(True)
        self.image_box.clear()
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)
        self.image_box.blockSignals(False)

    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ------------------------------------------------------------------ running
    def run(self, labels: np.ndarray | None = None, sync: bool = False):
        """Start the pipeline; returns the worker (or the result when ``sync``)."""
        from napari.qt.threading import create_worker

        from ..engine.device import resolve_device
        from ..tasks.karyotype import karyotype

        name = self.image_box.currentText()
        if not name or name not in self.viewer.layers:
            return self._fail("choose a spread image layer first")
        try:  # built-in names or paths -> verified checkpoints
            model = self.model_edit.value
            detector = self.detector_edit.value
        except CellClassError as exc:
            return self._fail(str(exc))
        if model is None:
            return self._fail("choose a chromosome classifier checkpoint (task 'chromosome')")
        self._trained_on = _trained_on(model)
        device = self.device_box.currentText()
        device = None if device == "auto" else device
        try:
            self.device_label.setText(f"device: {resolve_device(device).describe()}")
        except CellClassError as exc:
            return self._fail(str(exc))
        layer = self.viewer.layers[name]
        image = np.asarray(layer.data)
        if getattr(layer, "rgb", False) is False and image.ndim == 3 and image.shape[-1] not in (3, 4):
            image = image[int(self.viewer.dims.current_step[0])] if image.shape[0] > 1 else image[0]
        if labels is None:
            self._known, self._fixed = {}, {}
        self._image = image
        self.cancel_token = CancelToken()
        job = karyotype(image, Path(model), device=device, labels=labels,
                        segmenter=self.segmenter_box.currentText(),
                        detector_model=Path(detector) if detector else None, cancel=self.cancel_token,
                        known_probs=dict(self._known) if labels is not None else None,
                        fixed=dict(self._fixed) if labels is not None else None)
        self.last_error = None
        if sync:
            from ..engine.progress import run_sync

            try:
                res = run_sync(job, self._on_progress)
            except CellClassError as exc:
                return self._fail(str(exc))
            self._on_done(res)
            return res
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker = create_worker(lambda: (yield from job), _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("cancelling...")

    def _fail(self, msg: str):
        self.last_error = msg
        self.status.setText(msg)
        _show_error(msg)
        return None

    def _on_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setMaximum(int(p.total))
            self.progress.setValue(int(p.step))
        else:
            self.progress.setMaximum(0)
        self.status.setText(f"{p.stage}: {p.message}")

    def _on_error(self, exc: BaseException) -> None:
        self._fail(error_message(exc, "karyotyping failed"))

    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setMaximum(1)
        self.progress.setValue(1)

    def _on_done(self, res: dict[str, Any]) -> None:
        n = len(res["classes"])
        self._known = {i + 1: res["probabilities"][i] for i in range(n)}
        self._fixed = {k + 1: v for k, v in res.get("fixed", {}).items()}
        warning = synthetic_warning(self._trained_on)
        self.status.setText(f"done in {res.get('seconds', 0)} s; classified {res.get('classified', n)} objects"
                            + (f". {warning}" if warning else ""))
        self._show(res)

    # ------------------------------------------------------------------ results -> layers
    def _show(self, res: dict[str, Any]) -> None:
        self.result = res
        labels = res["labels"]
        self._snapshot = labels.copy()
        names = [CLASS_NAMES[c] if c >= 0 else "?" for c in res["classes"]]
        n = len(names)
        feats = pd.DataFrame({
            "index": np.arange(1, n + 1), "class": names,
            "confidence": np.round(res["confidence"], 3), "flagged": res["flagged"].astype(bool),
        })
        self._updating = True
        try:
            lab = self._layer(LABELS_NAME)
            if lab is None:
                lab = self.viewer.add_labels(labels, name=LABELS_NAME, opacity=0.4)
                lab.events.paint.connect(self._schedule_edit)
                lab.events.data.connect(self._schedule_edit)
                lab.bind_key("k", lambda layer: self._step_class(+1), overwrite=True)
                lab.bind_key("Shift-k", lambda layer: self._step_class(-1), overwrite=True)
            elif lab.data is not labels and not np.array_equal(lab.data, labels):
                lab.data = labels
            lab.features = feats
            self._show_shapes(res, names)
            self._show_karyogram(res)
        finally:
            self._updating = False
        self.summary_label.setText(res["summary"])
        self.summary_label.setStyleSheet(
            f"font-size: 16pt; font-weight: bold; color: {'#d33' if res['abnormal'] else '#3a3'}")
        flagged = int(np.sum(res["flagged"]))
        self.findings_label.setText(
            ("; ".join(res["findings"]) + ". " if res["findings"] else "")
            + f"{n} chromosomes, {flagged} flagged for review")
        self._fill_table(res, names)

    def _show_shapes(self, res: dict[str, Any], names: list[str]) -> None:
        rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in res["boxes"]]
        feats = pd.DataFrame({"class": names, "confidence": np.round(res["confidence"], 3),
                              "flagged": res["flagged"].astype(bool), "id": np.arange(1, len(names) + 1)})
        colors = ["red" if f else "lime" for f in res["flagged"]]
        old = self._layer(SHAPES_NAME)
        if old is not None:
            self.viewer.layers.remove(old)
        if not rects:
            return
        self.viewer.add_shapes(
            rects, shape_type="rectangle", name=SHAPES_NAME, features=feats, edge_color=colors,
            face_color="transparent", edge_width=1.5,
            text={"string": "{class}", "size": 9, "color": "cyan", "anchor": "upper_left"})

    def _show_karyogram(self, res: dict[str, Any]) -> None:
        k = res.get("karyogram")
        if k is None:
            return
        H, W = res["labels"].shape
        scale = H / k.shape[0]
        old = self._layer(KARYOGRAM_NAME)
        if old is not None:
            old.data = k
            old.scale = (scale, scale)
        else:
            self.viewer.add_image(k, name=KARYOGRAM_NAME, rgb=True, translate=(0, W + 20), scale=(scale, scale))

    def _fill_table(self, res: dict[str, Any], names: list[str]) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(names))
        for r, name in enumerate(names):
            self.table.setItem(r, 0, QTableWidgetItem(str(r + 1)))
            box = QComboBox()
            box.addItems(CLASS_NAMES + ["?"])
            box.setCurrentText(name)
            box.currentTextChanged.connect(lambda text, lid=r + 1: self.set_class(lid, text))
            self.table.setCellWidget(r, 1, box)
            self.table.setItem(r, 2, QTableWidgetItem(f"{res['confidence'][r]:.2f}"))
            item = QTableWidgetItem(res["reasons"][r] if r < len(res["reasons"]) else "")
            if res["flagged"][r]:
                item.setBackground(QColor(255, 200, 200))
            self.table.setItem(r, 3, item)
        self.table.blockSignals(False)

    # ------------------------------------------------------------------ corrections
    def set_class(self, label_id: int, cls: str | int) -> None:
        """The user's class for one chromosome; re-pair and redraw (no re-classification)."""
        from ..karyotype.pipeline import finish_karyotype

        if self.result is None:
            return
        c = cls if isinstance(cls, int) else (CLASS_NAMES.index(cls) if cls in CLASS_NAMES else None)
        if c is None:
            self._fixed.pop(int(label_id), None)
        else:
            self._fixed[int(label_id)] = int(c)
        res = finish_karyotype(self._image, self.result["labels"], self.result["probabilities"],
                               fixed={k - 1: v for k, v in self._fixed.items()})
        QTimer.singleShot(0, lambda: self._show(res))  # not inside the combo box's own signal

    def _step_class(self, step: int) -> None:
        lab = self._layer(LABELS_NAME)
        if lab is None or self.result is None:
            return
        lid = int(lab.selected_label)
        n = len(self.result["classes"])
        if not 1 <= lid <= n:
            return
        cur = int(self.result["classes"][lid - 1])
        self.set_class(lid, (max(cur, 0) + step) % len(CLASS_NAMES))

    def _select_from_table(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        lab = self._layer(LABELS_NAME)
        if len(rows) == 1 and lab is not None:
            lab.selected_label = next(iter(rows)) + 1

    def _schedule_edit(self, event=None) -> None:
        if not self._updating:
            self._edit_timer.start()

    def labels_edited(self, sync: bool = False):
        """Re-run on the edited labels; only objects whose pixels changed are classified again."""
        lab = self._layer(LABELS_NAME)
        if lab is None or self.result is None or self._snapshot is None:
            return None
        cur = np.asarray(lab.data)
        if cur.shape != self._snapshot.shape:
            return None
        diff = cur != self._snapshot
        if not diff.any():
            return None
        changed = set(np.unique(cur[diff]).tolist()) | set(np.unique(self._snapshot[diff]).tolist())
        for lid in changed:
            self._known.pop(int(lid), None)
            self._fixed.pop(int(lid), None)
        return self.run(labels=cur.copy(), sync=sync)

    # ------------------------------------------------------------------ export
    def export_png(self, path: str | Path | None = None) -> Path | None:
        from ..karyotype.karyogram import save_png

        if self.result is None:
            return self._fail("run the karyotype first")
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Karyogram", "karyogram.png", "PNG (*.png)")
            if not path:
                return None
        return save_png(self.result["karyogram"], path)

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        from ..karyotype.karyogram import write_csv

        if self.result is None:
            return self._fail("run the karyotype first")
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Chromosomes", "chromosomes.csv", "CSV (*.csv)")
            if not path:
                return None
        return write_csv(self.result["table"], path)
