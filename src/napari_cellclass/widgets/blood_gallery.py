"""Review gallery: the white cells of a smear grouped by class, least confident first.

As on a haematology analyser's review screen, the technologist looks at the
cells the model was least sure of first, and moves a misclassified cell with
one click (a class button) or one key (1-6, shown on the buttons); the
differential in the blood widget updates at once.  Corrections live in the
result layer's features (``reviewed_class``, ``corrected``), so they are saved
with the layer, exported with the differential and the PDF report, and
"Export class folders..." writes the reviewed crops as ``<CLASS>/*.png`` to
fine-tune the classifier (``cellclass train wbc FOLDER --set crop=fixed``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import CellClassError

TILE = 96
PER_ROW = 3
BUTTONS_PER_ROW = 3


def _pixmap(crop: np.ndarray) -> QPixmap:
    a = np.ascontiguousarray(crop[..., :3].astype(np.uint8))
    h, w = a.shape[:2]
    img = QImage(a.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(img)


class ReviewGallery(QWidget):
    """Dock widget bound to a :class:`~.classify_blood.ClassifyBloodWidget` and its result layer."""

    def __init__(self, blood_widget: Any):
        super().__init__()
        self.blood = blood_widget
        self.selected: int | None = None
        self.tiles: dict[int, QToolButton] = {}
        self.order: list[int] = []  # object indices as shown, group by group
        self.setFocusPolicy(Qt.StrongFocus)

        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.help = QLabel("Click a cell, then a class button or its number key. Least confident cells come first "
                           "in each class.")
        self.help.setWordWrap(True)
        self.help.setStyleSheet("font-size: 9pt")
        self.class_buttons: dict[str, QPushButton] = {}
        self.class_row = QGridLayout()  # three buttons a row: whole class names fit the dock's width
        self.class_row.setSpacing(2)
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(4)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setMinimumHeight(2 * (TILE + 40))  # two rows of cells visible when docked
        scroll.setWidget(self.grid_host)
        self.export_button = QPushButton("Export class folders...")
        self.export_button.setToolTip("write the reviewed white cells as <CLASS>/*.png to fine-tune the classifier")
        self.export_button.clicked.connect(lambda: self._reported(self.export_folders))
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.help)
        lay.addLayout(self.class_row)
        lay.addWidget(scroll, 1)
        lay.addWidget(self.export_button)

    # ------------------------------------------------------------------ model
    @property
    def classes(self) -> list[str]:
        """Classes a cell can be filed under: the model's, then basophil and other (never predicted)."""
        from ..tasks.blood import REVIEW_EXTRA

        names = list(self.blood.result["class_names"]) if self.blood.result else []
        return names + [c for c in REVIEW_EXTRA if c not in names]

    def _scores(self) -> dict[int, float]:
        res = self.blood.result
        return {i: (float(res["wbc_score"][i]) if np.isfinite(res["wbc_score"][i]) else 0.0) for i in res["wbc_index"]}

    def groups(self) -> dict[str, list[int]]:
        """Reviewed class -> object indices, least confident first."""
        reviewed = self.blood.reviewed_classes()
        scores = self._scores()
        out: dict[str, list[int]] = {}
        for i in self.blood.result["wbc_index"]:
            out.setdefault(reviewed[i], []).append(i)
        for c in out:
            out[c].sort(key=lambda i: (scores[i], i))
        return out

    # ------------------------------------------------------------------ view
    def rebuild(self) -> None:
        """Redraw the class buttons and the grouped tiles from the blood widget's current result."""
        from ..tasks.blood import gallery_crop

        while self.class_row.count():
            item = self.class_row.takeAt(0)
            old = item.widget()
            if old is not None:  # off screen now, not at the next event loop turn (no overlap)
                old.hide()
                old.setParent(None)
                old.deleteLater()
        self.class_buttons = {}
        for k, c in enumerate(self.classes, start=1):
            b = QPushButton(f"{k} {c.title()}")
            b.setToolTip(f"file the selected cell as {c} (key {k})")
            b.clicked.connect(lambda _=False, c=c: self._reported(self.reclassify, c))
            self.class_row.addWidget(b, (k - 1) // BUTTONS_PER_ROW, (k - 1) % BUTTONS_PER_ROW)
            self.class_buttons[c] = b
        while self.grid.count():
            item = self.grid.takeAt(0)
            old = item.widget()
            if old is not None:  # off screen now, not at the next event loop turn (no overlap)
                old.hide()
                old.setParent(None)
                old.deleteLater()
        self.tiles, self.order = {}, []
        res = self.blood.result
        if res is None:
            self.title.setText("no analysis yet")
            return
        image = self.blood.result_image
        groups = self.groups()
        scores = self._scores()
        row = 0
        reviewed = self.blood.reviewed_classes()
        by, at = self.blood.review_log()
        for cls in sorted(groups, key=lambda c: (self.classes.index(c) if c in self.classes else 99, c)):
            members = groups[cls]
            head = QLabel(f"<b>{cls}</b> ({len(members)})")
            self.grid.addWidget(head, row, 0, 1, PER_ROW)
            row += 1
            for k, i in enumerate(members):
                tile = QToolButton()
                tile.setCheckable(True)
                tile.setToolButtonStyle(Qt.ToolButtonTextUnderIcon)
                tile.setIconSize(QSize(TILE, TILE))
                if image is not None:
                    tile.setIcon(QIcon(_pixmap(gallery_crop(image, res["boxes"][i], TILE))))
                corrected = reviewed[i] != res["wbc_class"][i]
                tile.setText(f"#{i} was {res['wbc_class'][i][:4].title()} {scores[i]:.2f}" if corrected
                             else f"#{i} {scores[i]:.2f}")
                who = f"; changed to {reviewed[i]} by {by[i]} at {at[i]}" if corrected and by else ""
                tile.setToolTip(f"object {i}: the model said {res['wbc_class'][i]} with {scores[i]:.2f}{who}")
                tile.clicked.connect(lambda _=False, i=i: self.select(i))
                self.grid.addWidget(tile, row + k // PER_ROW, k % PER_ROW)
                self.tiles[i] = tile
                self.order.append(i)
            row += (len(members) + PER_ROW - 1) // PER_ROW
        self.grid.setRowStretch(row, 1)
        n = len(res["wbc_index"])
        n_cand = len((res.get("candidates") or {}).get("scores", []))
        self.title.setText(f"{n} white cell(s) on {self.blood.image_combo.currentText() or 'the smear'}"
                           if n else "no white cell was found on this smear" + (
                               f": its {n_cand} best candidate(s) are in the 'white-cell candidates' layer, "
                               "orange boxes, to review" if n_cand else ""))
        if self.selected is not None and self.selected in self.tiles:
            self.tiles[self.selected].setChecked(True)
        elif self.order:
            self.select(self.order[0], centre=False)

    def select(self, index: int, centre: bool = True) -> None:
        """Select one cell (its tile is highlighted; the viewer centres on it)."""
        if index not in self.tiles:
            return
        self.selected = index
        for i, t in self.tiles.items():
            t.setChecked(i == index)
        self.setFocus()
        if centre:
            try:
                y0, x0, y1, x1 = self.blood.result["boxes"][index]
                viewer = self.blood.viewer
                camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera
                camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
            except Exception:  # the camera is a convenience; never fail a review over it
                pass

    def _reported(self, action, *args: Any) -> Any:
        """A button's action; a refusal goes through the blood widget's one error path (no traceback)."""
        try:
            return action(*args)
        except CellClassError as exc:
            return self.blood.runner.fail(exc)

    def reclassify(self, new_class: str, index: int | None = None) -> None:
        """File cell ``index`` (default: the selected one) under ``new_class``; the differential updates."""
        index = self.selected if index is None else index
        if index is None:
            return
        self.blood.set_review(index, new_class)
        self.selected = index
        self.rebuild()

    def keyPressEvent(self, event: Any) -> None:
        key = event.key()
        if Qt.Key_1 <= key <= Qt.Key_9:
            k = key - Qt.Key_1
            if k < len(self.classes) and self.selected is not None:
                self.reclassify(self.classes[k])
                return
        if key in (Qt.Key_Right, Qt.Key_Down, Qt.Key_Left, Qt.Key_Up) and self.order:
            pos = self.order.index(self.selected) if self.selected in self.order else 0
            step = 1 if key in (Qt.Key_Right, Qt.Key_Down) else -1
            self.select(self.order[(pos + step) % len(self.order)])
            return
        super().keyPressEvent(event)

    # ------------------------------------------------------------------ export
    def export_folders(self, out: str | Path | None = None) -> dict[str, int] | None:
        """Reviewed white cells as ``out/<CLASS>/<image>_<k>.png`` (never overwriting a file)."""
        from ..tasks.blood import export_class_folders

        res = self.blood.result
        if res is None or self.blood.result_image is None:
            return None
        if out is None:
            out = QFileDialog.getExistingDirectory(self, "Folder for the class folders")
            if not out:
                return None
        reviewed = self.blood.reviewed_classes()
        idx = list(res["wbc_index"])
        if not idx:
            raise CellClassError("no white cells to export")
        stem = (self.blood.image_combo.currentText() or "smear").replace("/", "_").replace(" ", "_")
        counts = export_class_folders(out, self.blood.result_image, np.asarray(res["boxes"])[idx],
                                      [reviewed[i] for i in idx], stem=stem)
        self.title.setText(f"exported {sum(counts.values())} cell(s) to {out}: "
                           + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return counts
