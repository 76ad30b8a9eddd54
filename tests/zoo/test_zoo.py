"""Built-in model registry: cards, ranking, name resolution, hash check, fp16, the add tool, docs."""
from __future__ import annotations

import json
import os

import pytest
import torch

from napari_cellclass import zoo
from napari_cellclass.engine.checkpoint import build_from_checkpoint, load_checkpoint, read_meta
from napari_cellclass.errors import InputError
from napari_cellclass.zoo import _fetch
from napari_cellclass.zoo.add import main as add_main
from zoo_utils import add, make_zoo, tiny_checkpoint

CARD_KEYS = {"name", "task", "arch", "classes", "input", "preprocessing", "trained_on", "metrics", "training",
             "size_bytes", "sha256", "date", "one_line"}


@pytest.fixture
def two_wbc(tmp_path, monkeypatch):
    return make_zoo(tmp_path, monkeypatch, {
        "wbc-good": {"metrics": {"macro_f1": 0.8, "accuracy": 0.85}},
        "wbc-weak": {"metrics": {"macro_f1": 0.4, "accuracy": 0.9}, "seed": 1},
        "chromo-a": {"task": "chromosome", "channels": 1, "classes": [str(i) for i in range(1, 23)] + ["X", "Y"],
                     "metrics": {"accuracy": 0.7}},
    })


def test_card_has_every_field(two_wbc):
    c = zoo.card("wbc-good")
    assert CARD_KEYS <= set(c)
    assert c["task"] == "wbc" and c["arch"] == "tiny_cnn"
    assert c["classes"] == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
    assert c["input"] == {"size": [32, 32], "channels": 3}
    assert c["preprocessing"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert c["transform"] == {"name": "wbc_crop", "params": {"size": 32, "crop": "box"}}
    assert set(c["trained_on"]) >= {"source", "licence", "split_rule", "counts"}
    assert c["trained_on"]["counts"] == {"n_train": 40, "n_val": 10}
    assert c["metrics"]["macro_f1"] == 0.8
    assert set(c["training"]) >= {"command", "wall_time_s", "device"}
    weights = two_wbc / "wbc-good.safetensors"
    assert c["size_bytes"] == weights.stat().st_size
    assert c["sha256"] == _fetch.sha256_of(weights)
    assert "macro_f1 0.800" in c["one_line"] and "BCCD test fixture" in c["one_line"]


def test_list_is_best_first_per_task_and_default(two_wbc):
    assert [c["name"] for c in zoo.list_models("wbc")] == ["wbc-good", "wbc-weak"]  # by macro F1, not accuracy
    assert zoo.default_model("wbc") == "wbc-good"
    assert zoo.default_model("hpa") is None
    assert zoo.list_models("karyotype") == []  # cards are listed by their own task only
    assert zoo.accepted_tasks("karyotype") == ("chromosome", "karyotype")  # but karyotyping accepts chromosome
    assert [c["name"] for c in zoo.list_models()] == ["wbc-good", "wbc-weak", "chromo-a"]
    zoo.list_models("wbc")[0]["task"] = "changed"  # copies: callers cannot corrupt the registry
    assert zoo.card("wbc-good")["task"] == "wbc"


def test_resolve_name_and_path(two_wbc, tmp_path):
    p = zoo.resolve_model("wbc-good", task="wbc")
    assert p == two_wbc / "wbc-good.safetensors"
    assert zoo.is_builtin("wbc-good") and not zoo.is_builtin(str(p)) and not zoo.is_builtin("nope")
    model, meta = zoo.load_model("wbc-good", task="wbc")
    assert meta.task == "wbc" and isinstance(model, torch.nn.Module)
    own = tiny_checkpoint(tmp_path / "own.safetensors")
    assert zoo.resolve_model(own, task="wbc") == own
    assert zoo.resolve_model("chromo-a", task="karyotype").name == "chromo-a.safetensors"


def test_resolve_errors_name_the_problem(two_wbc, tmp_path):
    with pytest.raises(InputError, match="neither a checkpoint file nor a built-in.*wbc-good, wbc-weak"):
        zoo.resolve_model("wbc-nope", task="wbc")
    with pytest.raises(InputError, match="'wbc-good' is a 'wbc' model.*'chromosome' or 'karyotype'.*chromo-a"):
        zoo.resolve_model("wbc-good", task="karyotype")
    with pytest.raises(InputError, match="no built-in hpa models"):
        zoo.resolve_model("hpa-model", task="hpa")
    own = tiny_checkpoint(tmp_path / "own.safetensors")
    with pytest.raises(InputError, match="is a 'wbc' model, but 'hpa' needs a 'hpa' model"):
        zoo.resolve_model(own, task="hpa")
    with pytest.raises(InputError, match="got a folder"):
        zoo.resolve_model(tmp_path, task="wbc")
    with pytest.raises(InputError, match="no model given"):
        zoo.resolve_model("  ")
    with pytest.raises(InputError, match="no built-in model named 'x'.*wbc-good"):
        zoo.card("x")


def test_hash_mismatch_is_refused_and_cached_per_file_version(two_wbc, monkeypatch):
    path = two_wbc / "wbc-good.safetensors"
    calls = []
    real = _fetch.hashlib.sha256
    monkeypatch.setattr(_fetch.hashlib, "sha256", lambda: calls.append(1) or real())
    _fetch._VERIFIED.clear()
    zoo.resolve_model("wbc-good")
    zoo.resolve_model("wbc-good")
    assert len(calls) == 1  # verified once per process while the file is unchanged
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip one weight byte: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch"):
        zoo.resolve_model("wbc-good")
    assert len(calls) == 2


def test_fp16_storage_halves_the_file_and_loads_as_float32(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    ck = tiny_checkpoint(tmp_path / "full.safetensors")
    card = add(ck, "wbc-half", folder, fp16=True)
    assert card["dtype"] == "float16"
    half = folder / "wbc-half.safetensors"
    assert half.stat().st_size < 0.6 * ck.stat().st_size
    state = load_checkpoint(zoo.resolve_model("wbc-half")).state_dict
    assert all(v.dtype != torch.float16 for v in state.values())
    m32, _ = build_from_checkpoint(ck)
    m16, _ = build_from_checkpoint(half)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m32(x), m16(x), atol=2e-2)
        assert not torch.equal(m32(x), m16(x))  # it really was stored in half precision


def test_add_keeps_what_exists_unless_better(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch, {"wbc-a": {"metrics": {"macro_f1": 0.6}}})
    before = (folder / "wbc-a.safetensors").read_bytes()
    worse = tiny_checkpoint(tmp_path / "worse.safetensors", metrics={"macro_f1": 0.5}, seed=3)
    with pytest.raises(InputError, match="exists; use --replace"):
        add(worse, "wbc-a", folder)
    with pytest.raises(InputError, match="not better"):
        add(worse, "wbc-a", folder, replace=True)
    assert (folder / "wbc-a.safetensors").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name not in ("wbc-a.json", "wbc-a.safetensors")]
    better = tiny_checkpoint(tmp_path / "better.safetensors", metrics={"macro_f1": 0.7}, seed=4)
    add(better, "wbc-a", folder, replace=True)
    assert zoo.card("wbc-a")["metrics"]["macro_f1"] == 0.7
    assert zoo.resolve_model("wbc-a")  # new hash matches the new file


def test_add_metrics_json_counts_and_synthetic_flag(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    ev = tmp_path / "heldout.json"
    ev.write_text(json.dumps({"macro_f1": 0.55, "accuracy": 0.7, "per_class": {"x": 1}, "n": 20}))
    ck = tiny_checkpoint(tmp_path / "s.safetensors", trained_on="synthetic")
    c = add(ck, "wbc-s", folder, metrics_json=ev, counts=["images=12"])
    assert c["metrics"] == {"macro_f1": 0.55, "accuracy": 0.7, "n": 20}
    assert "evaluate" in c["metrics_source"]
    assert c["trained_on"]["counts"]["images"] == 12 and c["trained_on"]["synthetic"] is True
    assert read_meta(folder / "wbc-s.safetensors").trained_on == "synthetic"
    real = add(tiny_checkpoint(tmp_path / "r.safetensors", trained_on="/home/me/data/bccd"), "wbc-r", folder)
    assert real["trained_on"]["synthetic"] is False
    assert read_meta(folder / "wbc-r.safetensors").trained_on == "BCCD test fixture"  # no local path shipped


def test_add_cli_validates(tmp_path, monkeypatch, capsys):
    folder = make_zoo(tmp_path, monkeypatch)
    ck = tiny_checkpoint(tmp_path / "c.safetensors")
    base = [str(ck), "--command", "x", "--wall-time-s", "1", "--device", "cpu", "--data-source", "d",
            "--licence", "MIT", "--split-rule", "by image", "--zoo-dir", str(folder)]
    assert add_main(base + ["--name", "Bad Name"]) == 2
    assert "model name" in capsys.readouterr().err
    assert add_main(base + ["--name", "ok-name", "--command= "]) == 2
    assert "--command is required" in capsys.readouterr().err
    assert add_main(base + ["--name", "ok-name"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "ok-name"
    assert (folder / "ok-name.json").is_file()


def test_add_refuses_files_over_the_size_limits(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    ck = tiny_checkpoint(tmp_path / "c.safetensors")
    monkeypatch.setattr(zoo, "MAX_FILE_BYTES", 1000)
    import napari_cellclass.zoo.add as add_mod

    monkeypatch.setattr(add_mod, "MAX_FILE_BYTES", 1000)
    with pytest.raises(InputError, match="at most"):
        add(ck, "too-big", folder)
    assert list(folder.iterdir()) == []


def test_bad_cards_are_named(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    (folder / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="x.json: model card is not valid JSON"):
        zoo.list_models()
    (folder / "x.json").write_text(json.dumps({"name": "y", "task": "wbc", "arch": "a", "classes": [], "sha256": "0"}))
    with pytest.raises(InputError, match="does not match its file name"):
        zoo.list_models()
    (folder / "x.json").write_text(json.dumps({"name": "x", "task": "wbc", "arch": "a", "classes": [], "sha256": "0"}))
    with pytest.raises(InputError, match="neither a weights file"):
        zoo.list_models()
    monkeypatch.setenv("CELLCLASS_ZOO_DIR", str(tmp_path / "missing"))
    with pytest.raises(InputError, match="does not exist"):
        zoo.list_models()


def test_synthetic_warning_helper():
    assert zoo.synthetic_warning("synthetic (napari-cellclass demo)").startswith("Warning")
    assert zoo.synthetic_warning("Synthetic") and not zoo.synthetic_warning("BCCD (MIT)")
    assert zoo.synthetic_warning(None) == ""


# ---------------------------------------------------------------- the shipped folder
def test_shipped_weights_fit_the_limits_and_match_their_cards(monkeypatch):
    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    folder = zoo.WEIGHTS_DIR
    files = sorted(folder.glob("*.safetensors"))
    assert zoo.MAX_FILE_BYTES == 10 * 2**20 and zoo.MAX_TOTAL_BYTES == 30 * 2**20
    for f in files:
        assert f.stat().st_size <= zoo.MAX_FILE_BYTES, f
        assert (folder / f"{f.stem}.json").is_file(), f"{f.name} has no model card"
    assert sum(f.stat().st_size for f in files) <= zoo.MAX_TOTAL_BYTES
    for c in zoo.list_models():
        assert CARD_KEYS <= set(c), c["name"]
        local = folder / f"{c['name']}.safetensors"
        if local.is_file():
            assert c["size_bytes"] == local.stat().st_size
            assert c["sha256"] == _fetch.sha256_of(local), f"{c['name']}: card sha256 is stale"
            meta = read_meta(local)
            assert (meta.task, meta.arch, list(meta.class_names)) == (c["task"], c["arch"], c["classes"])
        else:
            assert c.get("url"), c["name"]
    leftovers = [p.name for p in folder.iterdir() if p.suffix not in (".json", ".safetensors")
                 and p.name not in ("README.md", ".gitkeep")]
    assert not leftovers


def test_models_page_is_up_to_date(monkeypatch):
    from napari_cellclass.zoo.docs import default_docs_path, render

    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    page = default_docs_path()
    assert page is not None and page.is_file(), "docs/models.md missing: run python -m napari_cellclass.zoo.docs"
    assert page.read_text(encoding="utf-8") == render(zoo.list_models()), \
        "docs/models.md is out of date: run python -m napari_cellclass.zoo.docs"


def test_docs_render_lists_each_card(two_wbc):
    from napari_cellclass.zoo.docs import render

    text = render(zoo.list_models())
    for name in ("wbc-good", "wbc-weak", "chromo-a"):
        assert f"`{name}`" in text
    assert "macro_f1 0.800" in text and "no built-in HPA model" in text.replace("There is no", "no")


def test_zoo_core_imports_no_qt():
    import subprocess
    import sys

    code = ("import sys, napari_cellclass.zoo, napari_cellclass.zoo.add, napari_cellclass.zoo.docs; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('PyQt5','PyQt6','PySide2','PySide6','qtpy')]; "
            "sys.exit(1 if bad else 0)")
    env = {**os.environ}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0



def test_weights_are_not_ignored_so_they_ship_in_the_wheel():
    """hatch leaves git-ignored files out of the wheel, and *.safetensors is ignored elsewhere."""
    import shutil
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout (e.g. an sdist): .gitignore rules do not apply")
    probe = "src/napari_cellclass/zoo/weights/some-model.safetensors"
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", probe], cwd=repo)
    assert r.returncode == 1, f"{probe} is git-ignored: built-in weights would be left out of the wheel"
    other = subprocess.run(["git", "check-ignore", "--no-index", "-q", "runs/x/model.safetensors"], cwd=repo)
    assert other.returncode == 0  # training outputs stay out of git


def test_card_carries_the_calibration_of_the_header(tmp_path):
    """A calibrated checkpoint's temperature and ECE reach its card and docs/models.md's section."""
    from dataclasses import replace

    from napari_cellclass.engine.checkpoint import load_checkpoint, save_checkpoint
    from napari_cellclass.zoo.add import rebuild_card
    from napari_cellclass.zoo.docs import render

    ck = tiny_checkpoint(tmp_path / "m.safetensors", metrics={"macro_f1": 0.6})
    loaded = load_checkpoint(ck)
    cal = {"temperature": 1.7, "ece_before": 0.14, "ece_after": 0.03, "n_fit": 40, "n_test": 38,
           "fit_on": "every other held-out cell (sorted); ECE on the rest"}
    save_checkpoint(ck, loaded.state_dict, replace(loaded.meta, calibration=cal))
    folder = tmp_path / "zoo"
    card = add(ck, "cal-model", folder)
    assert card["calibration"] == cal
    assert rebuild_card("cal-model", folder) == card
    assert "softmax temperature 1.700" in render([card]) and "0.140 -> 0.030" in render([card])
