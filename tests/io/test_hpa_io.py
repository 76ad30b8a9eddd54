"""HPA channel sets: reader (generated and real sets), missing channels, 16-bit, RGB merge, dataset."""
from __future__ import annotations

import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.io import hpa_dataset as D
from napari_cellclass.io.hpa_reader import get_reader, read_channel, reduce_to_channel, rgb_merge, stack_channels
from napari_cellclass.synth.hpa import make_dataset, render_field, write_dataset

COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture
def one_set(tmp_path):
    img, _, labels = render_field(np.random.default_rng(0), 64, [0])
    for c, colour in enumerate(COLOURS):
        iio.imwrite(tmp_path / f"abc_1_{colour}.png", img[c])
    return tmp_path, img


def test_reader_opens_four_layers_from_any_one_file(one_set):
    folder, img = one_set
    reader = get_reader(str(folder / "abc_1_green.png"))
    assert reader is not None
    layers = reader(str(folder / "abc_1_green.png"))
    assert [kw["metadata"]["hpa_channel"] for _, kw, _ in layers] == list(COLOURS)
    for (data, kw, kind), c in zip(layers, range(4)):
        assert kind == "image"
        np.testing.assert_array_equal(data, img[c])
        assert kw["colormap"] == COLOURS[c]
        assert kw["blending"] == "additive"
        assert kw["contrast_limits"] == [float(img[c].min()), float(img[c].max())]
        assert kw["metadata"]["hpa_set_id"] == "abc_1"
        assert set(kw["metadata"]["hpa_paths"]) == set(COLOURS)
    assert layers[1][1]["metadata"]["hpa_role"] == "protein"


def test_reader_folder_of_sets(tmp_path):
    write_dataset(tmp_path, n=3, seed=1, size=32)
    reader = get_reader(str(tmp_path / "train"))
    layers = reader(str(tmp_path / "train"))
    assert len(layers) == 12
    assert len({kw["metadata"]["hpa_set_id"] for _, kw, _ in layers}) == 3


def test_reader_declines_non_hpa_files(tmp_path):
    iio.imwrite(tmp_path / "cat.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "notes_red.txt").write_text("x")
    assert get_reader(str(tmp_path / "cat.png")) is None
    assert get_reader(str(tmp_path / "notes_red.txt")) is None
    assert get_reader(str(tmp_path)) is None  # folder without sets


def test_missing_channel_is_named(one_set):
    folder, _ = one_set
    (folder / "abc_1_yellow.png").unlink()
    with pytest.warns(UserWarning, match="yellow"):
        layers = get_reader(str(folder / "abc_1_red.png"))(str(folder / "abc_1_red.png"))
    assert len(layers) == 3
    assert layers[0][1]["metadata"]["hpa_missing"] == ["yellow"]
    arrays = {kw["metadata"]["hpa_channel"]: d for d, kw, _ in layers}
    with pytest.raises(InputError, match="yellow"):
        stack_channels(arrays, "abc_1")
    from napari_cellclass.tasks.hpa import _as_field

    with pytest.raises(InputError, match="yellow"):
        _as_field([arrays["red"], arrays["green"], arrays["blue"], None])


def test_16bit_tiff_kept(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    for colour in COLOURS:
        tifffile.imwrite(tmp_path / f"s16_{colour}.tif", rng.integers(0, 40000, (40, 50), dtype=np.uint16))
    layers = get_reader(str(tmp_path / "s16_blue.tif"))(str(tmp_path / "s16_blue.tif"))
    assert len(layers) == 4
    data, kw, _ = layers[2]
    assert data.dtype == np.uint16 and data.shape == (40, 50)
    assert kw["contrast_limits"][1] > 255
    unit = D.to_unit_float(stack_channels({kw["metadata"]["hpa_channel"]: d for d, kw, _ in layers}))
    assert 0.3 < unit.mean() < 0.32  # scaled by the 16-bit range, not 8-bit


def test_rgb_tinted_files_reduced_to_their_channel():
    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    z = np.zeros_like(gray)
    assert np.array_equal(reduce_to_channel(np.dstack([gray, z, z]), "red"), gray)
    assert np.array_equal(reduce_to_channel(np.dstack([z, gray, z]), "green"), gray)
    assert np.array_equal(reduce_to_channel(np.dstack([z, z, gray]), "blue"), gray)
    assert np.array_equal(reduce_to_channel(np.dstack([gray, gray, z]), "yellow"), gray)
    assert np.array_equal(reduce_to_channel(np.dstack([gray, gray, gray]), "green"), gray)
    assert reduce_to_channel(gray, "red") is gray


def test_rgb_merge_splits_yellow():
    r = np.full((4, 4), 0, np.uint8)
    y = np.full((4, 4), 200, np.uint8)
    out = rgb_merge(r, r, r, y)
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[0, 0], [100 / 255, 100 / 255, 0], atol=1e-6)
    assert np.allclose(rgb_merge(r, r, r)[..., 0], 0)


def test_merge_widget_function_returns_layer_tuple(one_set):
    from napari.layers import Image

    from napari_cellclass.widgets.hpa_merge import hpa_rgb_merge

    _, img = one_set
    layers = [Image(img[c], metadata={"hpa_set_id": "abc_1"}) for c in range(4)]
    data, kw, kind = hpa_rgb_merge(*layers)
    assert kind == "image" and kw["rgb"] and data.shape == (64, 64, 3)
    assert "abc_1" in kw["name"]


@pytest.mark.realdata
def test_real_hpa_sets(shared_data):
    hpa = shared_data / "hpa"
    jpg = hpa / "exampleimages" / "800_A6_1_yellow.jpg"
    layers = get_reader(str(jpg))(str(jpg))
    assert len(layers) == 4
    assert all(d.ndim == 2 and d.shape == (2048, 2048) for d, _, _ in layers)
    png_layers = get_reader(str(hpa / "derived_kaggle_format_512"))(str(hpa / "derived_kaggle_format_512"))
    assert len(png_layers) == 8
    # the reduced JPEG channels match the Kaggle-format PNGs derived from them
    for colour in COLOURS:
        big = read_channel(hpa / "exampleimages" / f"800_A6_1_{colour}.jpg")
        small = read_channel(hpa / "derived_kaggle_format_512" / f"800_A6_1_{colour}.png")
        down = D.resize(big[None].astype(np.float32), 512)[0].numpy()
        assert np.corrcoef(down.ravel(), small.ravel().astype(np.float32))[0, 1] > 0.9, colour
    from napari_cellclass.segmentation import segment_cells

    field = np.stack([read_channel(hpa / "exampleimages" / f"89_B5_1_{c}.jpg") for c in COLOURS])
    assert 5 <= segment_cells(field).max() <= 30  # ~10 cells in this 1728 px field
    labels = D.read_labels(hpa / "labels_HPAv18.csv")
    assert {it.set_id: it.labels for it in labels} == {"800_A6_1": [25], "89_B5_1": [6]}


def test_kaggle_dataset_and_split(tmp_path):
    write_dataset(tmp_path, n=10, seed=3, size=32)
    items = D.read_labels(D.find_csv(tmp_path))
    assert len(items) == 10
    tr, va = D.split_by_id(items, 0.3, seed=0)
    assert not {i.set_id for i in tr} & {i.set_id for i in va} and len(va) == 3
    ds = D.HPADataset(D.image_folder(tmp_path), items, 48, mean=[0] * 4, std=[1] * 4, train=True)
    x, y = ds[0]
    assert x.shape == (4, 48, 48) and y.shape == (28,) and y.sum() >= 1
    (tmp_path / "train.csv").write_text("Id,Target\nx,3 99\n")
    with pytest.raises(InputError, match="outside"):
        D.read_labels(tmp_path / "train.csv")


def test_synth_is_deterministic():
    a, ta, la = make_dataset(4, seed=5, size=48)
    b, tb, lb = make_dataset(4, seed=5, size=48)
    assert np.array_equal(a, b) and la == lb
    c, _, _ = make_dataset(4, seed=6, size=48)
    assert not np.array_equal(a, c)


def test_metrics_and_threshold_fit():
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    probs = np.array([[0.4, 0.1], [0.1, 0.9], [0.35, 0.8], [0.2, 0.2]])
    m = D.multilabel_metrics(truth, probs, 0.5)
    assert m["macro_f1"] == pytest.approx((0 + 1) / 2)
    thr = D.fit_thresholds(truth, probs)
    assert 0.2 < thr[0] <= 0.35
    assert D.multilabel_metrics(truth, probs, thr)["macro_f1"] == 1.0


def test_segmentation_finds_the_cells():
    from napari_cellclass.segmentation import segment_cells

    img, cells, _ = render_field(np.random.default_rng(2), 128, [25])
    lab = segment_cells(img)
    assert abs(int(lab.max()) - int(cells.max())) <= 1
    # most foreground pixels agree
    assert ((lab > 0) == (cells > 0)).mean() > 0.9
    with pytest.raises(InputError):
        segment_cells(img[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert segment_cells(np.zeros((4, 32, 32), np.uint8)).max() == 0
