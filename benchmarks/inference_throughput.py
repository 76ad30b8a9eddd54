"""Our inference path vs a plain per-image loop, for the three classifiers, in one run.

For each model it prints images/s of

* the plain loop: one image at a time, fp32, NCHW, ``torch.no_grad`` (what most
  plugins do), and
* our path: :func:`napari_cellclass.engine.inference.predict_batches` with the
  device policy (batches, channels-last, ``inference_mode``, bf16 autocast on CPUs
  with native bf16 where it measures faster than fp32 / AMP on CUDA, near-tied rows
  redone in fp32, ``torch.compile`` only with ``--compile``),

their ratio, the top-1 agreement of the two paths' outputs and the largest
difference in probability.  Models: ResNet-50 RGBY at 512 px (HPA), the white-cell
classifier and the chromosome classifier: the built-in models when the zoo ships
them, else the same architectures with random weights (the table says which).
Inputs are real sample images from ../shared/data when present (HPA fields, BCCD
white cells, Q-band chromosomes), else generated ones.

    python benchmarks/inference_throughput.py                    # CPU defaults (small n)
    python benchmarks/inference_throughput.py --n 512 --batch 64 # a GPU
    python benchmarks/inference_throughput.py --no-fast          # our path in fp32 (batching + channels-last only)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine import inference as inf
from napari_cellclass.engine.inference import predict_batches
from napari_cellclass.engine.progress import run_sync

DATA = Path(os.environ.get("CELLCLASS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


# ----------------------------------------------------------------------------- models

def _builtin(task: str):
    """(model, meta, name) of the zoo's default model for ``task``, or None."""
    try:
        from napari_cellclass import zoo
        from napari_cellclass.engine.checkpoint import build_from_checkpoint

        name = zoo.default_model(task)
        if not name:
            return None
        model, meta = build_from_checkpoint(zoo.resolve_model(name, task=task))
        return model, meta, name
    except Exception as exc:  # a broken zoo must not hide the benchmark
        print(f"note: built-in {task} model unavailable ({exc}); using random weights")
        return None


def hpa_model():
    from napari_cellclass.models.registry import build_model

    torch.manual_seed(0)
    return build_model("resnet50_rgby", num_classes=28, in_channels=4, depth=50, width=64, pretrained=False), \
        (4, 512, 512), "ResNet-50 RGBY (random weights)", "sigmoid"


def wbc_model():
    got = _builtin("wbc")
    if got:
        model, meta, name = got
        s = meta.input_size
        return model, (3, int(s[0]), int(s[1])), f"white-cell {meta.arch} (built-in {name})", "softmax"
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.tasks.wbc import DEFAULT_SIZE

    torch.manual_seed(0)
    return build_model("ibn_resnet34", num_classes=4, in_channels=3), (3, DEFAULT_SIZE, DEFAULT_SIZE), \
        "white-cell ibn_resnet34 (random weights)", "softmax"


def chromosome_model():
    got = _builtin("chromosome")
    if got:
        model, meta, name = got
        s = meta.input_size
        return model, (1, int(s[0]), int(s[1])), f"chromosome {meta.arch} (built-in {name})", "softmax"
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.tasks.base import TaskOptions
    from napari_cellclass.tasks.chromosome import FULL_SIZE, arch_config

    torch.manual_seed(0)
    cfg = arch_config("gricol", TaskOptions())
    return build_model("gricol", **cfg), (1, *FULL_SIZE), "chromosome gricol (random weights)", "softmax"


# ----------------------------------------------------------------------------- inputs (CHW float tensors)

def hpa_inputs(n: int, shape) -> tuple[list[torch.Tensor], str]:
    folder = DATA / "hpa" / "derived_kaggle_format_512"
    ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_red.png")}) if folder.is_dir() else []
    if not ids:
        return _noise(n, shape), "generated"
    from skimage.io import imread

    fields = [np.stack([imread(folder / f"{i}_{c}.png") for c in ("red", "green", "blue", "yellow")]) for i in ids]
    out = []
    for k in range(n):  # the real fields in their 8 orientations, with a little intensity jitter
        f = np.rot90(fields[k % len(fields)], k // len(fields) % 4, axes=(1, 2))
        if (k // (4 * len(fields))) % 2:
            f = f[:, :, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(f)).float().div(255) * (0.9 + 0.2 * ((k * 37) % 11) / 10)
        out.append(((t - 0.08) / 0.12)[:, : shape[1], : shape[2]])
    return out, f"real HPA fields ({len(ids)} sets, rotated/flipped)"


def wbc_inputs(n: int, shape) -> tuple[list[torch.Tensor], str]:
    table = DATA / "bccd" / "wbc_labels.csv"
    if not table.is_file():
        return _noise(n, shape), "generated"
    import csv

    from skimage.io import imread

    from napari_cellclass.io.wbc_dataset import crop_cell, to_tensor

    rows = list(csv.DictReader(open(table)))[:n]
    crops = []
    for r in rows:
        img = imread(DATA / "bccd" / "JPEGImages" / r["image"])[..., :3]
        box = [float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])]
        crops.append(crop_cell(img, box, shape[1]))
    return list(to_tensor(np.stack(crops))), f"real BCCD white cells ({len(rows)})"


def chromosome_inputs(n: int, shape) -> tuple[list[torch.Tensor], str]:
    folder = DATA / "chromosomes" / "qband_bioimlab"
    files = sorted(folder.glob("*/*.bmp"))[:n] if folder.is_dir() else []
    if not files:
        return _noise(n, shape), "generated"
    from skimage.io import imread

    from napari_cellclass.io.chromosome_dataset import prepare_crop

    out = [torch.from_numpy(prepare_crop(imread(f), None, shape[1:]))[None] for f in files]
    return out, f"real Q-band chromosomes ({len(files)})"


def _noise(n: int, shape) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.functional.avg_pool2d(torch.randn(1, *shape, generator=g), 5, 1, 2)[0] * 3 for _ in range(n)]


# ----------------------------------------------------------------------------- timing

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def compare(model: torch.nn.Module, items: list[torch.Tensor], policy, batch: int, repeat: int, head: str,
            cpu_time: bool = False) -> dict:
    dev = policy.device
    plain_model = copy.deepcopy(model).float().to(dev).eval()
    ours_model = model

    def plain():
        outs = []
        with torch.no_grad():
            for x in items:
                outs.append(plain_model(x[None].to(dev)).float().cpu()[0])
        return torch.stack(outs)

    def ours():
        return torch.stack(run_sync(predict_batches(ours_model, items, policy=policy, preprocess=lambda t: t,
                                                    batch_size=batch)))

    # warm-up: allocator, oneDNN/cuDNN kernels, compilation
    with torch.no_grad():
        plain_model(items[0][None].to(dev))
    run_sync(predict_batches(ours_model, items[:batch], policy=policy, preprocess=lambda t: t, batch_size=batch))
    t_plain, t_ours, c_plain, c_ours = [], [], [], []
    peak = None
    for _ in range(repeat):  # alternate, so drift in machine load hits both alike
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = plain()
        _sync(dev)
        t_plain.append(time.perf_counter() - t0)
        c_plain.append(time.process_time() - c0)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
        out = ours()
        _sync(dev)
        t_ours.append(time.perf_counter() - t0)
        c_ours.append(time.process_time() - c0)
        recheck = dict(inf.LAST_RECHECK)
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
    act = torch.sigmoid if head == "sigmoid" else (lambda z: torch.softmax(z, -1))
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    dp = float((act(out) - act(ref)).abs().max())
    n = len(items)
    if cpu_time:  # CPU seconds of this process: what a quiet core would take, whatever else the machine runs
        t_plain, t_ours = c_plain, c_ours
    tp, to = float(np.median(t_plain)), float(np.median(t_ours))
    return {"n": n, "batch": batch, "plain_ips": n / tp, "ours_ips": n / to, "ratio": tp / to,
            "ratios": [p / o for p, o in zip(t_plain, t_ours)], "top1_agreement": agree, "max_prob_diff": dp,
            "peak_gpu_mib": peak, "clock": "process CPU time" if cpu_time else "wall clock",
            "rechecked_fraction": recheck["rechecked"] / max(recheck["rows"], 1) if recheck["rows"] else 0.0,
            "low_precision_fraction": recheck.get("low_rows", 0) / n}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="hpa,wbc,chromosome")
    ap.add_argument("--n", type=int, default=None, help="images per model (default: 16 HPA, 32 others; x8 on GPU)")
    ap.add_argument("--batch", type=int, default=None, help="our batch size (default 8 on CPU, 64 on GPU)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; medians are printed")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-fast", action="store_true", help="our path without bf16/AMP (fp32)")
    ap.add_argument("--compile", action="store_true", help="our path with torch.compile")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by this process's CPU seconds (use with --threads 1 on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        os.environ["CELLCLASS_COMPILE"] = "1"
    policy = resolve_device(args.device, fast=False if args.no_fast else None)
    gpu = policy.device.type == "cuda"
    batch = args.batch or (64 if gpu else 8)
    specs = {"hpa": (hpa_model, hpa_inputs, 16), "wbc": (wbc_model, wbc_inputs, 32),
             "chromosome": (chromosome_model, chromosome_inputs, 32)}
    print(f"device: {policy.describe()}; CPU {cpu_name()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; inference dtype {policy.inference_dtype}; "
          f"compile {policy.compile_inference}; timed by {'process CPU time' if args.cpu_time else 'wall clock'}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    rows = []
    for key in args.models.split(","):
        build, inputs, n_default = specs[key]
        model, shape, name, head = build()
        n = args.n or (n_default * (8 if gpu else 1))
        items, source = inputs(n, shape)
        t0 = time.monotonic()
        r = compare(model, items, policy, min(batch, n), args.repeat, head, cpu_time=args.cpu_time)
        r.update(model=name, input="x".join(map(str, shape)), data=source, seconds=round(time.monotonic() - t0, 1))
        rows.append(r)
        print(f"  {name}: {r['plain_ips']:.2f} -> {r['ours_ips']:.2f} images/s ({r['ratio']:.2f}x), "
              f"top-1 agreement {r['top1_agreement']:.3f}  [{source}; {r['seconds']} s]", flush=True)
    print()
    print(f"| model | input | images | batch | plain loop img/s | our path img/s | ratio | top-1 agreement | "
          f"max abs prob diff | rows in bf16/AMP | of those redone in fp32 |{' peak GPU MiB |' if gpu else ''}")
    print(f"|---|---|---|---|---|---|---|---|---|---|---|{'---|' if gpu else ''}")
    for r in rows:
        extra = f" {r['peak_gpu_mib']:.0f} |" if gpu else ""
        print(f"| {r['model']} | {r['input']} | {r['n']} | {r['batch']} | {r['plain_ips']:.2f} | {r['ours_ips']:.2f} "
              f"| {r['ratio']:.2f}x | {100 * r['top1_agreement']:.1f} % | {r['max_prob_diff']:.4f} "
              f"| {100 * r['low_precision_fraction']:.0f} % | {100 * r['rechecked_fraction']:.1f} % |{extra}")
    ok = all(r["ratio"] >= 2 and r["top1_agreement"] >= 0.99 for r in rows)
    print(f"\ntarget >= 2x at >= 99 % top-1 agreement: {'met' if ok else 'NOT met'} for "
          f"{'all models' if ok else ', '.join(r['model'] for r in rows if r['ratio'] < 2 or r['top1_agreement'] < 0.99)}")
    if args.json:
        args.json.write_text(json.dumps({"device": policy.describe(), "cpu": cpu_name(), "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
