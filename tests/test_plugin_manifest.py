"""The npe2 manifest is valid, discoverable, and every contribution it names exists."""
from __future__ import annotations

import importlib

import pytest
from npe2 import PluginManager, PluginManifest

import napari_cellclass


def _manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-cellclass")


def test_manifest_is_discovered_and_valid():
    pm = PluginManager()
    pm.discover()
    assert "napari-cellclass" in pm._manifests
    mf = _manifest()
    assert mf.name == "napari-cellclass"
    assert mf.package_version == napari_cellclass.__version__


@pytest.mark.parametrize("command", _manifest().contributions.commands, ids=lambda c: c.id)
def test_every_command_resolves(command):
    module, _, attr = command.python_name.partition(":")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, attr)), command.python_name


def test_no_qt_in_the_compute_core():
    """Importing the model core, CLI and API must not import Qt (usable headless)."""
    import subprocess
    import sys

    code = (
        "import sys; import napari_cellclass.engine.training, napari_cellclass.engine.inference, "
        "napari_cellclass.cli, napari_cellclass.api, napari_cellclass.demo; "
        "bad=[m for m in sys.modules if m.split('.')[0] in ('PyQt5','PyQt6','PySide2','PySide6','qtpy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
