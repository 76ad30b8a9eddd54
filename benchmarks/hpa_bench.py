"""HPA timings: reading a real set, segmenting it, and ResNet-RGBY inference throughput.

    python benchmarks/hpa_bench.py [--data ../shared/data/hpa] [--n 8] [--threads 2] [--device auto]

Prints one JSON document. Inference uses random weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa")
    ap.add_argument("--n", type=int, default=8, help="images per inference measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from napari_cellclass.engine.device import resolve_device
    from napari_cellclass.io.hpa_reader import find_set, read_set, stack_channels
    from napari_cellclass.models.hpa_resnet import build_resnet_rgby
    from napari_cellclass.segmentation import segment_cells

    out: dict = {"threads": args.threads}
    policy = resolve_device(args.device)
    out["device"] = policy.describe()
    for name in ("exampleimages/800_A6_1_red.jpg", "derived_kaggle_format_512/800_A6_1_red.png"):
        p = args.data / name
        if not p.exists():
            continue
        s = find_set(p)
        t = _time(lambda: read_set(s, warn=False))
        field = stack_channels(read_set(s, warn=False)[0])
        t_seg = _time(lambda: segment_cells(field))
        out[name] = {"shape": list(field.shape), "read_s": round(t, 3), "segment_s": round(t_seg, 3),
                     "cells": int(segment_cells(field).max())}
    for label, cfg, size in (("resnet50_rgby_512", {"depth": 50, "width": 64}, 512),
                             ("tiny_d10_w8_64", {"depth": 10, "width": 8}, 64)):
        net = policy.prepare_model(build_resnet_rgby(**cfg)).eval()
        x = policy.prepare_input(torch.randn(args.n, 4, size, size))
        with torch.inference_mode(), policy.autocast():
            net(x[:1])
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            t = _time(lambda: net(x))
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
        out[label] = {"images_per_s": round(args.n / t, 2), "batch": args.n}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
