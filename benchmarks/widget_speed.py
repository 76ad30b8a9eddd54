"""Widget jobs in a real viewer: through the button (worker thread) vs called directly (sync).

Docks each job widget in a real napari viewer, runs the same job on the same real
image both ways and prints, per job, the median seconds from the click to the
result handed to the widget (worker), the same for ``sync=True`` (direct) and their
ratio (target <= 1.2).  Then Cancel latency: a long job is started, Cancel pressed,
and the time until the worker has finished is printed (target < 2 s).

Data: BCCD smear ``BloodImage_00095`` (held out), Tseng G-band spread ``1050683``,
HPA field ``800_A6_1`` (exampleimages, four JPEG channels), generated white cells
for the tiny training run.  The HPA model is an untrained small RGBY net (no
HPA model ships); its cost, not its answer, is what is timed here.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/widget_speed.py [--repeats 3]
        [--jobs blood,detect,karyotype,hpa,explain,train] [--legacy] [--no-cancel]

``--screenshot PNG`` only saves the Train widget docked at its default width after a
quick 4-epoch run (docs/images/train_widget.png).

``--legacy`` puts back the runner's old behaviour (Qt's animated busy bar while a
job's total is unknown, every progress report shown), to measure the cause.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torchvision.models  # noqa: F401  (before the viewer; see _compat.avoid_triton_llvm_clash)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SMEAR = SHARED / "bccd" / "JPEGImages" / "BloodImage_00095.jpg"
SMEAR_XML = SHARED / "bccd" / "Annotations" / "BloodImage_00095.xml"
SPREAD = SHARED / "chromosomes" / "tseng2023_gband_spreads" / "images" / "1050683.jpg"
HPA = SHARED / "hpa" / "exampleimages" / "800_A6_1"
JOBS = ("blood", "detect", "karyotype", "hpa", "explain", "train")


def drain(app, seconds: float = 0.3) -> None:
    """Let the viewer paint what the last job added (not timed)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.005)


def settle(app, passes: int = 5) -> None:
    """Paint what the job handed to the viewer: part of both timings, so they end at the same point."""
    for _ in range(passes):
        app.processEvents()


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name of this process (Linux), to see who took the cores."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    main = str(os.getpid())
    for tid in os.listdir("/proc/self/task"):
        try:
            name = "main" if tid == main else open(f"/proc/self/task/{tid}/comm").read().strip()
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return " ".join(f"{k}={v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v >= 0.05)


class Bench:
    def __init__(self, viewer, app, tmp: Path):
        self.viewer, self.app, self.tmp = viewer, app, tmp

    def dock(self, widget, name: str):
        self.viewer.window.remove_dock_widget("all")
        self.viewer.layers.clear()
        self.viewer.window.add_dock_widget(widget, area="right", name=name)
        drain(self.app)
        return widget

    # ---------------------------------------------------------------- the jobs
    def blood(self):
        from napari_cellclass.io.wbc_dataset import read_rgb
        from napari_cellclass.widgets.classify_blood import ClassifyBloodWidget

        w = ClassifyBloodWidget(self.viewer)
        self.dock(w, "Blood smear")
        self.viewer.add_image(read_rgb(SMEAR), name="smear", rgb=True)
        w.device_combo.setCurrentText("cpu")
        return w, w.analyse_button, lambda: w.analyse(sync=True)

    def detect(self):
        from napari_cellclass.io.wbc_dataset import read_rgb
        from napari_cellclass.widgets.detect import DetectWidget

        w = DetectWidget(self.viewer)
        self.dock(w, "Detect")
        self.viewer.add_image(read_rgb(SMEAR), name="smear", rgb=True)
        w.device_combo.setCurrentText("cpu")
        return w, w.predict_btn, lambda: w.run_predict(sync=True)

    def karyotype(self):
        from napari_cellclass.tasks import karyotype as kt
        from napari_cellclass.widgets.karyotype import KaryotypeWidget

        w = KaryotypeWidget(self.viewer)
        self.dock(w, "Karyotype")
        image = kt._read_spread(SPREAD)
        self.viewer.add_image(image, name="spread", rgb=image.ndim == 3)
        w.device_box.setCurrentText("cpu")
        return w, w.run_button, lambda: w.run(sync=True)

    def hpa(self):
        import imageio.v3 as iio

        from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
        from napari_cellclass.models.registry import build_model
        from napari_cellclass.synth.hpa import HPA_CLASSES
        from napari_cellclass.widgets.classify_hpa import ClassifyHPAWidget

        cfg = {"num_classes": 28, "in_channels": 4, "depth": 18, "width": 16, "pretrained": False}
        meta = CheckpointMeta("hpa", "resnet50_rgby", list(HPA_CLASSES), 4, [256, 256], cfg,
                              normalization={"mean": [0.1] * 4, "std": [0.2] * 4}, thresholds=[0.5] * 28,
                              trained_on="untrained (benchmark)")
        ckpt = save_checkpoint(self.tmp / "hpa.safetensors", build_model("resnet50_rgby", **cfg), meta)
        w = ClassifyHPAWidget(self.viewer)
        self.dock(w, "Classify HPA")
        for colour in ("red", "green", "blue", "yellow"):
            img = iio.imread(f"{HPA}_{colour}.jpg")
            self.viewer.add_image(img if img.ndim == 2 else img.max(axis=-1), name=f"{HPA.name}_{colour}")
        for box in w.channel_boxes.values():
            box.reset_choices()
        w.model_edit.setText(str(ckpt))
        w.device_box.setCurrentText("cpu")
        w.mode_box.setCurrentText("per cell")
        return w, w.run_button, lambda: w.run(sync=True)

    def explain(self):
        import numpy as np

        from napari_cellclass.io.annotations import read_voc
        from napari_cellclass.io.wbc_dataset import read_rgb
        from napari_cellclass.widgets.explain import ExplainWidget

        w = ExplainWidget(self.viewer)
        self.dock(w, "Explain")
        self.viewer.add_image(read_rgb(SMEAR), name="smear", rgb=True)
        ann = read_voc(SMEAR_XML)
        k = next(i for i, lab in enumerate(ann.labels) if lab.upper() == "WBC")
        x0, y0, x1, y1 = ann.boxes[k]
        self.viewer.add_shapes([np.array([[y0, x0], [y1, x1]])], shape_type="rectangle", name="cell")
        w.cells_box.reset_choices()
        w.cells_box.setCurrentText("cell")
        w.model_edit.setText("bccd-wbc-ibnresnet34")
        w.device_box.setCurrentText("cpu")
        return w, w.run_button, lambda: w.start(sync=True)

    def train(self, epochs: int = 1):
        from napari_cellclass.tasks import wbc
        from napari_cellclass.widgets.train import TrainWidget

        data = self.tmp / "wbc"
        if not data.exists():
            wbc.synth(data, 10, 0)
        w = TrainWidget(self.viewer)
        self.dock(w, "Train")
        w.task_box.setCurrentText("wbc")
        w.data_edit.setText(str(data))
        w.quick_check.setChecked(True)
        w.epochs_spin.setValue(epochs)
        w.device_box.setCurrentText("cpu")
        w.out_edit.setText(str(self.tmp / "runs"))
        return w, w.train_button, lambda: w.start(sync=True)

    # ---------------------------------------------------------------- timing
    def worker_run(self, w, button) -> float:
        from qtpy.QtCore import QEventLoop

        loop = QEventLoop()
        t0 = time.perf_counter()
        button.click()
        worker = w.runner.worker
        if w.runner.busy and worker is not None:
            worker.finished.connect(loop.quit)
            if w.runner.busy:
                loop.exec_()
        settle(self.app)
        dt = time.perf_counter() - t0
        if w.runner.last_error:
            raise RuntimeError(f"worker run failed: {w.runner.last_error}")
        return dt

    def direct_run(self, w, direct) -> float:
        t0 = time.perf_counter()
        direct()
        settle(self.app)
        dt = time.perf_counter() - t0
        if w.runner.last_error:
            raise RuntimeError(f"direct run failed: {w.runner.last_error}")
        return dt

    def speed(self, job: str, repeats: int) -> tuple[float, float]:
        w, button, direct = getattr(self, job)()
        self.direct_run(w, direct)  # warm-up: models loaded and cached, first-call costs paid
        drain(self.app)
        worker_s, direct_s = [], []
        for i in range(repeats):
            order = [("worker", lambda: self.worker_run(w, button)), ("direct", lambda: self.direct_run(w, direct))]
            for kind, fn in (order if i % 2 == 0 else order[::-1]):  # alternate: drifting load hits both alike
                before = thread_cpu()
                dt = fn()
                print(f"  {job:9s} {kind:6s} {dt:6.2f} s  cpu: {cpu_delta(before, thread_cpu())}", flush=True)
                (worker_s if kind == "worker" else direct_s).append(dt)
                drain(self.app)
        return statistics.median(worker_s), statistics.median(direct_s)

    def cancel_latency(self, job: str) -> float:
        """Start ``job`` through its button, press Cancel once it is computing, time until it has stopped."""
        from qtpy.QtCore import QEventLoop

        w, button, _ = self.train(epochs=50) if job == "train" else getattr(self, job)()
        busy_text = None
        button.click()
        busy_text = w.runner.status.text()
        t_start = time.monotonic()
        while w.runner.busy and time.monotonic() - t_start < 60.0:  # until the job reports its work
            self.app.processEvents()
            time.sleep(0.01)
            if w.runner.status.text() != busy_text and (job != "train" or "train" in w.runner.status.text()):
                break
        drain(self.app, 0.2)
        if not w.runner.busy:
            raise RuntimeError(f"{job} finished before Cancel could be pressed")
        loop = QEventLoop()
        w.runner.worker.finished.connect(loop.quit)
        t0 = time.perf_counter()
        w.cancel_button.click()
        if w.runner.busy:
            loop.exec_()
        dt = time.perf_counter() - t0
        drain(self.app)
        print(f"  cancel {job}: {dt:.2f} s ({w.runner.last_error})", flush=True)
        return dt


def use_legacy_runner() -> None:
    """The runner as it was: animated busy bar for unknown totals, every report shown."""
    from napari_cellclass.widgets import _runner

    def progress(self, p):
        frac = p.fraction
        if frac is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, _runner.SCALE)
            self.progress.setValue(int(round(_runner.SCALE * frac)))
        if not self._cancel_requested:
            self.status.setText(_runner.progress_text(p))
        if self.on_progress is not None:
            self.on_progress(p)

    _runner.JobRunner._progress = progress
    init = _runner.JobRunner.__init__

    def init_all_reports(self, *a, **k):
        init(self, *a, **k)
        self.min_interval = 0.0

    _runner.JobRunner.__init__ = init_all_reports


def train_screenshot(bench: Bench, out: Path) -> None:
    """The Train widget as a user sees it, docked at its default width: runs folder beside the
    data, a quick 4-epoch run finished (curves, the measured estimate), 5 epochs set for the next."""
    from qtpy.QtCore import QEventLoop

    from napari_cellclass.widgets.train import DEFAULT_EPOCHS

    w, button, _ = bench.train(epochs=4)
    w.out_edit.setText("")  # the default: beside the data
    w._update_runs_folder()
    loop = QEventLoop()
    button.click()
    w.runner.worker.finished.connect(loop.quit)
    if w.runner.busy:
        loop.exec_()
    w.epochs_spin.setValue(DEFAULT_EPOCHS)
    drain(bench.app, 1.0)
    bench.viewer.window._qt_window.grab().save(str(out))
    print("saved", out, "| estimate:", w.estimate_label.text(), "| runs:", w.run_label.text(),
          "| status:", w.status.text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--legacy", action="store_true", help="the old runner (busy bar, every report shown)")
    ap.add_argument("--no-cancel", action="store_true")
    ap.add_argument("--cancel-jobs", default="train,karyotype")
    ap.add_argument("--screenshot", type=Path, help="save the docked Train widget to this PNG and stop")
    args = ap.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    if args.legacy:
        use_legacy_runner()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    tmp = Path(tempfile.mkdtemp(prefix="widget-speed-"))
    bench = Bench(viewer, app, tmp)
    if args.screenshot:
        train_screenshot(bench, args.screenshot)
        viewer.close()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, runner: {'legacy' if args.legacy else 'current'}", flush=True)
    rows = []
    for job in args.jobs.split(","):
        wk, dr = bench.speed(job, args.repeats)
        rows.append((job, wk, dr))
    cancels = [] if args.no_cancel else [(j, bench.cancel_latency(j)) for j in args.cancel_jobs.split(",") if j]
    print(f"\n| job | worker s | direct s | ratio |\n|---|---|---|---|")
    for job, wk, dr in rows:
        print(f"| {job} | {wk:.2f} | {dr:.2f} | {wk / dr:.2f} |")
    for job, dt in cancels:
        print(f"| cancel {job} | {dt:.2f} | | |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
