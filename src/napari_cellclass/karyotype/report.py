"""Per-case karyotype report as PDF: karyogram, ISCN string, count, flags, models, sign-off.

One A4 page a cytogeneticist can file with the case (more pages when many
chromosomes are flagged): the karyogram, the numerical ISCN summary and count,
the chromosomes that need a second look and why, the corrections made by hand,
the models that produced it (name, version, checksum, what they were trained
on, with the shared warning for models trained only on generated data), the
date, and an empty sign-off block for the analyst.  Text is embedded as
TrueType so the PDF is searchable (and testable).  Long lines wrap at word
boundaries (never cut mid-word); the monospace blocks are sized so a wrapped
line fits the page width.
"""
from __future__ import annotations

import datetime as _dt
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.atomic import atomic_path

A4 = (8.27, 11.69)
FLAG_LINES_FIRST_PAGE = 14  # printed lines of the flagged list on page 1 (wrapped entries count each line)
FLAG_LINES_PER_PAGE = 80
# characters per line of the monospace blocks: the text box is 0.88 of the A4 width (524 pt); a
# DejaVu Sans Mono character is 0.6 em wide, so 7.5 pt holds 116 and 6.5 pt 134 (a margin kept)
FLAG_WIDTH = 110
MODEL_WIDTH = 124
TRAINED_ON_LINES = 3  # a very long data description ends with "..." after this many lines


def model_info(spec: str | Path | None, role: str) -> dict[str, Any]:
    """Name, version, checksum and training data of a model, for the report; never raises."""
    if spec is not None and hasattr(spec, "net"):  # a loaded model: its source (a built-in name) or its file
        spec = spec.source if spec.card is not None else (spec.path or spec.source)
    info: dict[str, Any] = {"role": role, "name": "none" if spec is None else Path(str(spec)).name}
    if spec is None:
        return info
    try:
        from .. import zoo

        path = Path(spec)
        name = str(spec)
        if not zoo.is_builtin(name) and path.parent.resolve() == zoo.zoo_dir().resolve() and zoo.is_builtin(
                path.stem):
            name = path.stem  # a built-in reached through its resolved path
        if zoo.is_builtin(name):
            card = zoo.card(name)
            trained = card.get("trained_on") or {}
            info.update(name=card["name"], builtin=True, arch=card.get("arch", ""),
                        sha256=str(card.get("sha256", ""))[:12], date=card.get("date", ""),
                        trained_on=trained.get("source", "") if isinstance(trained, dict) else str(trained),
                        synthetic=bool(trained.get("synthetic")) if isinstance(trained, dict) else False)
            path = zoo.load_model(name).path  # the one loader (cached): the verified file
        if path.is_file():
            import hashlib

            from ..engine.checkpoint import read_meta
            from ..zoo.provenance import is_synthetic

            meta = read_meta(path)
            info.setdefault("arch", meta.arch)
            info.setdefault("trained_on", meta.trained_on)
            info.setdefault("synthetic", is_synthetic(meta.trained_on))
            info["package_version"] = meta.version
            if "sha256" not in info:
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                info["sha256"] = h.hexdigest()[:12]
    except Exception as exc:  # a report must still be written; say what is unknown
        info["error"] = f"details unavailable ({type(exc).__name__})"
    return info


def flagged_lines(result: dict[str, Any]) -> list[str]:
    """One line per flagged chromosome: id, class, confidence and the reason."""
    ids = list(result.get("ids", range(1, len(result["classes"]) + 1)))
    out = []
    for r, lid in enumerate(ids):
        if not bool(result["flagged"][r]):
            continue
        name = result["class_names"][r] if "class_names" in result else str(result["classes"][r])
        name = "?" if name == "reject" else name
        out.append(f"#{lid}: {name}  (p={float(result['confidence'][r]):.2f})  {result['reasons'][r]}")
    return out


def report_text(result: dict[str, Any], *, case: str = "", models: Sequence[dict] = (),
                corrections: Sequence[str] = (), date: str | None = None) -> dict[str, Any]:
    """Everything the report prints, as plain data (the PDF is drawn from it; tests read it)."""
    from ..zoo.provenance import SYNTHETIC_WARNING

    n_flag = int(np.sum(result["flagged"]))
    warn = [SYNTHETIC_WARNING for m in models if m.get("synthetic")][:1]
    return {
        "title": f"Karyotype report: {case or 'spread'}",
        "date": date or _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "iscn": result["summary"],
        "headline": result.get("headline", result["summary"]),  # the ISCN string, "(N to review)" while flagged
        "confident": bool(result.get("confident", n_flag == 0)),
        "count": int(result["count"]),
        "abnormal": bool(result["abnormal"]),
        "findings": list(result.get("findings", [])),
        "n_flagged": n_flag,
        "flagged": flagged_lines(result),
        "corrections": list(corrections),
        "models": [dict(m) for m in models],
        "warnings": warn,
    }


def model_lines(m: dict[str, Any], width: int = MODEL_WIDTH) -> list[str]:
    """One model's block for the report, wrapped at word boundaries to ``width`` characters:
    role, name and details, then what it was trained on (indented, at most TRAINED_ON_LINES lines)."""
    bits = [f"{m.get('role', 'model')}: {m.get('name', '?')}"]
    detail = ", ".join(str(x) for x in (m.get("arch"), m.get("package_version") and f"napari-cellclass "
                                        f"{m['package_version']}", m.get("sha256") and f"sha256 {m['sha256']}",
                                        m.get("date")) if x)
    if detail:
        bits.append(f"({detail})")
    if m.get("error"):
        bits.append(m["error"])
    lines = textwrap.wrap(" ".join(bits), width, subsequent_indent="      ", break_on_hyphens=False)
    if m.get("trained_on"):
        lines += textwrap.wrap(f"trained on: {m['trained_on']}", width, initial_indent="      ",
                               subsequent_indent="        ", break_on_hyphens=False,
                               max_lines=TRAINED_ON_LINES, placeholder=" ...")
    return lines


def _wrap_entries(entries: Sequence[str], width: int = FLAG_WIDTH) -> list[list[str]]:
    """Each entry as its printed lines (continuations indented), broken at word boundaries."""
    return [textwrap.wrap(e, width, initial_indent="  ", subsequent_indent="        ", break_on_hyphens=False)
            or ["  "] for e in entries]


def report_pages(result: dict[str, Any], *, case: str = "", models: Sequence[dict] = (),
                 corrections: Sequence[str] = (), date: str | None = None):
    """The report's pages as matplotlib Figures (A4), first page first: :func:`write_report` saves
    them to PDF; the same figures render to PNG for a preview (``fig.savefig("page.png")``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    t = report_text(result, case=case, models=models, corrections=corrections, date=date)
    fig = Figure(figsize=A4)
    fig.text(0.06, 0.965, t["title"], fontsize=14, weight="bold")
    fig.text(0.06, 0.948, f"{t['date']}  ·  napari-cellclass  ·  research use only, not a diagnosis",
             fontsize=8, color="#555555")
    # as in the widget: green only when nothing needs review, amber while chromosomes are flagged
    colour = "#b26a00" if not t["confident"] else ("#c62828" if t["abnormal"] else "#2e7d32")
    fig.text(0.06, 0.915, t["headline"], fontsize=20 if len(t["headline"]) <= 40 else 15, weight="bold",
             color=colour)
    line = f"count: {t['count']}   flagged: {t['n_flagged']}"
    if t["findings"]:  # all of them are in the ISCN string above; shortened at a word boundary
        line += "   findings: " + textwrap.shorten("; ".join(t["findings"]), 90, placeholder=" ...")
    fig.text(0.06, 0.893, line, fontsize=9)  # under the ISCN string: a long one must not run into it
    y = 0.872
    for w in t["warnings"]:
        fig.text(0.06, y, w, fontsize=8, color="#b26a00", weight="bold", wrap=True)
        y -= 0.02
    kary = result.get("karyogram")
    if kary is not None:
        h, w_ = kary.shape[:2]
        box_w, box_h = 0.88, y - 0.40
        aspect = (h / w_) * (A4[0] / A4[1])
        ww = min(box_w, box_h / aspect)
        ax = fig.add_axes([0.06 + (box_w - ww) / 2, y - ww * aspect, ww, ww * aspect])
        ax.imshow(kary, interpolation="lanczos")
        ax.set_axis_off()
    lines = ["Flagged for review:" if t["flagged"] else "Flagged for review: none"]
    entries = _wrap_entries(t["flagged"])
    used, k = 0, 0  # whole entries only: one never splits across pages
    while k < len(entries) and used + len(entries[k]) <= FLAG_LINES_FIRST_PAGE:
        lines += entries[k]
        used += len(entries[k])
        k += 1
    rest = entries[k:]
    if rest:
        lines.append(f"  ... {len(rest)} more on the next page")
    if t["corrections"]:
        lines.append(f"Corrected by hand: {len(t['corrections'])} edit(s) "
                     f"({', '.join(sorted(set(t['corrections'])))})")
    fig.text(0.06, 0.385, "\n".join(lines), fontsize=7.5, va="top", family="monospace")
    info = [line for m in t["models"] for line in model_lines(m)] or ["models: not recorded"]
    fig.text(0.06, 0.175, "\n".join(info), fontsize=6.5, va="top", family="monospace")
    fig.text(0.06, 0.075, "Analyst: ______________________________     Date: ______________     "
             "Signature: ______________________", fontsize=9)
    fig.text(0.06, 0.05, "I have reviewed every chromosome of this karyogram and the findings above.",
             fontsize=7.5, color="#555555")
    yield fig
    while rest:
        page, used = [], 0
        while rest and (not page or used + len(rest[0]) <= FLAG_LINES_PER_PAGE):
            page += rest[0]
            used += len(rest[0])
            rest = rest[1:]
        fig = Figure(figsize=A4)
        fig.text(0.06, 0.965, f"{t['title']} — flagged chromosomes (continued)", fontsize=12, weight="bold")
        fig.text(0.06, 0.94, "\n".join(page), fontsize=7.5, va="top", family="monospace")
        yield fig


def write_report(path: str | Path, result: dict[str, Any], *, case: str = "", models: Sequence[dict] = (),
                 corrections: Sequence[str] = (), date: str | None = None) -> Path:
    """Write the PDF report of one karyotype ``result`` (from the pipeline or a corrected session).

    ``models``: :func:`model_info` dicts; ``corrections``: short descriptions of the
    hand edits (e.g. the session's history names).  Written atomically.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_pdf import PdfPages

    t = report_text(result, case=case, models=models, corrections=corrections, date=date)
    path = Path(path)
    with rc_context({"pdf.fonttype": 42}), atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": t["title"], "Subject": t["iscn"], "Creator": "napari-cellclass"}) as pdf:
            for fig in report_pages(result, case=case, models=models, corrections=corrections, date=t["date"]):
                pdf.savefig(fig)
    return path
