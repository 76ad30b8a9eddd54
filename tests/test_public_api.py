"""The package's public names stay the API functions whatever has been imported (issue 22, part B).

``napari_cellclass.karyotype`` is both a function (the API) and a subpackage; Python's import
system binds a submodule on its parent package after importing it, which used to replace the
function by the module.  Here every subpackage and submodule is imported, then each public
function is called twice in the same process on tiny generated inputs.
"""
from __future__ import annotations

import importlib
import pkgutil
import types

import numpy as np
import pytest

import napari_cellclass
from napari_cellclass import api
from napari_cellclass.errors import CellClassError

OPTIONAL = {"bioimageio", "ome_zarr", "zarr", "onnx", "onnxruntime", "xarray"}


def _import_everything() -> list[str]:
    names = ["napari_cellclass.karyotype"]
    for info in pkgutil.walk_packages(napari_cellclass.__path__, "napari_cellclass."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional third-party dependency that is not installed
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                raise
            continue
        names.append(info.name)
    return names


def _assert_api_intact():
    for name in napari_cellclass.API_NAMES:
        fn = getattr(napari_cellclass, name)
        assert isinstance(fn, types.FunctionType) and fn is getattr(api, name), (name, fn)
    from napari_cellclass import karyotype

    assert karyotype is api.karyotype


@pytest.fixture(scope="module")
def everything_imported():
    names = _import_everything()
    assert "napari_cellclass.karyotype.segment" in names and "napari_cellclass.widgets" in names
    return names


def test_api_names_survive_importing_every_submodule(everything_imported):
    _assert_api_intact()
    # the subpackage is still importable as a module, by name
    import sys

    mod = importlib.import_module("napari_cellclass.karyotype")
    assert isinstance(mod, types.ModuleType) and sys.modules["napari_cellclass.karyotype"] is mod
    from napari_cellclass.karyotype import segment

    assert isinstance(segment, types.ModuleType)
    # and an explicit re-import of the subpackage does not shadow the function either
    importlib.reload(importlib.import_module("napari_cellclass.karyotype.assign"))
    _assert_api_intact()
    assert set(napari_cellclass.API_NAMES) <= set(napari_cellclass.__all__)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from karyotype_utils import tiny_checkpoint as tiny_gricol
    from zoo_utils import tiny_checkpoint

    from napari_cellclass.synth.chromosomes import make_spread

    d = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    smear = (rng.random((96, 96, 3)) * 60 + 150).astype(np.uint8)
    smear[30:60, 30:60] = (90, 40, 140)  # a stained blob
    return {"wbc": tiny_checkpoint(d / "wbc.safetensors"), "gricol": tiny_gricol(d / "gricol.safetensors"),
            "smear": smear, "spread": make_spread(seed=3, karyotype="46,XY", size=(256, 256), nucleus=False),
            "dir": d}


def _call_all(tiny) -> None:
    _assert_api_intact()
    out = napari_cellclass.classify(tiny["smear"], tiny["wbc"], cells=[(30, 30, 60, 60)], device="cpu")
    assert len(out["classes"]) == 1
    det = napari_cellclass.detect(tiny["smear"], "bccd-blood-cells-centernet", device="cpu")
    assert len(det["boxes"]) == len(det["labels"])
    sp = tiny["spread"]
    kar = napari_cellclass.karyotype(sp["image"], tiny["gricol"], labels=sp["labels"], device="cpu")
    assert kar["count"] == 46
    session = napari_cellclass.karyotype_session(sp["image"], kar, tiny["gricol"], device="cpu")
    assert session is not None
    layers = napari_cellclass.show(kar, task="karyotype")
    assert len(layers) == 3
    smear = napari_cellclass.analyse_smear(tiny["smear"], device="cpu")
    assert "counts" in smear
    # train / evaluate: the cheap path, a folder without data, answered with a clear error
    with pytest.raises(CellClassError):
        napari_cellclass.train("wbc", tiny["dir"] / "missing", epochs=1)
    with pytest.raises(CellClassError):
        napari_cellclass.evaluate("wbc", tiny["wbc"], tiny["dir"] / "missing")
    _assert_api_intact()


def test_each_public_function_twice_after_importing_everything(everything_imported, tiny):
    _call_all(tiny)
    _call_all(tiny)
