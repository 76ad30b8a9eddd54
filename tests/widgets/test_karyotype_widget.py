"""Karyotype widget in a real viewer: layers, class changes, label edits, correction tools, drag, report."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from karyotype_utils import tiny_checkpoint

from napari_cellclass.synth.chromosomes import make_spread


class _Event:
    """Mouse event as napari hands it to drag callbacks (a wrapper whose target is swapped on move)."""

    def __init__(self, **kw):
        self.__wrapped__ = SimpleNamespace(**{"is_dragging": False, "modifiers": [], "button": 1, **kw})

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def drag(layer, start, end):
    """Press at ``start``, move and release at ``end`` (world coordinates) through napari's dispatch."""
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    mouse_press_callbacks(layer, _Event(type="mouse_press", position=tuple(start)))
    if tuple(end) != tuple(start):
        mouse_move_callbacks(layer, _Event(type="mouse_move", position=tuple(end), is_dragging=True))
    mouse_release_callbacks(layer, _Event(type="mouse_release", position=tuple(end)))


def select_rows(table, rows):
    """Select several table rows, as Ctrl-click does."""
    from qtpy.QtCore import QItemSelectionModel

    table.clearSelection()
    flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
    for r in rows:
        table.selectionModel().select(table.model().index(r, 0), flags)


def _started(w, qtbot, viewer, tmp_path, seed=2, zoom_in=False):
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    ckpt = tiny_checkpoint(tmp_path / "model.safetensors")
    s = make_spread(seed, "46,XY", size=(384, 384))
    viewer.add_image(s["image"], name="spread")
    if zoom_in:  # the user looks closely at one corner of the spread
        camera = getattr(viewer, "scene", viewer).camera
        camera.center, camera.zoom = (20, 20), 8.0
    w = KaryotypeWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_edit.setText(str(ckpt))
    w.device_box.setCurrentText("cpu")
    w.segmenter_box.setCurrentText("threshold")  # generated spread: the classical segmenter
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.result is not None or w.last_error is not None, timeout=120000)
    assert w.last_error is None, w.last_error
    return w, s


@pytest.mark.viewer
def test_karyotype_widget_end_to_end(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_cellclass.widgets.karyotype import KARYOGRAM_NAME, LABELS_NAME, SHAPES_NAME

    monkeypatch.setenv("CELLCLASS_SYNC_JOBS", "1")  # corrections run inline: each click is done on return
    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    assert w.image_box.currentText() == "spread"
    for name in (LABELS_NAME, SHAPES_NAME, KARYOGRAM_NAME):
        assert name in viewer.layers
    n = int(w.result["labels"].max())
    assert list(viewer.layers[SHAPES_NAME].features["class"]) == [
        c if c != "reject" else "?" for c in w.result["class_names"]]
    assert w.table.rowCount() == n
    assert "cpu" in w.device_label.text().lower()

    # the user says chromosomes 1-3 are 21s: the summary follows, without re-classification
    probs_before = w.result["probabilities"].copy()
    for lid in (1, 2, 3):
        w.table.cellWidget(w.table_row(lid), 1).setCurrentText("21")
    qtbot.waitUntil(lambda: w.result["class_names"][:3] == ["21", "21", "21"], timeout=10000)
    assert np.array_equal(w.result["probabilities"], probs_before)
    assert w.result["class_names"].count("21") >= 3 and ("+21" in w.summary_label.text()
                                                         or "+?21" in w.summary_label.text())
    assert w.session.last_classified == []
    # key binding on the selected label steps its class
    lab = viewer.layers[LABELS_NAME]
    lab.selected_label = 4
    old = w.result["classes"][3]
    w._step_class(+1)
    assert w.result["classes"][3] == (max(old, 0) + 1) % 24

    # segmentation fix by painting: erase one chromosome; nothing needs classifying
    data = lab.data.copy()
    data[data == n] = 0
    lab.data = data
    changed = w.labels_edited()
    assert changed == {n} and w.session.last_classified == []
    assert w.status.text() == f"painted: object(s) {n} changed"  # the status tells the last action
    assert int(w.result["labels"].max()) == n - 1 and w.result["count"] <= n - 1

    png = w.export_png(tmp_path / "k.png")
    csv = w.export_csv(tmp_path / "k.csv")
    assert png.stat().st_size > 1000 and csv.read_text().count("\n") == n  # header + n-1 rows


@pytest.mark.viewer
def test_cut_merge_delete_undo_drag_rotate_and_report(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from qtpy.QtCore import Qt

    from napari_cellclass.widgets.karyotype import CUT_NAME, KARYOGRAM_NAME

    monkeypatch.setenv("CELLCLASS_SYNC_JOBS", "1")  # corrections run inline: each click is done on return
    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    ses = w.session
    labels0 = ses.labels.copy()
    count0 = w.result["count"]
    n_objects0 = len(w.result["ids"])

    # --- cut: first press makes the line layer, the second cuts along the drawn line
    qtbot.mouseClick(w.cut_button, Qt.MouseButton.LeftButton)
    assert CUT_NAME in viewer.layers and "draw a line" in w.status.text()

    def straightness(i):
        ys, xs = np.nonzero(labels0 == i)
        ev = np.linalg.eigvalsh(np.cov(np.vstack([ys, xs])))
        return ev[1] / ev[0] * (len(ys) > 150)

    lid = max(w.result["ids"], key=straightness)
    ys, xs = np.nonzero(labels0 == lid)
    cy, cx = ys.mean(), xs.mean()
    ev, vec = np.linalg.eigh(np.cov(np.vstack([ys - cy, xs - cx])))
    r = 3 * np.sqrt(ev[0]) + 4
    line = np.array([[cy - r * vec[0, 0], cx - r * vec[1, 0]], [cy + r * vec[0, 0], cx + r * vec[1, 0]]])
    viewer.layers[CUT_NAME].add(line, shape_type="line")
    qtbot.mouseClick(w.cut_button, Qt.MouseButton.LeftButton)
    assert w.last_error is None, w.last_error
    assert len(w.result["ids"]) == n_objects0 + 1
    new_id = max(w.result["ids"])
    assert sorted(ses.last_classified) == sorted([lid, new_id])  # only the two pieces
    assert len(viewer.layers[CUT_NAME].data) == 0

    # --- merge the two pieces back (two table rows selected)
    ids = [int(i) for i in w.result["ids"]]
    select_rows(w.table, [w.table_row(lid), w.table_row(new_id)])
    assert sorted(w.selected_ids()) == sorted([lid, new_id])
    qtbot.mouseClick(w.merge_button, Qt.MouseButton.LeftButton)
    assert len(w.result["ids"]) == n_objects0 and ses.last_classified == [lid]

    # --- delete debris: nothing to classify, one object fewer
    victim = int(w.result["ids"][-1])
    select_rows(w.table, [w.table_row(victim)])
    qtbot.mouseClick(w.delete_button, Qt.MouseButton.LeftButton)
    assert victim not in set(w.result["ids"]) and ses.last_classified == []
    assert not (viewer.layers["chromosomes"].data == victim).any()

    # --- undo x3: back to the segmentation we started from
    for _ in range(3):
        qtbot.mouseClick(w.undo_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(ses.labels, labels0) and w.result["count"] == count0
    assert np.array_equal(viewer.layers["chromosomes"].data, labels0)
    assert ses.last_classified == []

    # --- drag a chromosome to the 21 slot in the karyogram: the ISCN string follows at once
    k = ses.karyogram
    layer = viewer.layers[KARYOGRAM_NAME]
    ids = [int(i) for i in w.result["ids"]]
    mover = next(i for i in ids if k.cell_at(*np.add(k.items[i][:2], 2)) not in ("21", None))
    y0, x0, y1, x1 = k.items[mover]
    c0, c1 = k.cells["21"][:2], k.cells["21"][2:]
    start = layer.data_to_world(((y0 + y1) / 2, (x0 + x1) / 2))
    end = layer.data_to_world(((c0[0] + c1[0]) / 2, (c0[1] + c1[1]) / 2))
    summary_before = w.result["summary"]
    drag(layer, start, end)
    assert w.result["classes"][ids.index(mover)] == 20
    from napari_cellclass.karyotype.iscn import iscn_summary

    assert w.result["summary"] == iscn_summary(w.result["classes"], w.result["flagged"]).text  # re-paired
    assert w.result["summary"] != summary_before or w.result["class_names"].count("21") == 2
    assert w.result["fixed"][mover] == 20 and w.summary_label.text().replace("\u200b", "") == w.result["headline"]

    # --- click selects, 180° turns it (drawn upside down), mirror, undo
    k = ses.karyogram
    y0, x0, y1, x1 = k.items[mover]
    before = k.image[y0:y1, x0:x1, 0].astype(int)
    here = layer.data_to_world(((y0 + y1) / 2, (x0 + x1) / 2))
    drag(layer, here, here)
    assert ses.selected == mover and w.selected_ids() == [mover]
    qtbot.mouseClick(w.rotate_180_button, Qt.MouseButton.LeftButton)
    k = ses.karyogram
    y0, x0, y1, x1 = k.items[mover]
    after = k.image[y0:y1, x0:x1, 0].astype(int)
    assert after.shape == before.shape and np.abs(after - before[::-1, ::-1]).mean() < np.abs(after - before).mean()
    assert w.result["orientation"][mover].user_rotation == 180

    # --- the PDF report carries the ISCN string, the count, the model and a sign-off line
    pdf = w.export_report(tmp_path / "case_report.pdf")
    assert pdf is not None and pdf.read_bytes()[:5] == b"%PDF-"
    from pypdf import PdfReader

    reader = PdfReader(str(pdf))
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert len(reader.pages) >= 1
    assert w.result["summary"] in text and f"count: {w.result['count']}" in text
    assert "model.safetensors" in text and "Analyst" in text and "Signature" in text
    assert "class" in text  # the hand edits are listed (class change from the drag)


@pytest.mark.viewer
def test_dock_stays_narrow_and_bad_input_gets_a_message(make_napari_viewer, qtbot, tmp_path):
    from napari_cellclass.widgets.karyotype import _wrappable

    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    narrow = w.minimumSizeHint().width()
    long = "49,XXY,+1,+2,+3,-4,-5,-6,+7,+8,-9,-10,+11,+12,-13,-14,+15,+16,-17,-18,+19,+20,+21,+21,-22"
    w.summary_label.setText(_wrappable(long))
    w.status.setText("a very long message " * 20)
    w.findings_label.setText("; ".join(["count 49 (expected 46)"] * 10))
    assert w.minimumSizeHint().width() <= max(narrow, 420)
    assert w.sizeHint().width() < 700

    # a fluorescence field and a blank image: one clear line each, no job started
    rng = np.random.default_rng(0)
    field = np.zeros((512, 512), np.uint8)
    yy, xx = np.mgrid[:512, :512]
    for cy, cx in rng.integers(60, 452, (12, 2)):
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < 45 ** 2] = 180
    viewer.add_image(field, name="cells")
    w.image_box.setCurrentText("cells")
    w.run()
    qtbot.waitUntil(lambda: w.last_error is not None, timeout=60000)
    assert "fluorescence" in w.last_error and "fluorescence" in w.status.text()
    viewer.add_image(np.full((300, 300), 7, np.uint8), name="blank")
    w.image_box.setCurrentText("blank")
    assert w.run() is None and "blank" in w.last_error


@pytest.mark.viewer
def test_generated_data_model_is_labelled(make_napari_viewer, qtbot, tmp_path):
    from napari_cellclass.engine.checkpoint import read_meta, save_checkpoint  # noqa: F401
    from napari_cellclass.zoo.provenance import SYNTHETIC_WARNING

    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    assert w.warning_label.text() == ""  # an untrained test model is not called synthetic
    w._trained_on = "synthetic (napari-cellclass demo)"
    w._on_done(w.session.result | {"seconds": 0})
    assert w.warning_label.text() == SYNTHETIC_WARNING and w.warning_label.wordWrap()


@pytest.mark.viewer
def test_builtin_for_the_other_banding_is_warned(make_napari_viewer, qtbot):
    from napari_cellclass import zoo
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    if not (zoo.is_builtin("gricol-qband-bioimlab") and zoo.is_builtin("gricol-gband-2labs")):
        pytest.skip("the built-in chromosome classifiers are not installed")
    viewer = make_napari_viewer()
    w = KaryotypeWidget(viewer)
    spread = make_spread(3, "46,XY", size=(384, 384))["image"]  # dark on light: G-band
    w.model_edit.setText("gricol-qband-bioimlab")
    assert "G-banded" in w._banding_mismatch(spread) and "gricol-gband-2labs" in w._banding_mismatch(spread)
    w.model_edit.setText("gricol-gband-2labs")
    assert w._banding_mismatch(spread) == ""
    assert w._banding_mismatch(255 - spread) != ""  # light on dark: the Q-band model is the one


@pytest.mark.viewer
def test_default_classifier_is_chosen_by_the_spreads_banding(make_napari_viewer, monkeypatch):
    """The chooser's default entry picks the G- or Q-band built-in per spread (no mismatch to warn about)."""
    from napari_cellclass import zoo
    from napari_cellclass.tasks import karyotype as kt
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    assert zoo.is_builtin("gricol-qband-bioimlab") and zoo.is_builtin("gricol-gband-2labs")
    seen = []

    def fake_karyotype(image, model, **kw):  # record the classifier the widget resolved; no pipeline run
        seen.append(Path(getattr(model, "path", None) or model).stem)  # a LoadedModel or a path
        raise kt.InputError("stop here")
        yield  # pragma: no cover

    monkeypatch.setattr(kt, "karyotype", fake_karyotype)
    viewer = make_napari_viewer()
    w = KaryotypeWidget(viewer)
    assert w.model_edit.is_auto and w.model_edit.value is None and "G-band" in w.model_edit.summary.text()
    spread = make_spread(3, "46,XY", size=(384, 384))["image"]  # dark on light: G-band
    viewer.add_image(spread, name="g")
    w.image_box.setCurrentText("g")
    w.run(sync=True)
    assert w.last_error and "stop here" in w.last_error, w.last_error
    viewer.add_image(255 - spread, name="q")  # bright on dark: Q-band
    w.image_box.setCurrentText("q")
    w.run(sync=True)
    assert seen == ["gricol-gband-2labs", "gricol-qband-bioimlab"]
    assert w._banding_mismatch(spread) == ""


@pytest.mark.viewer
def test_review_order_and_headline_colour(qtbot, make_napari_viewer, tmp_path):
    """Flagged chromosomes head the table; the headline is green only when none is flagged."""
    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    flagged = [bool(w.result["flagged"][w._row_of[r]]) for r in range(w.table.rowCount())]
    assert flagged == sorted(flagged, reverse=True)  # all flagged rows before the others
    for r in range(w.table.rowCount()):  # every row shows its own chromosome
        assert int(w.table.item(r, 0).text()) == int(w.result["ids"][w._row_of[r]])
    text = w.summary_label.text().replace("\u200b", "")
    if w.result["n_flagged"]:
        assert f"{w.result['n_flagged']} to review" in text and "#3a3" not in w.summary_label.styleSheet()
    else:
        assert "#3a3" in w.summary_label.styleSheet() or w.result["abnormal"]


def _visible_box(viewer):
    """(y0, x0, y1, x1) of the world the canvas shows now."""
    camera = getattr(viewer, "scene", viewer).camera
    cy, cx = camera.center[-2:]
    h, w = viewer.canvas.size
    z = camera.zoom
    return cy - h / 2 / z, cx - w / 2 / z, cy + h / 2 / z, cx + w / 2 / z


def _line_across(labels, lid):
    ys, xs = np.nonzero(labels == lid)
    cy, cx = ys.mean(), xs.mean()
    ev, vec = np.linalg.eigh(np.cov(np.vstack([ys - cy, xs - cx])))
    r = 3 * np.sqrt(ev[0]) + 4
    return np.array([[cy - r * vec[0, 0], cx - r * vec[1, 0]], [cy + r * vec[0, 0], cx + r * vec[1, 0]]])


def _longest(labels, ids):
    def straightness(i):
        ys, xs = np.nonzero(labels == i)
        ev = np.linalg.eigvalsh(np.cov(np.vstack([ys, xs])))
        return ev[1] / ev[0] * (len(ys) > 150)

    return max(ids, key=straightness)


@pytest.mark.viewer
def test_corrections_run_in_the_worker_and_cancel_undoes_them(make_napari_viewer, qtbot, tmp_path):
    """A cut goes through the runner (classified off the GUI thread, buttons and table locked while it
    runs); Cancel during a correction leaves the session and the layers as they were; a new karyogram
    is brought into view."""
    import threading

    from qtpy.QtCore import Qt

    from napari_cellclass.widgets.karyotype import CUT_NAME, KARYOGRAM_NAME

    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path, zoom_in=True)
    y0, x0, y1, x1 = _visible_box(viewer)
    (ky0, kx0), (ky1, kx1) = np.asarray(viewer.layers[KARYOGRAM_NAME].extent.world)[:, -2:]
    assert y0 <= ky0 and x0 <= kx0 and ky1 <= y1 and kx1 <= x1  # the whole karyogram is on screen

    ses = w.session
    threads = []
    classify = ses.classify

    def spy(image, labels, ids):
        threads.append(threading.current_thread() is threading.main_thread())
        return classify(image, labels, ids)

    ses.classify = spy
    labels0 = ses.labels.copy()
    lid = _longest(labels0, [int(i) for i in w.result["ids"]])
    viewer.add_shapes([_line_across(labels0, lid)], shape_type="line", name=CUT_NAME)
    qtbot.mouseClick(w.cut_button, Qt.MouseButton.LeftButton)
    assert w.running and w.worker is not None  # returned at once: the work is in the runner's worker
    assert not w.cut_button.isEnabled() and not w.table.isEnabled() and w.cancel_button.isEnabled()
    assert not viewer.layers["chromosomes"].editable  # no stroke can land while the result is computed
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert w.last_error is None, w.last_error
    assert threads == [False]  # classified once, not on the GUI thread
    assert len(w.result["ids"]) == len(np.unique(labels0[labels0 > 0])) + 1
    assert w.status.text().startswith("cut: new chromosome(s)") and "classified 2 changed objects again" in \
        w.status.text()
    assert w.cut_button.isEnabled() and w.table.isEnabled() and len(viewer.layers[CUT_NAME].data) == 0
    qtbot.waitUntil(lambda: viewer.layers["chromosomes"].editable, timeout=5000)

    # Cancel while the merge's update runs: the merge is undone, nothing shown changes
    labels1, result1 = ses.labels.copy(), w.result
    new_id = max(int(i) for i in w.result["ids"])
    history = len(ses.history)

    def cancelling(image, labels, ids):
        w.runner.cancel()  # the user presses Cancel while the changed object is classified
        return classify(image, labels, ids)

    ses.classify = cancelling
    w.merge([lid, new_id])
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert "cancelled" in w.status.text() and w.result is result1
    assert np.array_equal(ses.labels, labels1) and len(ses.history) == history
    assert np.array_equal(viewer.layers["chromosomes"].data, labels1)


@pytest.mark.viewer
def test_status_merge_refusal_straightening_and_clean_exports(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The status line tells the last action; a merge of objects apart is refused once, then forced;
    the straightened/original switch; the blue selection frame is on screen only, never in PNG or PDF."""
    from napari_cellclass.widgets.karyotype import KARYOGRAM_NAME

    monkeypatch.setenv("CELLCLASS_SYNC_JOBS", "1")
    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    ses = w.session
    ids = [int(i) for i in w.result["ids"]]

    # two chromosomes far apart: refused with the gap, nothing changed; Merge again joins them
    boxes = {int(i): b for i, b in zip(w.result["ids"], w.result["boxes"])}
    a = ids[0]
    b = max(ids, key=lambda i: abs(boxes[i][0] - boxes[a][0]) + abs(boxes[i][1] - boxes[a][1]))
    ya, xa = np.nonzero(ses.labels == a)
    yb, xb = np.nonzero(ses.labels == b)
    d = np.sqrt(((ya[:, None] - yb[None]) ** 2 + (xa[:, None] - xb[None]) ** 2).min())
    labels0 = ses.labels.copy()
    assert w.merge([a, b]) is None
    assert w.last_error == (f"chromosomes {a} and {b} do not touch (a gap of {int(round(d - 1))} px between "
                            f"them); press Merge again to join them anyway")
    assert np.array_equal(ses.labels, labels0) and ses.history == []
    assert w.merge([b, a]) == b  # the same pair again: forced (kept in the first id given)
    assert not (ses.labels == a).any() and w.status.text() == f"merged {b}, {a} into {b}; classified 1 changed " \
        "object again"
    w.delete([ids[1]])
    assert w.status.text() == f"deleted {ids[1]}"  # not the merge any more
    w.undo()
    assert w.status.text() == "undone: delete"
    w.set_class(ids[2], "X", sync=True)
    assert w.status.text() == f"chromosome {ids[2]} set to X"
    w.undo()
    w.undo()
    assert np.array_equal(ses.labels, labels0) and w.status.text() == "undone: merge"

    # straightened by default; the original crops one click away, and back (cached: nothing re-cut)
    layer = viewer.layers[KARYOGRAM_NAME]
    straight = layer.data.copy()
    assert w.straight_box.isChecked() and w.result["straightened"]
    bent = [lid for lid, o in w.result["orientation"].items() if o.straightened]
    assert bent  # the generated spread has bent chromosomes
    w.straight_box.setChecked(False)
    assert not ses.straighten and not w.result["straightened"]
    assert w.status.text() == "karyogram: chromosomes as cut from the spread"
    assert not any(o.straightened for o in w.result["orientation"].values())
    assert layer.data.shape != straight.shape or not np.array_equal(layer.data, straight)
    w.straight_box.setChecked(True)
    assert ses.straighten and np.array_equal(layer.data, straight)
    assert w.status.text() == f"karyogram: {len(bent)} bent chromosome(s) straightened"
    assert len(ses.history) == 0  # a view switch is not an edit

    # select: the blue frame is drawn on screen, never into the result, the PNG or the PDF
    def blue(img):
        img = np.asarray(img, int)[..., :3]
        return int(((img[..., 2] > 150) & (img[..., 2] - img[..., 0] > 100) & (img[..., 2] - img[..., 1] > 60)).sum())

    w.select(bent[0])
    assert blue(layer.data) > 20 and blue(w.result["karyogram"]) == 0
    from PIL import Image

    assert blue(Image.open(w.export_png(tmp_path / "k.png")).convert("RGB")) == 0
    from pypdf import PdfReader

    pdf = w.export_report(tmp_path / "r.pdf")
    images = [im.image.convert("RGB") for page in PdfReader(str(pdf)).pages for im in page.images]
    assert images and max(im.size[0] for im in images) > 200
    assert all(blue(im) == 0 for im in images)


@pytest.mark.viewer
def test_objects_set_aside_as_not_chromosomes_are_shown_not_counted(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    w, _ = _started(None, qtbot, viewer, tmp_path)
    count = w.result["count"]
    aside = [{"box": [10.0, 10.0, 40.0, 44.0], "area": 700, "p_not_chromosome": 0.996}]
    w._on_done(dict(w.result, rejected=aside))  # as the pipeline hands it over after the rejection step
    layer = viewer.layers["not chromosomes"]
    assert len(layer.data) == 1 and float(layer.features["p_not_chromosome"][0]) == 0.996
    assert np.allclose(np.asarray(layer.data[0]).min(0), [10, 10]) and np.allclose(np.asarray(layer.data[0]).max(0), [40, 44])
    assert "1 objects set aside as not chromosomes" in w.status.text() and w.result["count"] == count
    w.refresh(sync=True)  # a correction redraws: the set-aside boxes stay
    assert "not chromosomes" in viewer.layers
    w._on_done(dict(w.result, rejected=[]))  # the next spread had none: no stale boxes
    assert "not chromosomes" not in viewer.layers
