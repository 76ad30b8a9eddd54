"""Batched inference engine vs a plain per-image torchvision loop, same model, same inputs.

Prints images/s and peak memory for both and their ratio.  On CUDA the engine also
uses mixed precision and channels-last (the device policy); on CPU both run fp32.

    python benchmarks/inference_throughput.py --model resnet50 --n 64 --size 224 --batch 16
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil
import torch
import torchvision

from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine.inference import predict_batches
from napari_cellclass.engine.progress import run_sync


class PeakRSS:
    """Samples this process's resident memory in a thread; peak above the start value."""

    def __init__(self, interval: float = 0.005):
        self.proc = psutil.Process()
        self.interval = interval

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def preprocess(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(img).permute(2, 0, 1).float().div_(255)
    return (t - 0.45) / 0.225


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="torchvision classification model name")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are printed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.n)]
    model = getattr(torchvision.models, args.model)(weights=None, num_classes=28).eval()
    dev = policy.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # warm-up both paths (allocator, cuDNN autotune)
    with torch.inference_mode():
        model.to(dev)(preprocess(images[0])[None].to(dev))
    run_sync(predict_batches(model, images[: args.batch], policy=policy, preprocess=preprocess,
                             batch_size=args.batch))
    model = model.float().to(memory_format=torch.contiguous_format).to(dev)


    def plain_run():
        """One image at a time, fp32, NCHW: what most plugins do."""
        out = []
        with torch.inference_mode():
            for img in images:
                out.append(model(preprocess(img)[None].to(dev)).float().cpu()[0])
        return out

    def engine_run():
        return run_sync(predict_batches(model, images, policy=policy, preprocess=preprocess,
                                        batch_size=args.batch))

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            sync()
            t0 = time.perf_counter()
            res = fn()
            sync()
            dt = time.perf_counter() - t0
        gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
        return res, dt, mem.mib, gpu

    rounds = {"plain": [], "engine": []}
    for _ in range(args.repeat):  # alternate so drift in machine speed hits both alike
        plain, *m_plain = timed(plain_run)
        model = model.to(memory_format=torch.contiguous_format)
        rounds["plain"].append(m_plain)
        out, *m_engine = timed(engine_run)
        model = model.to(memory_format=torch.contiguous_format)
        rounds["engine"].append(m_engine)
    t_plain = float(np.median([r[0] for r in rounds["plain"]]))
    t_engine = float(np.median([r[0] for r in rounds["engine"]]))
    mem_plain = max(r[1] for r in rounds["plain"])
    mem_engine = max(r[1] for r in rounds["engine"])
    gpu_plain, gpu_engine = rounds["plain"][-1][2], rounds["engine"][-1][2]
    ratios = [p[0] / e[0] for p, e in zip(rounds["plain"], rounds["engine"])]

    agree = np.mean([int(a.argmax() == b.argmax()) for a, b in zip(plain, out)])
    ips_plain, ips_engine = args.n / t_plain, args.n / t_engine
    print(f"device: {policy.describe()}; torch threads: {torch.get_num_threads()}")
    print(f"model: {args.model} (random weights), {args.n} images {args.size}x{args.size}, batch {args.batch}")
    print(f"{'path':<24}{'images/s':>10}{'peak RSS +MiB':>15}{'peak GPU MiB':>14}")
    for name, ips, mem, gpu in (("plain per-image loop", ips_plain, mem_plain, gpu_plain),
                                ("engine predict_batches", ips_engine, mem_engine, gpu_engine)):
        gtxt = f"{gpu:14.0f}" if gpu is not None else f"{'-':>14}"
        print(f"{name:<24}{ips:10.2f}{mem:15.0f}{gtxt}")
    print(f"speed ratio engine/plain (median of {args.repeat} paired rounds): {np.median(ratios):.2f}x "
          f"[min {min(ratios):.2f}, max {max(ratios):.2f}]; top-1 agreement {agree:.3f}")


if __name__ == "__main__":
    main()
