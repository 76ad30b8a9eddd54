"""Peak memory and time of the CLI on adversarial inputs, against the stated memory budget.

Builds each hostile input in a temporary folder (a 262 KB PNG declaring
16000 x 16000, PNG headers declaring 30000 x 30000 and 2**31 pixels, a 60 KB
strip-bomb TIFF declaring 60000 x 60000, a 640 x 480 noise "smear", a VOC box at
1e300 without ``<size>``, COCO files with a 400-digit integer and 100,000 levels of
nesting), runs the relevant ``cellclass`` command on it in a fresh process, and
prints one row per case: exit code, peak resident memory of that process
(``ru_maxrss`` of the child), wall time, the budget and the first stderr line.

    python benchmarks/memory_budget.py            # every case
    python benchmarks/memory_budget.py --only png-16000-detect strip-bomb-hpa

The builders are also used by ``tests/io/test_memory_budget.py`` and
``tests/io/test_hostile_readers.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- hostile files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_blank(path: Path, width: int, height: int, value: int = 0) -> Path:
    """A grayscale PNG of one value, compressed row by row (16000 x 16000 is ~250 KB, built in ~1 s)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * width  # filter byte "none" + pixels
    parts = []
    block = row * max(1, (1 << 22) // len(row))
    rows_per_block = len(block) // len(row)
    done = 0
    while done < height:
        n = min(rows_per_block, height - done)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
                           + _png_chunk(b"IEND", b""))
    return Path(path)


def png_header_only(path: Path, width: int, height: int, colour: int = 2) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (RGB by default) followed by one short row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                           + _png_chunk(b"IEND", b""))
    return Path(path)


def noise_png(path: Path, width: int = 640, height: int = 480, seed: int = 0) -> Path:
    """Uniform RGB noise: no cell anywhere, but edges everywhere (a candidate generator's worst case)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return Path(path)


def pattern_png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A genuine-looking RGB field (smooth dark blobs on a light ground, one 256 px patch repeated)."""
    from PIL import Image
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    patch = ndi.gaussian_filter(rng.random((256, 256)), 6)
    patch = (200 - 120 * (patch > np.quantile(patch, 0.8))).astype(np.uint8)
    reps = (-(-height // 256), -(-width // 256))
    gray = np.tile(patch, reps)[:height, :width]
    rgb = np.stack([gray, (gray * 0.8).astype(np.uint8), gray], axis=-1)
    Image.fromarray(rgb).save(path, compress_level=1)
    return Path(path)


def strip_bomb_tiff(path: Path, width: int = 60000, height: int = 60000, rows_per_strip: int = 16) -> Path:
    """A TIFF declaring ``width`` x ``height`` 8-bit pixels in strips that all point at ONE compressed block.

    60000 x 60000 with 16-row strips is 3750 strips: the strip tables take 30 KB and the
    shared deflate block under 1 KB, yet every strip decodes to 960 KB.
    """
    block = zlib.compress(b"\x00" * (width * rows_per_strip), 9)
    n = (height + rows_per_strip - 1) // rows_per_strip
    ntags = 10
    ifd = 8
    offsets_at = ifd + 2 + ntags * 12 + 4
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, n, offsets_at), (277, 3, 1, 1), (278, 4, 1, rows_per_strip), (279, 4, n, counts_at),
            (284, 3, 1, 1)]
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", ntags))
    for tag, typ, count, val in tags:
        value = struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val)
        out += struct.pack("<HHI", tag, typ, count) + value
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{n}I", *([data_at] * n))
    out += struct.pack(f"<{n}I", *([len(block)] * n))
    out += block
    Path(path).write_bytes(bytes(out))
    return Path(path)


def voc_absurd_box(folder: Path, n_images: int = 6) -> Path:
    """A small VOC detection set whose last annotation has ``xmax=1e300`` and no ``<size>``."""
    from PIL import Image

    folder = Path(folder)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (folder / "Annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for k in range(n_images):
        img = np.full((96, 96, 3), 230, np.uint8)
        img[20:50, 30:60] = rng.integers(60, 120, 3)
        Image.fromarray(img).save(folder / "JPEGImages" / f"img{k}.png")
        x1 = "1e300" if k == n_images - 1 else "60"
        size = "" if k == n_images - 1 else "<size><width>96</width><height>96</height><depth>3</depth></size>"
        (folder / "Annotations" / f"img{k}.xml").write_text(
            f"<annotation><filename>img{k}.png</filename>{size}<object><name>cell</name><bndbox>"
            f"<xmin>30</xmin><ymin>20</ymin><xmax>{x1}</xmax><ymax>50</ymax></bndbox></object></annotation>")
    return folder


def coco_with(folder: Path, kind: str) -> Path:
    """A COCO detection set (two 64 px images) whose JSON holds a 400-digit integer or 100,000 levels of nesting."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        img = np.full((64, 64, 3), 220, np.uint8)
        img[10:30, 10:30] = 90
        Image.fromarray(img).save(folder / f"im{k}.png")
    images = ",".join(f'{{"id": {k + 1}, "file_name": "im{k}.png", "width": 64, "height": 64}}' for k in range(2))
    big = "9" * 400
    if kind == "bigint":
        anns = f'[{{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, {big}, 20], "area": 400}}]'
        extra = ""
    elif kind == "deep":
        anns = '[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400}]'
        extra = ', "info": ' + "[" * 100_000 + "]" * 100_000
    else:
        raise ValueError(kind)
    (folder / "annotations.json").write_text(
        f'{{"images": [{images}], "annotations": {anns}, "categories": [{{"id": 1, "name": "cell"}}]{extra}}}')
    return folder


# ----------------------------------------------------------------------------- running the CLI

def run_measured(argv: list[str], timeout: float = 600.0, env: dict[str, str] | None = None) -> dict:
    """Run ``argv`` in a fresh process; its exit code, peak RSS (MiB, ``ru_maxrss``), wall seconds and stderr."""
    code = ("import resource, runpy, sys, json\n"
            "sys.argv = sys.argv[1:]\n"
            "rc = 0\n"
            "try:\n"
            "    from napari_cellclass.cli import main\n"
            "    rc = main(sys.argv[1:])\n"
            "finally:\n"
            "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "    sys.stderr.write('\\n@@peak_mib=%.0f\\n' % peak)\n"
            "sys.exit(rc)\n")
    t0 = time.monotonic()
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        p = subprocess.run([sys.executable, "-c", code, "cellclass", *argv], capture_output=True, text=True,
                           timeout=timeout, env=e)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    secs = time.monotonic() - t0
    peak = None
    lines = []
    for line in err.splitlines():
        if line.startswith("@@peak_mib="):
            peak = float(line.split("=", 1)[1])
        elif line.strip():
            lines.append(line.strip())
    if peak is None:  # killed by a signal: the child's peak as the kernel saw it
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rc": rc, "peak_mib": peak, "seconds": secs, "stderr": lines}


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (cellclass argv, what is expected); files are built lazily by :func:`build`."""
    out = str(tmp / "out")
    return {
        "png-16000-detect": (["predict", "detect", "bccd-blood-cells-centernet", str(tmp / "blank16000.png"),
                              "--out", out + "1", "--device", "cpu"], "refused"),
        "png-16000-karyotype": (["karyotype", str(tmp / "blank16000.png"), "--model", "gricol-gband-2labs", "--out",
                                 out + "2", "--device", "cpu"], "refused"),
        "png-header-30000-wbc": (["predict", "wbc", "bccd-wbc-ibnresnet34", str(tmp / "hdr30000.png"),
                                  "--out", out + "3", "--device", "cpu"], "refused"),
        "png-header-2^31-detect": (["predict", "detect", "bccd-blood-cells-centernet", str(tmp / "hdr2e31.png"),
                                    "--out", out + "4", "--device", "cpu"], "refused"),
        "noise-640x480-wbc": (["predict", "wbc", "bccd-wbc-ibnresnet34", str(tmp / "noise.png"),
                               "--out", out + "5", "--device", "cpu"], "result or refused"),
        "strip-bomb-tiff-wbc": (["predict", "wbc", "bccd-wbc-ibnresnet34", str(tmp / "bomb.tif"), "--out", out + "6",
                                 "--device", "cpu"], "refused"),
        "pattern-7000-detect (near the limit)": (["predict", "detect", "bccd-blood-cells-centernet",
                                                  str(tmp / "pattern7000.png"), "--out", out + "11", "--device",
                                                  "cpu"], "result"),
        "strip-bomb-tiff-detect": (["predict", "detect", "bccd-blood-cells-centernet", str(tmp / "bomb.tif"),
                                    "--out", out + "7", "--device", "cpu"], "refused"),
        "voc-1e300-train-detect": (["train", "detect", str(tmp / "voc"), "--out", out + "8", "--device", "cpu",
                                    "--quick", "--epochs", "1"], "error naming the file"),
        "coco-400-digits-train": (["train", "detect", str(tmp / "coco_big"), "--out", out + "9", "--device", "cpu",
                                   "--quick", "--epochs", "1"], "error naming the file"),
        "coco-deep-train": (["train", "detect", str(tmp / "coco_deep"), "--out", out + "10", "--device", "cpu",
                             "--quick", "--epochs", "1"], "error naming the file"),
    }


def build(tmp: Path) -> None:
    png_blank(tmp / "blank16000.png", 16000, 16000)
    png_header_only(tmp / "hdr30000.png", 30000, 30000)
    png_header_only(tmp / "hdr2e31.png", 1 << 16, 1 << 15)
    noise_png(tmp / "noise.png")
    strip_bomb_tiff(tmp / "bomb.tif", rows_per_strip=8)
    pattern_png(tmp / "pattern7000.png", 7000, 7000)
    voc_absurd_box(tmp / "voc")
    coco_with(tmp / "coco_big", "bigint")
    coco_with(tmp / "coco_deep", "deep")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    from napari_cellclass.budget import describe_budget, memory_budget

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        build(tmp)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        rows = []
        for name, (cmd, expect) in cases(tmp).items():
            if args.only and name not in args.only:
                continue
            r = run_measured(cmd, timeout=args.timeout)
            first = next((ln for ln in r["stderr"] if ln.startswith("cellclass")), "-")  # not progress lines
            rows.append({"case": name, "expect": expect, **{k: r[k] for k in ("rc", "peak_mib", "seconds")},
                         "within": r["peak_mib"] is not None and r["peak_mib"] * 2**20 <= memory_budget(),
                         "stderr": first.replace(str(tmp) + "/", "")[:150]})
            print(json.dumps(rows[-1]), flush=True)
        print(f"\nbudget: {describe_budget()}; input sizes: "
              + ", ".join(f"{k} {v / 1024:.0f} KB" for k, v in sorted(sizes.items())))
        print("\n| case | exit | peak RSS (MiB) | wall (s) | within budget | first stderr line |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['rc']} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | "
                  f"{'yes' if r['within'] else '**no**'} | {r['stderr'].replace('|', '/')} |")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
