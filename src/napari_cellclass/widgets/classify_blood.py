"""Blood smear widget: "Analyse smear" (detect, classify the white cells, count), review, report.

Thin Qt layer over :mod:`napari_cellclass.tasks.blood` and
:func:`napari_cellclass.tasks.wbc.classify`; jobs run in worker threads with a
progress bar and Cancel.

* **Analyse smear** detects red cells, white cells and platelets with the
  detector, classifies only the white-cell boxes and counts.  The result goes to
  a *new* shapes layer (``<image> smear analysis``) whose features hold the
  detector class and score, the white-cell class, its confidence, one
  probability column per class and ``reviewed_class`` / ``corrected`` (what the
  reviewer decided).  Nothing the user had is changed.
* **Classify white cells in a layer** takes the user's own boxes (drawn, or from a
  VOC file).  When that layer says what each box is (a ``label``/``class``
  feature), only white-cell boxes are classified; the answer goes to a new layer
  that carries the user's features plus the new columns.
* **Review gallery** (:mod:`.blood_gallery`) shows the white cells by class, least
  confident first; reclassifying a cell updates the differential here at once.
* **Analyse folder...** runs folder mode (CSV per smear, summary, PDF reports).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..errors import CellClassError
from ..layers import (
    CLASSIFIED_SUFFIX,
    add_layers,
    blood_colours,
    blood_tag,
    smear_layers,
    wbc_layers,
)
from ..layers import SMEAR_SUFFIX as RESULT_SUFFIX
from ..synth.blood import CLASS_COLOURS
from ._forms import DeviceChoice, LayerChoice, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs

NO_CELLS = ""
LABEL_COLUMNS = ("label", "class", "name", "category", "type")


def _reviewer_default() -> str:
    from ..tasks.blood import reviewer_name

    return reviewer_name()


class ClassifyBloodWidget(RunsJobs, QWidget):
    """Dock widget: Analyse smear (detect + classify white cells + count), review, export."""

    def __init__(self, napari_viewer: Any):
        from napari.layers import Image, Labels, Shapes

        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None  # the last analysis (tasks.blood result or classify result)
        self.result_image: np.ndarray | None = None
        self.output_layer = None
        self.gallery = None
        self.folder_summary: dict[str, Any] | None = None

        self.image_combo = LayerChoice(napari_viewer, Image)
        # shapes/labels layers that hold cells (empty layers and our own results are not offered)
        self.cells_combo = LayerChoice(napari_viewer, (Shapes, Labels), watch_data=True,
                                       where=lambda ly: not self._is_empty(ly) and not self._is_ours(ly))
        self.detector_chooser = ModelChooser("detect")
        self.model_edit = ModelChooser("wbc")  # the white-cell classifier (name kept for scripts)
        self.score_spin = QDoubleSpinBox()
        self.score_spin.setRange(0.0, 1.0)
        self.score_spin.setSingleStep(0.05)
        self.score_spin.setDecimals(3)  # the detector's validated threshold exactly (e.g. 0.304)
        self.score_spin.setToolTip("score threshold for red cells and platelets; starts at the detector's "
                                   "operating point (chosen on its held-out smears)")
        self.wbc_spin = QDoubleSpinBox()
        self.wbc_spin.setRange(0.0, 1.0)
        self.wbc_spin.setSingleStep(0.05)
        self.wbc_spin.setDecimals(3)
        self.wbc_spin.setToolTip("score threshold for white cells: lower than the others, so that no white cell "
                                 "is missed (chosen on the detector's held-out smears for full recall)")
        self.reviewer_edit = QLineEdit()
        self.reviewer_edit.setPlaceholderText(_reviewer_default())
        self.reviewer_edit.setToolTip("who reviews: recorded with every change in the reports (empty: the "
                                      "computer's user name)")
        self.candidates_layer = None
        self.detector_chooser.changed.connect(self._detector_changed)
        self._detector_changed()
        self.device_combo = DeviceChoice()
        self.device_label = self.device_combo.label

        self.analyse_button = QPushButton("Analyse smear")
        self.analyse_button.setToolTip("detect red cells, white cells and platelets; classify the white cells; count")
        self.analyse_button.clicked.connect(lambda: self.analyse())
        self.run_button = QPushButton("Classify white cells in layer")
        self.run_button.clicked.connect(lambda: self.run())
        self.folder_button = QPushButton("Analyse folder...")
        self.folder_button.clicked.connect(lambda: self.analyse_folder())
        self.runner = JobRunner([self.analyse_button, self.run_button, self.folder_button],
                                context="blood smear analysis failed",
                                cancelled_text="cancelled; files already written are complete")
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["white-cell class", "count", "percent"])
        self.table.setMinimumHeight(190)  # the four classes and the total without scrolling
        self.gallery_button = QPushButton("Review gallery")
        self.gallery_button.clicked.connect(lambda: self.open_gallery())
        self.export_button = QPushButton("Export differential (CSV)...")
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.report_button = QPushButton("Export report (PDF)...")
        self.report_button.clicked.connect(lambda: self.export_report())
        self.result_buttons = (self.gallery_button, self.export_button, self.report_button)
        for b in self.result_buttons:  # nothing to review or export before there is a result
            b.setEnabled(False)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(140)

        def row(*widgets) -> QHBoxLayout:
            box = QHBoxLayout()
            for w in widgets:
                box.addWidget(w)
            return box

        models = form(("detector", self.detector_chooser), ("white-cell model", self.model_edit))
        models.setRowWrapPolicy(QFormLayout.WrapAllRows)  # the model names get the dock's whole width
        add_all(scrolling_layout(self), [
            form(("image", self.image_combo)), models,
            form(("score threshold", self.score_spin), ("white cells from", self.wbc_spin),
                 ("device", self.device_combo)),
            self.device_label, row(self.analyse_button, self.cancel_button), form(("own boxes", self.cells_combo)),
            row(self.run_button, self.folder_button), self.progress, self.status, self.counts_label, self.table,
            self.canvas, form(("reviewer", self.reviewer_edit)), row(self.gallery_button, self.export_button),
            self.report_button])

    # ------------------------------------------------------------------ inputs
    def _detector_changed(self) -> None:
        """Start from the threshold the chosen detector was validated at."""
        try:
            path = self.detector_chooser.value
        except CellClassError:
            return
        if path is None:
            return
        from ..engine.checkpoint import read_meta
        from ..tasks.blood import operating_point

        try:
            op = operating_point(read_meta(path), path)
        except CellClassError:
            return
        self.score_spin.setValue(float(op["score_threshold"]))
        self.wbc_spin.setValue(float(op["wbc_threshold"]))

    @staticmethod
    def _is_empty(layer: Any) -> bool:
        if layer._type_string == "shapes":
            return len(layer.data) == 0
        if layer._type_string == "labels":
            return not np.any(np.asarray(layer.data))
        return False

    @staticmethod
    def _is_ours(layer: Any) -> bool:
        """A result layer of this widget (already classified): not offered as boxes to classify."""
        return layer.name.endswith((RESULT_SUFFIX, CLASSIFIED_SUFFIX)) and "reviewed_class" in getattr(
            layer, "features", {})

    def _image(self) -> tuple[Any, np.ndarray]:
        layer = self.image_combo.layer
        if layer is None:
            raise CellClassError("choose an image layer (an RGB smear)")
        image = np.asarray(layer.data)
        if image.ndim == 3 and not layer.rgb and image.shape[0] in (3, 4):  # channel-first stack
            image = np.moveaxis(image, 0, -1)
        return layer, image

    def _classifier(self) -> Path:
        path = self.model_edit.value
        if path is None:
            raise CellClassError("choose a white-cell model (a built-in or a checkpoint from 'cellclass train wbc')")
        return path

    def _detector(self) -> Path:
        path = self.detector_chooser.value
        if path is None:
            raise CellClassError("choose a detector (a built-in or a checkpoint from 'cellclass train detect')")
        return path

    # ------------------------------------------------------------------ running
    def analyse(self, sync: bool = False) -> None:
        """Analyse smear: detect, classify the white cells, count (a worker thread unless ``sync``)."""
        from ..tasks.blood import analyse_smear

        def job():
            layer, image = self._image()
            detector, classifier = self._detector(), self._classifier()
            self._source_layer, self._pending_image = layer, image
            return analyse_smear(image, detector, classifier, device=self.device_combo.device,
                                 score_threshold=self.score_spin.value(), wbc_threshold=self.wbc_spin.value(),
                                 cancel=self.runner.new_token())

        self.runner.start(job, self._analysed, sync=sync, busy_text="analysing the smear...")

    def run(self, sync: bool = False) -> None:
        """Classify the white cells in the chosen shapes/labels layer (a worker thread unless ``sync``)."""
        from ..tasks.wbc import classify

        def job():
            layer, image = self._image()
            cells_layer = self.cells_combo.layer
            if cells_layer is None:
                raise CellClassError("no layer with cells: draw rectangles around the white cells in a shapes "
                                     "layer, or use Analyse smear to find them")
            if self._is_empty(cells_layer):
                raise CellClassError(f"layer {cells_layer.name!r} has no cells; draw rectangles around the "
                                     "white cells")
            classifier = self._classifier()
            cells, selected = self._cells_of(cells_layer)
            self._cells_layer, self._selected, self._pending_image = cells_layer, selected, image
            return classify(image, classifier, cells=cells, device=self.device_combo.device,
                            cancel=self.runner.new_token())

        self.runner.start(job, self._classified, sync=sync, busy_text="classifying white cells...")

    @staticmethod
    def _cells_of(layer: Any) -> tuple[Any, np.ndarray | None]:
        """(cells to classify, indices of the layer's shapes they are) - only white cells when labelled."""
        from ..tasks.blood import is_wbc

        if layer._type_string == "labels":
            return np.asarray(layer.data), None
        col = next((c for c in LABEL_COLUMNS if c in layer.features.columns), None)
        data = [np.asarray(d) for d in layer.data]
        if col is None:
            return data, np.arange(len(data))
        labels = [str(v) for v in layer.features[col]]
        idx = np.array([i for i, v in enumerate(labels) if is_wbc(v)], dtype=int)
        if not len(idx):
            raise CellClassError(f"layer {layer.name!r} has no white cells: its {col!r} column has "
                                 f"{', '.join(sorted(set(labels))[:5])}; white cells are labelled WBC")
        return [data[i] for i in idx], idx

    # ------------------------------------------------------------------ results
    def _analysed(self, res: dict[str, Any]) -> None:
        self.result = res
        self.result_image = self._pending_image
        self._add_result_layer(smear_layers(res, source=getattr(self, "_source_layer", None)))
        self._show_candidates(res)
        self._show_counts()
        self.device_label.setText(f"device: {res['device']}")
        self.status.setText(f"{res['message']}; {res['seconds']['total']:.2f} s")
        self._result_ready()

    def _classified(self, res: dict[str, Any]) -> None:
        """Own boxes classified: a new layer with the user's features plus the new columns."""
        layer = self._cells_layer
        is_shapes = layer._type_string == "shapes"
        tuples = wbc_layers(res, cells=layer, selected=self._selected if is_shapes else None)
        rects, kwargs, _ = tuples[0]
        features = kwargs["features"]
        n = len(rects)
        idx = [int(i) for i in self._selected] if is_shapes else list(range(n))
        boxes = np.array([[r[:, -2].min(), r[:, -1].min(), r[:, -2].max(), r[:, -1].max()] for r in rects]) \
            if rects else np.zeros((0, 4))
        self.result = {"boxes": boxes, "labels": list(features.get("kind", [""] * n)),
                       "scores": np.ones(n), "wbc_class": list(features["wbc_class"]),
                       "wbc_score": np.asarray(features["wbc_score"], dtype=float),
                       "wbc_index": idx, "probabilities": np.asarray(res["probabilities"]),
                       "class_names": list(res["class_names"]),
                       "counts": {"RBC": 0, "WBC": len(idx), "Platelets": 0}, "score_threshold": 1.0,
                       "models": {}, "device": res["device"], "seconds": {"total": res["seconds"]},
                       "message": f"{len(idx)} white cell(s) classified", "boxes_from": f"layer {layer.name}"}
        self.result_image = self._pending_image
        self._add_result_layer(tuples)
        self._show_counts()
        skipped = n - len(idx)
        self.status.setText(f"{len(idx)} white cell(s) classified" + (f"; {skipped} other box(es) left as they are"
                                                                        if skipped else "")
                            + f"; model trained on: {res.get('trained_on', 'unknown')}")
        self._result_ready()

    def _show_candidates(self, res: dict[str, Any]) -> None:
        """No white cell passed: its best candidates in their own layer, dashed orange, to review (not counted)."""
        cand = res.get("candidates") or {}
        boxes = np.asarray(cand.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        base = getattr(getattr(self, "_source_layer", None), "name", "smear")
        name = f"{base} white-cell candidates"
        if name in self.viewer.layers:  # our own earlier one: replaced
            self.viewer.layers.remove(name)
        self.candidates_layer = None
        if not len(boxes):
            return
        import pandas as pd

        rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for y0, x0, y1, x1 in boxes]
        feats = pd.DataFrame({"status": ["candidate"] * len(rects), "score": np.asarray(cand["scores"], float),
                              "wbc_class": list(cand.get("wbc_class", [""] * len(rects))),
                              "wbc_score": np.asarray(cand.get("wbc_score", np.full(len(rects), np.nan)), float)})
        self.candidates_layer = self.viewer.add_shapes(
            rects, shape_type="rectangle", name=name, edge_color="#ff9900", face_color="transparent", edge_width=3,
            features=feats, text={"string": "candidate {score:.2f}", "color": "#ff9900", "size": 9,
                                  "anchor": "upper_left"})

    def _add_result_layer(self, tuples: list) -> None:
        """Our result layer (layers.py decides its look; our own earlier one for this input is replaced)."""
        self.output_layer = add_layers(self.viewer, tuples)[0]

    def _result_ready(self) -> None:
        for b in self.result_buttons:
            b.setEnabled(True)
        if self.gallery is not None:
            self.gallery.rebuild()

    # ------------------------------------------------------------------ review
    @property
    def reviewer(self) -> str:
        """The reviewer's name as typed, else the computer's user name."""
        return self.reviewer_edit.text().strip() or self.reviewer_edit.placeholderText() or "unknown"

    def review_log(self) -> tuple[list[str], list[str]] | tuple[None, None]:
        """(reviewed_by, reviewed_at) per object of the result layer; (None, None) before any review."""
        layer = self.output_layer
        if layer is None or "reviewed_by" not in layer.features.columns:
            return None, None
        f = layer.features
        return ([str(v or "") for v in f["reviewed_by"]], [str(v or "") for v in f["reviewed_at"]])

    def reviewed_classes(self) -> list[str]:
        """The class of every object as it stands after review ("" for red cells and platelets)."""
        if self.output_layer is None:
            return []
        return [str(v or "") for v in self.output_layer.features["reviewed_class"]]

    def set_review(self, index: int, new_class: str) -> None:
        """Reclassify object ``index`` of the result layer; the differential updates at once."""
        layer = self.output_layer
        if layer is None or self.result is None:
            raise CellClassError("analyse a smear first")
        if index not in self.result["wbc_index"]:
            raise CellClassError(f"object {index} is not a white cell")
        from ..tasks.blood import review_time

        feats = layer.features.copy()
        for col in ("reviewed_by", "reviewed_at"):  # who changed which cell, and when (for the reports)
            if col not in feats.columns:
                feats[col] = pd.Series([""] * len(feats), dtype=object)
        feats.loc[index, "reviewed_class"] = str(new_class)
        feats.loc[index, "corrected"] = str(new_class) != str(feats.loc[index, "wbc_class"])
        feats.loc[index, "reviewed_by"] = self.reviewer
        feats.loc[index, "reviewed_at"] = review_time()
        feats["tag"] = [blood_tag(r) for _, r in feats.iterrows()]
        layer.features = feats
        layer.edge_color = blood_colours(feats)
        layer.refresh_text()
        self._show_counts()

    def _show_counts(self) -> None:
        from ..tasks.blood import differential_rows

        res = self.result
        reviewed = self.reviewed_classes() or None
        diff, rows = differential_rows(res, reviewed)
        self.differential = diff
        c = res["counts"]
        n_corr = 0 if reviewed is None else sum(1 for i in res["wbc_index"] if reviewed[i] != res["wbc_class"][i])
        self.counts_label.setText(f"red cells {c.get('RBC', 0)} · white cells {c.get('WBC', 0)} · platelets "
                                  f"{c.get('Platelets', 0)}" + (f" · {n_corr} reviewed change(s)" if n_corr else ""))
        self.table.setRowCount(len(rows) + 1)
        total = {"class": "TOTAL", "count": diff["total"], "percent": 100.0 if diff["total"] else 0.0}
        for i, r in enumerate(rows + [total]):
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
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=8)
        self.canvas.draw_idle()

    def open_gallery(self) -> Any:
        """Open (or raise) the review gallery dock for the current result."""
        from .blood_gallery import ReviewGallery

        if self.result is None:
            self.runner.fail(CellClassError("analyse a smear first"))
            return None
        if self.gallery is None:
            self.gallery = ReviewGallery(self)
            try:
                # the other side from this panel: the differential stays in view while cells are moved
                self.viewer.window.add_dock_widget(self.gallery, name="White-cell review", area="left")
            except Exception:  # headless use (no window): the gallery still works as a widget
                pass
        self.gallery.rebuild()
        return self.gallery

    # ------------------------------------------------------------------ exports
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Differential (reviewed classes) plus red-cell and platelet counts as CSV."""
        if self.result is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save differential", "differential.csv", "CSV (*.csv)")
            if not path:
                return None
        from ..tasks.blood import write_cells_csv, write_differential_csv

        by, at = self.review_log()
        reviewed = self.reviewed_classes() or None
        out = write_differential_csv(Path(path), self.result, reviewed, by, at)
        cells = write_cells_csv(Path(path).with_name(Path(path).stem + "_cells.csv"), self.result, reviewed, by, at)
        self.status.setText(f"differential written to {out}; every cell (model's and reviewer's class) to {cells.name}")
        return out

    def export_report(self, path: str | Path | None = None) -> Path | None:
        """The smear's PDF report (with the reviewer's corrections)."""
        if self.result is None or self.result_image is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save report", "smear_report.pdf", "PDF (*.pdf)")
            if not path:
                return None
        from ..tasks.blood import write_report_pdf

        title = self.image_combo.currentText()
        by, at = self.review_log()
        out = write_report_pdf(Path(path), self.result_image, self.result, title=title,
                               reviewed=self.reviewed_classes() or None, reviewed_by=by, reviewed_at=at)
        self.status.setText(f"report written to {out}")
        return out

    def analyse_folder(self, folder: str | Path | None = None, out: str | Path | None = None,
                       sync: bool = False) -> None:
        """Folder mode: exactly ``cellclass predict wbc FOLDER --detector D --model M --out OUT``.

        The same function writes the same files (per smear CSVs and PDF; ``summary.csv``/``.json``;
        ``predictions.csv``, ``differential.csv``, ``predictions.json``), with this panel's thresholds.
        """
        from ..tasks.base import TaskOptions
        from ..tasks.wbc import predict

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder of smear images")
            if not folder:
                return
        if out is None:
            out = QFileDialog.getExistingDirectory(self, "Folder for the results (CSV, PDF reports)")
            if not out:
                return

        def job():
            detector, classifier = self._detector(), self._classifier()
            opts = TaskOptions(out=Path(out), device=self.device_combo.device, cancel=self.runner.new_token(),
                               extra={"detector": str(detector), "score_threshold": self.score_spin.value(),
                                      "wbc_threshold": self.wbc_spin.value()})
            return predict(classifier, [Path(folder)], opts)

        self.runner.start(job, self._folder_done, sync=sync, busy_text=f"analysing smears in {folder}...")

    def _folder_done(self, summary: dict[str, Any]) -> None:
        smears = summary.get("smear_summary") or {}
        self.folder_summary = {**smears, **summary}
        refused = f", {len(summary['refused'])} refused" if summary["refused"] else ""
        out = Path(summary["outputs"][0]).parent if summary.get("outputs") else ""
        per = smears.get("seconds_per_smear")
        what = "smear(s)" if not summary.get("crops") else "image(s)"
        self.status.setText(f"{summary['analysed']} of {summary['images']} {what} analysed{refused}"
                            + (f"; {per:.2f} s per smear" if per is not None else "") + f"; results in {out}")
