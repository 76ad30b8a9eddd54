"""bioimage.io export: the package validates, bioimageio.core runs it like we do, and it imports back."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_cellclass import cli
from napari_cellclass.engine.checkpoint import build_from_checkpoint, load_checkpoint
from napari_cellclass.errors import InputError
from zoo_utils import make_zoo, tiny_checkpoint

import bioimageio.core as bioimageio_core  # noqa: E402  (the 'testing' extra installs both)
import bioimageio.spec as bioimageio_spec  # noqa: E402


def _ours(ckpt, x: np.ndarray) -> np.ndarray:
    """Our own inference on a [0, 1] crop batch: normalise as the checkpoint says, network, softmax."""
    net, meta = build_from_checkpoint(ckpt)
    c = meta.in_channels
    mean = torch.tensor(meta.normalization.get("mean", [0.0] * c)).view(1, c, 1, 1)
    std = torch.tensor(meta.normalization.get("std", [1.0] * c)).view(1, c, 1, 1)
    with torch.no_grad():
        return torch.softmax(net((torch.from_numpy(x) - mean) / std), 1).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny built-in exported once through the CLI (validation and core tests share it)."""
    tmp = tmp_path_factory.mktemp("bio")
    mp = pytest.MonkeyPatch()
    make_zoo(tmp, mp, {"wbc-tiny": {"metrics": {"macro_f1": 0.7}}})
    pkg = tmp / "wbc-tiny.zip"
    assert cli.main(["export", "bioimageio", "wbc-tiny", str(pkg)]) == 0
    yield tmp, pkg, tmp / "zoo" / "wbc-tiny.safetensors"
    mp.undo()


def test_package_contents(exported):
    tmp, pkg, ckpt = exported
    names = set(zipfile.ZipFile(pkg).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
            "weights_torchscript.pt", "weights_state_dict.pt"} <= names
    rdf = yaml.safe_load(zipfile.ZipFile(pkg).read("rdf.yaml"))
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    dois = {c.get("doi") for c in rdf["cite"]}
    assert "10.16208/j.issn1000-7024.2020.10.046" in dois  # seed 001, the WBC ResNet
    assert "10.11834/jig.200207" in dois  # seed 004, the training recipes
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
    assert rdf["config"]["napari-cellclass"]["card"]["name"] == "wbc-tiny"
    readme = zipfile.ZipFile(pkg).read("README.md").decode()
    assert "macro_f1" in readme and "[0, 1]" in readme


def test_package_validates_and_passes_bioimageio_core_tests(exported):
    tmp, pkg, ckpt = exported
    descr = bioimageio_spec.load_description(pkg)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    summary = bioimageio_core.test_model(pkg)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    tested = " ".join(d.name for d in summary.details)
    assert "torchscript" in tested and "pytorch_state_dict" in tested


@pytest.mark.parametrize("weight_format", ["torchscript", "pytorch_state_dict"])
def test_bioimageio_core_prediction_matches_our_inference(exported, weight_format):
    tmp, pkg, ckpt = exported
    descr = bioimageio_spec.load_description(pkg)
    pipeline = bioimageio_core.create_prediction_pipeline(descr, weight_format=weight_format)
    x = np.random.default_rng(7).random((3, 3, 32, 32)).astype(np.float32)
    theirs = bioimageio_core.predict(model=pipeline, inputs={"cell": x}).members["probabilities"].data.values
    np.testing.assert_allclose(theirs, _ours(ckpt, x), atol=1e-5)
    assert not np.allclose(theirs[0], theirs[1])  # different crops, different answers


def test_import_back_to_our_checkpoint(exported, capsys):
    tmp, pkg, ckpt = exported
    back = tmp / "back.safetensors"
    assert cli.main(["import", "bioimageio", str(pkg), str(back)]) == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(back)
    assert (b.meta.task, b.meta.arch, b.meta.class_names) == (a.meta.task, a.meta.arch, a.meta.class_names)
    assert b.meta.normalization == a.meta.normalization
    assert set(a.state_dict) == set(b.state_dict)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert cli.main(["import", "bioimageio", str(pkg), str(back)]) == 2  # nothing is overwritten
    assert "exists already" in capsys.readouterr().err


def test_import_refuses_foreign_packages(exported, tmp_path):
    tmp, pkg, ckpt = exported
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(pkg) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["config"].pop("napari-cellclass")
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
    from napari_cellclass.zoo.bioimageio import import_package

    with pytest.raises(InputError, match="not exported by napari-cellclass"):
        import_package(foreign, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_chromosome_gricol_exports_and_runs(tmp_path):
    from karyotype_utils import tiny_checkpoint as tiny_gricol

    from napari_cellclass.zoo.bioimageio import export_package

    ck = tiny_gricol(tmp_path / "g.safetensors")
    pkg = export_package(ck, tmp_path / "g.zip")
    descr = bioimageio_spec.load_description(pkg)
    assert descr.validation_summary.status == "valid-format"
    rdf = yaml.safe_load(zipfile.ZipFile(pkg).read("rdf.yaml"))
    assert "10.16383/j.aas.c210303" in {c.get("doi") for c in rdf["cite"]}  # seed 003, GRiCoL
    assert rdf["outputs"][0]["axes"][1]["channel_names"][:2] == ["c1", "c2"]
    pipeline = bioimageio_core.create_prediction_pipeline(descr, weight_format="torchscript")
    size = build_from_checkpoint(ck)[1].input_size
    x = np.random.default_rng(1).random((2, 1, *size)).astype(np.float32)
    theirs = bioimageio_core.predict(model=pipeline, inputs={"cell": x}).members["probabilities"].data.values
    np.testing.assert_allclose(theirs, _ours(ck, x), atol=1e-5)


def test_detectors_and_bad_targets_are_refused(tmp_path, monkeypatch, capsys):
    from napari_cellclass.zoo.bioimageio import export_package

    det = tiny_checkpoint(tmp_path / "d.safetensors", task="detect")
    with pytest.raises(InputError, match="detectors cannot be exported"):
        export_package(det, tmp_path / "d.zip")
    ok = tiny_checkpoint(tmp_path / "w.safetensors")
    assert cli.main(["export", "bioimageio", str(ok), str(tmp_path / "w.tar")]) == 2
    assert ".zip" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.tmp"))


def test_import_checks_the_archive_before_parsing(exported, tmp_path, capsys):
    """Our own packages go through the same archive checks as foreign ones (aliases, non-packages)."""
    from napari_cellclass.zoo.bioimageio import import_package

    tmp, pkg, ckpt = exported
    bad = tmp_path / "alias.zip"
    with zipfile.ZipFile(pkg) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                data = b"anchor: &a [1, 2]\nagain: *a\n" + data
            dst.writestr(item, data)
    with pytest.raises(InputError, match="anchors/aliases"):
        import_package(bad, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    assert cli.main(["import", "bioimageio", str(pt), str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PyTorch checkpoint" in err[0] and "unexpected" not in err[0]
    assert cli.main(["import", "bioimageio", str(pkg)]) == 2  # ours needs the checkpoint to write
    assert "name the checkpoint to write" in capsys.readouterr().err
