"""docs/scripting.md runs: every ```python block of the page, in order, in a real viewer (Xvfb in CI)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "scripting.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_the_examples():
    blocks = _blocks()
    assert len(blocks) >= 2, "docs/scripting.md lost its runnable examples"
    assert "api.karyotype(spread, viewer=viewer" in blocks[0] and "napari.Viewer()" in blocks[0]


@pytest.fixture
def _package_zoo(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.viewer
def test_scripting_examples_run(qapp, monkeypatch, capsys, _package_zoo, mock_app_model):
    import napari

    monkeypatch.setattr(napari, "run", lambda *a, **k: None)  # a script's event loop; the test goes on
    blocks = _blocks()
    namespaces = []
    try:
        for code in blocks:
            ns: dict = {"__name__": "__scripting_doc__"}
            exec(compile(code, f"{DOC.name}", "exec"), ns)  # noqa: S102 - the page's own example
            namespaces.append(ns)
        karyo, blood = namespaces[0], namespaces[1]
        viewer, first, result = karyo["viewer"], karyo["first"], karyo["result"]
        names = [layer.name for layer in viewer.layers]
        assert {"chromosomes", "chromosome classes", "karyogram"} <= set(names)
        # one object erased and two merged: two fewer chromosomes, only the merged one classified again
        assert result["count"] == first["count"] - 2
        assert karyo["session"].last_classified == [3]
        assert not (viewer.layers["chromosomes"].data == 7).any()
        assert len(viewer.layers["chromosome classes"].data) == result["count"]
        assert names.count("chromosomes") == 1  # updated in place, not added again
        assert blood["classified"][0].name == "white cells (classified)"
        assert set(blood["classified"][0].features["wbc_class"]) <= {
            "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"}
        out = capsys.readouterr().out
        assert f"corrected: {result['summary']}" in out
    finally:
        napari.Viewer.close_all()
