"""The built-in half of ``cellclass demo``: each built-in model on the real samples that ship.

Only blood-smear samples can ship (BCCD, MIT); built-ins of other tasks are
listed with the reason they were not run.  Each result says whether the sample
image was held out when the model was trained (from the image lists a
checkpoint keeps), so a hit on a training image is not mistaken for a test.

It lives among the tasks (it runs the wbc and detect tasks) so that ``zoo/``
never imports ``tasks/``; each model is loaded once through
:func:`napari_cellclass.zoo.loaded.load_model`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.progress import Job, Progress
from ..errors import CellClassError
from ..zoo import list_models
from ..zoo.loaded import LoadedModel, load_model
from ..zoo.provenance import synthetic_warning


def _seen(meta, image: Path) -> str:
    """'held out', 'seen in training' or 'unknown' for one sample image."""
    tr = meta.training or {}
    names = {image.name, image.stem}

    def has(key: str) -> bool:
        v = tr.get(key)
        return isinstance(v, (list, tuple)) and any(Path(str(x)).name in names or str(x) in names for x in v)

    if has("val_images") or has("heldout_images"):
        return "held out"
    if has("train_images"):
        return "seen in training (not a test)"
    return "unknown"


def _wbc(card: dict, lm: LoadedModel, samples, device) -> Job[list[dict[str, Any]]]:
    from .wbc import classify

    meta = lm.meta
    rows = []
    for s in samples:
        boxes, labels = s.boxes()
        wbc = boxes[[i for i, lab in enumerate(labels) if lab == "WBC"]]
        res = yield from classify(s.read(), lm, cells=wbc, device=device)
        rows.append({"image": s.image.name, "expected": s.wbc_class, "predicted": list(res["classes"]),
                     "score": [round(float(v), 3) for v in res["scores"]],
                     "correct": bool(res["classes"]) and all(c == s.wbc_class for c in res["classes"]),
                     "split": _seen(meta, s.image)})
    return rows


def _detect(card: dict, lm: LoadedModel, samples, device) -> Job[list[dict[str, Any]]]:
    from .detect import detect

    meta = lm.meta
    rows = []
    for s in samples:
        _, labels = s.boxes()
        res = yield from detect(s.read(), lm, device=device)
        found = {n: int(sum(lab == n for lab in res["labels"])) for n in res["class_names"]}
        truth = {n: int(sum(lab.lower() == n.lower() for lab in labels)) for n in res["class_names"]}
        rows.append({"image": s.image.name, "found": found, "annotated": truth, "split": _seen(meta, s.image)})
    return rows


RUNNERS = {"wbc": _wbc, "detect": _detect}
NO_SAMPLE = {
    "chromosome": "no real chromosome spread can ship (the public sources carry no licence)",
    "karyotype": "no real chromosome spread can ship (the public sources carry no licence)",
    "hpa": "no real HPA field can ship (the public sources carry no licence)",
}


def run_builtin_demo(out: Path, device: str | None = None, tasks: list[str] | None = None) -> Job[dict[str, Any]]:
    """Run every built-in model (of ``tasks``, default all) on the shipped real samples; write builtin.json."""
    from ..samples import BCCD_SOURCE, bccd_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    cards = [c for c in list_models() if tasks is None or c["task"] in tasks]
    samples = bccd_samples()
    for k, c in enumerate(cards):
        yield Progress(k, len(cards), "built-in models", c["name"])
        entry: dict[str, Any] = {"task": c["task"], "summary": c.get("one_line", "")}
        warn = synthetic_warning("synthetic" if (c.get("trained_on") or {}).get("synthetic") else "")
        if warn:
            entry["warning"] = warn
        runner = RUNNERS.get(c["task"])
        if runner is None:
            entry.update(status="not run", reason=NO_SAMPLE.get(c["task"], "no real sample image ships for this task"))
            results[c["name"]] = entry
            continue
        t0 = time.monotonic()
        try:
            lm = load_model(c["name"], task=c["task"], device=device)  # verified, read once, shared
            rows = yield from runner(c, lm, samples, device)
            entry.update(status="ok", samples=BCCD_SOURCE, seconds=round(time.monotonic() - t0, 1), results=rows)
        except CellClassError as exc:
            entry.update(status="failed", reason=str(exc))
        results[c["name"]] = entry
    yield Progress(len(cards), len(cards), "built-in models", "done")
    (out / "builtin.json").write_text(json.dumps(results, indent=2, default=_json) + "\n")
    return results


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def markdown(results: dict[str, Any]) -> list[str]:
    """SUMMARY.md lines for the built-in part."""
    lines = ["## Built-in models on real sample images", ""]
    if not results:
        return lines + ["No built-in models in this version.", ""]
    lines += ["These models ship with napari-cellclass (see `cellclass models`). The samples are real",
              "BCCD smears (MIT licence); 'split' says whether each image was held out in training.", ""]
    for name, r in results.items():
        lines.append(f"### {name} ({r['task']}): {r['status']}")
        lines.append(f"- {r.get('summary', '')}")
        if r.get("warning"):
            lines.append(f"- **{r['warning']}**")
        if r.get("reason"):
            lines.append(f"- {r['reason']}")
        for row in r.get("results", []):
            lines.append("- " + ", ".join(f"{k}: {v}" for k, v in row.items()))
        lines.append("")
    return lines
