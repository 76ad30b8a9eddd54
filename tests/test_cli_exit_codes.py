"""Exit codes that tell the truth, meaningless work refused, CSV cells escaped (issue 24, round 2).

* 3 when some inputs of ``predict``/``karyotype`` were refused (one stderr line each; the others processed);
* ``evaluate`` never exits 0 with a NaN metric (4), and its JSON is valid (null, never a bare NaN);
* option values out of range are refused in one line naming the option and the range;
* CSV cells a spreadsheet would run as formulas are escaped; numbers stay numbers.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cellclass import cli


def _hpa_checkpoint(path: Path) -> Path:
    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model

    model = build_model("tiny_cnn", in_channels=4, num_classes=28, width=4)
    meta = CheckpointMeta(task="hpa", arch="tiny_cnn", class_names=[f"c{i}" for i in range(28)], in_channels=4,
                          input_size=[16, 16], arch_config={"in_channels": 4, "num_classes": 28, "width": 4})
    return save_checkpoint(path, model, meta)


def _hpa_set(folder: Path, set_id: str, value: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(set_id)) % 1000)
    for c in ("red", "green", "blue", "yellow"):
        a = rng.integers(0, 255, (32, 32)).astype(np.uint8) if value is None else np.full((32, 32), value, np.uint8)
        Image.fromarray(a).save(folder / f"{set_id}_{c}.png")


def test_predict_hpa_refuses_a_blank_set_exit_3_one_line_each(tmp_path, capsys):
    model = _hpa_checkpoint(tmp_path / "m.safetensors")
    _hpa_set(tmp_path / "in", "good")
    _hpa_set(tmp_path / "in", "blank", value=0)
    code = cli.main(["predict", "hpa", str(model), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_SOME_REFUSED == 3, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("cellclass: refused: ")]
    assert len(lines) == 1 and "blank_" in lines[0] and "blank" in lines[0].split(": ", 2)[2]
    res = json.loads(captured.out)
    assert list(res["predictions"]) == ["good"]  # the other set was still predicted


def test_predict_hpa_refuses_a_set_over_the_whole_image_budget(tmp_path, capsys, monkeypatch):
    """Four 4000 px channels decode within a 1 GiB budget, but classifying the whole field would not fit."""
    from napari_cellclass import budget

    model = _hpa_checkpoint(tmp_path / "m.safetensors")
    _hpa_set(tmp_path / "in", "good")
    for c in ("red", "green", "blue", "yellow"):
        Image.fromarray(np.full((4000, 4000), 7, np.uint8)).save(tmp_path / "in" / f"huge_{c}.png")
    monkeypatch.setenv(budget.ENV_MEMORY_BUDGET, "1GiB")
    code = cli.main(["predict", "hpa", str(model), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                     "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_SOME_REFUSED, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("cellclass: refused: ")]
    assert len(lines) == 1 and "huge_" in lines[0] and "too large" in lines[0]
    assert list(json.loads(captured.out)["predictions"]) == ["good"]


def test_batch_mode_lists_a_refused_input_and_goes_on(tmp_path, capsys):
    """``--shard``: a chunk whose task refuses one named input runs again without it."""
    from napari_cellclass.engine.batch import Shard, run_batch
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.errors import InputError
    from napari_cellclass.tasks.base import TaskOptions

    files = []
    for name in ("a", "b", "c"):
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16)).astype(np.uint8)).save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")

    def predict(model, inputs, opts):
        if any(p.name == "b.png" for p in inputs):
            raise InputError("image is blank", [p for p in inputs if p.name == "b.png"][0])
        (Path(opts.out) / "t.csv").write_text("image\n" + "".join(f"{p.name}\n" for p in inputs))
        return {"n": len(inputs)}
        yield  # a generator, as tasks are

    res = run_sync(run_batch("x", predict, "m", [tmp_path], TaskOptions(out=tmp_path / "out"), Shard(0, 1),
                             chunk=8), None)
    assert [r["input"].rsplit("/", 1)[-1] for r in res["refused"]] == ["b.png"] and res["merged"]
    assert (tmp_path / "out" / "t.csv").read_text().split() == ["image", "a.png", "c.png"]


def test_evaluate_with_an_undefined_metric_exits_4_and_writes_valid_json(tmp_path, capsys, monkeypatch):
    from napari_cellclass.tasks import base

    def evaluate(model, data, opts):
        return {"mAP": float("nan"), "mAP50": float("inf"), "per_class": {"RBC": {"AP": float("nan")}}, "images": 1}
        yield

    real = base.task_function
    monkeypatch.setattr(base, "task_function", lambda t, n: evaluate if n == "evaluate" else real(t, n))
    monkeypatch.setattr(cli, "_resolve_models", lambda args: None)
    out = tmp_path / "m.json"
    code = cli.main(["evaluate", "detect", "model", str(tmp_path), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_METRIC_UNDEFINED == 4
    assert "NaN" not in captured.out and "Infinity" not in captured.out
    for text in (captured.out, out.read_text()):
        res = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
        assert res["mAP"] is None and res["mAP50"] is None and res["per_class"]["RBC"]["AP"] is None
    assert "mAP" in captured.err and "undefined" in captured.err


def test_coco_metrics_without_any_object_is_undefined_not_zero():
    from napari_cellclass.io.annotations import AnnotatedImage
    from napari_cellclass.io.detection_dataset import DetectionDataset
    from napari_cellclass.tasks.detect import coco_metrics

    item = AnnotatedImage(None, 32, 32, np.zeros((0, 4)), [], [], [])
    ds = DetectionDataset([item], ["RBC"], "t")
    r = coco_metrics(ds, [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}], ["RBC"])
    assert np.isnan(r["mAP"]) and np.isnan(r["mAP50"])
    # a box far outside a picture without a declared size is clipped to the image read, not left at 1e300
    item = AnnotatedImage(None, None, None, np.array([[2.0, 2.0, 1e300, 1e300]]), ["RBC"], [None], [{}])
    ds = DetectionDataset([item], ["RBC"], "t")
    pred = {"boxes": np.array([[2.0, 2.0, 32.0, 32.0]]), "labels": np.array([1]), "scores": np.array([0.9]),
            "image_hw": (32, 32)}
    r = coco_metrics(ds, [pred], ["RBC"])
    assert r["mAP50"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, words", [
    (["--set", "val_fraction=1.5"], "0 < val_fraction < 1"),
    (["--set", "val_fraction=-0.1"], "0 < val_fraction < 1"),
    (["--set", "time_budget_s=-1"], "time_budget_s > 0"),
    (["--set", "width=100000"], "1 <= width <= 1024"),
    (["--set", "layers=0,0,0,0"], "1 <= layers <= 64"),
    (["--batch-size", "0"], "1 <= batch_size"),
    (["--epochs", "0"], "1 <= epochs"),
    (["--size", "100000"], "8 <= size <= 8192"),
    (["--seed", "-1"], "seed >= 0"),
    (["--set", "lr=-1"], "0 < lr <= 10"),
])
def test_option_values_out_of_range_are_refused_in_one_line(tmp_path, capsys, argv, words):
    code = cli.main(["train", "wbc", str(tmp_path), "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_training_on_blank_images_or_no_label_is_refused_before_training(tmp_path, capsys):
    data = tmp_path / "hpa"
    for k in range(6):
        _hpa_set(data / "train", f"s{k}", value=0)
    (data / "train.csv").write_text("Id,Target\n" + "".join(f"s{k},{k % 3}\n" for k in range(6)))
    code = cli.main(["train", "hpa", str(data), "--out", str(tmp_path / "r1"), "--quick", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "blank" in err and not (tmp_path / "r1" / "model.safetensors").exists()
    for k in range(6):
        _hpa_set(data / "train", f"s{k}")
    (data / "train.csv").write_text("Id,Target\n" + "".join(f"s{k},\n" for k in range(6)))
    code = cli.main(["train", "hpa", str(data), "--out", str(tmp_path / "r2"), "--quick", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no image has a label" in err


def test_training_on_all_black_wbc_crops_is_refused(tmp_path, capsys):
    data = tmp_path / "wbc"
    for cls in ("NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE", "EOSINOPHIL"):
        (data / cls).mkdir(parents=True)
        for k in range(20):
            Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(data / cls / f"{cls}_{k}.png")
    code = cli.main(["train", "wbc", str(data), "--out", str(tmp_path / "r"), "--quick", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "blank" in err and not (tmp_path / "r" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- CSV injection

def test_formula_cells_are_escaped_numbers_are_not():
    from napari_cellclass.engine.csvsafe import DictWriter, escape_cell, unescape_cell, writer

    for bad in ("=HYPERLINK(\"http://x\")", "+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert escape_cell(bad) == "'" + bad and unescape_cell(escape_cell(bad)) == bad
    for ok in ("-1.5", "+3", "-1e300", -1.5, 3, "plain", "", "'quoted"):
        assert escape_cell(ok) == ok
    buf = io.StringIO()
    w = DictWriter(buf, fieldnames=["image", "label", "score"])
    w.writeheader()
    w.writerow({"image": "=cmd|' /C calc'!A0", "label": "@x", "score": -0.5})
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["image"].startswith("'=") and rows[0]["label"] == "'@x" and float(rows[0]["score"]) == -0.5
    buf = io.StringIO()
    writer(buf).writerow(["=1+1", -3])
    assert buf.getvalue().strip() == "'=1+1,-3"


def test_write_csv_atomic_escapes(tmp_path):
    from napari_cellclass.io.writers import write_csv_atomic

    p = write_csv_atomic(tmp_path / "t.csv", [{"name": "=1+1", "value": -2.5}])
    rows = list(csv.DictReader(p.open()))
    assert rows == [{"name": "'=1+1", "value": "-2.5"}]


def test_detection_table_escapes_an_image_name(tmp_path, monkeypatch):
    """``predict detect`` writes image names (chosen by whoever made the files) as text, never formulas."""
    from napari_cellclass.engine.csvsafe import DictWriter

    buf = io.StringIO()
    w = DictWriter(buf, fieldnames=["image", "label"])
    w.writerow({"image": "-x.png", "label": "+RBC"})
    assert buf.getvalue().strip() == "'-x.png,'+RBC"
