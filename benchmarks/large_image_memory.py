"""Peak memory against image size for tile-by-tile processing of large images.

Writes square OME-Zarr images of growing size (chunk by chunk, so writing needs
little memory either), then runs ``engine.tiled.predict_large`` on each in a fresh
process and prints that process's peak resident memory (``ru_maxrss``), its
memory after imports and model loading, the time and the objects found.  With
tiles, the peak should stay flat as the image grows and move with the tile size
instead.  ``--whole`` adds the ordinary whole-image path for sizes that fit.

Images: a real BCCD smear tiled over the canvas (``detect``, ``wbc``) or
synthetic HPA fields tiled over it (``hpa``).  Models: the built-in detector
when the zoo has one, else a random-init tiny one; ``hpa`` and ``wbc`` use
random-init networks (memory and time do not depend on the weights).

    python benchmarks/large_image_memory.py --task detect --sizes 2048 4096 8192
    python benchmarks/large_image_memory.py --task hpa --sizes 4096 20480 --tiles 1024 2048
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

import numpy as np

DATA = Path(os.environ.get("CELLCLASS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[6]))
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.tasks.base import TaskOptions
task, model, image, out, tile = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
whole = sys.argv[7] == "whole"
extra = {"tile": tile} if tile else {}
if len(sys.argv) > 8 and sys.argv[8]:
    extra["detector"] = sys.argv[8]
opts = TaskOptions(out=out, device="cpu", extra=extra)
import napari_cellclass.tasks.tiled as tiled, napari_cellclass.tasks.detect, napari_cellclass.tasks.blood  # noqa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.monotonic()
if whole:
    from napari_cellclass.tasks.base import task_function
    res = run_sync(task_function(task, "predict")(model, [image], opts))
    n = res.get("detections", res.get("cells"))
else:
    res = run_sync(tiled.predict_large(task, model, image, opts))
    n = res.get("objects", res.get("cells"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mib": base, "peak_mib": peak, "seconds": time.monotonic() - t0, "objects": n,
                  "tiles": res.get("tiles")}))
'''


def smear_source() -> np.ndarray:
    jpg = DATA / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
    if jpg.is_file():
        from skimage.io import imread

        return imread(jpg)[..., :3]
    from napari_cellclass.synth.blood import make_smear  # type: ignore[attr-defined]

    return make_smear(np.random.default_rng(0))["image"]


def hpa_sources() -> list[np.ndarray]:
    from napari_cellclass.synth.hpa import render_field

    return [np.moveaxis(render_field(np.random.default_rng(s), 512)[0], 0, -1) for s in range(4)]


def write_image(path: Path, size: int, task: str, sources) -> Path:
    from napari_cellclass.io.lazy import write_ome_zarr

    if task == "hpa":
        fields = sources
        h = w = fields[0].shape[0]

        def block(y0, y1, x0, x1):
            out = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
            yy = np.arange(y0, y1)
            xx = np.arange(x0, x1)
            for fy in np.unique(yy // h):
                for fx in np.unique(xx // w):
                    sy = yy[(yy // h) == fy]
                    sx = xx[(xx // w) == fx]
                    f = fields[int(fy * 7 + fx * 3) % len(fields)]
                    out[np.ix_(sy - y0, sx - x0)] = f[np.ix_(sy % h, sx % w)]
            return out
        return write_ome_zarr(path, size, size, 4, np.uint8, block, chunk=512)
    src = sources
    h, w = src.shape[:2]

    def block(y0, y1, x0, x1):
        return src[np.arange(y0, y1) % h][:, np.arange(x0, x1) % w]
    return write_ome_zarr(path, size, size, 3, np.uint8, block, chunk=512)


def model_for(task: str, folder: Path) -> tuple[str, str]:
    """(model spec, description)."""
    import torch

    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model

    torch.manual_seed(0)
    if task == "detect" or task == "wbc":
        from napari_cellclass import zoo

        det = zoo.default_model("detect")
        if task == "detect" and det:
            return det, f"built-in {det}"
        if task == "wbc":
            cls = zoo.default_model("wbc")
            if cls:
                return cls, f"built-in {cls} (detector {det})"
            cfg = {"num_classes": 4, "in_channels": 3, "width": 16, "layers": [1, 1, 1, 1]}
            p = save_checkpoint(folder / "wbc.safetensors", build_model("ibn_resnet34", **cfg), CheckpointMeta(
                task="wbc", arch="ibn_resnet34", class_names=["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"],
                in_channels=3, input_size=[96, 96], arch_config=cfg,
                normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 255.0}))
            return str(p), f"random-init small ibn_resnet34 (detector {det})"
        cfg = {"num_classes": 3, "min_size": 512, "max_size": 853}
        p = save_checkpoint(folder / "det.safetensors", build_model("fasterrcnn_tiny", **cfg), CheckpointMeta(
            task="detect", arch="fasterrcnn_tiny", class_names=["cell", "debris"], in_channels=3,
            input_size=[512, 853], arch_config=cfg, training={"pixel_scale": 1.0}))
        return str(p), "random-init fasterrcnn_tiny"
    from napari_cellclass.synth.hpa import HPA_CLASSES

    cfg = {"num_classes": 28, "in_channels": 4, "depth": 18, "width": 32, "pretrained": False}
    p = save_checkpoint(folder / "hpa.safetensors", build_model("resnet50_rgby", **cfg), CheckpointMeta(
        task="hpa", arch="resnet50_rgby", class_names=list(HPA_CLASSES), in_channels=4, input_size=[128, 128],
        arch_config=cfg, normalization={"mean": [0.1] * 4, "std": [0.2] * 4}, thresholds=[0.5] * 28))
    return str(p), "random-init ResNet-18 RGBY (128 px crops)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["detect", "wbc", "hpa"], default="detect")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--tiles", type=int, nargs="+", default=[1024])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole", action="store_true", help="also run the ordinary whole-image path (small sizes)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the images (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cellclass-large-"))
    work.mkdir(parents=True, exist_ok=True)
    model, described = model_for(args.task, work)
    sources = hpa_sources() if args.task == "hpa" else smear_source()
    det = ""
    print(f"task {args.task}; model {described}; {args.threads} thread(s); images in {work}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    rows = []
    for size in args.sizes:
        img = work / f"{args.task}_{size}.ome.zarr"
        if not img.exists():
            t0 = time.monotonic()
            write_image(img, size, args.task, sources)
            print(f"  wrote {img.name} in {time.monotonic() - t0:.0f} s", flush=True)
        runs = [("tiled", t) for t in args.tiles]
        if args.whole:
            runs.append(("whole", 0))
        for mode, tile in runs:
            out = work / f"out_{args.task}_{size}_{mode}_{tile}_{time.time_ns()}"
            image = img
            if mode == "whole":  # the ordinary path reads a plain image file
                from napari_cellclass.io.lazy import open_lazy

                arr = open_lazy(img).region(0, size, 0, size)
                image = work / f"{args.task}_{size}.png"
                if not image.exists():
                    from PIL import Image

                    Image.fromarray(arr[..., :3]).save(image)
                del arr
            cmd = [sys.executable, "-c", CHILD, args.task, model, str(image), str(out), str(tile),
                   str(args.threads), mode, det]
            r = subprocess.run(cmd, capture_output=True, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if r.returncode != 0:
                print(f"  {size} {mode}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update(size=size, mode=mode, tile=tile, image_mib=size * size * (4 if args.task == "hpa" else 3) / 2**20)
            rows.append(res)
            print(f"  {size} px {mode} {tile or ''}: peak {res['peak_mib']:.0f} MiB (after loading "
                  f"{res['base_mib']:.0f}), {res['seconds']:.0f} s, {res['objects']} objects", flush=True)
    print()
    print("| image (px) | pixels in memory if read whole (MiB) | path | tile | peak RSS (MiB) | RSS after loading (MiB) "
          "| peak - loaded (MiB) | seconds | objects |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} x {r['size']} | {r['image_mib']:.0f} | {r['mode']} | {r['tile'] or '-'} | "
              f"{r['peak_mib']:.0f} | {r['base_mib']:.0f} | {r['peak_mib'] - r['base_mib']:.0f} | "
              f"{r['seconds']:.0f} | {r['objects']} |")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "model": described, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
