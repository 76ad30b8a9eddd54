"""docs/architecture.md describes the tree as it is: one diagram, and every module it names exists."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_cellclass"
DOC = REPO / "docs" / "architecture.md"


def test_one_diagram():
    text = DOC.read_text(encoding="utf-8")
    assert text.count("```mermaid") == 1


def test_every_module_named_exists():
    text = DOC.read_text(encoding="utf-8")
    names = set(re.findall(r"[\w/]+\.py\b", text))
    assert len(names) > 20
    basenames = {p.name for p in PKG.rglob("*.py")}
    missing = sorted(n for n in names if not (PKG / n).is_file() and not ("/" not in n and n in basenames))
    assert not missing, f"docs/architecture.md names modules that are not in the tree: {missing}"


def test_glossary_names_the_five_seeds():
    text = DOC.read_text(encoding="utf-8")
    for seed in ("000", "001", "002", "003", "004"):
        assert re.search(rf"^\| {seed} \|", text, flags=re.MULTILINE), f"seed {seed} missing from the glossary"
