"""Annotation files beside smears (issue 24, "sidecars are skipped or emptied silently").

The help says ``--set sidecar``: "use VOC/COCO box files beside smears"; COCO files were
never looked for.  And a sidecar whose labels are not red cells, white cells (or a
white-cell type) or platelets replaced detection and counted nothing, with exit 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_cellclass.errors import InputError
from napari_cellclass.synth.blood import BLOOD_CLASSES, make_smear
from napari_cellclass.tasks import blood

OBJECTS = [("RBC", (10, 10, 40, 40)), ("WBC", (100, 100, 160, 160)), ("Platelets", (200, 50, 212, 62))]


def _smear(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_smear(4, size=(240, 320), n_wbc=1)["image"]).save(path)
    return path


def _voc(path: Path, image: str, objects) -> Path:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                   f"<ymax>{y1}</ymax></bndbox></object>" for n, (x0, y0, x1, y1) in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{image}</filename><size><width>320</width><height>240</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")
    return path


def _coco(path: Path, images: dict[str, list]) -> Path:
    cats = sorted({n for objs in images.values() for n, _ in objs})
    data = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(cats)]}
    for k, (name, objs) in enumerate(images.items(), start=1):
        data["images"].append({"id": k, "file_name": name, "width": 320, "height": 240})
        for n, (x0, y0, x1, y1) in objs:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": k,
                                        "category_id": cats.index(n) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("where", ["stem.json", "annotations/stem.json", "_annotations.coco.json",
                                   "annotations.json"])
def test_coco_files_beside_smears_are_found(tmp_path, where):
    img = _smear(tmp_path / "images" / "s1.png")
    other = _smear(tmp_path / "images" / "s2.png")
    if where == "stem.json":
        side = _coco(tmp_path / "images" / "s1.json", {"s1.png": OBJECTS})
    elif where == "annotations/stem.json":
        (tmp_path / "annotations").mkdir()
        side = _coco(tmp_path / "annotations" / "s1.json", {"s1.png": OBJECTS})
    else:  # one file for the folder: it annotates the images it lists, and no other
        side = _coco(tmp_path / "images" / where, {"s1.png": OBJECTS})
        assert blood.find_smear_sidecar(other) is None and blood.sidecar_annotation(other) is None
    assert blood.find_smear_sidecar(img) == side
    ann = blood.sidecar_annotation(img)
    assert sorted(ann.labels) == ["Platelets", "RBC", "WBC"]
    assert np.allclose(sorted(ann.boxes.tolist()), sorted(b for _, b in OBJECTS))


def test_voc_still_found_first(tmp_path):
    img = _smear(tmp_path / "JPEGImages" / "s1.png")
    side = _voc(tmp_path / "Annotations" / "s1.xml", "s1.png", OBJECTS)
    assert blood.find_smear_sidecar(img) == side
    assert len(blood.sidecar_annotation(img)) == 3


def test_synonyms_and_white_cell_types_are_known_labels(tmp_path):
    img = _smear(tmp_path / "s.png")
    _voc(tmp_path / "s.xml", "s.png", [("red blood cell", (1, 1, 20, 20)), ("NEUTROPHIL", (50, 50, 90, 90)),
                                       ("platelet", (100, 100, 110, 110))])
    kinds = [blood.count_kind(lab) for lab in blood.sidecar_annotation(img).labels]
    assert sorted(kinds) == ["Platelets", "RBC", "WBC"]


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_unknown_labels_are_reported_naming_the_file_and_the_labels(tmp_path, fmt):
    img = _smear(tmp_path / "s.png")
    objs = [("cell", (1, 1, 20, 20)), ("RBC", (30, 30, 50, 50)), ("blob", (60, 60, 80, 80))]
    side = _voc(tmp_path / "s.xml", "s.png", objs) if fmt == "voc" else _coco(tmp_path / "s.json", {"s.png": objs})
    with pytest.raises(InputError) as info:
        blood.sidecar_annotation(img)
    text = str(info.value)
    assert side.name in info.value.problem and "'blob', 'cell'" in text and "boxes=detector" in text
    assert "\n" not in text and info.value.path == side


def test_an_empty_sidecar_is_refused_not_counted_as_zero_cells(tmp_path):
    img = _smear(tmp_path / "s.png")
    _voc(tmp_path / "s.xml", "s.png", [])
    with pytest.raises(InputError, match="s.xml lists no cells"):
        blood.sidecar_annotation(img)


def test_a_json_of_another_kind_is_not_an_annotation(tmp_path):
    img = _smear(tmp_path / "s.png")
    (tmp_path / "s.json").write_text(json.dumps({"microscope": "x", "objective": 40}))
    assert blood.sidecar_annotation(img) is None


# ----------------------------------------------------------------------------- end to end

DET_CLASSES = ["Platelets", "RBC", "WBC"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny detector + classifier in the built-ins' formats (the annotation replaces detection)."""
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.io.wbc_dataset import IMAGENET_MEAN, IMAGENET_STD
    from napari_cellclass.models.registry import build_model

    d = tmp_path_factory.mktemp("sidecar-models")
    torch.manual_seed(0)
    cfg = {"num_classes": 3, "widths": [8, 8, 8, 8, 8], "depths": [1, 1, 1, 1, 1], "head": 8, "head_hidden": 8}
    det = save_checkpoint(d / "det.safetensors", build_model("centernet", **cfg), CheckpointMeta(
        task="detect", arch="centernet", class_names=DET_CLASSES, in_channels=3, input_size=[256, 320],
        arch_config=cfg, training={"pixel_scale": 0.5, "score_threshold": 0.35}, trained_on="test"))
    ccfg = {"num_classes": 4, "width": 8, "layers": [1, 1, 1, 1]}
    cls = save_checkpoint(d / "wbc.safetensors", build_model("ibn_resnet34", **ccfg), CheckpointMeta(
        task="wbc", arch="ibn_resnet34", class_names=list(BLOOD_CLASSES), in_channels=3, input_size=[32, 32],
        arch_config=ccfg, normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop": "fixed",
                                         "window_px": 128, "tta": 1}, trained_on="test"))
    return det, cls


def test_predict_wbc_uses_a_coco_sidecar_and_refuses_unknown_labels(tmp_path, models, capsys):
    from napari_cellclass.cli import main

    det, cls = models
    folder = tmp_path / "in"
    _smear(folder / "a.png")
    _smear(folder / "b.png")
    _coco(folder / "_annotations.coco.json", {"a.png": OBJECTS})
    _voc(folder / "b.xml", "b.png", [("erythro", (10, 10, 40, 40)), ("WBC", (100, 100, 160, 160))])
    code = main(["predict", "wbc", str(folder), "--model", str(cls), "--detector", str(det),
                 "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu", "--set", "report=false"])
    out, err = capsys.readouterr()
    assert code == 3, err
    lines = [ln for ln in err.splitlines() if ln.startswith("cellclass: refused: ")]
    assert len(lines) == 1 and "b.png" in lines[0] and "b.xml" in lines[0] and "'erythro'" in lines[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["totals"]["RBC"] == 1 and summary["totals"]["WBC"] == 1 and summary["totals"]["Platelets"] == 1
    rows = (tmp_path / "out" / "summary.csv").read_text()
    assert "annotations" in rows  # boxes_from: the COCO file, not the detector
