"""`cellclass synth TASK --n N --out DIR` for every task: files written, deterministic."""
from __future__ import annotations

import hashlib

import pytest

from napari_cellclass import cli


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            data = p.read_bytes()
            if p.suffix == ".xml":  # VOC <path> is absolute, so it differs between folders
                data = b"\n".join(ln for ln in data.splitlines() if b"<path>" not in ln)
            h.update(data)
    return h.hexdigest()


@pytest.mark.parametrize("task", ["hpa", "wbc", "detect", "chromosome", "karyotype"])
def test_synth_writes_deterministic_data(task, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    n = "1" if task == "karyotype" else "2"
    assert cli.main(["synth", task, "--n", n, "--out", str(a), "--seed", "3"]) == 0
    assert cli.main(["synth", task, "--n", n, "--out", str(b), "--seed", "3"]) == 0
    assert any(p.is_file() for p in a.rglob("*"))
    assert _digest(a) == _digest(b)


def test_synth_karyotype_spreads_evaluate(tmp_path, capsys):
    """Synthetic spreads carry VOC boxes the karyotype evaluation reads back (46 + 1 objects)."""
    import json

    out = tmp_path / "spreads"
    assert cli.main(["synth", "karyotype", "--n", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "karyotype", "none", str(out), "--set", "segmenter=threshold", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_spreads"] == 3
    assert [s["n_true"] for s in res["per_spread"]] == [46, 46, 47]  # 46,XY; 46,XX; 47,XX,+21
    assert res["recall"] > 0.8
