"""Per-case karyotype report as PDF: karyogram, ISCN string, count, flags, models, sign-off.

One A4 page a cytogeneticist can file with the case (more pages when many
chromosomes are flagged): the karyogram, the numerical ISCN summary and count,
the chromosomes that need a second look and why, the corrections made by hand,
the models that produced it (name, version, checksum, what they were trained
on, with the shared warning for models trained only on generated data), the
date, and an empty sign-off block for the analyst.  Text is embedded as
TrueType so the PDF is searchable (and testable).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.atomic import atomic_path

A4 = (8.27, 11.69)
FLAG_LINES_FIRST_PAGE = 14


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
        "count": int(result["count"]),
        "abnormal": bool(result["abnormal"]),
        "findings": list(result.get("findings", [])),
        "n_flagged": n_flag,
        "flagged": flagged_lines(result),
        "corrections": list(corrections),
        "models": [dict(m) for m in models],
        "warnings": warn,
    }


def _model_line(m: dict[str, Any]) -> str:
    bits = [f"{m.get('role', 'model')}: {m.get('name', '?')}"]
    detail = ", ".join(str(x) for x in (m.get("arch"), m.get("package_version") and f"napari-cellclass "
                                        f"{m['package_version']}", m.get("sha256") and f"sha256 {m['sha256']}",
                                        m.get("date")) if x)
    if detail:
        bits.append(f"({detail})")
    if m.get("error"):
        bits.append(m["error"])
    line = " ".join(bits)
    if m.get("trained_on"):
        line += f"\n      trained on: {str(m['trained_on'])[:100]}"
    return line


def write_report(path: str | Path, result: dict[str, Any], *, case: str = "", models: Sequence[dict] = (),
                 corrections: Sequence[str] = (), date: str | None = None) -> Path:
    """Write the PDF report of one karyotype ``result`` (from the pipeline or a corrected session).

    ``models``: :func:`model_info` dicts; ``corrections``: short descriptions of the
    hand edits (e.g. the session's history names).  Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import rc_context
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    t = report_text(result, case=case, models=models, corrections=corrections, date=date)
    path = Path(path)
    with rc_context({"pdf.fonttype": 42}), atomic_path(path) as tmp:
        with PdfPages(tmp, metadata={"Title": t["title"], "Subject": t["iscn"], "Creator": "napari-cellclass"}) as pdf:
            fig = Figure(figsize=A4)
            fig.text(0.06, 0.965, t["title"], fontsize=14, weight="bold")
            fig.text(0.06, 0.948, f"{t['date']}  ·  napari-cellclass  ·  research use only, not a diagnosis",
                     fontsize=8, color="#555555")
            fig.text(0.06, 0.915, t["iscn"], fontsize=20, weight="bold",
                     color="#c62828" if t["abnormal"] else "#2e7d32")
            line = f"count: {t['count']}   flagged: {t['n_flagged']}"
            if t["findings"]:
                line += "   findings: " + "; ".join(t["findings"])[:90]
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
            lines += ["  " + s[:110] for s in t["flagged"][:FLAG_LINES_FIRST_PAGE]]
            if len(t["flagged"]) > FLAG_LINES_FIRST_PAGE:
                lines.append(f"  ... {len(t['flagged']) - FLAG_LINES_FIRST_PAGE} more on the next page")
            if t["corrections"]:
                lines.append(f"Corrected by hand: {len(t['corrections'])} edit(s) "
                             f"({', '.join(sorted(set(t['corrections'])))})")
            fig.text(0.06, 0.385, "\n".join(lines), fontsize=7.5, va="top", family="monospace")
            info = [_model_line(m) for m in t["models"]] or ["models: not recorded"]
            fig.text(0.06, 0.175, "\n".join(info), fontsize=6.5, va="top", family="monospace")
            fig.text(0.06, 0.075, "Analyst: ______________________________     Date: ______________     "
                     "Signature: ______________________", fontsize=9)
            fig.text(0.06, 0.05, "I have reviewed every chromosome of this karyogram and the findings above.",
                     fontsize=7.5, color="#555555")
            pdf.savefig(fig)
            rest = t["flagged"][FLAG_LINES_FIRST_PAGE:]
            while rest:
                fig = Figure(figsize=A4)
                fig.text(0.06, 0.965, f"{t['title']} — flagged chromosomes (continued)", fontsize=12, weight="bold")
                fig.text(0.06, 0.94, "\n".join(s[:110] for s in rest[:80]), fontsize=7.5, va="top",
                         family="monospace")
                pdf.savefig(fig)
                rest = rest[80:]
    return path
