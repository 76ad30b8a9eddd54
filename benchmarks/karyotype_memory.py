"""Peak memory (RSS) and time of spread segmentation vs image size, for good and bad input.

Each measurement runs in a fresh Python process that loads a prepared image from
an .npy file and segments it; the peak is that process's ``VmHWM`` (high-water
resident memory, reset by exec, unlike ``ru_maxrss`` which Linux carries over
from the parent), so it is the segmentation plus the interpreter and the image.

Cases: a synthetic spread drawn at the size (chromosomes scaled with it), a real
Tseng G-band spread enlarged to the size, an HPA fluorescence channel enlarged
(refused with a message), uniform noise, and a blank image (refused).

    python benchmarks/karyotype_memory.py [--sizes 512 1000 2000 3000 4000] [--cases ...]

The issue's bound: under 2 GB at 4000 x 4000 px, any input.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TSENG = DATA / "chromosomes" / "tseng2023_gband_spreads" / "images" / "103081.jpg"
HPA = DATA / "hpa" / "derived_kaggle_format_512" / "800_A6_1_green.png"
CASES = ("synthetic", "tseng", "hpa", "noise", "blank")

CHILD = r"""
import json, sys, time
import numpy as np
from napari_cellclass.errors import InputError
from napari_cellclass.karyotype.segment import segment_spread

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

img = np.load(sys.argv[1])
base = hwm()
t = time.monotonic()
try:
    out = f"{int(segment_spread(img).max())} objects"
except InputError as exc:
    out = "refused: " + str(exc)[:60]
peak = hwm()
print(json.dumps({"base_mb": base, "peak_mb": peak, "seconds": time.monotonic() - t, "result": out}))
"""


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    return (resize(img, (size, size), order=1, preserve_range=True, anti_aliasing=False)).astype(np.uint8)


def make_image(case: str, size: int, seed: int = 0) -> np.ndarray | None:
    rng = np.random.default_rng(seed)
    if case == "synthetic":
        from napari_cellclass.synth.chromosomes import make_spread

        return make_spread(seed, "46,XY", size=(size, size), scale=7.0 * size / 768)["image"]
    if case == "tseng":
        if not TSENG.is_file():
            return None
        from napari_cellclass.io.spread_reader import read_gray

        return _resize(read_gray(TSENG), size)
    if case == "hpa":
        if not HPA.is_file():
            return None
        from PIL import Image

        return _resize(np.asarray(Image.open(HPA)), size)
    if case == "noise":
        return rng.integers(0, 256, (size, size), dtype=np.uint8)
    if case == "blank":
        return np.full((size, size), 200, np.uint8)
    raise ValueError(case)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1000, 2000, 3000, 4000])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'case':10s} {'size':>6s} {'image MB':>9s} {'peak RSS MB':>12s} {'above start':>12s} {'s':>6s}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for size in args.sizes:
                img = make_image(case, size)
                if img is None:
                    print(f"{case:10s} {size:6d}  (data not found, skipped)")
                    continue
                path = Path(tmp) / "img.npy"
                np.save(path, img)
                mb = img.nbytes / 2**20
                del img
                proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{case:10s} {size:6d}  FAILED rc={proc.returncode}: {proc.stderr.strip()[-200:]}")
                    rows.append({"case": case, "size": size, "failed": proc.returncode})
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(case=case, size=size, image_mb=round(mb, 1))
                rows.append(r)
                print(f"{case:10s} {size:6d} {mb:9.1f} {r['peak_mb']:12.0f} {r['peak_mb'] - r['base_mb']:12.0f} "
                      f"{r['seconds']:6.1f}  {r['result']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    worst = max((r.get("peak_mb", 0) for r in rows), default=0)
    print(f"worst peak RSS: {worst:.0f} MB (bound: 2048 MB)")


if __name__ == "__main__":
    main()
