"""CenterNet detector (the CPU default): target encoding, device defaults, time budget, held-out evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import read_meta
from napari_cellclass.engine.device import resolve_device
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.models.centernet import decode, encode_targets
from napari_cellclass.tasks import detect as det
from napari_cellclass.tasks.base import TaskOptions


def test_targets_decode_back_to_the_boxes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 44.0], [60.0, 8.0, 70.0, 18.0]])
    t = encode_targets(boxes, torch.tensor([0, 2]), 3, (32, 32))
    assert t["mask"].sum() == 2 and t["heatmap"][0].max() == 1 and t["heatmap"][2].max() == 1
    eps = 1e-4
    out = {"heatmap": torch.logit(t["heatmap"].clamp(eps, 1 - eps))[None], "size": t["size"][None],
           "offset": t["offset"][None]}
    r = decode(out, score_threshold=0.99)[0]
    order = torch.argsort(r["boxes"][:, 0])
    assert torch.allclose(r["boxes"][order], boxes, atol=1e-3)
    assert r["labels"][order].tolist() == [1, 3]


def test_default_architecture_suits_the_device():
    assert det.default_arch(resolve_device("cpu")) == "centernet"
    assert det.default_arch(resolve_device("cpu"), quick=True) == det.QUICK_ARCH


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return det.synth(tmp_path_factory.mktemp("voc") / "data", 8, seed=3)


def test_time_budget_stops_within_the_first_epoch_and_keeps_a_checkpoint(voc, tmp_path):
    opts = TaskOptions(arch="centernet", quick=True, epochs=50, batch_size=1, out=tmp_path / "run", device="cpu",
                       extra={"time_budget_s": 1e-6, "val_fraction": 0.25})
    stages = []
    r = run_sync(det.train(voc, opts), lambda p: stages.append(p.stage))
    assert r["stopped_by_time_budget"] and "epoch" not in stages  # stopped after one batch, not one epoch
    meta = read_meta(r["checkpoint"])
    assert meta.arch == "centernet" and "time budget" in meta.metrics["note"]


def test_evaluate_split_val_uses_the_images_the_model_held_out(voc, tmp_path):
    opts = TaskOptions(arch="centernet", quick=True, epochs=1, out=tmp_path / "run", device="cpu",
                       extra={"val_fraction": 0.25})
    r = run_sync(det.train(voc, opts))
    meta = read_meta(r["checkpoint"])
    assert len(meta.training["val_images"]) == 2 and not set(meta.training["val_images"]) & set(
        meta.training["train_images"])
    ev = run_sync(det.evaluate(r["checkpoint"], voc, TaskOptions(device="cpu", extra={"split": "val"})))
    assert ev["images"] == 2 and ev["split"] == "val"
    json.dumps(ev)
    r2 = run_sync(det.detect(np.full((64, 64, 3), 200, np.uint8), r["checkpoint"], device="cpu", score_threshold=1.0))
    assert r2["labels"] == [] and r2["message"] == "0 object(s) above score 1.00"
