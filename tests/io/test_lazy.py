"""Large images: lazy reads (OME-Zarr, tiled TIFF) and tile-by-tile processing with bounded windows."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.engine.progress import run_sync
from napari_cellclass.errors import InputError
from napari_cellclass.io import lazy
from napari_cellclass.tasks.base import TaskOptions


def _pattern(h: int, w: int, c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [((yy * 7 + xx * 3 + 40 * k) % 251).astype(np.uint8) for k in range(c)]
    return np.stack(planes, -1) if c > 1 else planes[0]


def _block(full: np.ndarray):
    return lambda y0, y1, x0, x1: full[y0:y1, x0:x1]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_windows_read_back_exactly(tmp_path, fmt, channels):
    full = _pattern(700, 900, channels)
    if fmt == "tiff":
        path = lazy.write_tiled_tiff(tmp_path / "big.tif", 700, 900, channels, np.uint8, _block(full), tile=256)
    else:
        path = lazy.write_ome_zarr(tmp_path / "big.ome.zarr", 700, 900, channels, np.uint8, _block(full), chunk=256)
    img = lazy.open_lazy(path)
    assert (img.height, img.width, img.channels) == (700, 900, channels)
    for (y0, y1, x0, x1) in [(0, 700, 0, 900), (300, 555, 610, 900), (699, 700, 0, 1)]:
        assert np.array_equal(img.region(y0, y1, x0, x1), full[y0:y1, x0:x1])
    assert lazy.is_large(path, threshold=100) and not (fmt == "tiff" and lazy.is_large(path))
    assert lazy.as_dask(path).shape == full.shape


def test_axes_are_guessed_or_refused():
    assert lazy.guess_axes((512, 600)) == "yx"
    assert lazy.guess_axes((512, 600, 3)) == "yxc"
    assert lazy.guess_axes((4, 512, 600)) == "cyx"
    assert lazy.guess_axes((1, 1, 4, 512, 600)) == "tzcyx"
    with pytest.raises(InputError):
        lazy.guess_axes((5, 6, 7, 8))


def test_a_file_stored_in_one_huge_piece_is_refused_with_advice(tmp_path):
    full = _pattern(300, 300, 1)
    path = lazy.write_tiled_tiff(tmp_path / "t.tif", 300, 300, 1, np.uint8, _block(full), tile=256)
    with pytest.raises(InputError, match="convert it to a tiled TIFF or OME-Zarr"):
        lazy.open_lazy(path, max_chunk_values=1000)


def test_a_stack_is_refused(tmp_path):
    import zarr

    z = zarr.open_array(str(tmp_path / "stack.zarr"), mode="w", shape=(3, 64, 64), chunks=(1, 64, 64),
                        dtype="uint8", zarr_format=2)
    img = lazy.open_lazy(tmp_path / "stack.zarr")  # 3 planes read as channels (C <= 4)
    assert img.channels == 3
    z2 = zarr.open_array(str(tmp_path / "tz.zarr"), mode="w", shape=(2, 3, 64, 64), chunks=(1, 1, 64, 64),
                         dtype="uint8", zarr_format=2)
    assert z2.shape[0] == 2
    with pytest.raises(InputError):
        lazy.open_lazy(tmp_path / "tz.zarr")


@pytest.mark.parametrize("h,w,tile,overlap", [(1000, 700, 256, 64), (256, 256, 256, 0), (10, 3000, 512, 100)])
def test_tile_cores_partition_the_image(h, w, tile, overlap):
    grid = lazy.tile_grid(h, w, tile, overlap)
    cover = np.zeros((h, w), np.int32)
    for t in grid:
        cover[t.cy0:t.cy1, t.cx0:t.cx1] += 1
        assert 0 <= t.y0 <= t.cy0 < t.cy1 <= t.y1 <= h and 0 <= t.x0 <= t.cx0 < t.cx1 <= t.x1 <= w
        assert t.y1 - t.y0 <= tile + 2 * overlap and t.x1 - t.x0 <= tile + 2 * overlap
    assert (cover == 1).all()


# ----------------------------------------------------------------------------- tile-by-tile detection

class _Recording:
    """Wraps a lazy array and records the largest window read (memory is set by the window)."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.chunks, self.largest = arr, arr.shape, arr.dtype, arr.chunks, 0

    def __getitem__(self, idx):
        block = np.asarray(self.arr[idx])
        self.largest = max(self.largest, block.size)
        return block


def _blobs(h: int, w: int, n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 230, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n):
        cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(6, 14)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 40, 120)
    from scipy import ndimage as ndi

    return img, int(ndi.label(img[..., 0] < 128)[1])


def _fake_detector(monkeypatch):
    """A 'detector' that boxes dark connected blobs, so tiled and whole-image results must agree exactly."""
    from scipy import ndimage as ndi

    import napari_cellclass.tasks.detect as det

    def detect(image, model_path, **kw):
        lab, n = ndi.label(np.asarray(image)[..., 0] < 128)
        boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndi.find_objects(lab)]
        yield from ()
        return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": ["cell"] * n, "scores": np.ones(n)}

    monkeypatch.setattr(det, "detect", detect)
    monkeypatch.setattr(det, "load", lambda m, device=None: m)  # no checkpoint: the fake needs none


def test_tiled_detection_finds_every_object_once_with_windows_bounded_by_the_tile(tmp_path, monkeypatch):
    from napari_cellclass.tasks import tiled

    _fake_detector(monkeypatch)
    img, n_objects = _blobs(900, 1300, 60)
    path = lazy.write_ome_zarr(tmp_path / "smear.ome.zarr", 900, 1300, 3, np.uint8, _block(img), chunk=128)
    opened = lazy.open_lazy(path)
    rec = _Recording(opened.array)
    monkeypatch.setattr(lazy, "open_lazy", lambda p, **k: lazy.LazyImage(Path(p), rec, opened.axes))
    opts = TaskOptions(out=tmp_path / "out", extra={"tile": 256, "overlap": 48})
    res = run_sync(tiled.predict_large("detect", tmp_path / "m.safetensors", path, opts))
    with open(tmp_path / "out" / "smear_detections.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert res["objects"] == len(rows) == n_objects
    boxes = {tuple(int(float(r[k])) for k in ("y0", "x0", "y1", "x1")) for r in rows}
    assert len(boxes) == n_objects  # none twice, none cut in two
    assert rec.largest <= (256 + 2 * 48) ** 2 * 3  # no read larger than one window
    summary = json.loads((tmp_path / "out" / "smear_tiled.json").read_text())
    assert summary["tiles"] == 4 * 6 and summary["height"] == 900


def test_cli_routes_large_images_to_tiles_and_others_to_the_task(tmp_path, monkeypatch):
    from napari_cellclass.tasks import batch, tiled

    img, n_objects = _blobs(300, 300, 5)
    (tmp_path / "in").mkdir()
    big = lazy.write_tiled_tiff(tmp_path / "in" / "big.tif", 300, 300, 3, np.uint8, _block(img), tile=256)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "in" / "small.png")
    opts = TaskOptions(out=tmp_path / "out", extra={"tiled": True})
    large, rest = tiled.split_inputs("detect", [tmp_path / "in"], opts)
    assert large == [big] and rest == [tmp_path / "in" / "small.png"]
    assert tiled.split_inputs("detect", [tmp_path / "in"], TaskOptions()) == ([], [tmp_path / "in"])
    assert tiled.split_inputs("chromosome", [big], opts) == ([], [big])
    _fake_detector(monkeypatch)
    seen = []

    def plain_predict(model, inputs, o):
        seen.extend(inputs)
        yield from ()
        return {"n": len(inputs)}

    class Args:
        shard = None
        chunk = None

    res = run_sync(batch.job_for("detect", plain_predict, "m", [tmp_path / "in"], opts, Args()))
    assert seen == [tmp_path / "in" / "small.png"] and res["images"] == {"n": 1}
    assert res["large_images"][0]["objects"] == n_objects


@pytest.mark.slow
def test_tiled_hpa_cells_are_labelled_once_and_classified(tmp_path):
    import torch

    from napari_cellclass.tasks import tiled
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.synth.hpa import HPA_CLASSES, render_field

    fields = [render_field(np.random.default_rng(s), 384)[0] for s in range(4)]  # (4, 384, 384) each
    top = np.concatenate([fields[0], fields[1]], axis=2)
    bottom = np.concatenate([fields[2], fields[3]], axis=2)
    field = np.moveaxis(np.concatenate([top, bottom], axis=1), 0, -1)  # (768, 768, 4)
    path = lazy.write_ome_zarr(tmp_path / "field.ome.zarr", 768, 768, 4, field.dtype, _block(field), chunk=128)
    torch.manual_seed(0)
    cfg = {"num_classes": 28, "in_channels": 4, "depth": 10, "width": 8, "pretrained": False}
    model = save_checkpoint(tmp_path / "hpa.safetensors", build_model("resnet50_rgby", **cfg), CheckpointMeta(
        task="hpa", arch="resnet50_rgby", class_names=list(HPA_CLASSES), in_channels=4, input_size=[64, 64],
        arch_config=cfg, normalization={"mean": [0.1] * 4, "std": [0.2] * 4}, thresholds=[0.5] * 28))
    opts = TaskOptions(out=tmp_path / "out", device="cpu", extra={"tile": 384, "overlap": 96})
    res = run_sync(tiled.predict_large("hpa", model, path, opts))
    with open(tmp_path / "out" / "field_cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    import zarr

    labels = np.asarray(zarr.open_array(str(tmp_path / "out" / "field_labels.zarr"), mode="r"))
    assert res["cells"] == len(rows) > 4
    assert sorted(int(r["label"]) for r in rows) == list(range(1, len(rows) + 1))
    assert set(np.unique(labels)) - {0} <= {int(r["label"]) for r in rows}
    for r in rows:
        assert all(0.0 <= float(r[f"p_{n}"]) <= 1.0 for n in HPA_CLASSES)
        assert 0 <= float(r["y0"]) < float(r["y1"]) <= 768
