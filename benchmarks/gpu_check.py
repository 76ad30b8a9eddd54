"""One GPU readiness run (< 8 min on an H100/H200): every CUDA path, timed, in one table.

Sections (each guarded: a failure is a row, not the end of the run):

1. ``pytest -m cuda``: the CUDA tests (AMP inference agrees with fp32; a training
   step with AMP + channels-last; 2-rank NCCL training when there are >= 2 GPUs);
2. inference throughput of every model with AMP + channels-last over a batch
   sweep (images/s, peak GPU memory), the fp32 NCHW reference and the AMP ratio,
   and the torch.compile ratio for ResNet-50 RGBY 512 px;
3. every task's training for a few iterations through the CLI (synthetic data,
   ``--quick`` networks, AMP + channels-last from the device policy); with more
   than one GPU also through torchrun (``--nproc 2``);
4. full-size GRiCoL training (448 x 456 px, half-width ResNet-50 backbone, batch
   64) through the training engine for ``--gricol-seconds`` (120), images/s.

Targets from issue 16 (H100 class): ResNet-50 RGBY 512 px inference >= 3,000
images/s; full-size GRiCoL training >= 400 images/s.

    bash benchmarks/gpu_check.sh            # the one call a session with a GPU makes
    python benchmarks/gpu_check.py --smoke  # the same code on a CPU with tiny sizes (CI, this machine)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS: list[dict[str, Any]] = []
T0 = time.monotonic()


def row(section: str, what: str, value: Any, unit: str = "", note: str = "") -> None:
    ROWS.append({"section": section, "what": what, "value": value, "unit": unit, "note": note,
                 "t": round(time.monotonic() - T0, 1)})
    v = f"{value:.1f}" if isinstance(value, float) else str(value)
    print(f"[{time.monotonic() - T0:6.0f} s] {section:<10} {what:<46} {v:>10} {unit:<9} {note}", flush=True)


def guarded(section: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # one broken section must not hide the others
        row(section, "FAILED", type(exc).__name__, "", str(exc).splitlines()[0][:120] if str(exc) else "")


def left(budget: float) -> float:
    return budget - (time.monotonic() - T0)


# ----------------------------------------------------------------------------- 1. tests

def run_tests(smoke: bool) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:randomly", "-x",
           "tests/engine/test_fast_inference.py", "tests/engine/test_distributed.py"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    row("tests", "pytest -m cuda", "passed" if r.returncode == 0 else f"rc {r.returncode}", "",
        f"{tail} ({time.monotonic() - t0:.0f} s)")
    if r.returncode not in (0, 5):
        print(r.stdout[-3000:], r.stderr[-2000:])


# ----------------------------------------------------------------------------- 2. inference

def models(smoke: bool) -> list[tuple[str, Callable[[], torch.nn.Module], tuple[int, ...]]]:
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.tasks.base import TaskOptions
    from napari_cellclass.tasks.chromosome import FULL_SIZE, arch_config

    import napari_cellclass.models.centernet  # noqa: F401  (registers archs)
    import napari_cellclass.models.chromdet  # noqa: F401

    s = 64 if smoke else None
    return [
        ("ResNet-50 RGBY (HPA)", lambda: build_model("resnet50_rgby", num_classes=28, in_channels=4, depth=50,
                                                      width=64, pretrained=False), (4, s or 512, s or 512)),
        ("IBN-ResNet-34 (white cells)", lambda: build_model("ibn_resnet34", num_classes=4, in_channels=3),
         (3, s or 224, s or 224)),
        ("GRiCoL (chromosomes)", lambda: build_model("gricol", **arch_config("gricol", TaskOptions(quick=smoke))),
         (1, *(arch_config("gricol", TaskOptions(quick=smoke))["input_size"] if smoke else FULL_SIZE))),
        ("CenterNet (blood cells)", lambda: build_model("centernet", num_classes=3), (3, s or 512, s or 512)),
        ("ChromDet U-Net (spreads)", lambda: build_model("chromdet_unet", in_channels=1), (1, s or 512, s or 512)),
    ]


def _throughput(model: torch.nn.Module, shape, batch: int, dev: torch.device, amp: bool, cl: bool,
                seconds: float) -> tuple[float, float]:
    x = torch.randn(batch, *shape, device=dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else (lambda: torch.autocast(dev.type, enabled=False))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), ctx():
        for _ in range(2):
            model(x)
        _sync(dev)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
        _sync(dev)
        dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    return n * batch / dt, peak


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def inference(smoke: bool, dev: torch.device, budget: float) -> None:
    batches = [1, 4] if smoke else [1, 16, 64, 256]
    secs = 0.3 if smoke else 1.5
    for name, build, shape in models(smoke):
        if left(budget) < 60:
            row("inference", name, "skipped", "", "time budget")
            continue
        model = build().to(dev).eval()
        best, best_b = 0.0, None
        model_cl = model.to(memory_format=torch.channels_last)
        for b in batches:
            try:
                ips, peak = _throughput(model_cl, shape, b, dev, True, True, secs)
            except torch.OutOfMemoryError:
                row("inference", f"{name} AMP+CL batch {b}", "OOM")
                torch.cuda.empty_cache()
                break
            row("inference", f"{name} AMP+CL batch {b}", ips, "img/s", f"peak {peak:.0f} MiB")
            if ips > best:
                best, best_b = ips, b
        model = model.to(memory_format=torch.contiguous_format)
        ref, _ = _throughput(model, shape, best_b, dev, False, False, secs)
        row("inference", f"{name} fp32 NCHW batch {best_b}", ref, "img/s", f"AMP+CL is {best / ref:.2f}x")
        if name.startswith("ResNet-50") and not smoke:  # compiling on a CPU takes many minutes
            target = " (target >= 3000: " + ("met" if best >= 3000 else "NOT met") + ")"
            row("inference", "ResNet-50 RGBY 512 px best", best, "img/s", f"batch {best_b}{target}")
            guarded("compile", lambda: _compile_ratio(model, shape, best_b, dev, secs, best))
        del model, model_cl
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _compile_ratio(model, shape, batch, dev, secs, eager_ips) -> None:
    t0 = time.monotonic()
    m = torch.compile(model.to(memory_format=torch.channels_last))
    x = torch.randn(batch, *shape, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
        m(x)
        _sync(dev)
    compile_s = time.monotonic() - t0
    ips, _ = _throughput(m, shape, batch, dev, True, True, secs)
    row("compile", f"ResNet-50 RGBY torch.compile batch {batch}", ips, "img/s",
        f"{ips / eager_ips:.2f}x eager; compiled in {compile_s:.0f} s")


# ----------------------------------------------------------------------------- 3. every task's training

def training_smoke(smoke: bool, budget: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="cellclass-gpu-"))
    env = dict(os.environ)
    if smoke:
        env["CELLCLASS_DEVICE"] = "cpu"
    cli = [sys.executable, "-m", "napari_cellclass"]
    n_gpu = torch.cuda.device_count()
    for task, n in (("wbc", 8), ("hpa", 12), ("detect", 8), ("chromosome", 2), ("karyotype", 4)):
        if left(budget) < 30:
            row("train", task, "skipped", "", "time budget")
            continue
        data = work / f"data_{task}"
        r = subprocess.run(cli + ["synth", task, "--n", str(n), "--out", str(data)], capture_output=True, text=True,
                           env=env, timeout=120)
        if r.returncode != 0:
            row("train", f"{task} synth", f"rc {r.returncode}", "", r.stderr.strip().splitlines()[-1][:120])
            continue
        runs = [("1 process", [])] + ([("torchrun 2 ranks", ["--nproc", "2"])] if n_gpu > 1 and task == "wbc" else [])
        for label, extra in runs:
            t0 = time.monotonic()
            r = subprocess.run(cli + ["train", task, str(data), "--quick", "--epochs", "1", "--quiet",
                                      "--out", str(work / f"run_{task}_{len(extra)}"), *extra],
                               capture_output=True, text=True, env=env, timeout=240)
            if r.returncode != 0:
                row("train", f"{task} ({label})", f"rc {r.returncode}", "",
                    (r.stderr.strip().splitlines() or ["?"])[-1][:120])
                continue
            res = json.loads(r.stdout[r.stdout.index("{"):])
            h = (res.get("history") or [{}])[-1]
            row("train", f"{task} ({label})", time.monotonic() - t0, "s",
                f"loss {h.get('loss', float('nan')):.3f}; {res.get('device', '')[:60]}")


# ----------------------------------------------------------------------------- 4. full-size GRiCoL

def gricol_training(smoke: bool, dev: torch.device, seconds: float) -> None:
    from napari_cellclass.engine.device import resolve_device
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.engine.training import fit
    from napari_cellclass.models.gricol import GRiCoLLoss
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.tasks.base import TaskOptions
    from napari_cellclass.tasks.chromosome import arch_config

    cfg = arch_config("gricol", TaskOptions(quick=smoke))
    model = build_model("gricol", **cfg)
    policy = resolve_device("cpu" if smoke else None)
    batch = 4 if smoke else 64
    h, w = cfg["input_size"]
    x = torch.rand(batch, 1, h, w)
    y = torch.randint(0, cfg["num_classes"], (batch,))
    loss_obj = GRiCoLLoss()

    class Timed:
        """The same batch over and over until the time is up (data loading is not what is measured)."""

        def __init__(self):
            self.steps, self.t_start = 0, None

        def __iter__(self):
            while True:
                if self.steps == 3:  # after warm-up (cuDNN autotune, allocator)
                    _sync(policy.device)
                    self.t_start = time.perf_counter()
                if self.t_start is not None and time.perf_counter() - self.t_start > seconds:
                    _sync(policy.device)
                    self.t_end = time.perf_counter()
                    return
                self.steps += 1
                yield x, y

    batches = Timed()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if policy.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_sync(fit(model, batches, loss_fn=lambda m, b, e: loss_obj(m.forward_all(b[0]), b[1], e), optimizer=opt,
                 epochs=1, policy=policy))
    ips = (batches.steps - 3) * batch / (batches.t_end - batches.t_start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if policy.device.type == "cuda" else float("nan")
    target = "" if smoke else (" (target >= 400: " + ("met" if ips >= 400 else "NOT met") + ")")
    row("gricol", f"full-size training {h}x{w}, batch {batch}", ips, "img/s",
        f"{policy.describe()[:50]}; {batches.steps - 3} steps; peak {peak:.0f} MiB{target}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script itself")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (sections shrink to fit)")
    ap.add_argument("--gricol-seconds", type=float, default=120.0)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: tests,inference,train,gricol")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --smoke to check the script on a CPU")
    dev = torch.device("cpu" if args.smoke else "cuda")
    name = "CPU (smoke)" if args.smoke else f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    print(f"gpu_check: {name}; torch {torch.__version__}; CUDA {torch.version.cuda}; {time.strftime('%Y-%m-%d %H:%M')}")
    torch.backends.cudnn.benchmark = True
    if "tests" not in skip:
        guarded("tests", lambda: run_tests(args.smoke))
    if "inference" not in skip:
        guarded("inference", lambda: inference(args.smoke, dev, args.budget - args.gricol_seconds - 100))
    if "gricol" not in skip:
        guarded("gricol", lambda: gricol_training(args.smoke, dev, 3.0 if args.smoke else args.gricol_seconds))
    if "train" not in skip:
        guarded("train", lambda: training_smoke(args.smoke, args.budget))
    print(f"\n## GPU check: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"{time.monotonic() - T0:.0f} s\n")
    print("| section | what | value | unit | note |")
    print("|---|---|---|---|---|")
    for r in ROWS:
        v = f"{r['value']:.1f}" if isinstance(r["value"], float) else r["value"]
        print(f"| {r['section']} | {r['what']} | {v} | {r['unit']} | {r['note']} |")
    out = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out:
        out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": ROWS}, indent=2))


if __name__ == "__main__":
    main()
