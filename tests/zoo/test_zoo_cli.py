"""Built-in names through the CLI (`cellclass models`, MODEL arguments) and the Python API."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from napari_cellclass import api, cli
from zoo_utils import make_zoo

CARD_JSON_KEYS = {"name", "task", "classes", "trained_on", "metrics", "size_bytes", "sha256"}


@pytest.fixture
def zoo_folder(tmp_path, monkeypatch):
    return make_zoo(tmp_path, monkeypatch, {
        "wbc-best": {"metrics": {"macro_f1": 0.91}},
        "wbc-other": {"metrics": {"macro_f1": 0.42}, "seed": 5},
        "chromo-x": {"task": "chromosome", "channels": 1, "classes": [str(i) for i in range(1, 23)] + ["X", "Y"],
                     "metrics": {"accuracy": 0.8}},
    })


def test_models_table(zoo_folder, capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "classes", "metric", "size"]
    assert lines[1].split()[:5] == ["wbc-best", "wbc", "4", "macro_f1", "0.910"]
    assert lines[2].split()[0] == "wbc-other" and lines[3].split()[:3] == ["chromo-x", "chromosome", "24"]
    assert lines[1].endswith("MB")
    assert cli.main(["models", "--task", "chromosome"]) == 0
    out = capsys.readouterr().out
    assert "chromo-x" in out and "wbc-best" not in out


def test_models_json_and_info(zoo_folder, capsys):
    assert cli.main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in cards] == ["wbc-best", "wbc-other", "chromo-x"]
    for c in cards:
        assert CARD_JSON_KEYS <= set(c)
    assert cli.main(["models", "info", "chromo-x"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["name"] == "chromo-x" and one["task"] == "chromosome" and len(one["classes"]) == 24


def test_models_errors_exit_2(zoo_folder, capsys):
    assert cli.main(["models", "info", "nope"]) == 2
    assert "no built-in model named 'nope'" in capsys.readouterr().err
    assert cli.main(["models", "info"]) == 2
    assert cli.main(["models", "wbc-best"]) == 2
    assert "models info NAME" in capsys.readouterr().err


def test_models_on_an_empty_zoo(tmp_path, monkeypatch, capsys):
    make_zoo(tmp_path, monkeypatch)
    assert cli.main(["models"]) == 0
    assert "no built-in models" in capsys.readouterr().out
    assert cli.main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_predict_with_a_builtin_name(zoo_folder, tmp_path, capsys):
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "smear.png", img)
    out = tmp_path / "pred"
    rc = cli.main(["predict", "wbc", "wbc-best", str(tmp_path / "smear.png"), "--out", str(out), "--quiet",
                   "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["images"] == 1
    assert (out / "predictions.csv").is_file()


def test_info_accepts_a_builtin_name(zoo_folder, capsys):
    assert cli.main(["info", "wbc-best", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["task"] == "wbc"


def test_model_arguments_name_wrong_task_and_unknown(zoo_folder, tmp_path, capsys):
    assert cli.main(["karyotype", str(tmp_path), "--model", "wbc-best"]) == 2
    err = capsys.readouterr().err
    assert "'wbc-best' is a 'wbc' model" in err and "chromo-x" in err
    assert cli.main(["evaluate", "wbc", "wbc-typo", str(tmp_path)]) == 2
    assert "built-in models for 'wbc': wbc-best, wbc-other" in capsys.readouterr().err


def test_api_accepts_builtin_names(zoo_folder):
    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    res = api.classify(img, "wbc-best", cells=[(8, 8, 40, 40)], device="cpu")
    assert res["class_names"] == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
    assert len(res["classes"]) == 1
    from napari_cellclass.errors import InputError

    with pytest.raises(InputError, match="'chromo-x' is a 'chromosome' model"):
        api.classify(img, "chromo-x", task="wbc")
    with pytest.raises(InputError, match="neither a checkpoint file nor a built-in"):
        api.karyotype(img[..., 0], "missing-model")


def test_synthetic_models_are_flagged_on_the_command_line(tmp_path, monkeypatch, capsys):
    make_zoo(tmp_path, monkeypatch, {"wbc-synth": {"trained_on": "synthetic"}, "wbc-real": {}})
    img = (np.random.default_rng(2).random((48, 48, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "s.png", img)
    for name, flagged in (("wbc-synth", True), ("wbc-real", False)):
        rc = cli.main(["predict", "wbc", name, str(tmp_path / "s.png"), "--out", str(tmp_path / name), "--quiet",
                       "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert ("trained only on generated" in err) is flagged
