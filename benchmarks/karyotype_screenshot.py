"""Screenshot of the Karyotype widget on a held-out Tseng spread with the built-ins, for docs/karyotype.md.

    xvfb-run -a python benchmarks/karyotype_screenshot.py [SPREAD_ID] docs/images/karyotype_widget.png \
        [--report docs/images/karyotype_report.png] [--karyogram docs/images/karyogram_tseng.png]

The spread is looked up in both Tseng folders (default 1050041: in the held-out fifth of the later
100 spreads, which no built-in trained on).  The dock keeps napari's default width; the karyogram is
the default, straightened one.  Before the screenshot one cut is made and undone through the dock, and
the time the GUI thread was held by the call is printed against the time the correction took in the
worker.  ``--report`` also renders the first page of the PDF report (the same matplotlib figure the
PDF is saved from) to PNG; ``--karyogram`` saves the karyogram as the PNG export writes it.  Prints what the widget reports (count, flags, seconds), for the caption.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer; see engine.device.avoid_triton_llvm_clash)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chromosomes"
FOLDERS = ("tseng2023_gband_spreads_more", "tseng2023_gband_spreads")


def _spread_path(spread: str) -> Path:
    for folder in FOLDERS:
        path = DATA / folder / "images" / f"{spread}.jpg"
        if path.exists():
            return path
    raise SystemExit(f"spread {spread} not found in {', '.join(FOLDERS)} under {DATA}")


def _wait(app, w, timeout: float = 600.0) -> None:
    t0 = time.monotonic()
    while w.running and time.monotonic() - t0 < timeout:
        app.processEvents()
        time.sleep(0.005)


def main(spread: str, out: str, report: str | None, karyogram: str | None = None) -> None:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_cellclass.tasks import karyotype as kt
    from napari_cellclass.widgets.karyotype import KaryotypeWidget

    path = _spread_path(spread)
    image = kt._read_spread(path)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.add_image(image, name=f"spread {spread}", rgb=image.ndim == 3)
    w = KaryotypeWidget(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Karyotype")  # napari's default dock width
    w.device_box.setCurrentText("cpu")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    w.run()
    _wait(app, w)
    if w.last_error is not None or w.session is None:
        raise SystemExit(f"karyotyping failed: {w.last_error}")
    run_status = w.status.text()
    t_idle = time.monotonic()
    while time.monotonic() - t_idle < 3:  # let the viewer paint the new layers first (as a user would wait)
        app.processEvents()
        time.sleep(0.01)

    # one correction through the dock: a cut across the largest chromosome, then undo
    labels = w.session.labels
    lid = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    ys, xs = np.nonzero(labels == lid)
    cy, cx = ys.mean(), xs.mean()
    ev, vec = np.linalg.eigh(np.cov(np.vstack([ys - cy, xs - cx])))
    r = 3 * np.sqrt(ev[0]) + 4
    line = np.array([[cy - r * vec[0, 0], cx - r * vec[1, 0]], [cy + r * vec[0, 0], cx + r * vec[1, 0]]])
    t0 = time.perf_counter()
    w.cut(line)
    held = time.perf_counter() - t0
    _wait(app, w)
    took = time.perf_counter() - t0
    cut_status = w.status.text()
    w.undo()
    _wait(app, w)
    for _ in range(50):
        app.processEvents()
    viewer.reset_view()
    for _ in range(50):
        app.processEvents()
    viewer.window._qt_window.grab().save(out)
    res = w.session.result
    print(f"spread: {path} | run status: {run_status}")
    print(f"cut through the runner: GUI thread held {held * 1000:.0f} ms, correction done in {took:.2f} s "
          f"({cut_status}); then {w.status.text()}")
    print("summary:", res.get("summary"), "| count:", res.get("count"), "| flagged:", int(np.sum(res["flagged"])),
          "| straightened:", sum(bool(o.straightened) for o in res["orientation"].values()),
          "| model:", getattr(w._models[0], "name", w._models[0]), "| dock width:", w.width(),
          "| error:", w.last_error)
    if karyogram:
        w.export_png(karyogram)
        print("karyogram:", karyogram)
    if report:
        from napari_cellclass.karyotype.report import model_info, report_pages

        classifier, detector, segmenter = w._models
        models = [model_info(classifier, "classifier"),
                  model_info(detector, "detector") if segmenter == "detector" else
                  {"role": "segmenter", "name": "classical threshold segmenter (no model)"}]
        w.select(int(res["ids"][0]))  # a selected chromosome: its frame must stay off the page
        page = next(report_pages(w.result, case=f"{path.name} (Tseng 2023, held out)", models=models,
                                 corrections=[s.name for s in w.session.history]))
        page.savefig(report, dpi=90)
        print("report page 1:", report)
    viewer.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="+", help="[SPREAD_ID] OUT.png")
    ap.add_argument("--report", help="also render the report's first page to this PNG")
    ap.add_argument("--karyogram", help="also save the karyogram (the PNG export) here")
    a = ap.parse_args()
    main(a.args[0] if len(a.args) > 1 else "1050041", a.args[-1], a.report, a.karyogram)
