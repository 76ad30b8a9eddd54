"""Bad input, generated: every reader either declines (None) or raises a CellClassError naming the file.

Targets are every reader/loader in the tree (a module that fails to import fails the suite):
layer_reader, hpa_reader, spread_reader, annotations (+ annotation_reader), the dataset
loaders (hpa/wbc/chromosome/detection), recipes and the checkpoint load paths.  Cases:
truncated or bit-flipped files, random bytes, wrong bit depth, channel files of different
sizes, malformed/empty XML and JSON, boxes outside the image or inverted or non-finite,
missing image files, huge declared dimensions and page counts (memory bombs), file names
leaving the data set, hostile recipe files (aliases, unknown keys, wrong types),
checkpoint metadata out of range, 12/16-bit and float images (rescaled, never clipped),
a checkpoint from another task.  For every case: a CellClassError naming the input or a
correct result; peak allocation under ``PEAK_BOUND_MB`` (tracemalloc); nothing written
next to the input.  At least ``MIN_CASES`` cases run per full run; the number is printed
at the end (``-s``).
"""
from __future__ import annotations

import importlib
import io
import json
import os
import struct
import tempfile
import tracemalloc
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from napari_cellclass.errors import CellClassError

# generate only (no shrinking: a raw exception is recorded with its case, not minimised), fixed seed
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CASES = {"n": 0}
RAW: list[str] = []  # raw exceptions seen (reported in the assertion message)
#: Peak Python/numpy allocation allowed for one case (a memory bomb shows up here, not as an OOM).
PEAK_BOUND_MB = 192
#: A full run of this module must try at least this many cases (issue 15).
MIN_CASES = 600


def _mod(name: str):
    """A plugin module; an ImportError fails the test (a reader that cannot import is a bug)."""
    return importlib.import_module(f"napari_cellclass.{name}")


# ----------------------------------------------------------------------------- the check

def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _names_file(exc: CellClassError, paths: list[Path], root: Path) -> bool:
    """The message names the input, a file next to it (a sidecar, a channel) or its folder."""
    text = str(exc)
    if str(root) in text or (exc.path is not None and (exc.path == root or root in exc.path.parents)):
        return True
    for p in paths:
        p = Path(p)
        if p.name and p.name in text:
            return True
        if exc.path is not None and (exc.path == p or exc.path in p.parents or p in exc.path.parents):
            return True
    return False


def expect_clean(label: str, fn: Callable[[], Any], root: Path, paths: list[Path]) -> Any:
    """Run ``fn``: OK, or CellClassError naming one of ``paths``; nothing written under ``root``."""
    CASES["n"] += 1
    before = _snapshot(root)
    result = None
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except CellClassError as exc:
        if not _names_file(exc, paths, root):
            RAW.append(f"{label}: message does not name the file: {exc}")
        elif "Traceback" in str(exc) or "weights_only" in str(exc) or "pip install" in str(exc):
            RAW.append(f"{label}: message carries a library's internals: {exc}")
    except Exception as exc:  # noqa: BLE001 - this is what the suite hunts for
        RAW.append(f"{label}: raw {type(exc).__name__}: {str(exc)[:200]} [input: {[str(p) for p in paths]}]")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if not tracing:
            tracemalloc.stop()
    if peak > PEAK_BOUND_MB << 20:
        RAW.append(f"{label}: peak allocation {peak >> 20} MB over {PEAK_BOUND_MB} MB [input: {[str(p) for p in paths]}]")
    assert _snapshot(root) == before, f"{label}: files were written"
    return result


def run_reader(label: str, get_reader: Callable, path: Path, root: Path) -> None:
    """npe2 contract: get_reader never raises; its reader gives layers or a CellClassError."""
    reader = expect_clean(f"{label}.get_reader", lambda: get_reader(str(path)), root, [path])
    if reader is not None:
        layers = expect_clean(f"{label}.read", lambda: reader(str(path)), root, [path])
        if layers is not None:
            assert isinstance(layers, list)


def _no_new_raw(fn: Callable[[], None]) -> None:
    start = len(RAW)
    fn()
    new = sorted(set(RAW[start:]))
    assert not new, f"{len(new)} input(s) gave something other than None or a CellClassError:\n" + "\n".join(new[:15])


def all_readers() -> list[tuple[str, Callable]]:
    out = []
    for name in ("io.layer_reader", "io.hpa_reader", "io.spread_reader", "io.annotation_reader"):
        out.append((name, _mod(name).get_reader))
    return out


def run_all_readers(path: Path, root: Path) -> None:
    for name, gr in all_readers():
        run_reader(name, gr, path, root)


# ----------------------------------------------------------------------------- seed files

def _png_bytes(arr: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", arr, extension=".png")


def _tif_bytes(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def _jpg_bytes(arr: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", arr, extension=".jpg")


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _seed_files() -> dict[str, bytes]:
    """Valid files of every kind we read (bytes), produced by our own code where possible."""
    from napari_cellclass.io import writers as W

    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    out = {
        "x_red.png": _png_bytes(g8),
        "x_green.tif": _tif_bytes((g8.astype(np.uint16) * 200)),
        "spread.jpg": _jpg_bytes(np.stack([g8] * 3, -1)),
    }
    rect = np.array([[1.0, 2.0], [1.0, 8.0], [5.0, 8.0], [5.0, 2.0]])
    poly = np.array([[1.0, 1.0], [4.0, 2.5], [2.0, 6.0]])
    import pandas as pd

    feats = pd.DataFrame({"label": ["a", "b"], "score": [0.5, 0.7]})
    lab = np.zeros((12, 10), np.uint16)
    lab[2:5, 2:6] = 3
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        W.write_shapes_voc(str(d / "a.xml"), [rect, rect + 3], {"shape_type": "rectangle", "features": feats,
                                                               "metadata": {"image_shape": (24, 20)}})
        W.write_shapes_coco(str(d / "a.json"), [rect, poly], {"shape_type": ["rectangle", "polygon"],
                                                              "features": feats, "metadata": {"image_shape": (24, 20)}})
        W.write_shapes_csv(str(d / "a.csv"), [rect, poly], {"shape_type": ["rectangle", "polygon"], "features": feats})
        W.write_labels_tiff(str(d / "a.tif"), lab, {"features": pd.DataFrame({"index": [3], "class": ["x"]})})
        for name in ("a.xml", "a.json", "a.csv", "a.tif"):
            out["ours_" + name] = (d / name).read_bytes()
    return out


_SEEDS: dict[str, bytes] = {}


def seeds() -> dict[str, bytes]:
    if not _SEEDS:
        _SEEDS.update(_seed_files())
    return _SEEDS


def mutate(data: bytes, how: str, pos: float, junk: bytes) -> bytes:
    i = int(pos * len(data))
    if how == "truncate":
        return data[:i]
    if how == "flip":
        b = bytearray(data)
        for k, j in enumerate(junk[:8]):
            b[(i + k * 7919) % len(b)] ^= j | 1
        return bytes(b)
    if how == "splice":
        return data[:i] + junk + data[i:]
    if how == "random":
        return junk
    return b""  # empty


MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "splice", "random", "empty"]),
                     st.floats(0.0, 1.0), st.binary(min_size=0, max_size=64))

# where each seed goes, so the right readers claim it (HPA set name, spread + sidecar, our files)
PLACEMENT = {
    "x_red.png": ["x_red.png"],
    "x_green.tif": ["x_green.tif"],
    "spread.jpg": ["spread.jpg"],
    "ours_a.xml": ["spread.xml", "a.xml"],
    "ours_a.json": ["a.json"],
    "ours_a.csv": ["a.csv"],
    "ours_a.tif": ["a.tif"],
}


# ----------------------------------------------------------------------------- 1. damaged files, every reader

@FUZZ
@given(kind=st.sampled_from(sorted(PLACEMENT)), mutation=MUTATION)
def _fuzz_damaged_files_every_reader(kind, mutation):
    data = mutate(seeds()[kind], *mutation)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        # a plausible neighbourhood: a complete HPA set and a spread with its sidecar
        for c in ("red", "green", "blue", "yellow"):
            (root / f"x_{c}.png").write_bytes(seeds()["x_red.png"])
        (root / "spread.jpg").write_bytes(seeds()["spread.jpg"])
        (root / "spread.xml").write_bytes(seeds()["ours_a.xml"])
        targets = []
        for name in PLACEMENT[kind]:
            if name == "x_green.tif":
                (root / "x_green.png").unlink()
            (root / name).write_bytes(data)
            targets.append(root / name)
        for t in targets:
            run_all_readers(t, root)
            _direct_parsers(t, root)
        run_all_readers(root, root)  # dropping the whole folder


def _direct_parsers(path: Path, root: Path) -> None:
    ann = _mod("io.annotations")
    if path.suffix == ".xml":
        expect_clean("annotations.read_voc", lambda: ann.read_voc(path), root, [path])
    if path.suffix == ".json":
        expect_clean("annotations.read_coco", lambda: ann.read_coco(path), root, [path])


# ----------------------------------------------------------------------------- 2. VOC with hostile values

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-10**12, 10**12).map(str),
    st.sampled_from(["", " ", "abc", "1e309", "-0", "0x10", "None", "5,5"]),
)


@FUZZ
@given(box=st.lists(NUMBERS, min_size=4, max_size=4), size=st.lists(NUMBERS, min_size=2, max_size=2),
       drop=st.sets(st.sampled_from(["name", "xmin", "ymax", "size", "bndbox", "filename"]), max_size=2),
       name=st.text(max_size=6))
def _fuzz_voc_hostile_values(box, size, drop, name):
    def tag(t: str, text: str) -> str:
        return "" if t in drop else f"<{t}>{text}</{t}>"

    from xml.sax.saxutils import escape

    bb = "".join(tag(k, v) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    xml = ("<annotation>" + tag("filename", "spread.jpg")
           + tag("size", tag("width", size[0]) + tag("height", size[1]) + "<depth>3</depth>")
           + "<object>" + tag("name", escape(name)) + tag("bndbox", bb) + "</object></annotation>")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "spread.jpg").write_bytes(seeds()["spread.jpg"])
        for fname in ("spread.xml", "boxes.xml"):
            p = root / fname
            p.write_text(xml, encoding="utf-8")
            run_all_readers(p, root)
            _direct_parsers(p, root)
        run_all_readers(root / "spread.jpg", root)
        _dataset_loaders(root, root)


# ----------------------------------------------------------------------------- 3. COCO with hostile structure

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
JSON_ANY = st.recursive(JSON_LEAF, lambda c: st.one_of(st.lists(c, max_size=4),
                                                      st.dictionaries(st.text(max_size=4), c, max_size=4)),
                        max_leaves=12)
BBOX = st.one_of(st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 50)), min_size=0, max_size=5), JSON_ANY)


@FUZZ
@given(bbox=BBOX, seg=st.one_of(JSON_ANY, st.lists(st.lists(st.floats(-50, 50), max_size=9), max_size=2)),
       width=st.one_of(st.integers(-5, 10**9), JSON_LEAF), cat=JSON_LEAF,
       image_id=st.sampled_from([1, 2, "1", None]), garbage=JSON_ANY, whole=st.booleans())
def _fuzz_coco_hostile_structure(bbox, seg, width, cat, image_id, garbage, whole):
    doc: Any = {
        "images": [{"id": 1, "file_name": "spread.jpg", "width": width, "height": 24}],
        "categories": [{"id": 1, "name": "a"}, {"id": cat, "name": "b"}],
        "annotations": [{"id": 1, "image_id": image_id, "category_id": 1, "bbox": bbox, "segmentation": seg}],
    }
    if whole:
        doc = garbage if not isinstance(garbage, dict) else {**garbage, "annotations": garbage.get("x", [])}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "spread.jpg").write_bytes(seeds()["spread.jpg"])
        for fname in ("spread.json", "ann.json"):
            p = root / fname
            p.write_text(json.dumps(doc), encoding="utf-8")
            run_all_readers(p, root)
            _direct_parsers(p, root)
        run_all_readers(root / "spread.jpg", root)
        _dataset_loaders(root / "ann.json", root)


# ----------------------------------------------------------------------------- 4. HPA sets: sizes, depths, missing

CHANNEL = st.tuples(
    st.sampled_from(["png8", "png16", "tif8", "tif16", "tif_float", "tif_int32", "rgb_jpg", "stack3d", "missing",
                     "corrupt", "huge_png"]),
    st.sampled_from([(16, 16), (16, 17), (9, 16)]),
)


def _channel_file(kind: str, shape: tuple[int, int], stem: str, root: Path) -> Path | None:
    rng = np.random.default_rng(len(stem))
    a8 = rng.integers(0, 255, shape, dtype=np.uint8)
    ext, data = {
        "png8": (".png", lambda: _png_bytes(a8)),
        "png16": (".png", lambda: _png_bytes(a8.astype(np.uint16) * 257)),
        "tif8": (".tif", lambda: _tif_bytes(a8)),
        "tif16": (".tif", lambda: _tif_bytes(a8.astype(np.uint16) * 257)),
        "tif_float": (".tif", lambda: _tif_bytes(a8.astype(np.float32) / 255)),
        "tif_int32": (".tif", lambda: _tif_bytes(a8.astype(np.int32) - 100)),
        "rgb_jpg": (".jpg", lambda: _jpg_bytes(np.stack([a8, a8 // 2, a8 // 3], -1))),
        "stack3d": (".tif", lambda: _tif_bytes(np.stack([a8] * 5))),
        "corrupt": (".png", lambda: _png_bytes(a8)[:40]),
        "huge_png": (".png", lambda: _huge_png(100_000, 100_000)),
        "missing": (None, None),
    }[kind]
    if ext is None:
        return None
    p = root / f"{stem}{ext}"
    p.write_bytes(data())
    return p


@FUZZ
@given(chans=st.lists(CHANNEL, min_size=4, max_size=4))
def _fuzz_hpa_sets_sizes_depths_missing(chans):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        files = [p for (kind, shape), c in zip(chans, ("red", "green", "blue", "yellow"))
                 if (p := _channel_file(kind, shape, f"s1_{c}", root)) is not None]
        (root / "train.csv").write_text("Id,Target\ns1,0 5\n")
        for p in files:
            run_all_readers(p, root)
        run_all_readers(root, root)
        hd = _mod("io.hpa_dataset")
        expect_clean("hpa_dataset.load_set", lambda: hd.load_set(root, "s1"), root, [root, *files])


# ----------------------------------------------------------------------------- 5. our own formats, hostile metadata

@FUZZ
@given(desc=st.one_of(JSON_ANY, st.fixed_dictionaries({
    "marker": st.just("napari-cellclass"), "kind": st.sampled_from(["labels", "shapes", 3]),
    "shape": st.one_of(st.just([12, 10]), st.lists(st.integers(-3, 10**7), max_size=4), JSON_LEAF),
    "dtype": st.sampled_from(["uint16", "float32", "bogus", "object", "int8"]),
    "features": st.one_of(JSON_ANY, st.just({"columns": [{"name": "a", "dtype": "int64", "values": [1, 2]}],
                                             "length": 1})),
})), pixels=st.sampled_from(["uint16", "float32", "rgb"]))
def _fuzz_our_tiff_hostile_description(desc, pixels):
    import tifffile

    arr = {"uint16": np.ones((12, 10), np.uint16), "float32": np.ones((12, 10), np.float32),
           "rgb": np.ones((12, 10, 3), np.uint8)}[pixels]
    text = json.dumps(desc) if not isinstance(desc, dict) else json.dumps(desc)
    if "napari-cellclass" not in text:
        text = '{"marker":"napari-cellclass","kind":"labels","x":' + text + "}"
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / "a_red.tif"  # also looks like an HPA channel: both readers must behave
        tifffile.imwrite(p, arr, description=text, metadata=None)
        run_all_readers(p, root)


@FUZZ
@given(first=st.one_of(st.just(None), st.text(max_size=30)), header=st.text(max_size=30),
       row=st.lists(st.text(max_size=12), max_size=5))
def _fuzz_our_csv_hostile_rows(first, header, row):
    import csv as _csv

    good = seeds()["ours_a.csv"].decode().splitlines()
    lines = list(good)
    if first is not None:
        lines[0] = lines[0][: len(lines[0]) // 2] + first
    if header:
        lines[1] = header
    buf = io.StringIO()
    _csv.writer(buf, lineterminator="\n").writerow(row)
    lines.append(buf.getvalue().rstrip("\n"))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / "a.csv"
        p.write_text("\n".join(lines), encoding="utf-8")
        run_all_readers(p, root)
        hd = _mod("io.hpa_dataset")
        expect_clean("hpa_dataset.read_labels", lambda: hd.read_labels(p), root, [p])
        wd = _mod("io.wbc_dataset")
        expect_clean("wbc_dataset.find_records", lambda: wd.find_records(p), root, [p])


@FUZZ
@given(shape=st.lists(st.integers(0, 10**9), min_size=1, max_size=4),
       dtype=st.sampled_from(["<u2", "<f4", "|b1", "<i8", "bogus"]),
       axes=st.integers(0, 4), chunk=st.sampled_from(["ok", "garbage", "missing", "short"]),
       attrs_bad=st.booleans())
def _fuzz_our_zarr_hostile_metadata(shape, dtype, axes, chunk, attrs_bad):
    from napari_cellclass.io.writers import write_labels_zarr

    lab = np.zeros((12, 10), np.uint16)
    lab[3:6, 2:4] = 2
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        z = root / "cells.zarr"
        write_labels_zarr(str(z), lab, {})
        meta = json.loads((z / "0" / ".zarray").read_text())
        if shape[0] % 3:  # keep the real shape sometimes, so chunk damage is reached
            meta["shape"] = shape
            meta["chunks"] = [min(max(1, s), 64) for s in shape]
        meta["dtype"] = dtype
        (z / "0" / ".zarray").write_text(json.dumps(meta))
        attrs = json.loads((z / ".zattrs").read_text())
        attrs["multiscales"][0]["axes"] = attrs["multiscales"][0]["axes"][:axes]
        if attrs_bad:
            attrs["napari-cellclass"]["features"] = {"columns": "nope"}
        (z / ".zattrs").write_text(json.dumps(attrs))
        chunk_file = z / "0" / "0" / "0"
        if chunk == "garbage":
            chunk_file.write_bytes(b"\x00garbage" * 3)
        elif chunk == "missing":
            chunk_file.unlink()
        elif chunk == "short":
            chunk_file.write_bytes(chunk_file.read_bytes()[:10])
        run_all_readers(z, root)


# ----------------------------------------------------------------------------- 6. dataset loaders

def _dataset_loaders(path: Path, root: Path) -> None:
    dd = _mod("io.detection_dataset")
    ds = expect_clean("detection_dataset.load_dataset", lambda: dd.load_dataset(path), root, [path])
    if ds is not None:
        for i in range(len(ds)):
            expect_clean("detection_dataset.image", lambda: ds.image(i), root, [path])
    cd = _mod("io.chromosome_dataset")
    if path.is_dir():
        samples = expect_clean("chromosome_dataset.scan_dataset", lambda: cd.scan_dataset(path), root, [path])
        for s in samples or []:
            expect_clean("chromosome_dataset.load_crop", lambda: cd.load_crop(s), root, [path, s.path])


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(["EOSINOPHIL", "NEUTROPHIL", "1", "X", "weird", "cell1"]),
                                st.sampled_from(["ok.jpeg", "ok.png", "bad.jpeg", "empty.png", "huge.png",
                                                 "cell1 21a.bmp", "cell2 7.bmp"])),
                      min_size=0, max_size=4),
       table=st.one_of(st.none(), st.text(max_size=60), st.just("image,category,xmin,ymin,xmax,ymax\n"
                                                              "nothere.jpg,NEUTROPHIL,5,5,1,1\n")))
def _fuzz_dataset_folders(files, table):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        rgb = np.full((20, 20, 3), 128, np.uint8)
        content = {"ok": _jpg_bytes(rgb), "bad": b"\xff\xd8garbage", "empty": b"", "huge": _huge_png(90_000, 90_000),
                   "cell1 21a": _png_bytes(rgb), "cell2 7": b"BMbad"}
        for folder, fname in files:
            (root / folder).mkdir(exist_ok=True)
            stem = fname.rsplit(".", 1)[0]
            (root / folder / fname).write_bytes(content.get(stem, content["ok"]) if stem != "ok" or True else b"")
        if table is not None:
            (root / "wbc_labels.csv").write_text(table, encoding="utf-8", errors="replace")
        wd = _mod("io.wbc_dataset")
        recs = expect_clean("wbc_dataset.find_records", lambda: wd.find_records(root), root, [root])
        if recs:
            expect_clean("wbc_dataset.load_crops", lambda: wd.load_crops(recs, 16), root,
                         [root, *[r.path for r in recs]])
        _dataset_loaders(root, root)


def _plain_missing_paths_and_non_utf8():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ghost = root / "nothere"
        for name, gr in all_readers():
            for suffix in ("", ".xml", ".json", ".tif", ".csv", ".zarr", "_red.png"):
                run_reader(name, gr, Path(str(ghost) + suffix), root)
        bad = root / "train.csv"
        bad.write_bytes(b"Id,Target\n\xff\xfe\x00bad,1\n")
        hd = _mod("io.hpa_dataset")
        expect_clean("hpa_dataset.read_labels(non-UTF-8)", lambda: hd.read_labels(bad), root, [bad])
        for loader in ("wbc_dataset.find_records", "chromosome_dataset.scan_dataset", "detection_dataset.load_dataset"):
            fn = getattr(_mod("io." + loader.split(".")[0]), loader.split(".")[1])
            expect_clean(loader, lambda fn=fn: fn(ghost), root, [ghost])
        ann = _mod("io.annotations")
        expect_clean("read_voc(missing)", lambda: ann.read_voc(ghost.with_suffix(".xml")), root, [ghost])
        expect_clean("read_coco(missing)", lambda: ann.read_coco(ghost.with_suffix(".json")), root, [ghost])


def _plain_huge_declared_spread_image():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        img = root / "spread.png"
        img.write_bytes(_huge_png(60_000, 60_000))
        (root / "spread.xml").write_bytes(seeds()["ours_a.xml"])
        run_all_readers(img, root)


# ----------------------------------------------------------------------------- 7. checkpoints

def _tiny_checkpoint(path: Path, task: str = "wbc") -> Path:
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model

    model = build_model("tiny_cnn", in_channels=3, num_classes=2, width=4)
    meta = CheckpointMeta(task=task, arch="tiny_cnn", class_names=["a", "b"], in_channels=3, input_size=[16, 16],
                          arch_config={"in_channels": 3, "num_classes": 2, "width": 4})
    return save_checkpoint(path, model, meta)


_CKPT: dict[str, bytes] = {}


def _ckpt_bytes() -> bytes:
    if not _CKPT:
        with tempfile.TemporaryDirectory() as d:
            _CKPT["b"] = _tiny_checkpoint(Path(d) / "m.safetensors").read_bytes()
    return _CKPT["b"]


def _load_all(p: Path, root: Path, task: str = "wbc", in_channels: int | None = 3) -> None:
    from napari_cellclass.engine import checkpoint as C

    expect_clean("checkpoint.read_meta", lambda: C.read_meta(p), root, [p])
    expect_clean("checkpoint.load_checkpoint", lambda: C.load_checkpoint(p, task=task), root, [p])
    expect_clean("checkpoint.build_from_checkpoint",
                 lambda: C.build_from_checkpoint(p, task=task, in_channels=in_channels), root, [p])


@FUZZ
@given(mutation=MUTATION)
def _fuzz_checkpoint_damaged(mutation):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / "m.safetensors"
        p.write_bytes(mutate(_ckpt_bytes(), *mutation))
        _load_all(p, root)


META_FIELD = st.sampled_from(["task", "arch", "class_names", "in_channels", "input_size", "arch_config",
                              "thresholds", "format", "format_version"])


@FUZZ
@given(field=META_FIELD, value=JSON_ANY, drop=st.booleans())
def _fuzz_checkpoint_hostile_metadata(field, value, drop):
    from safetensors.torch import load_file, save_file

    from napari_cellclass.engine.checkpoint import META_KEY

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        src = _tiny_checkpoint(root / "src.safetensors")
        from safetensors import safe_open

        with safe_open(str(src), framework="pt") as fh:
            header = dict(fh.metadata())
        meta = json.loads(header[META_KEY])
        if drop:
            meta.pop(field, None)
        else:
            meta[field] = value
        header[META_KEY] = json.dumps(meta)
        p = root / "m.safetensors"
        save_file(load_file(str(src)), str(p), metadata=header)
        src.unlink()
        _load_all(p, root)


def _plain_checkpoint_from_another_task():
    from napari_cellclass.errors import CheckpointError

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = _tiny_checkpoint(root / "wbc.safetensors", task="wbc")
        from napari_cellclass.engine.checkpoint import build_from_checkpoint

        CASES["n"] += 1
        with pytest.raises(CheckpointError, match="wbc") as info:
            build_from_checkpoint(p, task="hpa", in_channels=4)
        assert p.name in str(info.value)
        _load_all(p, root, task="karyotype", in_channels=4)


# ----------------------------------------------------------------------------- 8. memory bombs: declared sizes

def _tiny_tiff(width: int, height: int, pages: int = 1, bits: int = 8) -> bytes:
    """A TIFF declaring ``pages`` x ``height`` x ``width`` with ~64 bytes of deflated data per page."""
    data = zlib.compress(b"\x00" * 64)
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for k in range(pages):
        strip = len(out) + 2 + 11 * 12 + 4
        tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 8), (262, 3, 1), (273, 4, strip),
                (277, 3, 1), (278, 4, height), (279, 4, len(data)), (284, 3, 1), (339, 3, 1)]
        out += struct.pack("<H", len(tags))
        for tag, typ, val in tags:
            out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
        out += struct.pack("<I", 0 if k == pages - 1 else strip + len(data)) + data
    return bytes(out)


SMALL_BUDGET = 400_000  # pixels: decoding what passes stays cheap


@FUZZ
@given(width=st.integers(1, 200_000), height=st.integers(1, 200_000), pages=st.integers(1, 4),
       bits=st.sampled_from([8, 16]), fmt=st.sampled_from(["tif", "png"]),
       name=st.sampled_from(["x_red", "spread", "cell"]))
def _fuzz_declared_size_bombs(width, height, pages, bits, fmt, name):
    from napari_cellclass.io import limits

    old = os.environ.get(limits.ENV_MAX_PIXELS)
    os.environ[limits.ENV_MAX_PIXELS] = str(SMALL_BUDGET)
    try:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            p = root / f"{name}.{fmt}"
            p.write_bytes(_tiny_tiff(width, height, pages, bits) if fmt == "tif" else _huge_png(width, height))
            fits = width * height * (pages if fmt == "tif" else 1) <= SMALL_BUDGET
            arr = expect_clean("limits.read_image", lambda: limits.read_image(p), root, [p])
            if arr is not None:  # accepted: only when it fits, and then exactly the declared image
                ok = fits and pages == 1 and arr.shape[:2] == (height, width)
                if not ok:
                    RAW.append(f"read_image accepted {width}x{height}x{pages} ({fmt}) as {arr.shape}")
            for label, fn in _image_loaders(p):
                expect_clean(label, fn, root, [p])
            run_all_readers(p, root)
    finally:
        if old is None:
            os.environ.pop(limits.ENV_MAX_PIXELS, None)
        else:
            os.environ[limits.ENV_MAX_PIXELS] = old


def _image_loaders(p: Path) -> list[tuple[str, Callable]]:
    out = []
    for mod, fn in (("io.wbc_dataset", "read_rgb"), ("io.detection_dataset", "read_image"),
                    ("io.spread_reader", "read_gray"), ("io.chromosome_dataset", "read_gray8"),
                    ("io.hpa_reader", "read_channel")):
        out.append((f"{mod}.{fn}", (lambda f=getattr(_mod(mod), fn): f(p))))
    return out


@FUZZ
@given(width=st.one_of(st.integers(-5, 300_000), st.just(100_000)), height=st.integers(0, 300_000),
       polygon=st.booleans(), fmt=st.sampled_from(["voc", "coco", "coco_rle"]))
def _fuzz_annotation_declared_sizes(width, height, polygon, fmt):
    from napari_cellclass.io import limits

    old = os.environ.get(limits.ENV_MAX_PIXELS)
    os.environ[limits.ENV_MAX_PIXELS] = str(SMALL_BUDGET)
    try:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            if fmt == "voc":
                p = root / "a.xml"
                poly = "<polygon><x1>1</x1><y1>1</y1><x2>9</x2><y2>1</y2><x3>9</x3><y3>9</y3></polygon>" if polygon else ""
                p.write_text(f"<annotation><filename>a.png</filename><size><width>{width}</width><height>{height}"
                             f"</height></size><object><name>c</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                             f"<xmax>9</xmax><ymax>9</ymax></bndbox>{poly}</object></annotation>")
            else:
                seg: Any = [[1, 1, 9, 1, 9, 9], [2, 2, 5, 2, 5, 5]] if polygon else []
                if fmt == "coco_rle":
                    seg = {"size": [height, width], "counts": [0, 3]}
                p = root / "a.json"
                p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
                                         "categories": [{"id": 1, "name": "c"}],
                                         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8],
                                                          "segmentation": seg}]}))
            run_all_readers(p, root)
            _direct_parsers(p, root)
    finally:
        if old is None:
            os.environ.pop(limits.ENV_MAX_PIXELS, None)
        else:
            os.environ[limits.ENV_MAX_PIXELS] = old


# ----------------------------------------------------------------------------- 9. file names leaving the data set

NAME_PART = st.sampled_from(["..", ".", "a", "img.png", "", "~", "C:", "\\", "/", "sub", "..\\.."])


@FUZZ
@given(parts=st.lists(NAME_PART, min_size=1, max_size=5), sep=st.sampled_from(["/", "\\"]),
       fmt=st.sampled_from(["voc", "coco"]))
def _fuzz_annotation_paths(parts, sep, fmt):
    name = sep.join(parts) or "img.png"
    with tempfile.TemporaryDirectory() as d:
        top = Path(d)
        root = top / "data"
        (root / "sub").mkdir(parents=True)
        outside = _png_bytes(np.zeros((12, 10, 3), np.uint8))
        for q in (top / "img.png", root / "img.png", root / "sub" / "img.png"):
            q.write_bytes(outside)
        if fmt == "voc":
            from xml.sax.saxutils import escape

            p = root / "a.xml"
            p.write_text(f"<annotation><filename>{escape(name)}</filename><size><width>10</width><height>12</height>"
                         "</size><object><name>c</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                         "<ymax>5</ymax></bndbox></object></annotation>", encoding="utf-8")
        else:
            p = root / "a.json"
            p.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "width": 10, "height": 12}],
                                     "categories": [{"id": 1, "name": "c"}],
                                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}))
        ds = expect_clean("detection_dataset.load_dataset(paths)", lambda: _load(root if fmt == "voc" else p), top, [p])
        for item in getattr(ds, "items", []):
            if item.image_path is not None:
                resolved = os.path.normpath(os.path.join(str(root), str(item.image_path)))
                if not resolved.startswith(str(root) + os.sep):
                    RAW.append(f"{name!r} resolved outside the data set: {item.image_path}")


def _load(path: Path):
    dd = _mod("io.detection_dataset")
    return dd.load_dataset(path) if dd is not None else None


# ----------------------------------------------------------------------------- 10. recipe files

RECIPE_KEY = st.sampled_from(["lr", "epochs", "batch_size", "loss", "optimizer", "dropout", "milestones", "extra",
                              "lrr", "epoch", "my_knob", "schedule", "seed", "augment", "weight_decay"])
RECIPE_VALUE = st.one_of(st.sampled_from(["1e-3", "abc", ".nan", ".inf", "-1", "10", "true", "[1, 2]", "{a: 1}",
                                          "*x", "&x 3", "0.5", "focal", "adam", "'5'", "null", "1e999"]),
                         st.integers(-10**12, 10**12).map(str))


@FUZZ
@given(items=st.lists(st.tuples(RECIPE_KEY, RECIPE_VALUE), max_size=5), fmt=st.sampled_from(["yaml", "json"]),
       junk=st.text(max_size=20))
def _fuzz_recipe_files(items, fmt, junk):
    from napari_cellclass.recipes import Recipe

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / f"r.{fmt}"
        if fmt == "yaml":
            p.write_text("\n".join(f"{k}: {v}" for k, v in items) + ("\n" + junk if junk else ""), encoding="utf-8")
        else:
            p.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in items) + "}", encoding="utf-8")
        r = expect_clean("Recipe.from_file", lambda: Recipe.from_file(p), root, [p])
        if r is not None:  # accepted: every field has its declared type and a valid range
            ok = (isinstance(r.lr, float) and r.lr > 0 and isinstance(r.epochs, int) and r.epochs >= 1
                  and isinstance(r.batch_size, int) and 0 <= r.dropout < 1 and isinstance(r.augment, bool)
                  and np.isfinite([r.lr, r.weight_decay, r.dropout]).all()
                  and not {"lrr", "epoch", "my_knob"} & set(r.extra))
            if not ok:
                RAW.append(f"recipe accepted with wrong types or unknown keys: {items} -> {r.to_dict()}")


# ----------------------------------------------------------------------------- 11. checkpoint numbers out of range

NUMBER = st.one_of(st.integers(-3, 5), st.integers(10**5, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([2e9, "3", True, None, [], {}]))


@FUZZ
@given(field=st.sampled_from(["num_classes", "width", "in_channels", "input_size", "classes", "thresholds"]),
       value=NUMBER)
def _fuzz_checkpoint_numbers(field, value):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_cellclass.engine.checkpoint import META_KEY

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        src = _tiny_checkpoint(root / "src.safetensors")
        with safe_open(str(src), framework="pt") as fh:
            header = dict(fh.metadata())
        meta = json.loads(header[META_KEY])
        if field in ("num_classes", "width", "in_channels"):
            meta["arch_config"][field] = value
            if field == "in_channels":
                meta["in_channels"] = value
        elif field == "input_size":
            meta["input_size"] = [value, value] if not isinstance(value, list) else value
        elif field == "classes":
            meta["class_names"] = ["a"] * value if isinstance(value, int) and 0 <= value <= 10 else value
        else:
            meta["thresholds"] = [value, value] if not isinstance(value, list) else value
        header[META_KEY] = json.dumps(meta)
        p = root / "m.safetensors"
        save_file(load_file(str(src)), str(p), metadata=header)
        src.unlink()
        _load_all(p, root)


# ----------------------------------------------------------------------------- 12. bit depths: rescaled, never clipped

@FUZZ
@given(dtype=st.sampled_from(["uint16", "float32", "int16", "uint8"]), lo=st.floats(-1000, 1000),
       span=st.floats(0.5, 60000), channels=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def _fuzz_bit_depth_rescale(dtype, lo, span, channels, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(lo, lo + span, (12, 10, channels) if channels == 3 else (12, 10))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        a = np.clip(np.round(a), info.min, info.max)
    a = a.astype(dtype)
    wd = _mod("io.wbc_dataset")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        p = root / "img.tif"
        import tifffile

        tifffile.imwrite(p, a, photometric="rgb" if channels == 3 else "minisblack")
        rgb = expect_clean("wbc_dataset.read_rgb(bit depth)", lambda: wd.read_rgb(p), root, [p])
        if rgb is None:
            return
        g = rgb[..., 0].astype(float).ravel()
        src = (a[..., 0] if channels == 3 else a).astype(float).ravel()
        order = np.argsort(src, kind="stable")
        if np.any(np.diff(g[order]) < 0):
            RAW.append(f"{dtype} [{lo:g}, {lo + span:g}]: rescaling is not monotonic")
        if np.ptp(src) > 0 and (g.max() == g.min()) and np.ptp(src) / max(abs(src).max(), 1) > 0.05:
            RAW.append(f"{dtype} [{lo:g}, {lo + span:g}]: contrast lost (all {g[0]:g})")
        if np.ptp(src) > 0 and (g >= 255).mean() > 0.5 and (src >= src.max()).mean() < 0.5:
            RAW.append(f"{dtype} [{lo:g}, {lo + span:g}]: saturated ({(g >= 255).mean():.0%} white)")


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\n[test_fuzz_io] cases tried: {CASES['n']}; raw exceptions: {len(RAW)}")
    for r in RAW[:20]:
        print("  RAW", r)
    os.environ["CELLCLASS_FUZZ_CASES"] = str(CASES["n"])


GENERATED = ["test_damaged_files_every_reader", "test_voc_hostile_values", "test_coco_hostile_structure",
             "test_hpa_sets_sizes_depths_missing", "test_our_tiff_hostile_description", "test_our_csv_hostile_rows",
             "test_our_zarr_hostile_metadata", "test_dataset_folders", "test_checkpoint_damaged",
             "test_checkpoint_hostile_metadata", "test_declared_size_bombs", "test_annotation_declared_sizes",
             "test_annotation_paths", "test_recipe_files", "test_checkpoint_numbers", "test_bit_depth_rescale"]
DONE: set[str] = set()


@pytest.fixture(autouse=True)
def _count_generated(request):
    yield
    DONE.add(request.node.name)
    if DONE >= set(GENERATED):  # the whole generated suite ran (in any order): check its size
        assert CASES["n"] >= MIN_CASES, f"only {CASES['n']} generated cases ran; at least {MIN_CASES} are required"


def test_damaged_files_every_reader():
    _no_new_raw(_fuzz_damaged_files_every_reader)


def test_voc_hostile_values():
    _no_new_raw(_fuzz_voc_hostile_values)


def test_coco_hostile_structure():
    _no_new_raw(_fuzz_coco_hostile_structure)


def test_hpa_sets_sizes_depths_missing():
    _no_new_raw(_fuzz_hpa_sets_sizes_depths_missing)


def test_our_tiff_hostile_description():
    _no_new_raw(_fuzz_our_tiff_hostile_description)


def test_our_csv_hostile_rows():
    _no_new_raw(_fuzz_our_csv_hostile_rows)


def test_our_zarr_hostile_metadata():
    _no_new_raw(_fuzz_our_zarr_hostile_metadata)


def test_dataset_folders():
    _no_new_raw(_fuzz_dataset_folders)


def test_checkpoint_damaged():
    _no_new_raw(_fuzz_checkpoint_damaged)


def test_checkpoint_hostile_metadata():
    _no_new_raw(_fuzz_checkpoint_hostile_metadata)


def test_missing_paths_and_non_utf8():
    _no_new_raw(_plain_missing_paths_and_non_utf8)


def test_huge_declared_spread_image():
    _no_new_raw(_plain_huge_declared_spread_image)


def test_checkpoint_from_another_task():
    _no_new_raw(_plain_checkpoint_from_another_task)


def test_declared_size_bombs():
    _no_new_raw(_fuzz_declared_size_bombs)


def test_annotation_declared_sizes():
    _no_new_raw(_fuzz_annotation_declared_sizes)


def test_annotation_paths():
    _no_new_raw(_fuzz_annotation_paths)


def test_recipe_files():
    _no_new_raw(_fuzz_recipe_files)


def test_checkpoint_numbers():
    _no_new_raw(_fuzz_checkpoint_numbers)


def test_bit_depth_rescale():
    _no_new_raw(_fuzz_bit_depth_rescale)
