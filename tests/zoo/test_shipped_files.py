"""What ships carries no trace of the build machine, and every model card is what the zoo tool writes.

* every shipped card equals, as text, the card :func:`zoo.add.rebuild_card` makes from its
  weights' header plus the card's trainer-only fields (a hand edit of anything derived fails);
* card metrics are finite numbers only (tables belong in docs/);
* every shipped safetensors header declares its transform (``meta.preprocess``);
* no text file under src/napari_cellclass/ (cards and safetensors headers included), docs/,
  benchmarks/ or README.md names an absolute path of some machine.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_cellclass import zoo
from napari_cellclass.engine.checkpoint import (
    META_KEY, declared_preprocess, load_checkpoint, read_meta, save_checkpoint,
)
from napari_cellclass.errors import InputError
from napari_cellclass.zoo.add import card_text, rebuild_card, restamp, restamped_meta
from zoo_utils import add, make_zoo, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "napari_cellclass"
SCANNED = [PKG, ROOT / "docs", ROOT / "benchmarks", ROOT / "README.md"]
WEIGHTS = zoo.WEIGHTS_DIR
CARDS = sorted(p.stem for p in WEIGHTS.glob("*.json"))
SHIPPED_WEIGHTS = sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))

# an absolute path of some machine: /work/..., /root/..., /tmp/..., /mnt/..., /scratch/..., /media/...,
# /var/folders/... (macOS temp), /home/<user>, /Users/<user>, C:\Users (also JSON-escaped or with '/').
# Not part of a longer relative path (../shared/data, runs/tmp/x) nor of a URL (https://host/x).
MACHINE_PATH = re.compile(
    r"(?<![\w.~/\\-])(?:"
    r"/(?:work|root|tmp|mnt|scratch|media|var/folders)/[^\s'\"`<>|,;()\[\]{}]*"
    r"|/(?:home|Users)/[^/\s'\"`<>|,;()\[\]{}]+"
    r"|[A-Za-z]:(?:\\{1,2}|/)(?:Users|Documents and Settings)\b"
    r")"
)
# The only allowed hits, each a third party's data shipped verbatim (not a machine of this project):
ALLOWED = [
    # the Pascal VOC annotations of the BCCD data set (MIT), copied unchanged into the bundled samples:
    # <path> is where the data set's authors labelled the images (their Raspberry Pi's home folder)
    ("samples/bccd/*.xml", "/home/pi"),
]
# whole-image inputs that the detectors make themselves; preprocess.py registers the per-object
# (classifier) transforms only. Drop this allowance once they are registered there.
DETECTOR_INPUTS = {"detect": "detector_rgb", "karyotype": "spread_input"}


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n].decode("utf-8"))


def _text_of(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        return json.dumps(_header(path), ensure_ascii=False)  # metadata JSON escapes stay visible
    data = path.read_bytes()
    if b"\0" in data:
        return None  # images, arrays and other binaries
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _files(roots: list[Path]) -> list[Path]:
    out = []
    for r in roots:
        if r.is_file():
            out.append(r)
        elif r.is_dir():
            out += [p for p in sorted(r.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                    and p.suffix not in (".pyc", ".pyo")]
    return out


def machine_paths(roots: list[Path], base: Path, allowed=()) -> list[str]:
    """``file:line: path`` for every absolute machine path found in the text files under ``roots``."""
    found = []
    for path in _files(roots):
        text = _text_of(path)
        if text is None:
            continue
        rel = path.relative_to(base).as_posix()
        for m in MACHINE_PATH.finditer(text):
            if any(Path(rel).match(glob) and m.group(0).startswith(prefix) for glob, prefix in allowed):
                continue
            found.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
    return found


# ----------------------------------------------------------------------------- the scan
def test_no_machine_paths_in_shipped_text():
    found = machine_paths(SCANNED, ROOT, [(f"src/napari_cellclass/{g}", p) for g, p in ALLOWED])
    assert not found, "absolute paths of a machine in shipped files:\n" + "\n".join(found[:40])


def test_the_scan_finds_planted_paths_and_spares_relative_ones(tmp_path):
    tree = tmp_path / "tree"
    (tree / "docs").mkdir(parents=True)
    clean = ("cellclass train wbc ../shared/data/bccd --out runs/tmp/x; https://github.com/a/b; RBC/WBC/Platelets; "
             "doi:10.1038/s41597-023-02003-7; RGB uint8 / 255; ~/.cache/napari-cellclass; file name/with/slashes")
    (tree / "docs" / "ok.md").write_text(clean)
    assert machine_paths([tree], tmp_path) == []
    planted = {"a.md": "see /work/runs/qband30/model.safetensors", "b.py": 'DATA = Path("/tmp/bench")',
               "c.json": '{"data": "/home/alice/data"}', "d.txt": r"C:\Users\bob\data",
               "e.json": json.dumps({"d": "C:\\Users\\bob"}), "f.md": "(/root/x)", "g.md": "/Users/carol/x"}
    for name, text in planted.items():
        (tree / "docs" / name).write_text(text)
    ck = tiny_checkpoint(tmp_path / "m.safetensors")  # and one inside a safetensors header
    c = load_checkpoint(ck)
    save_checkpoint(tree / "m.safetensors", c.state_dict, replace(c.meta, training={"data": "/mnt/d/bccd"}))
    hits = machine_paths([tree], tmp_path)
    assert sorted(h.split(":")[0].split("/")[-1] for h in hits) == sorted([*planted, "m.safetensors"]), hits
    assert machine_paths([tree], tmp_path, [("tree/docs/f.md", "/root")]) != hits  # the allow-list works


# ----------------------------------------------------------------------------- cards and headers
@pytest.mark.parametrize("name", CARDS)
def test_shipped_card_is_what_the_tool_writes(name):
    card = json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))
    if card.get("url") and not (WEIGHTS / f"{name}.safetensors").is_file():
        pytest.skip(f"{name} is registered by URL; its card is rebuilt from the exported file")
    assert (WEIGHTS / f"{name}.json").read_text(encoding="utf-8") == card_text(rebuild_card(name, WEIGHTS)), \
        f"{name}.json is not what the zoo tool writes: python -m napari_cellclass.zoo.add --restamp {name}"


@pytest.mark.parametrize("name", CARDS)
def test_card_metrics_are_numbers_only(name):
    metrics = json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))["metrics"]
    assert metrics, name
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    assert not bad, f"{name}: card metrics must be finite numbers (tables go to docs/): {sorted(bad)}"


@pytest.mark.parametrize("name", SHIPPED_WEIGHTS)
def test_shipped_header_declares_its_transform_and_is_restamped(name):
    from napari_cellclass.preprocess import registered_transforms

    path = WEIGHTS / f"{name}.safetensors"
    raw = json.loads(_header(path)["__metadata__"][META_KEY])
    pre = raw.get("preprocess")
    assert isinstance(pre, dict) and pre.get("name"), f"{name}: header has no preprocess declaration"
    assert pre["name"] in registered_transforms() or pre["name"] == DETECTOR_INPUTS.get(raw["task"]), pre
    meta = read_meta(path)
    # the declaration is the transform the model always got (derived from normalization): same outputs
    assert pre == declared_preprocess(replace(meta, preprocess={}))
    # nothing left for --restamp to change in the header
    assert restamped_meta(meta).to_json() == meta.to_json(), f"run python -m napari_cellclass.zoo.add --restamp {name}"


# ----------------------------------------------------------------------------- the tool
def _strip_preprocess_and_plant(path: Path, training: dict) -> None:
    """Rewrite a checkpoint as an old trainer did: no preprocess field, a machine path in training."""
    from safetensors.torch import load_file, save_file

    raw = json.loads(_header(path)["__metadata__"][META_KEY])
    raw.pop("preprocess", None)
    raw["training"] = {**raw["training"], **training}
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(raw), "format": raw["format"]})


def test_restamp_rewrites_header_and_card_and_keeps_the_tensors(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    folder = make_zoo(tmp_path, monkeypatch, {"wbc-a": {"metrics": {"macro_f1": 0.6}}})
    weights, card_path = folder / "wbc-a.safetensors", folder / "wbc-a.json"
    _strip_preprocess_and_plant(weights, {"data": "/work/shared/data/bccd", "source": "../shared/data/bccd",
                                          "note": "copied from /home/alice/runs/x into runs"})
    before = load_file(str(weights))
    card = json.loads(card_path.read_text())
    card["metrics"].update(model="/work/runs/x/model.safetensors", per_class={"a": {"recall": 1.0}}, ok=True)
    card_path.write_text(json.dumps(card))
    assert card_path.read_text() != card_text(rebuild_card("wbc-a", folder))  # stale card and header: caught

    new = restamp("wbc-a", folder)
    after = load_file(str(weights))
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype
                                             for k in before)
    meta = read_meta(weights)
    assert meta.preprocess == {"name": "wbc_crop", "params": {"size": 32, "crop": "box"}}
    assert meta.training["data"] == "bccd" and meta.training["source"] == "bccd"
    assert meta.training["note"] == "copied from x into runs"
    assert new["metrics"] == {"macro_f1": 0.6} and new["transform"] == meta.preprocess
    assert card_path.read_text() == card_text(new) == card_text(rebuild_card("wbc-a", folder))
    assert zoo.resolve_model("wbc-a") == weights  # the card's sha256 is the new file's
    assert machine_paths([folder], tmp_path) == []
    sha = new["sha256"]
    assert restamp("wbc-a", folder)["sha256"] == sha  # nothing left to do: the weights are not rewritten


def test_hand_edited_card_fails_the_rebuild(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch, {"wbc-a": {}})
    path = folder / "wbc-a.json"
    assert path.read_text() == card_text(rebuild_card("wbc-a", folder))
    for edit in (lambda c: c["classes"].reverse(), lambda c: c.update(size_bytes=1),
                 lambda c: c["metrics"].update(data="../shared/data/bccd"), lambda c: c.pop("transform")):
        card = json.loads(path.read_text())
        edit(card)
        assert card_text(card) != card_text(rebuild_card("wbc-a", folder, old=card))


def test_add_scrubs_paths_and_keeps_numbers_only(tmp_path, monkeypatch):
    folder = make_zoo(tmp_path, monkeypatch)
    ck = tiny_checkpoint(tmp_path / "c.safetensors", trained_on="/home/me/data/bccd")
    c = load_checkpoint(ck)
    training = {**c.meta.training, "data": "/work/shared/data/bccd", "out": "runs/wbc",
                "fine_tuned_from": "C:\\Users\\me\\model.safetensors", "recipe": {"init": "/tmp/x/init.pt"}}
    save_checkpoint(ck, c.state_dict, replace(c.meta, training=training, preprocess={}))
    ev = tmp_path / "heldout.json"
    ev.write_text(json.dumps({"accuracy": 0.7, "macro_f1": 0.6, "n": 20, "model": "/work/runs/x/model.safetensors",
                              "data": "../shared/data/bccd", "full_model": False, "nan": float("nan"),
                              "per_class": {"x": {"recall": 1.0}}, "confusion_matrix": [[1, 0], [0, 1]]}))
    card = add(ck, "wbc-x", folder, metrics_json=ev, data_source="BCCD from /work/shared/data/bccd")
    assert card["metrics"] == {"accuracy": 0.7, "macro_f1": 0.6, "n": 20}
    meta = read_meta(folder / "wbc-x.safetensors")
    assert meta.training["data"] == "bccd" and meta.training["out"] == "runs/wbc"
    assert meta.training["fine_tuned_from"] == "model.safetensors" and meta.training["recipe"] == {"init": "init.pt"}
    assert meta.trained_on == "BCCD from bccd" == card["trained_on"]["source"]
    assert meta.preprocess["name"] == "wbc_crop"
    assert machine_paths([folder], tmp_path) == []
    assert (folder / "wbc-x.json").read_text() == card_text(rebuild_card("wbc-x", folder))
    with pytest.raises(InputError, match="absolute path"):
        add(ck, "wbc-y", folder, command="cellclass train wbc /work/shared/data/bccd --epochs 1")
    assert not (folder / "wbc-y.json").exists()


def test_restamp_cli(tmp_path, monkeypatch, capsys):
    from napari_cellclass.zoo.add import main

    folder = make_zoo(tmp_path, monkeypatch, {"wbc-a": {}, "wbc-b": {"seed": 1}})
    _strip_preprocess_and_plant(folder / "wbc-b.safetensors", {"data": "/work/x/bccd"})
    assert main(["--restamp", "all", "--zoo-dir", str(folder)]) == 0
    assert "restamped wbc-b" in capsys.readouterr().err
    assert read_meta(folder / "wbc-b.safetensors").training["data"] == "bccd"
    assert main(["--restamp", "nope", "--zoo-dir", str(folder)]) == 2
    with pytest.raises(SystemExit):
        main(["--name", "x"])  # adding still needs the checkpoint and the trainer's fields
    shutil.rmtree(folder)


def test_shipped_chromosome_classifiers_are_calibrated():
    """Every built-in chromosome classifier carries a temperature whose held-out ECE meets the 0.05 target."""
    import json

    from napari_cellclass.engine.checkpoint import read_meta

    folder = ROOT / "src" / "napari_cellclass" / "zoo" / "weights"
    cards = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    chromosome = [c for c in cards if c.get("task") == "chromosome"]
    assert chromosome
    for c in chromosome:
        cal = read_meta(folder / f"{c['name']}.safetensors").calibration
        assert cal == c["calibration"], c["name"]
        assert cal["ece_after"] <= 0.05 < cal["ece_before"] and cal["n_test"] > 100, c["name"]
