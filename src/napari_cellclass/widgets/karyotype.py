"""Karyotype a metaphase spread: segment, classify, pair, karyogram; correct by hand.

Thin: the pipeline is :func:`napari_cellclass.tasks.karyotype.karyotype` (run in a
``thread_worker``); every correction afterwards (cut along a drawn line, merge,
delete, paint, reclass, drag to another slot, turn, undo) is a call on a
:class:`napari_cellclass.karyotype.corrections.KaryotypeSession`, which re-classifies
only the chromosomes whose pixels changed and redraws the karyogram.  This module
only turns clicks into those calls and results into layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..errors import CellClassError
from ..karyotype.assign import CLASS_NAMES
from ..zoo.provenance import synthetic_warning
from ._forms import Choice, DeviceChoice, LayerChoice, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs
from ._runner import wrapping_label as _wrapping_label

LABELS_NAME = "chromosomes"
SHAPES_NAME = "chromosome classes"
KARYOGRAM_NAME = "karyogram"
CUT_NAME = "cut line"


AUTO_CLASSIFIER = "auto (by banding)"
AUTO_SUMMARY = ("gricol-gband-2labs for dark chromosomes on a light field (G-band), gricol-qband-bioimlab for "
                "bright on dark (Q-band, DAPI); decided for each spread")


def _auto_entry() -> tuple[str, str] | None:
    """The chooser's by-banding entry, offered only when both banding built-ins are installed."""
    from .. import zoo
    from ..tasks.karyotype import BUILTIN_CLASSIFIERS

    try:
        ok = all(zoo.is_builtin(name) for name in BUILTIN_CLASSIFIERS.values())
    except Exception:  # a broken model folder: the chooser says so itself
        ok = False
    return (AUTO_CLASSIFIER, AUTO_SUMMARY) if ok else None


def _wrappable(text: str) -> str:
    """ISCN strings have no spaces; a zero-width space after each comma lets a label wrap them."""
    return text.replace(",", ",\u200b")


def _trained_on(model: Any) -> str:
    from ..engine.checkpoint import read_meta

    if getattr(model, "meta", None) is not None:  # a loaded model
        return model.meta.trained_on
    try:
        return read_meta(model).trained_on
    except CellClassError:
        return "unknown"  # the job itself reports an unreadable checkpoint


class KaryotypeWidget(RunsJobs, QWidget):
    """Spread layer + chromosome classifier -> labels, class boxes, karyogram and ISCN summary."""

    def __init__(self, napari_viewer):
        from napari.layers import Image

        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None
        self._row_of: list[int] = []  # table row -> result row (flagged chromosomes first)
        self.session = None  # KaryotypeSession of the shown result: all corrections go through it
        self._image: np.ndarray | None = None
        self._image_name = ""
        self._models: tuple[Path | None, Path | None, str] = (None, None, "")  # classifier, detector, segmenter
        self._device: str | None = None
        self._updating = False
        self._hooked: set[int] = set()  # ids of labels layers whose edits we follow
        self._trained_on: str | None = None  # of the classifier behind the shown result (for the warning)
        self._edit_timer = QTimer(self)
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(600)
        self._edit_timer.timeout.connect(self.labels_edited)

        self.image_box = LayerChoice(napari_viewer, Image, where=lambda ly: ly.name != KARYOGRAM_NAME)
        # default: the built-in for the spread's banding (G or Q), decided per spread; built-ins, Browse...
        self.model_edit = ModelChooser("chromosome", auto=_auto_entry())
        self.device_box = DeviceChoice()
        self.device_label = self.device_box.label  # where the model runs, shown from the start
        self.device_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.segmenter_box = Choice(choices=["auto", "threshold", "detector"])  # auto: the detector, else threshold
        # built-in chromosome detectors (task 'karyotype'); any detector checkpoint can be browsed
        self.detector_edit = ModelChooser("karyotype", optional=True, check_task=False,
                                          placeholder="detector (only for the 'detector' segmenter)")
        fields = form(("spread", self.image_box), ("model", self.model_edit), ("device", self.device_box),
                      ("segmenter", self.segmenter_box), ("detector", self.detector_edit))

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Karyotype")
        self.run_button.clicked.connect(lambda: self.run())
        self.runner = JobRunner([self.run_button], context="karyotyping failed")
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.warning_label = _wrapping_label(style="color: #e69500; font-weight: bold")  # generated-data models
        self.summary_label = _wrapping_label("no result yet", "font-size: 16pt; font-weight: bold")
        self.findings_label = _wrapping_label()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["id", "class", "p", "flag"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)  # the id column says it
        header = self.table.horizontalHeader()
        for col in range(3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)  # long reasons elide, not widen
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.table.setMinimumHeight(160)
        self.table.itemSelectionChanged.connect(self._select_from_table)

        def row(*specs) -> QHBoxLayout:
            box = QHBoxLayout()
            for text, tip, slot in specs:
                b = QPushButton(text)
                b.setToolTip(tip)
                b.clicked.connect(lambda _=False, f=slot: f())
                b.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
                box.addWidget(b)
                setattr(self, f"{slot.__name__.strip('_')}_button", b)
            return box

        edit_row = row(
            ("Cut", "cut a chromosome in two along a line drawn in the 'cut line' layer", self.cut),
            ("Merge", "merge the chromosomes selected in the table", self.merge),
            ("Delete", "delete the selected objects (debris, nucleus)", self.delete),
            ("Undo", "undo the last correction", self.undo))
        turn_row = row(
            ("180°", "turn the selected chromosome upside down (p arm up)", self.rotate_180),
            ("⟲ 15°", "turn the selected chromosome 15° counter-clockwise", self.rotate_left),
            ("⟳ 15°", "turn the selected chromosome 15° clockwise", self.rotate_right),
            ("Mirror", "mirror the selected chromosome left-right", self.mirror))
        export_row = row(
            ("PNG", "save the karyogram as PNG", self.export_png),
            ("CSV", "save the per-chromosome table as CSV", self.export_csv),
            ("Report", "save a PDF report: karyogram, ISCN string, flags, models, sign-off line",
             self.export_report))
        hint = _wrapping_label(
            "Click a chromosome in the karyogram to select it, drag it to another pair to reclass it. "
            "Fix classes in the table or with K / Shift-K on a selected label. Paint the labels layer, or "
            "draw a line and press Cut, to fix the segmentation; only changed objects are classified again.")

        self.export_buttons = (self.export_png_button, self.export_csv_button, self.export_report_button)
        for b in self.export_buttons:  # nothing to export before there is a result
            b.setEnabled(False)

        add_all(scrolling_layout(self), [
            fields, buttons, self.progress, self.status, self.device_label, self.warning_label, self.summary_label,
            self.findings_label, self.table, edit_row, turn_row, export_row, hint])

    # ------------------------------------------------------------------ helpers
    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ------------------------------------------------------------------ running
    def run(self, labels: np.ndarray | None = None, sync: bool = False):
        """Start the pipeline; returns the worker (or the result when ``sync``; None on bad input)."""
        self.device_box.show_device()
        return self.runner.start(lambda: self._job(labels), self._on_done, sync=sync, busy_text="karyotyping...")

    def _job(self, labels: np.ndarray | None):
        """Read the form and check the spread on the GUI thread; the pipeline generator for the runner."""
        from ..tasks.karyotype import karyotype

        layer = self.image_box.layer
        if layer is None:
            raise CellClassError("choose a spread image layer first")
        model = self.model_edit.value  # built-in names or paths -> verified checkpoints
        detector = self.detector_edit.value
        device = self.device_box.device
        image = np.asarray(layer.data)
        if getattr(layer, "rgb", False) is False and image.ndim == 3 and image.shape[-1] not in (3, 4):
            image = image[int(self.viewer.dims.current_step[0])] if image.shape[0] > 1 else image[0]
        if model is None and self.model_edit.is_auto:
            from ..tasks.karyotype import default_classifier

            model = default_classifier(image, device)  # the built-in for this spread's banding
        if model is None:
            raise CellClassError("choose a chromosome classifier checkpoint (task 'chromosome')")
        self._trained_on = _trained_on(model)
        from ..karyotype.segment import check_spread

        check = check_spread(image)  # blank, oversized, fluorescence: say so before any work
        self._image, self._image_name = image, layer.name
        from ..tasks.karyotype import segmenter_choice

        seg, effective = segmenter_choice(self.segmenter_box.value, detector or None)
        self._models = (model, effective if seg == "detector" else None, seg)  # for the report
        self._device = device
        self._notes = list(check.notes)
        self._banding_note = self._banding_mismatch(image)
        # the job loads the models (zoo.loaded: once, cached); corrections reuse the same loaded objects
        return karyotype(image, model, device=device, labels=labels, segmenter=self.segmenter_box.value,
                         detector_model=detector or None, cancel=self.runner.new_token())

    def _fail(self, msg: str):
        """Bad input or a refused correction: one line in the status and one notification."""
        return self.runner.fail(msg)

    def _on_done(self, res: dict[str, Any]) -> None:
        from ..karyotype.corrections import KaryotypeSession
        from ..tasks.karyotype import model_classifier

        n = len(res["classes"])
        classifier = model_classifier(self._models[0], self._device)
        self.session = KaryotypeSession.from_result(self._image, res, classify=classifier)
        shown = self.session.update()
        self.warning_label.setText(" ".join(t for t in (synthetic_warning(self._trained_on),
                                                        getattr(self, "_banding_note", "")) if t))
        warning = synthetic_warning(self._trained_on)
        self.status.setText(f"done in {res.get('seconds', 0)} s; classified {res.get('classified', n)} objects"
                            + (f". {warning}" if warning else "")
                            + "".join(f". Note: {t}" for t in getattr(self, "_notes", [])))
        self._show(shown)
        for b in self.export_buttons:
            b.setEnabled(True)

    def _banding_mismatch(self, image: np.ndarray) -> str:
        """A warning when the chosen built-in classifier is for the other banding than the spread's."""
        from ..tasks.karyotype import BUILTIN_CLASSIFIERS, banding

        chosen = self.model_edit.text()
        if chosen not in BUILTIN_CLASSIFIERS.values():
            return ""
        band = banding(image)
        if BUILTIN_CLASSIFIERS[band] == chosen:
            return ""
        return (f"This spread looks {band}-banded but the classifier chosen is {chosen!r}; "
                f"{BUILTIN_CLASSIFIERS[band]!r} is the built-in for {band}-band spreads.")

    def refresh(self) -> dict[str, Any] | None:
        """Re-pair and redraw after a correction (classifies only what changed); shows errors."""
        if self.session is None:
            return None
        try:
            res = self.session.update()
        except CellClassError as exc:
            return self._fail(str(exc))
        self._show(res)
        if self.session.last_classified:
            self.status.setText(f"classified {len(self.session.last_classified)} changed object(s) again")
        return res

    # ------------------------------------------------------------------ results -> layers
    def _show(self, res: dict[str, Any]) -> None:
        from ..layers import add_layers, karyotype_layers

        self.result = res
        names = [CLASS_NAMES[c] if c >= 0 else "?" for c in res["classes"]]
        self._updating = True
        try:
            # labels get their own copy (painting shows up as a difference from the session's labels)
            tuples = karyotype_layers(res)
            if not any(t[1]["name"] == SHAPES_NAME for t in tuples) and self._layer(SHAPES_NAME) is not None:
                self.viewer.layers.remove(SHAPES_NAME)  # no chromosome left: no stale class boxes
            for layer in add_layers(self.viewer, tuples):
                self._hook(layer)
        finally:
            self._updating = False
        # green only when nothing needs review; amber while chromosomes are flagged; red for a settled finding
        colour = "#e0a020" if not res.get("confident", True) else ("#d33" if res["abnormal"] else "#3a3")
        self.summary_label.setText(_wrappable(res.get("headline", res["summary"])))
        self.summary_label.setStyleSheet(f"font-size: 16pt; font-weight: bold; color: {colour}")
        flagged = int(np.sum(res["flagged"]))
        self.findings_label.setText(
            ("; ".join(res["findings"]) + ". " if res["findings"] else "")
            + f"{res['count']} chromosomes, {flagged} flagged for review")
        self._fill_table(res, names)

    def _hook(self, layer) -> None:
        """Connect our result layers once: painting and K/Shift-K on the labels, drag in the karyogram."""
        if layer.name == LABELS_NAME and id(layer) not in self._hooked:
            self._hooked.add(id(layer))
            layer.events.paint.connect(self._schedule_edit)
            layer.events.data.connect(self._schedule_edit)
            layer.bind_key("k", lambda _layer: self._step_class(+1), overwrite=True)
            layer.bind_key("Shift-k", lambda _layer: self._step_class(-1), overwrite=True)
        elif layer.name == KARYOGRAM_NAME and self._karyogram_drag not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._karyogram_drag)

    def review_order(self, res: dict[str, Any] | None = None) -> list[int]:
        """Result rows in the table's order: flagged chromosomes first, least confident first."""
        res = res if res is not None else self.result
        if res is None:
            return []
        n = len(res["ids"])
        return sorted(range(n), key=lambda k: (not bool(res["flagged"][k]), float(res["confidence"][k]), k))

    def table_row(self, lid: int) -> int:
        """The table row that shows chromosome ``lid`` (rows are in review order)."""
        k = [int(i) for i in self.result["ids"]].index(int(lid))
        return self._row_of.index(k) if self._row_of else k

    def _fill_table(self, res: dict[str, Any], names: list[str]) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(names))
        self._row_of = self.review_order(res)  # table row -> result row
        ids, conf, reasons, flagged = res["ids"], res["confidence"], res["reasons"], res["flagged"]
        res = {"ids": [ids[k] for k in self._row_of], "confidence": [conf[k] for k in self._row_of],
               "reasons": [reasons[k] if k < len(reasons) else "" for k in self._row_of],
               "flagged": [flagged[k] for k in self._row_of]}
        names = [names[k] for k in self._row_of]
        def cell(text: str) -> QTableWidgetItem:  # read-only: classes change through the combo box
            item = QTableWidgetItem(text)
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            return item

        for r, (lid, name) in enumerate(zip(res["ids"], names)):
            self.table.setItem(r, 0, cell(str(int(lid))))
            box = self.table.cellWidget(r, 1)
            if not isinstance(box, QComboBox):  # reused across refreshes: no pile of stale combo boxes
                box = QComboBox()
                box.addItems(CLASS_NAMES + ["?"])
                box.currentTextChanged.connect(lambda text, b=box: self.set_class(int(b.property("lid")), text))
                self.table.setCellWidget(r, 1, box)
            box.blockSignals(True)
            box.setProperty("lid", int(lid))
            box.setCurrentText(name)
            box.blockSignals(False)
            self.table.setItem(r, 2, cell(f"{res['confidence'][r]:.2f}"))
            item = cell(res["reasons"][r] if r < len(res["reasons"]) else "")
            item.setToolTip(item.text())
            if res["flagged"][r]:
                item.setBackground(QColor(255, 200, 200))
                item.setForeground(QColor(40, 0, 0))  # readable on pink in napari's dark theme too
            self.table.setItem(r, 3, item)
        self.table.blockSignals(False)

    # ------------------------------------------------------------------ selection
    def selected_ids(self) -> list[int]:
        """Chromosomes selected in the table, else the one picked in the karyogram or the labels layer."""
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        if rows and self.result is not None:
            order = self._row_of or list(range(len(self.result["ids"])))
            return [int(self.result["ids"][order[r]]) for r in rows if r < len(order)]
        if self.session is not None and self.session.selected is not None:
            return [self.session.selected]
        lab = self._layer(LABELS_NAME)
        if lab is not None and self.result is not None and int(lab.selected_label) in set(self.result["ids"]):
            return [int(lab.selected_label)]
        return []

    def select(self, lid: int | None) -> None:
        """Pick one chromosome (blue frame in the karyogram, selected label, table row)."""
        if self.session is None:
            return
        self.session.selected = lid
        lab = self._layer(LABELS_NAME)
        if lid is not None and lab is not None:
            lab.selected_label = int(lid)
        if lid is not None and self.result is not None and lid in set(int(i) for i in self.result["ids"]):
            self.table.blockSignals(True)
            self.table.clearSelection()
            k = list(int(i) for i in self.result["ids"]).index(lid)
            order = self._row_of or list(range(len(self.result["ids"])))
            self.table.selectRow(order.index(k) if k in order else k)
            self.table.blockSignals(False)
        self.refresh()

    def _select_from_table(self) -> None:
        ids = self.selected_ids()
        lab = self._layer(LABELS_NAME)
        if len(ids) == 1 and lab is not None:
            lab.selected_label = ids[0]

    def _karyogram_drag(self, layer, event):
        """Press on a chromosome selects it; releasing it over another pair's cell moves it there."""
        if self.session is None or self.session.karyogram is None:
            return
        k = self.session.karyogram
        y, x = layer.world_to_data(event.position)[-2:]
        lid = k.item_at(y, x)
        if lid is None:
            return
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; older: viewer.camera
        camera = scene.camera if scene is not None else self.viewer.camera
        pan = camera.mouse_pan
        camera.mouse_pan = False  # the drag moves the chromosome, not the view
        try:
            yield
            while event.type == "mouse_move":
                yield
        finally:
            camera.mouse_pan = pan
        y2, x2 = layer.world_to_data(event.position)[-2:]
        cell = k.cell_at(y2, x2)
        here = k.cell_at(y, x)
        if cell is not None and cell != here:
            self.move_chromosome(lid, cell)
        else:
            self.select(lid)

    # ------------------------------------------------------------------ corrections
    def _apply(self, action, *args):
        """Run one session edit; report its InputError in the dock instead of raising."""
        if self.session is None:
            return self._fail("run the karyotype first")
        try:
            out = action(*args)
        except CellClassError as exc:
            return self._fail(str(exc))
        self.refresh()
        return out

    def set_class(self, label_id: int, cls: str | int | None) -> None:
        """The user's class for one chromosome; re-pair and redraw (no re-classification)."""
        if self.session is None:
            return
        if isinstance(cls, str) and cls not in CLASS_NAMES and cls != "?":
            cls = None
        QTimer.singleShot(0, lambda: self._apply(self.session.set_class, int(label_id), cls))  # not inside
        # the combo box's own signal

    def move_chromosome(self, label_id: int, cell: str):
        """Drag-and-drop result: the chromosome goes to ``cell``'s class ("?" = not a chromosome)."""
        self.session.selected = int(label_id) if self.session is not None else None
        return self._apply(self.session.move if self.session else None, int(label_id), cell)

    def _step_class(self, step: int) -> None:
        lab = self._layer(LABELS_NAME)
        if lab is None or self.result is None:
            return
        lid = int(lab.selected_label)
        ids = [int(i) for i in self.result["ids"]]
        if lid not in ids:
            return
        cur = int(self.result["classes"][ids.index(lid)])
        self._apply(self.session.set_class, lid, (max(cur, 0) + step) % len(CLASS_NAMES))

    def cut(self, points=None):
        """Cut along the last line drawn in the 'cut line' shapes layer (created on first press)."""
        if self.session is None:
            return self._fail("run the karyotype first")
        layer = self._layer(CUT_NAME)
        if points is None:
            if layer is None or not len(layer.data):
                if layer is None:
                    layer = self.viewer.add_shapes(name=CUT_NAME, edge_color="yellow", edge_width=2,
                                                   ndim=2)
                self.viewer.layers.selection.active = layer
                layer.mode = "add_line"
                self.status.setText("draw a line across the chromosome in the 'cut line' layer, then press Cut")
                return None
            points = np.asarray(layer.data[-1])[:, -2:]
        new = self._apply(self.session.cut, points)
        if new is not None and layer is not None:
            layer.data = []
            self.status.setText(f"cut: new chromosome(s) {', '.join(map(str, new))}")
        return new

    def merge(self, ids=None):
        ids = list(ids) if ids is not None else self.selected_ids()
        if len(ids) < 2:
            return self._fail("select two chromosomes in the table to merge (Ctrl-click)")
        return self._apply(self.session.merge, *ids) if self.session else self._fail("run the karyotype first")

    def delete(self, ids=None):
        ids = list(ids) if ids is not None else self.selected_ids()
        if not ids:
            return self._fail("select the objects to delete (table rows, or a label)")
        if self.session is not None:
            self.session.selected = None
        return self._apply(self.session.delete, *ids) if self.session else self._fail("run the karyotype first")

    def undo(self):
        if self.session is None:
            return self._fail("run the karyotype first")
        name = self.session.undo()
        if name is None:
            self.status.setText("nothing to undo")
            return None
        self.refresh()
        self.status.setText(f"undone: {name}")
        return name

    def _turn(self, action, *args):
        ids = self.selected_ids()
        if len(ids) != 1:
            return self._fail("select one chromosome (click it in the karyogram or the table)")
        return self._apply(action, ids[0], *args)

    def rotate_180(self):
        return self._turn(self.session.rotate if self.session else None, 180.0)

    def rotate_left(self):
        return self._turn(self.session.rotate if self.session else None, 15.0)

    def rotate_right(self):
        return self._turn(self.session.rotate if self.session else None, -15.0)

    def mirror(self):
        return self._turn(self.session.mirror if self.session else None)

    def _schedule_edit(self, event=None) -> None:
        if not self._updating:
            self._edit_timer.start()

    def labels_edited(self, sync: bool = True):
        """Take the painted labels layer; only objects whose pixels changed are classified again."""
        lab = self._layer(LABELS_NAME)
        if lab is None or self.session is None:
            return None
        if np.asarray(lab.data).shape != self.session.labels.shape:
            return None
        changed = self._apply(self.session.apply_labels, np.asarray(lab.data))
        return self.result if changed else None

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

    def export_report(self, path: str | Path | None = None) -> Path | None:
        """PDF for the case file: karyogram, ISCN string, count, flags, models, date, sign-off line."""
        from ..karyotype.report import model_info, write_report

        if self.result is None or self.session is None:
            return self._fail("run the karyotype first")
        if path is None:
            stem = (self._image_name or "karyotype").replace(" ", "_")
            path, _ = QFileDialog.getSaveFileName(self, "Report", f"{stem}_report.pdf", "PDF (*.pdf)")
            if not path:
                return None
        classifier, detector, segmenter = self._models
        models = [model_info(classifier, "classifier"),
                  model_info(detector, "detector") if segmenter == "detector" else
                  {"role": "segmenter", "name": "classical threshold segmenter (no model)"}]
        try:
            return write_report(path, self.result, case=self._image_name, models=models,
                                corrections=[step.name for step in self.session.history])
        except (OSError, CellClassError) as exc:
            return self._fail(f"could not write the report: {exc}")
