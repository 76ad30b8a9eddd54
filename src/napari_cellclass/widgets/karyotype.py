"""Karyotype a metaphase spread: segment, classify, pair, karyogram; correct by hand.

Thin: the pipeline is :func:`napari_cellclass.tasks.karyotype.karyotype`; every
correction afterwards (cut along a drawn line, merge, delete, paint, reclass, drag
to another slot, turn, undo) is a call on a
:class:`napari_cellclass.karyotype.corrections.KaryotypeSession`, which re-classifies
only the chromosomes whose pixels changed and redraws the karyogram.  Both run
through the widget's :class:`~._runner.JobRunner`, off the GUI thread, with
progress and Cancel (a cancelled correction is undone).  This module only turns
clicks into those calls and results into layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
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

from ..errors import Cancelled, CellClassError
from ..karyotype.assign import CLASS_NAMES
from ..zoo.provenance import synthetic_warning
from ._forms import Choice, DeviceChoice, LayerChoice, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs
from ._runner import wrapping_label as _wrapping_label

LABELS_NAME = "chromosomes"
SHAPES_NAME = "chromosome classes"
KARYOGRAM_NAME = "karyogram"
NOT_CHROMOSOMES_NAME = "not chromosomes"
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


def _ids_text(ids) -> str:
    return ", ".join(str(int(i)) for i in ids)


def _classified_text(session) -> str:
    n = len(session.last_classified)
    return f"; classified {n} changed object{'s' if n != 1 else ''} again" if n else ""


class KaryotypeWidget(RunsJobs, QWidget):
    """Spread layer + chromosome classifier -> labels, class boxes, karyogram and ISCN summary."""

    def __init__(self, napari_viewer):
        from napari.layers import Image

        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None
        self._row_of: list[int] = []  # table row -> result row (flagged chromosomes first)
        self.session = None  # KaryotypeSession of the shown result: all corrections go through it
        self._rejected: list[dict] = []  # what the rejection step set aside on the shown spread
        self._image: np.ndarray | None = None
        self._image_name = ""
        self._models: tuple[Path | None, Path | None, str] = (None, None, "")  # classifier, detector, segmenter
        self._device: str | None = None
        self._updating = False
        self._hooked: set[int] = set()  # ids of labels layers whose edits we follow
        self._trained_on: str | None = None  # of the classifier behind the shown result (for the warning)
        self._prepared: tuple | None = None  # (pipeline result, session, first update) made in the worker
        self._merge_refused: tuple[int, ...] | None = None  # a refused merge: pressing Merge again forces it
        self._unlock_labels = None  # the labels layer locked against painting while a job runs
        self._edit_timer = QTimer(self)
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(600)
        self._edit_timer.timeout.connect(lambda: self.labels_edited())

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

        self.run_button = QPushButton("Karyotype")
        self.run_button.clicked.connect(lambda: self.run())
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
            ("Merge", "merge the chromosomes selected in the table (they must touch; press again to force)",
             self.merge),
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
        self.straight_box = QCheckBox("straightened chromosomes in the karyogram")
        self.straight_box.setChecked(True)
        self.straight_box.setToolTip("bent chromosomes are laid out straight along their axis; untick to see "
                                     "every chromosome as cut from the spread")
        self.straight_box.toggled.connect(lambda on: self.set_straightened(on))
        hint = _wrapping_label(
            "Click a chromosome in the karyogram to select it, drag it to another pair to reclass it. "
            "Fix classes in the table or with K / Shift-K on a selected label. Paint the labels layer, or "
            "draw a line and press Cut, to fix the segmentation; only changed objects are classified again.")

        # every button that starts a job or an edit is disabled while one runs
        self.edit_buttons = (self.cut_button, self.merge_button, self.delete_button, self.undo_button,
                             self.rotate_180_button, self.rotate_left_button, self.rotate_right_button,
                             self.mirror_button)
        self.runner = JobRunner([self.run_button, *self.edit_buttons], context="karyotyping failed",
                                cancelled_text="cancelled; nothing was changed")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        self.export_buttons = (self.export_png_button, self.export_csv_button, self.export_report_button)
        for b in self.export_buttons:  # nothing to export before there is a result
            b.setEnabled(False)

        add_all(scrolling_layout(self), [
            fields, buttons, self.progress, self.status, self.device_label, self.warning_label, self.summary_label,
            self.findings_label, self.table, edit_row, turn_row, self.straight_box, export_row, hint])

    # ------------------------------------------------------------------ helpers
    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _lock(self, busy: bool) -> None:
        """The table's class boxes, the straightened box and painting in the labels layer follow the
        runner's buttons (a stroke made while a job runs would be overwritten by its result); when a
        job ends the box shows what the karyogram shows (a cancelled switch flips it back)."""
        self.table.setEnabled(not busy)
        self.straight_box.setEnabled(not busy)
        lab = self._layer(LABELS_NAME)
        if lab is not None and busy and lab.editable:
            lab.editable = False
            self._unlock_labels = lab
        elif not busy and self._unlock_labels is not None:
            self._unlock_labels.editable = True
            self._unlock_labels = None
        if not busy and self.session is not None and self.straight_box.isChecked() != self.session.straighten:
            self.straight_box.blockSignals(True)
            self.straight_box.setChecked(self.session.straighten)
            self.straight_box.blockSignals(False)

    def _start(self, make_job, on_done, *, sync: bool = False, busy_text: str):
        """Start a job through the runner, with the table and check box locked until it ends."""
        def done(value):
            self._lock(False)
            on_done(value)

        self._lock(True)
        out = self.runner.start(make_job, done, sync=sync, busy_text=busy_text)
        if self.runner.busy and self.runner.worker is not None:
            self.runner.worker.finished.connect(lambda: self._lock(False))
        else:
            self._lock(False)
        return out

    # ------------------------------------------------------------------ running
    def run(self, labels: np.ndarray | None = None, sync: bool = False):
        """Start the pipeline; returns the worker (or the result when ``sync``; None on bad input)."""
        self.device_box.show_device()
        return self._start(lambda: self._job(labels), self._on_done, sync=sync, busy_text="karyotyping...")

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
        token = self.runner.new_token()
        pipeline = karyotype(image, model, device=device, labels=labels, segmenter=self.segmenter_box.value,
                             detector_model=detector or None, cancel=token)
        return self._pipeline_then_session(pipeline, image, model, device, token, self.straight_box.isChecked())

    def _pipeline_then_session(self, pipeline, image, model, device, token, straight: bool):
        """The pipeline, then the correction session and its first karyogram: all in the worker."""
        from ..karyotype.corrections import KaryotypeSession
        from ..tasks.karyotype import model_classifier

        res = yield from pipeline
        session = KaryotypeSession.from_result(image, res, classify=model_classifier(model, device),
                                               straighten=straight)
        shown = yield from session.update_job(cancel=token)
        self._prepared = (res, session, shown)
        return res

    def _fail(self, msg: str):
        """Bad input or a refused correction: one line in the status and one notification."""
        return self.runner.fail(msg)

    def _on_done(self, res: dict[str, Any]) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is res:
            _, self.session, shown = prepared
        else:  # a result handed in directly (scripts, tests): its session is made here
            from ..karyotype.corrections import KaryotypeSession
            from ..tasks.karyotype import model_classifier

            self.session = KaryotypeSession.from_result(
                self._image, res, classify=model_classifier(self._models[0], self._device),
                straighten=self.straight_box.isChecked())
            shown = self.session.update()
        n = len(res["classes"])
        self._rejected = list(res.get("rejected") or [])  # set aside as not chromosomes: shown, not counted
        self._merge_refused = None
        self.warning_label.setText(" ".join(t for t in (synthetic_warning(self._trained_on),
                                                        getattr(self, "_banding_note", "")) if t))
        warning = synthetic_warning(self._trained_on)
        self.status.setText(f"done in {res.get('seconds', 0)} s; classified {res.get('classified', n)} objects"
                            + (f". {warning}" if warning else "")
                            + (f"; {len(self._rejected)} objects set aside as not chromosomes (layer "
                               f"'{NOT_CHROMOSOMES_NAME}'; paint one into the labels to count it)"
                               if self._rejected else "")
                            + "".join(f". Note: {t}" for t in getattr(self, "_notes", [])))
        self._show(shown)
        self.viewer.reset_view()  # the new karyogram sits right of the spread: show both
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

    def refresh(self, sync: bool = False):
        """Re-pair and redraw the session as it stands (through the runner, like every correction)."""
        return self._edit(None, lambda out, ses: "updated", sync=sync)

    # ------------------------------------------------------------------ results -> layers
    def _karyogram_shown(self) -> np.ndarray | None:
        """The karyogram as displayed: the session's image with the selected chromosome framed in blue."""
        if self.session is None or self.session.karyogram is None:
            return None
        return self.session.karyogram.with_selection(self.session.selected)

    def _show(self, res: dict[str, Any]) -> None:
        from ..layers import add_layers, karyotype_layers

        self.result = res
        names = [CLASS_NAMES[c] if c >= 0 else "?" for c in res["classes"]]
        self._updating = True
        try:
            # labels get their own copy (painting shows up as a difference from the session's labels)
            tuples = karyotype_layers(dict(res, rejected=self._rejected))
            if not self._rejected and self._layer(NOT_CHROMOSOMES_NAME) is not None:
                self.viewer.layers.remove(NOT_CHROMOSOMES_NAME)  # a new spread: no stale boxes
            shown = self._karyogram_shown()
            if shown is not None:  # the selection frame is for the screen only; res["karyogram"] stays clean
                tuples = [(shown, kw, kind) if kw.get("name") == KARYOGRAM_NAME else (data, kw, kind)
                          for data, kw, kind in tuples]
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
        """Pick one chromosome (blue frame in the karyogram on screen only, selected label, table row)."""
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
        layer, shown = self._layer(KARYOGRAM_NAME), self._karyogram_shown()
        if layer is not None and shown is not None and layer.data.shape == shown.shape:
            layer.data = shown  # only the frame moves: no re-pairing, no redraw of the crops

    def _select_from_table(self) -> None:
        ids = self.selected_ids()
        lab = self._layer(LABELS_NAME)
        if len(ids) == 1 and lab is not None:
            lab.selected_label = ids[0]

    def _karyogram_drag(self, layer, event):
        """Press on a chromosome selects it; releasing it over another pair's cell moves it there."""
        if self.session is None or self.session.karyogram is None or self.runner.busy:
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
    def _edit(self, action, describe, *args, sync: bool = False, after=None, on_cancel=None,
              cancellable: bool = True):
        """One correction through the runner: ``action(*args)`` on the session, then its update
        (classify what changed, pair, draw), both off the GUI thread.

        ``describe(out, session)`` words the status line once it is done (the status always
        tells the last action).  Cancel during the update undoes the edit (or calls
        ``on_cancel`` for a change that is not in the history), so what is shown and what
        the session holds never part (``cancellable=False``: an undo, which cannot be taken
        back, runs its short update to the end).  Returns what the runner returns: the edit's
        own return value in synchronous mode, the worker otherwise, None when refused.
        """
        if self.session is None:
            return self._fail("run the karyotype first")
        if self.runner.busy:
            return None
        session = self.session
        text: dict[str, str] = {}

        def job(token):
            before = {id(step) for step in session.history}
            out = action(*args) if action is not None else None
            pushed = bool(session.history) and id(session.history[-1]) not in before  # not so after an undo
            try:
                res = yield from session.update_job(cancel=token if cancellable else None)
            except Cancelled:
                if pushed:
                    session.undo()  # a cancelled correction is not made
                elif on_cancel is not None:
                    on_cancel()
                raise
            text["status"] = describe(out, session)
            text["res"] = res
            return out

        def done(out):
            self._show(text["res"])
            if after is not None:
                after(out)
            self.status.setText(text["status"])

        return self._start(lambda: job(self.runner.new_token()), done, sync=sync, busy_text="correcting...")

    def set_class(self, label_id: int, cls: str | int | None, sync: bool = False) -> None:
        """The user's class for one chromosome; re-pair and redraw (no re-classification)."""
        if self.session is None:
            return
        if isinstance(cls, str) and cls not in CLASS_NAMES and cls != "?":
            cls = None
        label_id = int(label_id)

        def said(_out, _ses) -> str:
            if cls is None:
                return f"chromosome {label_id}: back to the model's class"
            name = cls if isinstance(cls, str) else (CLASS_NAMES[int(cls)] if int(cls) >= 0 else "?")
            return f"chromosome {label_id} set to {name}" if name != "?" else \
                f"object {label_id} marked as not a chromosome"

        if sync:
            return self._edit(self.session.set_class, said, label_id, cls, sync=True)
        # not inside the combo box's own signal
        QTimer.singleShot(0, lambda: self._edit(self.session.set_class, said, label_id, cls))
        return None

    def move_chromosome(self, label_id: int, cell: str, sync: bool = False):
        """Drag-and-drop result: the chromosome goes to ``cell``'s class ("?" = not a chromosome)."""
        if self.session is None:
            return self._fail("run the karyotype first")
        self.session.selected = int(label_id)
        where = "the unplaced row (not a chromosome)" if cell == "?" else f"pair {cell}"
        return self._edit(self.session.move, lambda _o, _s: f"chromosome {label_id} moved to {where}",
                          int(label_id), cell, sync=sync)

    def _step_class(self, step: int) -> None:
        lab = self._layer(LABELS_NAME)
        if lab is None or self.result is None or self.runner.busy:
            return
        lid = int(lab.selected_label)
        ids = [int(i) for i in self.result["ids"]]
        if lid not in ids:
            return
        cur = int(self.result["classes"][ids.index(lid)])
        new = (max(cur, 0) + step) % len(CLASS_NAMES)
        self._edit(self.session.set_class, lambda _o, _s: f"chromosome {lid} set to {CLASS_NAMES[new]}", lid, new)

    def cut(self, points=None, sync: bool = False):
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

        def clear_line(_new) -> None:
            if layer is not None:
                layer.data = []

        return self._edit(self.session.cut, lambda new, ses: f"cut: new chromosome(s) {_ids_text(new)}"
                          + _classified_text(ses), points, sync=sync, after=clear_line)

    def merge(self, ids=None, force: bool = False, sync: bool = False):
        """Merge the selected chromosomes; objects that do not touch are refused once (press again: forced)."""
        ids = list(ids) if ids is not None else self.selected_ids()
        if len(ids) < 2:
            return self._fail("select two chromosomes in the table to merge (Ctrl-click)")
        if self.session is None:
            return self._fail("run the karyotype first")
        if self.runner.busy:
            return None
        key = tuple(sorted(int(i) for i in ids))
        force = force or self._merge_refused == key
        self._merge_refused = None
        if not force:
            try:
                apart = self.session.gap(*ids)
            except CellClassError as exc:
                return self._fail(str(exc))
            if apart is not None:
                a, b, gap = apart
                self._merge_refused = key
                return self._fail(f"chromosomes {a} and {b} do not touch (a gap of {gap} px between them); "
                                  f"press Merge again to join them anyway")
        return self._edit(lambda *i: self.session.merge(*i, force=True),
                          lambda kept, ses: f"merged {_ids_text(ids)} into {kept}" + _classified_text(ses),
                          *ids, sync=sync)

    def delete(self, ids=None, sync: bool = False):
        ids = list(ids) if ids is not None else self.selected_ids()
        if not ids:
            return self._fail("select the objects to delete (table rows, or a label)")
        if self.session is None:
            return self._fail("run the karyotype first")
        if not self.runner.busy:
            self.session.selected = None
        return self._edit(self.session.delete, lambda _o, _s: f"deleted {_ids_text(ids)}", *ids, sync=sync)

    def undo(self, sync: bool = False):
        if self.session is None:
            return self._fail("run the karyotype first")
        if self.runner.busy:
            return None
        if not self.session.history:
            self.status.setText("nothing to undo")
            return None
        return self._edit(self.session.undo, lambda name, _s: f"undone: {name}", sync=sync, cancellable=False)

    def _turn(self, action, what: str, *args, sync: bool = False):
        ids = self.selected_ids()
        if len(ids) != 1:
            return self._fail("select one chromosome (click it in the karyogram or the table)")
        return self._edit(action, lambda _o, _s: f"{what} chromosome {ids[0]}", ids[0], *args, sync=sync)

    def rotate_180(self, sync: bool = False):
        return self._turn(self.session.rotate if self.session else None, "turned by 180°:", 180.0, sync=sync)

    def rotate_left(self, sync: bool = False):
        return self._turn(self.session.rotate if self.session else None, "turned 15° counter-clockwise:",
                          15.0, sync=sync)

    def rotate_right(self, sync: bool = False):
        return self._turn(self.session.rotate if self.session else None, "turned 15° clockwise:", -15.0,
                          sync=sync)

    def mirror(self, sync: bool = False):
        return self._turn(self.session.mirror if self.session else None, "mirrored", sync=sync)

    def set_straightened(self, on: bool, sync: bool = False):
        """Show bent chromosomes straightened (default) or as cut from the spread; not an edit (no undo)."""
        if self.straight_box.isChecked() != bool(on):
            self.straight_box.blockSignals(True)
            self.straight_box.setChecked(bool(on))
            self.straight_box.blockSignals(False)
        if self.session is None or self.session.straighten == bool(on):
            return None
        if self.runner.busy:  # the box is locked while a job runs; a script's call waits its turn
            return None
        session, was = self.session, self.session.straighten

        def switch(flag: bool) -> None:
            session.straighten = flag

        def said(_o, ses) -> str:
            if not ses.straighten:
                return "karyogram: chromosomes as cut from the spread"
            n = sum(bool(o.straightened) for o in ses.karyogram.orientation.values())
            return f"karyogram: {n} bent chromosome(s) straightened"

        return self._edit(switch, said, bool(on), sync=sync, on_cancel=lambda: switch(was))

    def _schedule_edit(self, event=None) -> None:
        if not self._updating:
            self._edit_timer.start()

    def labels_edited(self, sync: bool = False):
        """Take the painted labels layer; only objects whose pixels changed are classified again.

        Returns the changed label ids (synchronous mode), the worker, or None when nothing changed.
        """
        lab = self._layer(LABELS_NAME)
        if lab is None or self.session is None:
            return None
        if self.runner.busy:  # a job holds the session: look again when it is done
            self._edit_timer.start()
            return None
        data = np.asarray(lab.data)
        if data.shape != self.session.labels.shape or np.array_equal(data, self.session.labels):
            return None
        return self._edit(self.session.apply_labels,
                          lambda changed, ses: f"painted: object(s) {_ids_text(sorted(changed))} changed"
                          + _classified_text(ses), data.copy(), sync=sync)

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
