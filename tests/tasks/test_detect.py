"""Detector: overfit on generated images, tiling at borders, COCOeval metrics, reader, HPA merge."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, InputError
from napari_cellclass.io.annotation_reader import get_reader
from napari_cellclass.io.detection_dataset import load_dataset, load_voc_folder
from napari_cellclass.synth.objects import make_image, place, write_voc_dataset
from napari_cellclass.tasks import detect as det
from napari_cellclass.tasks.base import TaskOptions


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(gt_boxes, gt_labels, boxes_yx, labels) -> tuple[int, int]:
    """(ground-truth objects found with IoU > 0.5 and the right class, unmatched detections)."""
    dets = [[b[1], b[0], b[3], b[2]] for b in boxes_yx]
    used: set[int] = set()
    found = 0
    for g, gl in zip(gt_boxes, gt_labels):
        best = max(((iou(g, d), k) for k, d in enumerate(dets) if k not in used and labels[k] == gl), default=(0, -1))
        if best[0] > 0.5:
            used.add(best[1])
            found += 1
    return found, len(dets) - len(used)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny detector overfitted on two generated 128x128 images (trained once per module)."""
    root = tmp_path_factory.mktemp("det")
    data = write_voc_dataset(root / "data", 2, seed=1)
    opts = TaskOptions(quick=True, epochs=50, out=root / "model", extra={"val_fraction": 0})
    result = run_sync(det.train(data, opts))
    return data, Path(result["checkpoint"]), result


@pytest.mark.slow
def test_overfits_two_generated_images(trained):
    data, ckpt, result = trained
    assert ckpt.is_file() and result["history"][-1]["loss"] < result["history"][0]["loss"] / 3
    ds = load_dataset(data)
    total = found = extra = 0
    for i in range(len(ds)):
        r = det.detect_sync(ds.image(i), ckpt, score_threshold=0.5)
        f, e = match(ds.items[i].boxes, ds.items[i].labels, r["boxes"], r["labels"])
        total += len(ds.items[i])
        found += f
        extra += e
        assert set(r) >= {"boxes", "labels", "scores", "label_ids", "class_names", "device"}
        assert np.all(r["scores"] >= 0.5) and r["boxes"].shape[1] == 4
    assert found == total, f"found {found} of {total} objects"
    assert extra <= 1, f"{extra} spurious detections"


def test_evaluate_uses_cocoeval(trained, tmp_path):
    data, ckpt, _ = trained
    r = run_sync(det.evaluate(ckpt, data, TaskOptions()))
    json.dumps(r)  # JSON-able
    assert r["mAP50"] > 0.8 and 0 <= r["mAP"] <= r["mAP50"]
    assert set(r["per_class"]) == {"cell", "debris"}
    # the metric itself: perfect predictions give 1.0, none give 0.0
    ds = load_dataset(data)
    classes = ds.classes
    perfect = [{"boxes": it.boxes, "labels": np.array([classes.index(lab) + 1 for lab in it.labels]),
                "scores": np.ones(len(it))} for it in ds.items]
    assert det.coco_metrics(ds, perfect, classes)["mAP"] == pytest.approx(1.0)
    empty = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)} for _ in ds.items]
    assert det.coco_metrics(ds, empty, classes)["mAP50"] == 0.0


def test_tiles_find_border_objects_once(trained):
    _, ckpt, _ = trained
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal(60, 8, (320, 320, 3)), 0, 255).astype(np.uint8)
    gt, labels = [], []
    # tile 128, overlap 48 -> tiles start at 0, 80, 160, 192; put objects across the inner tile edges
    for (y, x, cls) in [(128, 60, "cell"), (60, 128, "debris"), (208, 128, "cell"), (128, 208, "debris"),
                        (250, 250, "cell"), (40, 40, "debris")]:
        b, _ = place(img, y, x, cls, r=12)
        gt.append(b)
        labels.append(cls)
    r = det.detect_sync(img, ckpt, score_threshold=0.5, tile=128, overlap=48)
    assert r["tiles"] == 16
    found, extra = match(gt, labels, r["boxes"], r["labels"])
    assert found == len(gt), f"found {found} of {len(gt)}"
    assert extra <= 1
    # no object is reported twice: no two same-class detections overlap much
    b = r["boxes"]
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            if r["labels"][i] == r["labels"][j]:
                assert iou(b[i][[1, 0, 3, 2]], b[j][[1, 0, 3, 2]]) < 0.3


def test_detect_cancel_and_hpa_merge(trained):
    _, ckpt, _ = trained
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        det.detect_sync(np.zeros((64, 64, 3), np.uint8), ckpt, cancel=tok)
    r, g, b, y = (np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 100))
    rgb = det.prepare_image([r, g, b, y])
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (60, 70, 30)
    assert det.prepare_image(np.zeros((4, 8, 8), np.uint8)).shape == (8, 8, 3)
    assert det.prepare_image(np.zeros((8, 8), np.uint16)).shape == (8, 8, 3)
    with pytest.raises(InputError):
        det.prepare_image([r, g])


def test_mask_rcnn_tiny_gives_instances(tmp_path):
    s = make_image(96, n_objects=3, seed=3)
    poly = []
    for m in s["masks"]:
        ys, xs = np.nonzero(m)
        poly.append(np.array([[ys.min(), xs.min()], [ys.min(), xs.max()], [ys.max(), xs.max()], [ys.max(), xs.min()]]))
    boxes = s["boxes"][:, [1, 0, 3, 2]]
    opts = TaskOptions(quick=True, epochs=2, out=tmp_path, extra={"masks": True})
    r = run_sync(det.train_from_layers(s["image"], boxes, s["labels"], opts, polygons=poly))
    out = det.detect_sync(s["image"], Path(r["checkpoint"]), score_threshold=0.0)
    assert "instance_labels" in out and out["instance_labels"].shape == (96, 96)
    assert out["instance_labels"].max() <= len(out["labels"])


def test_reader_voc_coco_and_foreign(tmp_path):
    data = write_voc_dataset(tmp_path / "v", 1, seed=2)
    xml = next((data / "Annotations").glob("*.xml"))
    layers = get_reader(str(xml))(str(xml))
    d, kw, kind = layers[0]
    assert kind == "shapes" and len(d) == len(kw["features"]["label"]) > 0
    assert d[0].shape == (4, 2)
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5],
                             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]], "score": 0.5}],
            "categories": [{"id": 1, "name": "nucleolus"}]}
    cj = tmp_path / "c.json"
    cj.write_text(json.dumps(coco))
    layers = get_reader(str(cj))(str(cj))
    kinds = [k for _, _, k in layers]
    assert kinds == ["shapes", "labels"]
    rect = layers[0][0][0]
    np.testing.assert_allclose(rect.min(0), [3, 2]) and np.testing.assert_allclose(rect.max(0), [8, 12])  # (row, col)
    assert layers[0][1]["features"]["score"].tolist() == [0.5]
    assert layers[1][0].max() == 1
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"hello": 1}))
    svg = tmp_path / "s.xml"
    svg.write_text("<svg/>")
    assert get_reader(str(other)) is None and get_reader(str(svg)) is None


def test_train_refuses_empty_and_split_is_by_image(tmp_path):
    tr, va = det.split_by_image(10, 0.2, 0)
    assert len(va) == 2 and not set(tr) & set(va) and len(tr) + len(va) == 10
    with pytest.raises(InputError):
        run_sync(det.train_from_layers(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4)), [], TaskOptions(quick=True)))


@pytest.mark.realdata
def test_bccd_voc_dataset(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_voc_folder(shared_data / "bccd")
    assert sorted(ds.classes) == ["Platelets", "RBC", "WBC"] and len(ds) > 250
    img = ds.image(0)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    m = ds.masks(0, img.shape[:2])
    assert m.shape[0] == len(ds.items[0]) and m[0].sum() > 0  # boxes used as masks


@pytest.mark.viewer
def test_widget_predict_layers_and_finetune(make_napari_viewer, trained, tmp_path):
    from napari_cellclass.widgets.detect import DetectWidget

    data, ckpt, _ = trained
    ds = load_dataset(data)
    viewer = make_napari_viewer()
    viewer.add_image(ds.image(0), name="img", rgb=True)
    w = DetectWidget(viewer)
    assert "device:" in w.device_label.text() and "cpu" in w.device_label.text()
    w.model_edit.setText(str(ckpt))
    w.score_spin.setValue(0.5)
    w.run_predict(sync=True)
    layer = viewer.layers["img detections"]
    assert list(layer.features.columns)[:2] == ["label", "score"]
    assert len(layer.data) == len(w.last_result["labels"]) > 0
    assert set(layer.features["label"]) <= {"cell", "debris"} and (layer.features["score"] >= 0.5).all()
    assert layer.text.string.format == "{label} {score:.2f}"
    # the user fixes a box and fine-tunes from the widget (1 epoch), the new model replaces the old
    w.epochs_spin.setValue(1)
    r = w.run_train(sync=True, out=tmp_path / "ft")
    assert r is not None and Path(r["checkpoint"]).is_file()
    assert w.model_edit.text() == r["checkpoint"]
    # asynchronous path: worker thread, progress, results arrive
    w.last_result = None
    w.run_predict()
    from qtpy.QtWidgets import QApplication

    import time

    t0 = time.monotonic()
    while w.last_result is None and time.monotonic() - t0 < 60:
        QApplication.processEvents()
        time.sleep(0.05)
    assert w.last_result is not None and w.progress.value() == 100
