"""`cellclass karyotype FOLDER`: one CSV row per spread, karyograms and PDF reports, resume, bad images."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from karyotype_utils import tiny_checkpoint

from napari_cellclass.synth.chromosomes import make_spread


def _run(args, capsys):
    from napari_cellclass.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "spreads"
    d.mkdir()
    for i, karyo in enumerate(("46,XY", "47,XX,+21")):
        Image.fromarray(make_spread(10 + i, karyo, size=(384, 384))["image"]).save(d / f"case{i}.png")
    Image.fromarray(np.full((300, 300), 200, np.uint8)).save(d / "blank.png")  # a bad image in the batch
    return d


@pytest.mark.slow
def test_folder_rows_reports_resume_and_refusal(folder, tmp_path, capsys):
    from pypdf import PdfReader

    ckpt = tiny_checkpoint(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    args = ["karyotype", str(folder), "--model", str(ckpt), "--out", str(out), "--set", "segmenter=threshold",
            "--device", "cpu", "--quiet"]
    code, printed = _run(args, capsys)
    assert code == 3, printed.err  # one input refused: exit 3, one stderr line naming it
    assert [ln for ln in printed.err.splitlines() if ln.startswith("cellclass: refused:")] == [
        ln for ln in printed.err.splitlines() if "blank.png" in ln and "refused:" in ln]
    assert "blank.png" in printed.err
    res = json.loads(printed.out[printed.out.index("{"):])
    assert res["n_spreads"] == 3 and res["failed"] == 1 and res["skipped_done"] == 0

    with open(out / "karyotypes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["spread"].split("/")[-1] for r in rows] == ["blank.png", "case0.png", "case1.png"]
    assert rows[0]["status"].startswith("error:") and "blank" in rows[0]["status"]
    for r in rows[1:]:
        assert r["status"] == "done" and r["summary"] and int(r["count"]) > 0
        assert r["classifier"] == "model.safetensors" and "threshold" in r["segmenter"]
        for key in ("karyogram_png", "report_pdf", "csv", "labels_tif", "summary_json"):
            assert (out / r[key].split("/")[-1]).is_file(), key
        text = "\n".join(p.extract_text() for p in PdfReader(r["report_pdf"]).pages)
        assert r["summary"] in text and "Analyst" in text and "model.safetensors" in text

    # resume a half-done folder: case1's report went missing (run cut off), case0 is complete
    (out / "case1_report.pdf").unlink()
    before = (out / "case0_karyogram.png").stat().st_mtime_ns
    code, printed = _run(args, capsys)
    res = json.loads(printed.out[printed.out.index("{"):])
    assert code == 3 and res["skipped_done"] == 1 and res["failed"] == 1
    assert (out / "case0_karyogram.png").stat().st_mtime_ns == before  # not redone
    assert (out / "case1_report.pdf").is_file()
    with open(out / "karyotypes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == [rows[0]["status"], "done (earlier run)", "done"]

    # the same folder with another model is refused, not mixed in
    other = tiny_checkpoint(tmp_path / "other.safetensors")
    code, printed = _run(["karyotype", str(folder), "--model", str(other), "--out", str(out), "--set",
                          "segmenter=threshold", "--quiet"], capsys)
    assert code == 2 and "other settings" in printed.err


def test_every_spread_bad_is_an_error(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(2):
        Image.fromarray(np.full((200, 200), 9, np.uint8)).save(d / f"b{i}.png")
    ckpt = tiny_checkpoint(tmp_path / "model.safetensors")
    code, printed = _run(["karyotype", str(d), "--model", str(ckpt), "--out",
                          str(tmp_path / "o"), "--set", "segmenter=threshold", "--quiet"], capsys)
    assert code == 2 and "none of the 2 spreads" in printed.err
