"""Real samples that ship (BCCD, MIT) and the built-in half of `cellclass demo`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.models.registry import build_model
from zoo_utils import add, make_zoo, tiny_checkpoint


def test_shipped_samples_are_real_bccd_with_their_licence():
    from napari_cellclass.samples import BCCD_DIR, bccd_samples

    samples = bccd_samples()
    assert [s.wbc_class for s in samples] == ["EOSINOPHIL", "LYMPHOCYTE"]
    assert "MIT License" in (BCCD_DIR / "LICENSE").read_text()
    for s in samples:
        img = s.read()
        assert img.shape == (480, 640, 3) and img.dtype == np.uint8
        boxes, labels = s.boxes()
        assert labels.count("WBC") == 1 and "RBC" in labels
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    total = sum(p.stat().st_size for p in BCCD_DIR.iterdir())
    assert total < 200_000  # small: two fields of view, no more


def test_napari_sample_functions_return_layers():
    from napari_cellclass.samples import bccd_eosinophil, bccd_lymphocyte

    for fn, cls in ((bccd_eosinophil, "EOSINOPHIL"), (bccd_lymphocyte, "LYMPHOCYTE")):
        (img, img_kw, kind), (rects, kw, kind2) = fn()
        assert kind == "image" and kind2 == "shapes" and img_kw["rgb"] and "BCCD" in img_kw["name"]
        assert cls in kw["features"]["label"] and len(rects) == len(kw["features"]["label"])


@pytest.mark.viewer
@pytest.mark.parametrize("key", ["bccd_eosinophil", "bccd_lymphocyte"])
def test_real_samples_open_from_the_menu(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellclass", key)
    assert [layer._type_string for layer in viewer.layers] == ["image", "shapes"]
    assert viewer.layers[0].data.shape == (480, 640, 3)


def _tiny_detector(path, classes):
    cfg = {"num_classes": len(classes) + 1, "width": 8, "min_size": 128, "max_size": 160}
    net = build_model("fasterrcnn_tiny", **cfg)
    meta = CheckpointMeta(task="detect", arch="fasterrcnn_tiny", arch_config=cfg, class_names=classes,
                          in_channels=3, input_size=[128, 128], metrics={"mAP50": 0.3},
                          training={"val_images": ["BloodImage_00017.jpg"], "train_images": ["BloodImage_00037.jpg"]},
                          trained_on="BCCD test fixture")
    return save_checkpoint(path, net, meta)


def test_builtin_demo_runs_each_model_on_the_real_samples(tmp_path, monkeypatch):
    from napari_cellclass.tasks.builtin_demo import markdown, run_builtin_demo

    folder = make_zoo(tmp_path, monkeypatch, {
        "wbc-real": {},
        "chromo-real": {"task": "chromosome", "channels": 1, "classes": [str(i) for i in range(1, 23)] + ["X", "Y"],
                        "metrics": {"accuracy": 0.9}},
    })
    add(tiny_checkpoint(tmp_path / "s.safetensors", trained_on="synthetic"), "wbc-synth", folder)
    add(_tiny_detector(tmp_path / "d.safetensors", ["Platelets", "RBC", "WBC"]), "det-real", folder,
        metrics_json=None)
    res = run_sync(run_builtin_demo(tmp_path / "out", device="cpu"))
    assert set(res) == {"wbc-real", "wbc-synth", "chromo-real", "det-real"}
    wbc = res["wbc-real"]
    assert wbc["status"] == "ok" and "BCCD" in wbc["samples"]
    assert [r["image"] for r in wbc["results"]] == ["BloodImage_00017.jpg", "BloodImage_00037.jpg"]
    assert [r["expected"] for r in wbc["results"]] == ["EOSINOPHIL", "LYMPHOCYTE"]
    assert all(len(r["predicted"]) == 1 for r in wbc["results"])
    assert wbc["results"][0]["split"] == "unknown"
    assert "warning" not in wbc and "trained only on generated" in res["wbc-synth"]["warning"]
    assert res["chromo-real"]["status"] == "not run" and "licence" in res["chromo-real"]["reason"]
    det = res["det-real"]
    assert det["status"] == "ok", det
    assert det["results"][0]["split"] == "held out" and det["results"][1]["split"].startswith("seen in training")
    assert det["results"][0]["annotated"]["RBC"] > 0
    assert json.loads((tmp_path / "out" / "builtin.json").read_text())["wbc-real"]["status"] == "ok"
    text = "\n".join(markdown(res))
    assert "### wbc-real (wbc): ok" in text and "trained only on generated" in text


@pytest.mark.slow
def test_demo_summary_has_both_parts(tmp_path, monkeypatch, capsys):
    from napari_cellclass import cli

    make_zoo(tmp_path, monkeypatch, {"wbc-real": {}})
    out = tmp_path / "demo"
    # one synthetic task (wbc trains for seconds) keeps this short; the built-in part must follow it
    rc = cli.main(["demo", "--tasks", "wbc", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    summary = (out / "SUMMARY.md").read_text()
    assert "## Models trained during this demo (synthetic data)" in summary
    assert "## Built-in models on real sample images" in summary and "### wbc-real (wbc): ok" in summary
    report = json.loads((out / "summary.json").read_text())
    assert report["builtin"]["wbc-real"]["status"] == "ok"
