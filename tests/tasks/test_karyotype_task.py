"""karyotype task: the job, CLI predict outputs, evaluation on annotated spreads (synthetic and real)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, InputError
from napari_cellclass.synth.chromosomes import CHROMOSOME_CLASSES, make_spread
from napari_cellclass.tasks.base import TaskOptions
from napari_cellclass.tasks.karyotype import evaluate, karyotype, predict

from karyotype_utils import tiny_checkpoint


# generated spreads go through the classical segmenter: the built-in detector learnt real G-band
# spreads, which generated ones do not resemble closely enough (see test_karyotype_builtin.py)
SYNTH_SEG = "threshold"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("karyo") / "model.safetensors")


def write_voc(spread: dict, img_path: Path) -> None:
    objs = "".join(
        f"<object><name>{CHROMOSOME_CLASSES[c]}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, (y0, x0, y1, x1) in zip(spread["classes"], spread["boxes"]))
    h, w = spread["image"].shape
    img_path.with_suffix(".xml").write_text(
        f"<annotation><filename>{img_path.name}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>1</depth></size>{objs}</annotation>")


def test_karyotype_job_and_label_reuse(ckpt):
    s = make_spread(2, "46,XY", size=(448, 448))
    res = run_sync(karyotype(s["image"], ckpt, segmenter=SYNTH_SEG))
    n = int(res["labels"].max())
    assert n >= 40
    assert res["probabilities"].shape == (n, 24)
    assert np.allclose(res["probabilities"].sum(1), 1, atol=1e-4)
    assert len(res["classes"]) == n and res["karyogram"].ndim == 3
    assert res["summary"].startswith(f"{res['count']},")
    assert len(res["table"]) == n
    # user-edited labels: drop one object, keep the others' probabilities -> only nothing new is classified
    labels = res["labels"].copy()
    labels[labels == 3] = 0
    known = {i + 1: res["probabilities"][i] for i in range(n) if i + 1 != 3}
    again = run_sync(karyotype(s["image"], ckpt, labels=labels, known_probs=known, fixed={5: 20}))
    assert again["classified"] == 0
    assert int(again["labels"].max()) == n - 1  # relabelled 1..N-1
    assert again["class_names"][3] == "21"  # old label 5 is now label 4, keeping the user's class


def test_karyotype_cancel_and_bad_input(ckpt):
    s = make_spread(3, "46,XX", size=(320, 320))
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        run_sync(karyotype(s["image"], ckpt, cancel=tok))
    with pytest.raises(InputError):
        run_sync(karyotype(np.zeros((4, 5, 6, 7)), ckpt))
    with pytest.raises(InputError):
        run_sync(karyotype(s["image"], ckpt, segmenter="magic"))


@pytest.mark.slow
def test_predict_writes_outputs_and_evaluate_scores_segmentation(ckpt, tmp_path):
    s = make_spread(5, "47,XY,+21", size=(448, 448))
    img_path = tmp_path / "spreads" / "sp1.png"
    img_path.parent.mkdir()
    Image.fromarray(s["image"]).save(img_path)
    write_voc(s, img_path)
    out = tmp_path / "out"
    res = run_sync(predict(ckpt, [img_path], TaskOptions(out=out, extra={"segmenter": SYNTH_SEG})))
    row = res["spreads"][0]
    for key in ("karyogram_png", "csv", "labels_tif", "summary_json"):
        assert Path(row[key]).is_file()
    summary = json.loads(Path(row["summary_json"]).read_text())
    assert summary["summary"] == row["summary"] and len(summary["chromosomes"]) >= row["count"]
    ev = run_sync(evaluate(Path("none"), img_path.parent, TaskOptions(extra={"segmenter": SYNTH_SEG})))
    assert ev["n_spreads"] == 1 and ev["n_true"] == 47
    assert ev["recall"] >= 0.85 and ev["precision"] >= 0.85
    ev2 = run_sync(evaluate(ckpt, img_path.parent, TaskOptions(extra={"segmenter": SYNTH_SEG})))
    assert 0 <= ev2["class_accuracy_paired"] <= 1 and "karyotype_string_accuracy" in ev2
    assert ev2["karyotype_string_accuracy"] <= ev2["karyotype_string_accuracy_if_unsure_confirmed"] <= 1
    assert 0 <= ev2["confident_share"] <= 1 and all("n_flagged" in r for r in ev2["per_spread"])


@pytest.mark.realdata
def test_evaluate_segmentation_on_real_tseng_spreads(shared_data):
    root = shared_data / "chromosomes" / "tseng2023_gband_spreads"
    if not root.is_dir():
        pytest.skip("Tseng G-band spreads not present")
    ev = run_sync(evaluate(Path("none"), root, TaskOptions(extra={"limit": 3, "segmenter": "threshold"})))
    assert ev["n_spreads"] == 3 and ev["n_true"] >= 130
    # classical threshold + watershed on real G-band spreads with overlaps: clearly useful, not perfect
    assert ev["recall"] >= 0.45 and ev["precision"] >= 0.45


def test_detector_segmenter_uses_detection_boxes(monkeypatch):
    import napari_cellclass.tasks.detect as det
    from napari_cellclass.tasks.karyotype import segment

    s = make_spread(6, "46,XX", size=(384, 384))

    def fake_detect(image, model_path, device=None, cancel=None, **kw):
        assert image.ndim == 3 and image.shape[2] == 3
        yield from ()
        return {"boxes": s["boxes"].astype(float), "scores": np.linspace(1, 0.5, len(s["boxes"]))}

    import torch

    import napari_cellclass.tasks.karyotype as kt
    from napari_cellclass.zoo.loaded import LoadedModel

    monkeypatch.setattr(det, "detect", fake_detect)
    # no checkpoint behind the fake detector: the one loader hands back a stand-in
    monkeypatch.setattr(kt, "load_model", lambda src, **kw: LoadedModel.from_network(torch.nn.Identity(),
                                                                                      device="cpu", source=str(src)))
    labels = run_sync(segment(s["image"], "detector", Path("det.safetensors")))
    assert int(labels.max()) == 46
    from napari_cellclass.karyotype.metrics import match_boxes
    from napari_cellclass.karyotype.segment import label_boxes

    assert len(match_boxes(label_boxes(labels), s["boxes"], 0.5)) >= 44
    with pytest.raises(InputError):
        run_sync(segment(s["image"], "detector", None))
