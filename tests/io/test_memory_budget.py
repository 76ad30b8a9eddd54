"""The memory budget (docs/performance.md, "Memory budget"): decoded size and work, not header claims alone.

Each test builds an adversarial input (builders shared with ``benchmarks/memory_budget.py``)
and checks that it is refused from its header, in one line naming the file, within a small
allocation bound and quickly; before this budget each one decoded gigabytes or ran for minutes.
"""
from __future__ import annotations

import time
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from bench_utils import load_benchmark

from napari_cellclass import budget
from napari_cellclass.errors import CellClassError, InputError

MB = 1 << 20


B = load_benchmark("memory_budget")


@contextmanager
def bounded(limit_mb: float, seconds: float = 5.0):
    """Fail when Python/numpy allocations in the block peak above ``limit_mb`` or it takes over ``seconds``."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        took = time.monotonic() - t0
        assert peak < limit_mb * MB, f"peak allocation {peak / MB:.0f} MB over the {limit_mb} MB bound"
        assert took < seconds, f"took {took:.1f} s (bound {seconds} s)"


def refused(fn, name: str, match: str, limit_mb: float = 32, seconds: float = 5.0) -> str:
    with bounded(limit_mb, seconds), pytest.raises(CellClassError, match=match) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    text = str(info.value)
    assert name in text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def blank16000(tmp_path_factory) -> Path:
    return B.png_blank(tmp_path_factory.mktemp("big") / "blank16000.png", 16000, 16000)


# ----------------------------------------------------------------------------- the budget itself

def test_budget_is_2_gib_and_settable(monkeypatch):
    assert budget.memory_budget() == 2 * 2**30
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "4GiB")
    assert budget.memory_budget() == 4 * 2**30
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "3000MB")
    assert budget.memory_budget() == 3 * 10**9
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "lots")
    with pytest.raises(InputError, match="CELLCLASS_MEMORY_BUDGET"):
        budget.memory_budget()


def test_whole_image_bound_follows_the_budget(monkeypatch):
    small = budget.whole_image_pixels()
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "8GiB")
    assert budget.whole_image_pixels() > 4 * small
    budget.check_whole_image(16000, 16000, bytes_per_pixel=24)  # 8 GiB: a 16000 px field fits


# ----------------------------------------------------------------------------- oversized headers

@pytest.mark.parametrize("w, h", [(30000, 30000), (1 << 16, 1 << 15)])
def test_png_header_over_the_budget_says_too_large(tmp_path, w, h):
    """Was: "An unknown error occurred while initializing plugin pillow" (imageio hid PIL's bomb error)."""
    from napari_cellclass.io import limits
    from napari_cellclass.io.detection_dataset import read_image

    p = B.png_header_only(tmp_path / f"hdr{w}.png", w, h)
    for fn in (lambda: limits.probe(p), lambda: limits.read_image(p), lambda: read_image(p)):
        text = refused(fn, p.name, "too large")
        assert f"{h} x {w}" in text and "unknown error" not in text


def test_blank_16000_png_is_refused_from_its_header(blank16000):
    """A 250 KB PNG of 16000 x 16000: predict detect peaked at 4.5 GB, karyotype at 4.7 GB."""
    from napari_cellclass.io import detection_dataset as DD
    from napari_cellclass.io import spread_reader as S
    from napari_cellclass.io.limits import check_work

    assert blank16000.stat().st_size < 300 * 1024
    for fn in (lambda: DD.read_image(blank16000, work=budget.WORK_BYTES_PER_PIXEL),
               lambda: S.read_spread_image(blank16000),
               lambda: check_work(blank16000, budget.WORK_BYTES_PER_PIXEL)):
        text = refused(fn, blank16000.name, "too large: 16000 x 16000 px")
        assert "memory budget of 2.0 GiB" in text


def test_decoding_alone_is_held_to_the_budget(tmp_path, monkeypatch):
    """Viewing needs only the decoded pixels, but those too must fit (here a 512 MiB budget)."""
    from napari_cellclass.io import limits

    p = B.png_blank(tmp_path / "b.png", 12000, 12000, value=0)
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "512MiB")
    refused(lambda: limits.read_image(p), p.name, "too large: 12000 x 12000 px.*to decode")


def test_blank_check_reads_no_full_size_copy():
    """check_informative once made float64 copies of the whole image (8 bytes a pixel, twice)."""
    from napari_cellclass.io.limits import check_informative, is_uniform

    flat = np.full((4000, 4000), 7, np.uint8)  # 16 MB
    with bounded(limit_mb=12):
        with pytest.raises(InputError, match="blank"):
            check_informative(flat, "the image")
        assert is_uniform(flat)
    img = flat.copy()
    img[::50, ::50] = 200
    check_informative(img, "the image")  # structure found in the strided sample too


# ----------------------------------------------------------------------------- strip bomb

def test_strip_bomb_tiff_is_refused_before_decoding_quickly(tmp_path):
    """60 KB declaring 60000 x 60000 in strips sharing one block: went the tiled way and ran past 300 s."""
    from napari_cellclass.io import lazy, limits

    p = B.strip_bomb_tiff(tmp_path / "bomb.tif", rows_per_strip=8)
    assert p.stat().st_size < 70 * 1024
    refused(lambda: limits.read_image(p), p.name, "too large")
    refused(lambda: lazy.open_lazy(p), p.name, "re-use another's compressed data")
    with bounded(32, 5.0):
        assert not lazy.is_large(p)  # not taken for a genuine large image: the ordinary path refuses it


def test_shared_strips_under_the_pixel_budget_are_refused(tmp_path):
    """The same trick at 8000 x 8000 (under the pixel budget): the storage check, not the pixel count, refuses it."""
    from napari_cellclass.io import limits

    p = B.strip_bomb_tiff(tmp_path / "bomb8k.tif", 8000, 8000, rows_per_strip=8)
    refused(lambda: limits.read_image(p), p.name, "decompression bomb")


def test_genuine_tiled_tiff_still_opens(tmp_path):
    from napari_cellclass.io import lazy, limits

    rng = np.random.default_rng(0)
    p = lazy.write_tiled_tiff(tmp_path / "ok.tif", 1024, 1024, 1, np.uint8,
                              lambda y0, y1, x0, x1: rng.integers(0, 255, (y1 - y0, x1 - x0), dtype=np.uint8),
                              tile=256)
    assert lazy.open_lazy(p).height == 1024
    assert limits.read_image(p).shape == (1024, 1024)


def test_tile_by_tile_work_is_bounded(tmp_path, monkeypatch):
    """A genuine image over the work budget is refused before its first tile; viewing it stays lazy."""
    from napari_cellclass.io import lazy

    p = lazy.write_ome_zarr(tmp_path / "big.ome.zarr", 2048, 2048, 1, np.uint8,
                            lambda y0, y1, x0, x1: np.zeros((y1 - y0, x1 - x0), np.uint8), chunk=1024)
    monkeypatch.setenv(budget.ENV_MAX_TILED_PIXELS, str(1 << 20))
    refused(lambda: lazy.open_lazy(p), p.name, "too large: 2048 x 2048 px.*work budget")
    assert lazy.as_dask(p).shape == (2048, 2048)


# ----------------------------------------------------------------------------- work per image

def test_cell_size_on_noise_is_fast():
    """Granulometry on a noise "smear" tried every disk up to half the image: ~2 minutes."""
    from napari_cellclass.tasks.blood import cell_size

    rng = np.random.default_rng(0)
    with bounded(64, 5.0):
        cell_size(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))


def test_open_disk_matches_binary_opening():
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    from napari_cellclass.tasks.blood import _open_disk

    rng = np.random.default_rng(3)
    for k in range(6):
        fg = ndi.gaussian_filter(rng.random((70, 90)), 2 + k) > 0.5
        for r in (1, 3, 7, 12):
            assert np.array_equal(_open_disk(fg, r), ndi.binary_opening(fg, structure=disk(r)))


def test_classifying_more_cells_than_an_image_holds_is_refused():
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.tasks import wbc

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    boxes = np.tile([[0, 0, 8, 8]], (budget.MAX_OBJECTS_PER_IMAGE + 1, 1))
    with pytest.raises(InputError, match="more than the 2,000"):
        run_sync(wbc.classify(img, "bccd-wbc-ibnresnet34", cells=boxes, device="cpu"))


def test_hpa_set_is_held_to_the_budget_as_a_whole(tmp_path, monkeypatch):
    """Four channels that each fit may not fit together: the set is checked from its headers."""
    from napari_cellclass.io import hpa_reader as H

    import shutil

    B.png_blank(tmp_path / "s1_red.png", 8000, 8000, value=3)
    for c in ("green", "blue", "yellow"):
        shutil.copy(tmp_path / "s1_red.png", tmp_path / f"s1_{c}.png")
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "1GiB")  # 256 MiB for images: one channel (128 MiB) fits
    s = H.find_set(tmp_path / "s1_red.png")
    H.check_set_budget(s.__class__(s.set_id, {"red": s.paths["red"]}))
    refused(lambda: H.read_set(s), "s1_", "too large: 8000 x 8000 px")


def test_header_probe_decodes_nothing(blank16000):
    """PIL's C allocations escape tracemalloc: measured as the process's peak RSS in a fresh interpreter.

    imageio's metadata call decoded the whole 16000 x 16000 image (251 MiB) just to read the header.
    """
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "from napari_cellclass.io import limits\n"
            "from PIL import Image\n"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "info = limits.probe(sys.argv[1])\n"
            "print(info.shape, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(blank16000)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-400:]
    shape, grew = out.stdout.rsplit(")", 1)
    assert shape.strip() == "(16000, 16000" and float(grew) < 32, out.stdout


def test_spread_with_thousands_of_objects_is_refused_before_karyotyping():
    """A repeating blob pattern (no spread) gave ~4,700 objects; karyotyping them ran past 500 s."""
    from napari_cellclass.karyotype.segment import MAX_OBJECTS, segment_spread

    img = np.full((1200, 1200), 230, np.uint8)
    for y in range(10, 1190, 24):
        img[y:y + 12, 10:1190:24] = 40  # a grid of small dark dots (about 2,400 of them)
        img[y:y + 12, 14:1190:24] = 40
    with bounded(256, 30.0), pytest.raises(InputError, match=f"more than the {MAX_OBJECTS:,}"):
        segment_spread(img)
