"""Classify an HPA field (whole image, per cell, or the community's single-cell route) in a worker thread.

Thin: collects the four channel layers, checkpoint, device and mode; runs
:func:`napari_cellclass.tasks.hpa.classify` in a ``thread_worker``; turns the
result into a sortable table, a bar plot and layer features/metadata.

*single cell (bioimage.io)* runs the HPA community's 2021 pipeline
(:mod:`napari_cellclass.tasks.hpa_singlecell`): cell and nucleus segmentation
packages, a seeded watershed, the single-cell classifier per cell, and the main
model (the 2019 winner) for the image-level classes.  A package that would run its
own Python code is run only after the user says so in a dialog (remembered per
package sha256, :mod:`napari_cellclass.zoo.trust`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPalette
from qtpy.QtWidgets import QHBoxLayout, QMessageBox, QPushButton, QTableWidget, QTableWidgetItem, QWidget

from ..errors import CellClassError
from ..io.hpa_reader import CHANNELS
from ..zoo.provenance import synthetic_warning
from ._forms import Choice, DeviceChoice, LayerChoice, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs

AUTO_CELLS = "(segment automatically)"
SINGLE_CELL = "single cell (bioimage.io)"
LINK_COLOUR = "#8ab4f8"  # light blue: readable on napari's dark grey (the default link blue is not)


def readable_links(label) -> None:
    """Links in ``label`` drawn light blue, so they read on the dark theme (and still on the light one).

    napari's style sheet wins over the palette for rich-text links, so the colour is also
    written into each ``<a>`` of the text (call again after the text changes).
    """
    pal = label.palette()
    for group in (QPalette.Active, QPalette.Inactive):
        pal.setColor(group, QPalette.Link, QColor(LINK_COLOUR))
        pal.setColor(group, QPalette.LinkVisited, QColor(LINK_COLOUR))
    label.setPalette(pal)
    text = label.text()
    if "<a " in text and LINK_COLOUR not in text:
        label.setText(text.replace("<a ", f'<a style="color: {LINK_COLOUR};" '))


class PackageChooser(ModelChooser):
    """The model field, which also says what a bioimage.io package is (not "not a usable checkpoint")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changed.connect(lambda: readable_links(self.summary))
        readable_links(self.summary)

    def describe(self, text: str) -> str:
        from pathlib import Path

        from ..zoo.foreign import describe_package, is_package_path

        path = Path(text).expanduser() if text else None
        if path is not None and path.exists() and is_package_path(path) and text not in self._cards:
            try:
                return describe_package(path)
            except CellClassError as exc:
                return f"not a usable bioimage.io package: {exc.problem}"
        return super().describe(text)


class _NumItem(QTableWidgetItem):
    """Table item that sorts by its number, not its text."""

    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.value = value

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", 0.0)


def _channel_guess(colour: str):
    """Layer of this colour: from the HPA reader's metadata (same set as the others), else by name."""

    def guess(images: list) -> str:
        by_meta = [lyr for lyr in images if lyr.metadata.get("hpa_channel") == colour]
        if by_meta:
            return by_meta[-1].name
        by_name = [lyr for lyr in images if colour in lyr.name.lower()]
        return by_name[-1].name if by_name else ""

    return guess


class ClassifyHPAWidget(RunsJobs, QWidget):
    """Pick the red/green/blue/yellow layers and a checkpoint; get the 28 location probabilities."""

    def __init__(self, napari_viewer):
        from napari.layers import Image, Labels

        super().__init__()
        self.viewer = napari_viewer
        self.last_result: dict[str, Any] | None = None

        self.channel_boxes: dict[str, LayerChoice] = {
            c: LayerChoice(napari_viewer, Image, where=lambda ly: not ly.rgb, extra=[("", None)],
                           guess=_channel_guess(c))
            for c in CHANNELS}
        self.model_edit = PackageChooser("hpa")  # built-ins first, then the community packages; Browse...
        pkg = "bioimage.io package (.zip) or community model"
        self.cell_seg_edit = PackageChooser("hpa-cells", optional=True, check_task=False, placeholder=pkg)
        self.nucleus_edit = PackageChooser("hpa-nuclei", optional=True, check_task=False, placeholder=pkg)
        self.cell_classifier_edit = PackageChooser("hpa-singlecell", optional=True, check_task=False,
                                                   placeholder=pkg)
        self._trust = False
        self.device_box = DeviceChoice()
        self.device_label = self.device_box.label
        self.mode_box = Choice(choices=["whole image", "per cell", SINGLE_CELL])
        self.cells_box = LayerChoice(napari_viewer, Labels, extra=[(AUTO_CELLS, None)])
        self.field_box = Choice(choices=["resize", "tile"],
                                 tooltip="large fields: resize to the model's input, "
                                         "or classify tiles and average")

        self.run_button = QPushButton("Classify")
        self.run_button.clicked.connect(lambda: self.run())
        self.runner = JobRunner([self.run_button], context="unexpected error")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "probability", "threshold", "predicted"])
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(220)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(280)  # room for the class names under the bars

        fields = form(*((f"{c} layer", self.channel_boxes[c]) for c in CHANNELS),
                      ("model", self.model_edit), ("device", self.device_box), ("mode", self.mode_box),
                      ("cells", self.cells_box), ("large fields", self.field_box),
                      ("cell segmentation", self.cell_seg_edit), ("nucleus segmentation", self.nucleus_edit),
                      ("cell classifier", self.cell_classifier_edit))
        add_all(scrolling_layout(self), [fields, buttons, self.progress, self.device_label, self.status,
                                         self.table, self.canvas])

    def channel_data(self) -> list[np.ndarray]:
        missing = [c for c, box in self.channel_boxes.items() if box.layer is None]
        if missing:
            raise CellClassError("the HPA model needs four channels (red, green, blue, yellow); "
                                 f"choose a layer for: {', '.join(missing)}")
        return [np.asarray(self.channel_boxes[c].layer.data) for c in CHANNELS]

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
        mode = "cells" if self.mode_box.value in ("per cell", SINGLE_CELL) else "whole"
        labels = self.cells_box.layer
        cells = np.asarray(labels.data) if mode == "cells" and labels is not None else None
        extra = self._single_cell_models() if self.mode_box.value == SINGLE_CELL else {}
        return classify(image, model, cells=cells, device=self.device_box.device, mode=mode,
                        cancel=self.runner.new_token(), field=self.field_box.value, **extra)

    def _single_cell_models(self) -> dict[str, Any]:
        """The community route's packages (as local paths: downloaded here, in the worker, when needed)."""
        seg, nuc, cls = (c.value for c in (self.cell_seg_edit, self.nucleus_edit, self.cell_classifier_edit))
        if cls is None:
            raise CellClassError("single cell (bioimage.io) needs a cell classifier package "
                                 "(e.g. hpa-singlecell-inceptionv3)")
        if (seg is None) != (nuc is None):
            raise CellClassError("choose both a cell and a nucleus segmentation package, or neither "
                                 "(then the cells layer or the plugin's own segmentation is used)")
        out: dict[str, Any] = {"cell_classifier": cls, "trust": self._trust}
        if seg is not None and self.cells_box.layer is None:
            out.update(cell_model=seg, nucleus_model=nuc)
        return out

    # ------------------------------------------------------------------ consent
    def _chosen_packages(self) -> list[str]:
        boxes = [self.model_edit]
        if self.mode_box.value == SINGLE_CELL:
            boxes += [self.cell_seg_edit, self.nucleus_edit, self.cell_classifier_edit]
        return [b.text() for b in boxes if b.text()]

    def _confirm_trust(self) -> bool:
        """Ask once per package that would run its own code (local files and cached community models only)."""
        from pathlib import Path

        from ..zoo.foreign import as_foreign, is_package_path

        self._trust = False
        for text in self._chosen_packages():
            p = Path(text).expanduser()
            if not (p.exists() and is_package_path(p)):
                continue  # built-ins and community names: checked (and refused in one line) in the worker
            try:
                fm = as_foreign(str(p), task=None, device="cpu")
            except CellClassError:
                continue  # the worker reports a broken package in one line
            if fm is None or fm.trusted():
                continue
            if not self.ask_trust(fm.name, str(fm.code_reason), fm.sha256):
                self.status.setText(f"not run: {fm.name} was not trusted to run its own code")
                return False
            from ..zoo.trust import remember

            remember(fm.sha256, fm.name)
        return True

    def ask_trust(self, name: str, reason: str, sha256: str) -> bool:
        """The consent dialog (tests replace this method)."""
        answer = QMessageBox.question(
            self, "Run this package's code?",
            f"The bioimage.io package '{name}' runs its own Python code:\n{reason}.\n\n"
            "Run it only if you trust where it came from. Your answer is remembered for this exact "
            f"package (sha256 {sha256[:16]}...).",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def run(self, sync: bool = False):
        """Start classification in a worker thread (the viewer stays responsive); ``sync``: here."""
        self.last_result = None
        if not self._confirm_trust():
            return None
        self.device_box.show_device()
        return self.runner.start(self._job, self._on_result, sync=sync)

    # ------------------------------------------------------------------ results
    def _on_result(self, result: dict[str, Any]) -> None:
        self.last_result = result
        names, thr = result["class_names"], result["thresholds"]
        if result["mode"] == "whole":
            probs = np.asarray(result["probabilities"])
            predicted = set(result["predicted"])
            for c in CHANNELS:
                layer = self.channel_boxes[c].layer
                if layer is not None:
                    layer.metadata["hpa_prediction"] = {
                        k: result[k] for k in ("probabilities", "predicted", "class_names", "thresholds", "device")}
            summary = ", ".join(result["predicted"]) or "no class above its threshold"
        else:
            self._add_cells_layer(result)
            rows = result["cells"]
            probs = np.mean([r["probabilities"] for r in rows], axis=0) if rows else np.zeros(len(names))
            counts = {n: sum(n in r["predicted"] for r in rows) for n in names}
            predicted = {n for n, k in counts.items() if k}
            summary = f"{len(rows)} cells; " + ", ".join(f"{n} ({counts[n]})" for n in names if counts[n])
            image_level = result.get("image_level")
            if image_level is not None:
                summary += "; image level (" + image_level["model"] + "): " + (
                    ", ".join(image_level["predicted"]) or "no class above 0.5")
        self._fill_table(names, probs, thr, predicted)
        self._plot(names, probs, thr)
        warning = synthetic_warning(result.get("trained_on"))
        self.status.setText(f"{summary}. {warning}" if warning else summary)
        self.device_label.setText("device: " + result["device"])

    def _add_cells_layer(self, result: dict[str, Any]) -> None:
        from ..layers import add_layers, hpa_layers

        add_layers(self.viewer, hpa_layers(result, source=self.channel_boxes[CHANNELS[0]].layer))
        if result.get("image_level") is not None and len(self.viewer.layers):
            from ..layers import HPA_CELLS_NAME

            cells = [ly for ly in self.viewer.layers if ly.name.startswith(HPA_CELLS_NAME)]
            if cells:
                cells[-1].metadata["hpa_image_level"] = result["image_level"]

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
        ax.set_xticklabels(list(names), rotation=90, fontsize=5)  # the class names, not their ids
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.set_ylabel("probability", fontsize=7)
        ax.tick_params(labelsize=6)
        self.canvas.draw_idle()
