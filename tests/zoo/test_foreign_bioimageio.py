"""Foreign bioimage.io packages (the HPA community's shape): run, consent, download cache, hostile archives.

The real community weights cannot be downloaded here; the fixture packages
(tests/bioimageio_fixtures.py) copy their structure and go through the same code path.
"""
from __future__ import annotations

import json
import pickle
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bioimageio_fixtures as F
from napari_cellclass import api, cli, zoo
from napari_cellclass.errors import InputError
from napari_cellclass.zoo import foreign, trust
from napari_cellclass.zoo.foreign import TrustRequired

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
KINDS = [("0.4", "torchscript"), ("0.4", "pytorch_state_dict"), ("0.5", "torchscript"), ("0.5", "pytorch_state_dict")]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.TRUST_ENV, str(tmp_path / "trusted.json"))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("foreign")
    out = {k: F.classifier_package(tmp, fmt=k[0], weights=k[1], labels="file" if k[0] == "0.4" else "channels")
           for k in KINDS}
    out["singlecell"] = F.classifier_package(tmp, fmt="0.5", weights="torchscript", n_classes=19, labels="file",
                                             name="single cell fixture", seed=3)
    out["cells"] = F.segmentation_package(tmp, "cells")
    out["nuclei"] = F.segmentation_package(tmp, "nuclei", fmt="0.4")
    return out


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 48, 48), np.uint8)
    yy, xx = np.mgrid[:48, :48]
    for cy, cx in ((12, 12), (34, 30)):
        d = np.hypot(yy - cy, xx - cx)
        img[2][d < 5] = 200
        img[0][d < 10] = 120
        img[3][d < 9] = 90
        img[1][d < 7] = 60
    return img + rng.integers(0, 10, img.shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- running
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k[0]}-{k[1]}")
def test_each_kind_classifies_a_field_through_the_api(pkgs, field, kind):
    res = api.classify(list(field), str(pkgs[kind]), task="hpa", mode="whole", device="cpu", trust=True)
    names = res["class_names"]
    assert len(names) == 28 and len(res["probabilities"]) == 28
    assert names[0] == ("location 0" if kind[0] == "0.4" else "location_0")  # labels file / output channel names
    assert all(0 <= p <= 1 for p in res["probabilities"])
    fm = foreign.load_foreign(pkgs[kind], device="cpu")
    assert fm.weight_format == kind[1] and str(fm.format_version).startswith(kind[0])
    assert (fm.code_reason is None) == (kind[1] == "torchscript")
    # the package's own test input through our path gives its own test output
    assert foreign._own_test(fm) < 1e-4


def test_predictions_follow_the_package_preprocessing(pkgs, field):
    """scale_range (0.4) makes the prediction invariant to the field's brightness; swapped channels differ."""
    pkg = pkgs[("0.4", "torchscript")]
    a = api.classify(list(field), str(pkg), task="hpa", mode="whole", device="cpu")["probabilities"]
    b = api.classify(list((field // 2).astype(np.uint8)), str(pkg), task="hpa", mode="whole",
                     device="cpu")["probabilities"]
    c = api.classify(list(field[[1, 0, 3, 2]]), str(pkg), task="hpa", mode="whole", device="cpu")["probabilities"]
    np.testing.assert_allclose(a, b, atol=0.02)
    assert not np.allclose(a, c, atol=1e-4)


def test_own_code_needs_consent_which_is_remembered(pkgs, field, capsys):
    pkg = pkgs[("0.5", "pytorch_state_dict")]
    foreign.clear_cache()
    with pytest.raises(TrustRequired, match="runs its own Python code.*tiny_arch.py.*--trust"):
        api.classify(list(field), str(pkg), task="hpa", mode="whole", device="cpu")
    assert not trust.trust_file().exists()
    assert cli.main(["import", "bioimageio", str(pkg)]) == 2  # the CLI says the same, in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust" in err[0]
    assert cli.main(["import", "bioimageio", str(pkg), "--trust"]) == 0
    out = capsys.readouterr().out
    assert "runs its own code" in out and "largest difference" in out
    sha = foreign.load_foreign(pkg, device="cpu").sha256
    assert sha in json.loads(trust.trust_file().read_text())
    res = api.classify(list(field), str(pkg), task="hpa", mode="whole", device="cpu")  # remembered
    assert len(res["probabilities"]) == 28
    # torchscript needs no consent at all
    api.classify(list(field), str(pkgs[("0.5", "torchscript")]), task="hpa", mode="whole", device="cpu")


def test_import_copies_a_foreign_package_and_never_overwrites(pkgs, tmp_path, capsys):
    pkg = pkgs[("0.4", "torchscript")]
    dst = tmp_path / "copy.zip"
    assert cli.main(["import", "bioimageio", str(pkg), str(dst)]) == 0
    assert dst.read_bytes() == pkg.read_bytes()
    assert cli.main(["import", "bioimageio", str(pkg), str(dst)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["import", "bioimageio", str(pkg), str(tmp_path / "x.safetensors")]) == 2
    assert "used as it is" in capsys.readouterr().err


def test_single_cell_route_with_community_shaped_packages(pkgs, field):
    res = api.classify(list(field), str(pkgs[("0.4", "torchscript")]), task="hpa", mode="cells", device="cpu",
                       cell_model=str(pkgs["cells"]), nucleus_model=str(pkgs["nuclei"]),
                       cell_classifier=str(pkgs["singlecell"]), scale=1.0)
    labels = res["labels"]
    assert labels.shape == field.shape[1:] and res["n_cells"] == 2  # two drawn cells, seeded by two nuclei
    assert labels[12, 12] != labels[34, 30] and labels[12, 12] > 0 and labels[34, 30] > 0
    assert len(res["class_names"]) == 19 and all(len(r["probabilities"]) == 19 for r in res["cells"])
    assert len(res["image_level"]["class_names"]) == 28  # the image-level model's own classes
    from napari_cellclass.layers import hpa_layers

    (data, kwargs, kind), = hpa_layers(res)
    assert kind == "labels" and kwargs["features"]["class"][labels[12, 12]] in res["class_names"]


@pytest.mark.realdata
def test_single_cell_route_on_a_real_hpa_field(pkgs):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    img = F.hpa_field(SHARED, "800_A6_1", size=128)
    res = api.classify(list(img), str(pkgs[("0.4", "torchscript")]), task="hpa", mode="cells", device="cpu",
                       cell_model=str(pkgs["cells"]), nucleus_model=str(pkgs["nuclei"]),
                       cell_classifier=str(pkgs["singlecell"]), scale=1.0)
    labels = res["labels"]
    assert 3 <= res["n_cells"] <= 60 and len(np.unique(labels)) - 1 == res["n_cells"]
    assert (labels > 0).mean() > 0.2  # cells cover the field's bright area, not a few pixels
    assert {r["label"] for r in res["cells"]} == set(np.unique(labels)) - {0}


@pytest.mark.realdata
def test_cli_predict_hpa_with_a_foreign_package(pkgs, tmp_path):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    out = tmp_path / "preds"
    code = cli.main(["predict", "hpa", str(pkgs[("0.4", "torchscript")]),
                     str(SHARED / "hpa" / "derived_kaggle_format_512"), "--out", str(out), "--device", "cpu"])
    assert code == 0
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "location 0" and len(rows) == 3  # header + the two real sets
    assert json.loads((out / "predictions.json").read_text())["format"] == "bioimage.io"


def test_cli_predict_hpa_single_cell_route(pkgs, tmp_path):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    out = tmp_path / "cells"
    code = cli.main(["predict", "hpa", str(pkgs[("0.4", "torchscript")]),
                     str(SHARED / "hpa" / "derived_kaggle_format_512"), "--out", str(out), "--device", "cpu",
                     "--set", f"cell_model={pkgs['cells']}", "--set", f"nucleus_model={pkgs['nuclei']}",
                     "--set", f"cell_classifier={pkgs['singlecell']}"])
    assert code == 0
    rows = (out / "cells.csv").read_text().splitlines()
    assert len(rows) > 3  # a header and one row per segmented cell of the two real fields


# ----------------------------------------------------------------------------- downloadable entries
def test_community_models_are_listed_with_their_provenance():
    names = [c["name"] for c in zoo.list_models("hpa")]
    assert "hpa-bestfitting-densenet121" in names
    for task, name in (("hpa-cells", "hpa-cell-segmentation"), ("hpa-nuclei", "hpa-nucleus-segmentation"),
                       ("hpa-singlecell", "hpa-singlecell-inceptionv3")):
        c = zoo.card(name)
        assert c["task"] == task and c["licence"] and c["cite"] and c["expects"] and zoo.is_builtin(name)
    assert zoo.card("hpa-cell-segmentation")["bioimageio_id"] == "10.5281/zenodo.6200635"
    assert zoo.card("hpa-nucleus-segmentation")["bioimageio_id"] == "10.5281/zenodo.6200999"
    assert zoo.card("hpa-singlecell-inceptionv3")["bioimageio_id"] == "10.5281/zenodo.5910854"
    assert zoo.card("hpa-bestfitting-densenet121")["published"]["macro_f1_2018_test"] == 0.565


def test_first_use_downloads_and_checks_the_hash_later_uses_are_offline(pkgs, tmp_path, monkeypatch, field):
    src = tmp_path / "mirror.zip"
    src.write_bytes(pkgs[("0.4", "torchscript")].read_bytes())
    sha = trust._sha256_file(src)
    entry = {**foreign.COMMUNITY["hpa-bestfitting-densenet121"], "url": src.as_uri(), "sha256": sha}
    monkeypatch.setitem(foreign.COMMUNITY, "hpa-bestfitting-densenet121", entry)
    path = zoo.resolve_model("hpa-bestfitting-densenet121", task="hpa")
    assert path == zoo.cache_dir() / "bioimageio" / "hpa-bestfitting-densenet121.zip" and path.is_file()
    src.unlink()  # offline from now on
    res = api.classify(list(field), "hpa-bestfitting-densenet121", task="hpa", mode="whole", device="cpu")
    assert len(res["probabilities"]) == 28
    path.write_bytes(path.read_bytes() + b"x")  # a damaged cache is caught by the pinned hash
    with pytest.raises(InputError, match="sha256 mismatch"):
        zoo.resolve_model("hpa-bestfitting-densenet121", task="hpa")


def test_without_network_the_error_names_the_model_and_where_to_put_it(tmp_path, monkeypatch):
    entry = {**foreign.COMMUNITY["hpa-cell-segmentation"], "url": (tmp_path / "nowhere.zip").as_uri()}
    monkeypatch.setitem(foreign.COMMUNITY, "hpa-cell-segmentation", entry)
    with pytest.raises(InputError) as e:
        zoo.resolve_model("hpa-cell-segmentation")
    msg = str(e.value)
    target = zoo.cache_dir() / "bioimageio" / "hpa-cell-segmentation.zip"
    assert "'hpa-cell-segmentation'" in msg and "10.5281/zenodo.6200635" in msg and str(target) in msg
    assert "\n" not in msg and not target.exists()


# ----------------------------------------------------------------------------- hostile and malformed
def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


def _rdf_of(pkg: Path) -> dict:
    return yaml.safe_load(zipfile.ZipFile(pkg).read("rdf.yaml"))


def _with_rdf(pkg: Path, out: Path, text: str) -> Path:
    with zipfile.ZipFile(pkg) as src:
        files = {n: src.read(n) for n in src.namelist() if n != "rdf.yaml"}
    return _zip(out, {**files, "rdf.yaml": text.encode()})


def _refused(path: Path, capsys, pattern: str) -> None:
    assert cli.main(["import", "bioimageio", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err


def test_yaml_alias_bomb_and_tags_are_refused_before_expanding(pkgs, tmp_path, capsys):
    lol = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(lol) < 600
    bomb = _with_rdf(pkgs[("0.4", "torchscript")], tmp_path / "lol.zip", lol)
    tracemalloc.start()
    _refused(bomb, capsys, "anchors/aliases")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20
    tagged = _with_rdf(pkgs[("0.4", "torchscript")], tmp_path / "tag.zip",
                       "type: !!python/object/apply:os.system ['echo pwned']\n")
    _refused(tagged, capsys, "explicit YAML tag")


def test_zip_bombs_are_refused_from_the_directory_before_inflating(pkgs, tmp_path, capsys):
    big_rdf = _zip(tmp_path / "rdf_bomb.zip", {"rdf.yaml": b"#" * (3 << 20)})
    assert big_rdf.stat().st_size < 100_000
    tracemalloc.start()
    _refused(big_rdf, capsys, "refused before inflating")
    member = _zip(tmp_path / "member_bomb.zip", {"rdf.yaml": b"type: model\n", "weights.pt": bytes(64 << 20)})
    _refused(member, capsys, "zip bomb")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 80 << 20  # the 64 MiB member was never inflated (only written by this test's zipfile)


def test_declared_sizes_over_the_memory_budget_are_refused(tmp_path, capsys, monkeypatch):
    """The central directory's claims count: two 150 MiB members exceed a 256 MiB budget, nothing inflates."""
    import struct

    pkg = _zip(tmp_path / "claims.zip", {"rdf.yaml": b"type: model\n", "a.pt": b"x" * 100, "b.pt": b"y" * 100})
    raw = bytearray(pkg.read_bytes())
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) >= 0:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if bytes(raw[pos + 46:pos + 46 + name_len]).endswith(b".pt"):
            struct.pack_into("<II", raw, pos + 20, 150 << 20, 150 << 20)  # compressed, uncompressed sizes
        pos += 46
    pkg.write_bytes(bytes(raw))
    monkeypatch.setenv("CELLCLASS_MEMORY_BUDGET", "256MiB")
    _refused(pkg, capsys, "over the memory budget")


def test_non_packages_are_named_in_one_line(tmp_path, capsys):
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    _refused(pt, capsys, "PyTorch checkpoint")
    pk = tmp_path / "model.pkl"
    pk.write_bytes(pickle.dumps({"a": 1}))
    _refused(pk, capsys, "Python pickle")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a package")
    _refused(junk, capsys, "not a bioimage.io package")
    plain = _zip(tmp_path / "plain.zip", {"notes.txt": b"hi"})
    _refused(plain, capsys, "no rdf.yaml")
    _refused(tmp_path / "missing.zip", capsys, "no such bioimage.io package")


def test_references_outside_the_package_are_refused(pkgs, tmp_path, capsys):
    pkg = pkgs[("0.4", "torchscript")]
    rdf = _rdf_of(pkg)
    rdf["weights"]["torchscript"]["source"] = "https://example.org/evil.pt"
    _refused(_with_rdf(pkg, tmp_path / "url.zip", yaml.safe_dump(rdf)), capsys, "outside itself")
    rdf["weights"]["torchscript"]["source"] = "../../evil.pt"
    _refused(_with_rdf(pkg, tmp_path / "dots.zip", yaml.safe_dump(rdf)), capsys, "outside its folder")
    evil = _zip(tmp_path / "slip.zip", {"rdf.yaml": b"type: model\n", "../evil.py": b"print(1)"})
    _refused(evil, capsys, "points outside the package")


def test_malformed_descriptions_are_refused_in_one_line(pkgs, tmp_path, capsys):
    pkg = pkgs[("0.4", "torchscript")]
    rdf = _rdf_of(pkg)
    del rdf["inputs"]
    _refused(_with_rdf(pkg, tmp_path / "noin.zip", yaml.safe_dump(rdf)), capsys, "not a usable bioimage.io model")
    rdf = _rdf_of(pkg)
    rdf["weights"] = {"onnx": {"source": "weights_torchscript.pt"}}
    _refused(_with_rdf(pkg, tmp_path / "onnx.zip", yaml.safe_dump(rdf)), capsys, "PyTorch weights only")
    _refused(_with_rdf(pkg, tmp_path / "list.zip", "- 1\n- 2\n"), capsys, "not a mapping")


def test_an_installed_module_as_architecture_also_needs_consent(pkgs, tmp_path, field):
    """``import_from: os`` would let a package call any function of any installed module."""
    pkg = pkgs[("0.5", "pytorch_state_dict")]
    rdf = _rdf_of(pkg)
    rdf["weights"]["pytorch_state_dict"]["architecture"] = {"import_from": "os", "callable": "getcwd", "kwargs": {}}
    evil = _with_rdf(pkg, tmp_path / "lib.zip", yaml.safe_dump(rdf))
    fm = foreign.load_foreign(evil, device="cpu")
    assert "os.getcwd from an installed module" in fm.code_reason
    with pytest.raises(TrustRequired):
        api.classify(list(field), str(evil), task="hpa", mode="whole", device="cpu")


def test_foreign_packages_are_refused_by_other_tasks(pkgs):
    with pytest.raises(InputError, match="HPA route only"):
        zoo.load_model(str(pkgs[("0.4", "torchscript")]), task="wbc")


def test_safe_yaml_accepts_plain_data():
    assert trust.safe_yaml("a: [1, 2]\nb: {c: 'd'}\n") == {"a": [1, 2], "b": {"c": "d"}}
    with pytest.raises(InputError, match="nests deeper"):
        trust.safe_yaml("a: " + "[" * 100 + "]" * 100)
