"""The karyotype PDF report wraps long model and flag lines at word boundaries: no word is cut."""
from __future__ import annotations

import re

import numpy as np
import pytest

from napari_cellclass.karyotype.corrections import KaryotypeSession
from napari_cellclass.karyotype.report import FLAG_WIDTH, MODEL_WIDTH, model_lines, report_pages, write_report
from napari_cellclass.synth.chromosomes import make_spread

TRAINED_ON = ("Tseng et al. 2023 G-band metaphase spreads (Scientific Data, doi:10.1038/s41597-023-02003-7), "
              "box crops of both folders plus the second laboratory's gband612 crops split by patient, "
              "calibrated afterwards")
MODELS = [{"role": "classifier", "name": "gricol-gband-2labs", "arch": "gricol", "package_version": "0.1.0",
           "sha256": "0123456789ab", "date": "2026-12-06", "trained_on": TRAINED_ON},
          {"role": "detector", "name": "chromdet-tseng-with-a-rather-long-descriptive-name", "arch": "chromdet_unet",
           "package_version": "0.1.0", "sha256": "ba9876543210", "date": "2026-12-02",
           "trained_on": "Tseng et al. 2023 G-band metaphase spreads, VOC boxes"}]


@pytest.fixture(scope="module")
def result():
    s = make_spread(4, "46,XX", size=(320, 320))
    res = dict(KaryotypeSession(s["image"], s["labels"], straighten=False).update())
    res["flagged"] = np.ones(len(res["ids"]), bool)
    res["reasons"] = [f"low confidence 0.{k:02d}; moved from 15 by pairing; the banding of the q arm disagrees "
                      f"with the ideogram over its whole length (entry{k}end)" for k in range(len(res["ids"]))]
    return res


def test_model_lines_wrap_at_word_boundaries():
    for m in MODELS:
        lines = model_lines(m)
        assert all(len(line) <= MODEL_WIDTH for line in lines)
        words = " ".join(lines).split()
        assert "doi:10.1038/s41597-023-02003-7)," in words or m["role"] == "detector"
        assert m["trained_on"].split() == words[words.index("on:") + 1:]  # every word, whole, in order
    narrow = model_lines(MODELS[0], width=40)
    assert len(narrow) > 4 and all(len(line) <= 40 for line in narrow)
    assert narrow[-1].endswith("...")  # a description longer than its lines ends visibly, at a word


def test_pdf_text_keeps_every_word(result, tmp_path):
    from pypdf import PdfReader

    pdf = write_report(tmp_path / "r.pdf", result, case="spread 4", models=MODELS, corrections=["cut", "merge"])
    reader = PdfReader(str(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    words = set(re.split(r"\s+", text))
    for w in TRAINED_ON.split() + MODELS[1]["name"].split():
        assert w in words, w  # the old report cut "trained on" at 100 characters, mid-word
    n = len(result["ids"])
    assert all(f"(entry{k}end)" in words for k in range(n))  # every flag reason to its end, first page or next
    assert len(reader.pages) >= 2 and "continued" in reader.pages[1].extract_text()
    for line in text.splitlines():
        if line.startswith("  #") or line.startswith("        "):
            assert len(line) <= FLAG_WIDTH + 2


def test_first_page_renders_to_png(result, tmp_path):
    page = next(report_pages(result, case="spread 4", models=MODELS))
    page.savefig(tmp_path / "p1.png", dpi=40)
    from PIL import Image

    im = Image.open(tmp_path / "p1.png")
    assert abs(im.size[0] - 8.27 * 40) <= 1 and abs(im.size[1] - 11.69 * 40) <= 1


def test_headline_is_amber_and_says_how_many_to_review_while_flagged(result):
    from napari_cellclass.karyotype.report import report_text

    flagged = dict(result, confident=False, headline=result["summary"] + " (3 to review)")
    t = report_text(flagged)
    assert t["headline"].endswith("(3 to review)") and not t["confident"]
    settled = dict(result, flagged=np.zeros(len(result["ids"]), bool))
    settled.pop("confident", None)
    assert report_text(settled)["confident"]
