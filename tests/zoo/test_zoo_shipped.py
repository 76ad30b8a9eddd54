"""The models that really ship: each loads offline, verifies, and runs from the API on a real sample.

Parametrised over the packaged cards, so every model added with ``zoo.add`` is tested
here without writing a test for it (no cards: nothing to test, pytest says so).
"""
from __future__ import annotations

import pytest
import torch

from napari_cellclass import zoo

SHIPPED = sorted(zoo._read_cards(zoo.WEIGHTS_DIR))


@pytest.fixture(autouse=True)
def _packaged_zoo(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_real_verified_and_runs(name):
    from napari_cellclass import api
    from napari_cellclass.samples import bccd_samples

    card = zoo.card(name)
    assert not card["trained_on"].get("synthetic"), f"{name}: built-ins must be trained on real images"
    assert card["trained_on"]["licence"] and card["trained_on"]["split_rule"] and card["metrics"]
    if card.get("url"):
        pytest.skip(f"{name} is registered by URL; fetching is tested in test_zoo_fetch.py")
    model, meta = zoo.load_model(name, task=card["task"])
    assert meta.class_names == card["classes"]
    sample = bccd_samples()[0]
    if card["task"] == "wbc":
        boxes, labels = sample.boxes()
        res = api.classify(sample.read(), name, cells=boxes[[labels.index("WBC")]], device="cpu")
        assert len(res["classes"]) == 1 and res["classes"][0] in card["classes"]
    elif card["task"] == "detect":
        res = api.detect(sample.read(), name, device="cpu")
        assert set(res["labels"]) <= set(card["classes"])
    elif card["task"] == "karyotype":  # the chromosome detector, on a generated spread (no real one may ship)
        from napari_cellclass.engine.progress import run_sync
        from napari_cellclass.karyotype.detector import detect_chromosomes
        from napari_cellclass.synth.chromosomes import make_spread

        spread = make_spread(3, "46,XY", size=(384, 384))
        found = run_sync(detect_chromosomes(spread["image"], model))
        assert found["labels"].shape == spread["image"].shape[:2] and len(found["boxes"]) == found["labels"].max()
    else:  # no real sample can ship for this task: the network must at least run on its input shape
        c, (h, w) = card["input"]["channels"], card["input"]["size"][:2]
        with torch.no_grad():
            out = model(torch.rand(1, c, h, w))
        assert out.shape[-1] == len(card["classes"]) and torch.isfinite(out).all()

