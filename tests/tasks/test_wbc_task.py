"""WBC task end to end on generated cells: data, training beats chance, evaluate/predict/CLI, real BCCD reading."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, InputError
from napari_cellclass.io import wbc_dataset as D
from napari_cellclass.synth.blood import BLOOD_CLASSES, make_cell, make_smear, napari_sample, write_dataset
from napari_cellclass.tasks import wbc
from napari_cellclass.tasks.base import TaskOptions


def test_synth_is_deterministic_and_classes_differ():
    a, b = make_cell("MONOCYTE", seed=3), make_cell("MONOCYTE", seed=3)
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, make_cell("MONOCYTE", seed=4))
    s1, s2 = make_smear(5, n_wbc=3), make_smear(5, n_wbc=3)
    assert np.array_equal(s1["image"], s2["image"]) and s1["labels"] == s2["labels"]
    assert s1["boxes"].shape == (3, 4) and set(s1["labels"]) <= set(BLOOD_CLASSES)
    layers = napari_sample()
    assert [t for _, _, t in layers] == ["image", "shapes"]
    assert len(layers[1][0]) == len(layers[1][1]["features"]["label"])


def test_differential_count_is_pure_arithmetic():
    d = wbc.differential_count(["NEUTROPHIL"] * 3 + ["LYMPHOCYTE"], BLOOD_CLASSES)
    assert d["total"] == 4 and d["counts"]["NEUTROPHIL"] == 3 and d["counts"]["MONOCYTE"] == 0
    assert d["percent"]["NEUTROPHIL"] == 75.0 and [r["class"] for r in d["rows"]] == BLOOD_CLASSES
    assert wbc.differential_count([])["total"] == 0
    assert "TOTAL,4,100.0" in wbc.differential_csv(d)


def test_metrics_match_hand_count():
    m = wbc.classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["A", "B"])
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["A"]["precision"] == 1.0 and m["per_class"]["A"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_split_by_group_keeps_images_together():
    recs = [D.WBCRecord(Path(f"img{i // 3}.jpg"), "AB"[i % 2], f"img{i // 3}") for i in range(30)]
    train, val = D.split_by_group(recs, 0.3, seed=1)
    assert val and train and not ({r.group for r in train} & {r.group for r in val})


def test_augmentation_is_dihedral_only():
    x = torch.arange(16.0).view(1, 4, 4)
    outs = {tuple(D.dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8 and all(sorted(o) == list(range(16)) for o in outs)  # same pixels, no scaling


def test_crop_cell_pads_at_borders():
    img = np.zeros((50, 60, 3), np.uint8)
    crop = D.crop_cell(img, (-10, -10, 20, 20), 32)
    assert crop.shape == (32, 32, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny IBN-ResNet trained briefly (centre-triplet loss) on generated crops."""
    root = tmp_path_factory.mktemp("wbc")
    write_dataset(root / "train", 24, seed=0)
    write_dataset(root / "test", 8, seed=99)
    opts = TaskOptions(out=root / "run", quick=True, epochs=4, seed=0, device="cpu",
                       extra={"loss": "triplet", "val_fraction": 0.15})
    res = run_sync(wbc.train(root / "train", opts))
    return root, res


@pytest.mark.slow
def test_tiny_model_beats_chance_on_held_out_generated_cells(trained):
    root, res = trained
    assert Path(res["checkpoint"]).is_file() and res["loss"] == "triplet"
    assert res["history"] and "macro_f1" in res["history"][-1]
    ev = run_sync(wbc.evaluate(Path(res["checkpoint"]), root / "test", TaskOptions(device="cpu")))
    assert ev["n"] == 32 and len(ev["confusion_matrix"]) == 4
    assert ev["accuracy"] >= 0.55, ev  # chance is 0.25
    assert ev["macro_f1"] >= 0.45, ev
    json.dumps(ev)  # JSON-able


def test_classify_boxes_labels_and_whole_image(trained):
    _, res = trained
    smear = make_smear(11, n_wbc=3)
    out = run_sync(wbc.classify(smear["image"], res["checkpoint"], cells=smear["boxes"], device="cpu"))
    assert out["probabilities"].shape == (3, 4) and np.allclose(out["probabilities"].sum(1), 1, atol=1e-5)
    assert out["differential"]["total"] == 3 and "cpu" in out["device"]
    labels = np.zeros(smear["image"].shape[:2], np.int32)
    for i, (y0, x0, y1, x1) in enumerate(smear["boxes"].astype(int), start=1):
        labels[y0:y1, x0:x1] = i
    out2 = run_sync(wbc.classify(smear["image"], res["checkpoint"], cells=labels, device="cpu"))
    assert list(out2["label_ids"]) == [1, 2, 3]
    whole = run_sync(wbc.classify(make_cell(0, seed=5), res["checkpoint"], device="cpu"))
    assert len(whole["classes"]) == 1
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        run_sync(wbc.classify(smear["image"], res["checkpoint"], cells=smear["boxes"], cancel=tok))


def test_cli_predict_and_evaluate(trained, tmp_path, capsys):
    from napari_cellclass.cli import main

    root, res = trained
    imgs = sorted((root / "test" / "LYMPHOCYTE").glob("*.png"))[:2]
    assert main(["predict", "wbc", res["checkpoint"], *map(str, imgs), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert (tmp_path / "p" / "predictions.csv").read_text().count("\n") == 3
    assert (tmp_path / "p" / "differential.csv").is_file()
    capsys.readouterr()
    assert main(["evaluate", "wbc", res["checkpoint"], str(root / "test"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["per_class"]) == set(BLOOD_CLASSES)
    assert main(["train", "wbc", str(root / "nothing"), "--quiet"]) == 2


def test_bad_dataset_and_loss_are_explained(tmp_path):
    (tmp_path / "PLATELET").mkdir()
    (tmp_path / "PLATELET" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="unknown white-cell class"):
        D.choose_classes(D.find_records(tmp_path))
    with pytest.raises(InputError, match="unknown WBC loss"):
        run_sync(wbc.train(tmp_path, TaskOptions(extra={"loss": "focal"}, out=tmp_path / "o")))


@pytest.mark.realdata
def test_reads_bccd_table_and_crops(shared_data):
    recs = D.find_records(shared_data / "bccd")
    names, kept = D.choose_classes(recs)
    assert names == D.WBC_CLASSES and len(kept) >= 250 and all(r.box is not None for r in kept)
    train, val = D.split_by_group(kept, 0.2)
    assert not ({r.group for r in train} & {r.group for r in val})
    crops = D.load_crops(kept[:3], 64)
    assert crops.shape == (3, 64, 64, 3) and crops.std() > 5
