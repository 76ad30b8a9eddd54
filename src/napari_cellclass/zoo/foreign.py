"""bioimage.io packages from other projects (formats 0.4 and 0.5), run through ``bioimageio.core``.

A foreign package keeps its own pre- and post-processing: :class:`ForeignModel` feeds
it arrays in the value range its description states and reads its first output.  The
class names come from the package itself: an attached labels file (``hpa_labels.txt``
and the like), else the output's channel names.

Opening a package never runs its code.  The archive is checked first
(:func:`napari_cellclass.zoo.trust.check_package`), then described by
``bioimageio.spec``; only :meth:`ForeignModel.predict` builds the prediction pipeline.
A package whose chosen weights need its own Python code (a state-dict architecture
from its source file, a callable from an installed module other than ours, a custom
processing step) runs only with consent: ``trust=True`` (CLI ``--trust``, the widget's
dialog), remembered per package sha256, or a community entry whose card pins that
sha256.  TorchScript weights need no consent.

:data:`COMMUNITY` lists the HPA community's published models as downloadable entries
(:func:`fetch_package`: the model cache, offline after the first use).  No Qt here.
"""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classes import HPA_CLASSES
from ..errors import InputError
from .loaded import LoadedModel
from .trust import PackageInfo, check_package, is_trusted, remember

__all__ = ["COMMUNITY", "community_cards", "is_package_path", "ForeignModel", "load_foreign", "fetch_package",
           "TrustRequired", "HPA_TASKS", "import_foreign", "as_foreign"]

#: the jobs a foreign package can be given to (the HPA route)
HPA_TASKS = ("hpa", "hpa-cells", "hpa-nuclei", "hpa-singlecell")
OUR_LIBRARY = "napari_cellclass."
LABEL_FILE_BYTES = 1 << 20
FORMATS = ("torchscript", "pytorch_state_dict")

#: the 2018/2019 competition's 28 classes (the plugin's one table); the 2021 single-cell challenge's 19,
#: in its order: 17 of those, then its two new labels
HPA_2019_CLASSES = list(HPA_CLASSES)
HPA_2021_CLASSES = [HPA_CLASSES[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 14, 17, 19, 21, 23, 24, 25)] + [
    "Vesicles and punctate cytosolic patterns", "Negative"]

_HPA_2019_CITE = {"text": "Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image "
                          "Classification competition. Nat Methods 16, 1254-1261 (2019).",
                  "doi": "10.1038/s41592-019-0658-6"}
_HPA_2021_CITE = {"text": "Le T, Winsnes CF, Axelsson U, et al. Analysis of the Human Protein Atlas Weakly "
                          "Supervised Single-Cell Classification competition. Nat Methods 19, 1221-1229 (2022).",
                  "doi": "10.1038/s41592-022-01606-z"}
_BIOIMAGEIO = "https://bioimage.io/#/?id="

#: The HPA community's models on bioimage.io (downloadable; nothing here ships their weights).
#: ``sha256`` is None where the package's hash could not be read from here (no network): the first
#: download records it and later uses are checked against that record (see docs/hpa.md).
COMMUNITY: dict[str, dict[str, Any]] = {
    "hpa-bestfitting-densenet121": {
        "task": "hpa", "role": "image",
        "bioimageio_id": "HPA-bestfitting (DenseNet-121, bioimage.io id not verified here)",
        "source": None, "url": None, "sha256": None,
        "licence": "MIT", "authors": "Shubin Dai (bestfitting); packaged by Wei Ouyang",
        "cite": [_HPA_2019_CITE],
        "one_line": "HPA 2019 winner (bestfitting, DenseNet-121): 28 localisation classes for a whole RGBY field; "
                    "bioimage.io format 0.4, labels in hpa_labels.txt (downloaded on first use)",
        "expects": {"channels": ["red", "green", "blue", "yellow"], "layout": "bcyx", "classes": 28,
                    "labels": "hpa_labels.txt (attached)", "format_version": "0.4"},
        "published": {"macro_f1_2018_test": 0.565},
        "classes_if_unlabelled": HPA_2019_CLASSES, "activation": "sigmoid",
    },
    "hpa-cell-segmentation": {
        "task": "hpa-cells", "role": "cells",
        "bioimageio_id": "10.5281/zenodo.6200635", "source": "10.5281/zenodo.6200635", "url": None, "sha256": None,
        "licence": "CC-BY-4.0", "authors": "Hao Xu, Wei Ouyang (HPA Cell Segmentation, DPN-UNet)",
        "cite": [{"text": "Kaimal J, Thul P. HPA Cell Image Segmentation Dataset (2021).",
                  "doi": "10.5281/zenodo.4430893"}],
        "one_line": "HPA cell segmentation (DPN-UNet, 2021 single-cell pipeline): foreground and boundary maps "
                    "from microtubules, ER and nuclei; downloaded on first use",
        "expects": {"channels": ["red", "yellow", "blue"], "layout": "bcyx", "work_size": 512,
                    "outputs": {"boundaries": 1, "foreground": 2}},
    },
    "hpa-nucleus-segmentation": {
        "task": "hpa-nuclei", "role": "nuclei",
        "bioimageio_id": "10.5281/zenodo.6200999", "source": "10.5281/zenodo.6200999", "url": None, "sha256": None,
        "licence": "CC-BY-4.0", "authors": "Hao Xu, Wei Ouyang (HPA Nucleus Segmentation, DPN-UNet)",
        "cite": [{"text": "Kaimal J, Thul P. HPA Cell Image Segmentation Dataset (2021).",
                  "doi": "10.5281/zenodo.4430893"}],
        "one_line": "HPA nucleus segmentation (DPN-UNet, 2021 single-cell pipeline): nucleus foreground from the "
                    "blue (DAPI) channel given three times; seeds of the cell watershed; downloaded on first use",
        "expects": {"channels": ["blue", "blue", "blue"], "layout": "bcyx", "work_size": 512,
                    "outputs": {"foreground": -1}},
    },
    "hpa-singlecell-inceptionv3": {
        "task": "hpa-singlecell", "role": "cell classifier",
        "bioimageio_id": "10.5281/zenodo.5910854", "source": "10.5281/zenodo.5910854", "url": None, "sha256": None,
        "licence": "MIT (not verified here)", "authors": "HPA single-cell classification (InceptionV3), "
                                                        "packaged by the bioimage.io team",
        "cite": [_HPA_2021_CITE],
        "one_line": "HPA 2021 single-cell classifier (InceptionV3): 19 classes for one masked RGBY cell crop "
                    "(128 px, values 0-255); downloaded on first use",
        "expects": {"channels": ["red", "green", "blue", "yellow"], "layout": "bcyx", "size": 128,
                    "value_range": [0, 255], "classes": 19, "crop": "cell bounding box, outside the cell zeroed"},
        "published": {"mAP_2021_single_cell": 0.567},
        "classes_if_unlabelled": HPA_2021_CLASSES, "activation": "softmax", "input_scale": 255.0,
    },
}
for _name, _c in COMMUNITY.items():
    _c.setdefault("name", _name)
    _c.setdefault("classes", list(_c.get("classes_if_unlabelled") or []))  # the package's own list wins
    _c["format"] = "bioimageio"
    _c["downloadable"] = True
    _c["page"] = _BIOIMAGEIO + str(_c["bioimageio_id"]).replace("/", "%2F") if _c.get("source") else None
    _c.setdefault("trained_on", {"source": "Human Protein Atlas images (see the citation)", "synthetic": False})


def community_cards(task: str | None = None) -> list[dict[str, Any]]:
    """Copies of the community entries (of ``task`` when given)."""
    return [copy.deepcopy(c) for c in COMMUNITY.values() if task is None or c["task"] == task]


class TrustRequired(InputError):
    """A package would run its own Python code and the user has not consented (yet)."""

    def __init__(self, message: str, path: Any = None, *, sha256: str = "", name: str = "", reason: str = ""):
        super().__init__(message, path)
        self.sha256, self.name, self.reason = sha256, name, reason


# ----------------------------------------------------------------------------- recognising a package
def is_package_path(path: str | Path) -> bool:
    """Cheap: a .zip, an .yaml, or a folder with an rdf.yaml (the checks come later)."""
    p = Path(path)
    if p.is_dir():
        return (p / "rdf.yaml").is_file() or (p / "bioimageio.yaml").is_file()
    return p.suffix.lower() in (".zip", ".yaml", ".yml")


# ----------------------------------------------------------------------------- downloads
def _cache_target(c: dict[str, Any], cache: Path) -> Path:
    return Path(cache) / "bioimageio" / f"{c['name']}.zip"


def fetch_package(c: dict[str, Any], cache: Path) -> Path:
    """The local package of a community entry: from the cache (hash-checked), else downloaded once."""
    from ._fetch import sha256_of, verify

    target = _cache_target(c, cache)
    record = target.with_suffix(".zip.sha256")
    pinned = c.get("sha256")
    if target.is_file():
        expected = pinned or (record.read_text().strip() if record.is_file() else None)
        if expected:
            verify(target, expected, what=f"cached bioimage.io model {c['name']!r}")
        return target
    where = c.get("url") or c.get("source")
    hint = (f"connect to the network once, or download the package (.zip) from {c.get('page') or 'bioimage.io'} "
            f"yourself and save it as {target}")
    if not where:
        raise InputError(f"bioimage.io model {c['name']!r} is not in the cache, and its bioimage.io id is not "
                         f"recorded here, so it cannot be downloaded automatically; download its package (.zip) "
                         f"from bioimage.io yourself and save it as {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if c.get("url"):
            from ._fetch import fetch

            got = fetch({**c, "sha256": pinned or ""}, target.parent, fname=target.name)
        else:  # a bioimage.io id or DOI: bioimageio.spec resolves it and checks each file's sha256
            from bioimageio.spec import save_bioimageio_package

            from ..engine.atomic import atomic_path

            with atomic_path(target) as part:
                save_bioimageio_package(c["source"], output_path=part.with_suffix(".zip"))
                part.with_suffix(".zip").replace(part)
            got = target
    except Exception as exc:  # offline, moved record, invalid package: one line, with what to do
        reason = (getattr(exc, "problem", None) or str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise InputError(f"bioimage.io model {c['name']!r} ({c.get('bioimageio_id')}) is not in the cache and "
                         f"could not be downloaded ({reason[:200]}); {hint}") from None
    got = Path(got)
    if not pinned:
        record.write_text(sha256_of(got) + "\n")  # trust on first use: later uses must match
    return got


def describe_package(path: str | Path) -> str:
    """One line for a model field: the package's name, format, weights and whether it runs its own code.

    Cheap (no ``bioimageio.spec``): the archive checks and the rdf only; the sha256 is
    cached per file version.
    """
    info = check_package(path)
    rdf = info.rdf
    weights = [k for k in (rdf.get("weights") or {}) if isinstance(k, str)]
    use = next((w for w in FORMATS if w in weights), None)
    code = ""
    if use == "pytorch_state_dict":
        arch = (rdf["weights"][use] or {}).get("architecture")
        mod = arch.get("import_from") if isinstance(arch, dict) else (
            arch.rsplit(":", 1)[0] if isinstance(arch, str) and ".py" not in arch else None)
        if not (isinstance(mod, str) and mod.startswith(OUR_LIBRARY)):
            code = "; runs its own Python code: " + ("trusted" if is_trusted(info.sha256) else "asks first")
    return (f"bioimage.io package '{rdf.get('name', Path(path).name)}', format {rdf.get('format_version', '?')}, "
            f"weights: {', '.join(weights) or 'none'}{code}")


# ----------------------------------------------------------------------------- description helpers
def _axes(t) -> list[str]:
    """Axis letters of a tensor description (0.4 string, 0.5 axis objects): b, c, y, x, z, i, t."""
    axes = t.axes
    if isinstance(axes, str):
        return list(axes)
    out = []
    for a in axes:
        kind = getattr(a, "type", "")
        if kind == "batch":
            out.append("b")
        elif kind == "channel":
            out.append("c")
        elif kind == "index":
            out.append("i")
        elif kind == "time":
            out.append("t")
        else:
            out.append(str(getattr(a, "id", "x")))
    return out


def _sizes(t) -> dict[str, Any]:
    """letter -> int (fixed), (min, step) (parameterised) or None (free/reference)."""
    letters = _axes(t)
    shape = getattr(t, "shape", None)
    out: dict[str, Any] = {}
    if isinstance(t.axes, str):  # format 0.4: a shape list or (min, step)
        if isinstance(shape, (list, tuple)):
            return {a: int(s) for a, s in zip(letters, shape)}
        mins, steps = list(getattr(shape, "min", [])), list(getattr(shape, "step", []))
        if mins:
            return {a: (int(m), int(s)) if s else int(m) for a, m, s in zip(letters, mins, steps)}
        return {a: None for a in letters}
    for a, ax in zip(letters, t.axes):
        if a == "c":
            names = getattr(ax, "channel_names", None)
            out[a] = len(names) if names else getattr(ax, "size", None)
            continue
        size = getattr(ax, "size", None)
        if isinstance(size, int):
            out[a] = size
        elif size is not None and hasattr(size, "min"):
            out[a] = (int(size.min), int(size.step))
        else:
            out[a] = None
    return out


def _range(t) -> tuple[float, float] | None:
    r = getattr(t, "data_range", None)
    if r is None:
        data = getattr(t, "data", None)
        r = getattr(data, "range", None) if data is not None and not isinstance(data, (list, tuple)) else None
    if r is None:
        return None
    lo, hi = r
    return (float("-inf") if lo is None else float(lo)), (float("inf") if hi is None else float(hi))


def _tensor_id(t) -> str:
    return str(getattr(t, "id", None) or getattr(t, "name"))


def _reader_bytes(descr, source, limit: int) -> bytes:
    from bioimageio.spec.utils import download

    data = download(source).read()
    if len(data) > limit:
        raise InputError(f"the package's {source} is larger than {limit} bytes")
    return data


def _attached(descr) -> list[Any]:
    att = getattr(descr, "attachments", None)
    if att is None:
        return []
    files = getattr(att, "files", None)
    if files is not None:
        return list(files)
    return [getattr(a, "source", a) for a in att]


def _class_names(descr, card: dict[str, Any] | None) -> list[str] | None:
    """An attached labels file, else the first output's channel names, else the card's list."""
    for src in _attached(descr):
        name = str(src).replace("\\", "/").rsplit("/", 1)[-1].lower()
        if "label" in name and name.endswith((".txt", ".csv", ".json")):
            text = _reader_bytes(descr, src, LABEL_FILE_BYTES).decode("utf-8", "replace")
            if name.endswith(".json"):
                data = json.loads(text)
                names = list(data.values() if isinstance(data, dict) else data)
            else:
                names = [ln.split(",", 1)[-1].strip() if name.endswith(".csv") else ln.strip()
                         for ln in text.splitlines()]
            names = [re.sub(r"^\s*\d+\s*[:,\t ]\s*", "", str(n)).strip() for n in names if str(n).strip()]
            if names:
                return names
    out = descr.outputs[0]
    if not isinstance(out.axes, str):
        for ax in out.axes:
            if getattr(ax, "type", "") == "channel" and getattr(ax, "channel_names", None):
                return [str(n) for n in ax.channel_names]
    if card and card.get("classes_if_unlabelled"):
        return list(card["classes_if_unlabelled"])
    return None


def _code_needed(descr, wf: str) -> str | None:
    """Why running weights ``wf`` of this package would run the package's own (or a foreign module's) code."""
    reasons = []
    for t in list(descr.inputs) + list(descr.outputs):
        for step in list(getattr(t, "preprocessing", []) or []) + list(getattr(t, "postprocessing", []) or []):
            if type(step).__name__ == "CustomProcessingDescr" or getattr(step, "id", "") == "custom":
                reasons.append("a custom processing step from its source file")
    if wf == "pytorch_state_dict":
        w = descr.weights.pytorch_state_dict
        arch = w.architecture
        module = getattr(arch, "import_from", None) or getattr(arch, "module_name", None)
        if module is not None:
            if not str(module).startswith(OUR_LIBRARY):
                reasons.append(f"the architecture {module}.{getattr(arch, 'callable', None) or arch.callable_name} "
                               "from an installed module")
        else:
            src = getattr(arch, "source", None) or getattr(arch, "source_file", None)
            name = getattr(arch, "callable", None) or getattr(arch, "callable_name", "")
            reasons.append(f"the architecture {name} from its source file {str(src).rsplit('/', 1)[-1]}")
    return "; ".join(dict.fromkeys(reasons)) or None


# ----------------------------------------------------------------------------- the model
class _PackageNet(torch.nn.Module):
    """``net(x)`` for code that wants a module: runs the package (with its own processing) on a batch."""

    def __init__(self, fm: ForeignModel):
        super().__init__()
        self._fm = [fm]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._fm[0].predict(x.detach().cpu().numpy()))


@dataclass(eq=False)
class ForeignModel(LoadedModel):
    """A checked, described bioimage.io package; runs only through :meth:`predict` (its own processing)."""

    info: PackageInfo | None = field(default=None, repr=False)
    descr: Any = field(default=None, repr=False)
    weight_format: str = ""
    code_reason: str | None = None
    declared_task: str = "hpa"
    _pipeline: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    # --------------------------------------------------------------- what it is
    @property
    def task(self) -> str | None:
        return self.declared_task

    @property
    def name(self) -> str:
        """The card's name, else the package's own name, else its file name."""
        if self.card:
            return self.card["name"]
        own = getattr(self.descr, "name", None)
        return str(own) if own else (self.path.name if self.path is not None else self.source)

    @property
    def sha256(self) -> str:
        return self.info.sha256 if self.info else ""

    @property
    def format_version(self) -> str:
        return str(self.descr.format_version)

    @property
    def input_descr(self):
        return self.descr.inputs[0]

    @property
    def output_descr(self):
        return self.descr.outputs[0]

    def input_channels(self) -> int | None:
        c = _sizes(self.input_descr).get("c")
        return c if isinstance(c, int) else None

    def input_size(self, want: int | None = None) -> tuple[int, int] | None:
        """The crop size a classifier is fed: fixed by the package, else ``want`` made valid, else None."""
        s = _sizes(self.input_descr)
        out = []
        for a in ("y", "x"):
            v = s.get(a)
            if isinstance(v, int):
                out.append(v)
            elif isinstance(v, tuple):
                m, st = v
                w = int(want or (self.card or {}).get("expects", {}).get("size") or max(m, 64))
                out.append(m if w <= m or not st else m + st * math.ceil((w - m) / st))
            else:
                out.append(int(want or (self.card or {}).get("expects", {}).get("size") or 128))
        return out[0], out[1]

    def valid_shape(self, h: int, w: int) -> tuple[int, int]:
        """The smallest shape >= (h, w) the package accepts (segmentation: pad to it); fixed sizes as they are."""
        s = _sizes(self.input_descr)
        out = []
        for a, n in (("y", h), ("x", w)):
            v = s.get(a)
            if isinstance(v, int):
                out.append(v)
            elif isinstance(v, tuple):
                m, st = v
                out.append(m if n <= m or not st else m + st * math.ceil((n - m) / st))
            else:
                out.append(n)
        return out[0], out[1]

    def input_scale(self) -> float:
        """What a [0, 1] image is multiplied by: the card's value, else the declared input range's top (255)."""
        if self.card and self.card.get("input_scale"):
            return float(self.card["input_scale"])
        r = _range(self.input_descr)
        return float(r[1]) if r and math.isfinite(r[1]) and r[1] > 1.5 else 1.0

    def activation(self) -> str:
        """How outputs become probabilities: the card's, else none for a declared [0, 1] output, else sigmoid."""
        if self.card and self.card.get("activation"):
            return str(self.card["activation"])
        r = _range(self.output_descr)
        return "none" if r and r[0] >= 0 and r[1] <= 1 else "sigmoid"

    def summary(self) -> str:
        """One line: name, format, weights, classes, and whether it runs its own code."""
        code = f"; runs its own code ({self.code_reason})" if self.code_reason else ""
        return (f"{self.name}: bioimage.io format {self.format_version}, {self.weight_format} weights, "
                f"{len(self.classes)} classes{code}")

    # --------------------------------------------------------------- consent and running
    def trusted(self) -> bool:
        if self.code_reason is None:
            return True
        pinned = (self.card or {}).get("sha256")
        return bool(pinned and pinned == self.sha256) or is_trusted(self.sha256)

    def require_trust(self, trust: bool = False) -> None:
        """TrustRequired unless the package needs no code, is pinned, was trusted before, or ``trust``."""
        if self.trusted():
            return
        if trust:
            remember(self.sha256, self.name)
            return
        raise TrustRequired(
            f"bioimage.io package {self.name!r} runs its own Python code ({self.code_reason}); run it only if you "
            f"trust its source: `cellclass import bioimageio PACKAGE --trust` once (CLI), trust=True (Python) or "
            f"confirm in the widget; consent is remembered for this exact package (sha256 {self.sha256[:12]}...)",
            sha256=self.sha256, name=self.name, reason=str(self.code_reason))

    def pipeline(self, trust: bool = False):
        self.require_trust(trust)
        with self._lock:
            if self._pipeline is None:
                import warnings

                import bioimageio.core as core

                devices = [str(self.policy.device)]
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notes
                        self._pipeline = core.create_prediction_pipeline(
                            self.descr, weight_format=self.weight_format, devices=devices)
                except Exception as exc:  # a package that does not load: one line naming it
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise InputError(f"bioimage.io package {self.name!r} could not be loaded by bioimageio.core "
                                     f"({first[:300]})", self.path) from None
        return self._pipeline

    def predict(self, x: np.ndarray, trust: bool = False) -> np.ndarray:
        """Run the package on ``x`` (batch, channel, y, x; values as :meth:`input_scale` says).

        Returns the first output as (batch, channel, ...) float32.  The package's own
        pre- and post-processing run inside ``bioimageio.core``.
        """
        pp = self.pipeline(trust)
        x = np.asarray(x, dtype=np.float32)
        letters = _axes(self.input_descr)
        sizes = _sizes(self.input_descr)
        fixed_batch = sizes.get("b") if isinstance(sizes.get("b"), int) else None
        if fixed_batch == 1 and x.shape[0] > 1:
            return np.concatenate([self.predict(x[i:i + 1], trust) for i in range(x.shape[0])])
        arr = _to_axes(x, letters)
        try:
            # the pipeline stays loaded: core.predict() would unload it (two gc.collect()) after every call
            from bioimageio.core.digest_spec import create_sample_for_model

            sample = create_sample_for_model(self.descr, inputs={_tensor_id(self.input_descr): arr},
                                             sample_id="cellclass")
            with torch.inference_mode():
                sample = pp.predict_sample_without_blocking(sample)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"bioimage.io package {self.name!r} failed on an input of shape {tuple(arr.shape)} "
                             f"({first[:300]})", self.path) from None
        out = sample.members[next(iter(sample.members))] if _tensor_id(self.output_descr) not in sample.members \
            else sample.members[_tensor_id(self.output_descr)]
        return _from_dims(out.data)


def _to_axes(x: np.ndarray, letters: list[str]) -> np.ndarray:
    """(B, C, H, W) -> the package's axis order (adding singleton z/t/i axes it declares)."""
    src = {"b": 0, "c": 1, "y": 2, "x": 3}
    arr = x
    missing = [k for k in ("b", "c") if k not in letters]
    for k in missing:  # a package without batch/channel axis: only singletons can be dropped
        if x.shape[src[k]] != 1:
            raise InputError(f"the package has no {'batch' if k == 'b' else 'channel'} axis but got "
                             f"{x.shape[src[k]]} along it")
    arr = np.squeeze(arr, axis=tuple(src[k] for k in missing)) if missing else arr
    kept = [k for k in ("b", "c", "y", "x") if k not in missing]
    perm = [kept.index(a) for a in letters if a in kept]
    arr = np.transpose(arr, perm)
    for i, a in enumerate(letters):
        if a not in src:
            arr = np.expand_dims(arr, i)
    return np.ascontiguousarray(arr)


def _from_dims(data) -> np.ndarray:
    """An xarray output -> (batch, channel, rest...) float32."""
    dims = [str(d) for d in data.dims]
    arr = np.asarray(data.values, dtype=np.float32)
    name = {"batch": "b", "channel": "c"}
    letters = [name.get(d, d) for d in dims]
    if "b" not in letters:
        arr, letters = arr[None], ["b"] + letters
    if "c" not in letters:
        arr, letters = np.expand_dims(arr, 1), letters[:1] + ["c"] + letters[1:]
    front = [letters.index("b"), letters.index("c")]
    rest = [i for i in range(len(letters)) if i not in front]
    arr = np.transpose(arr, front + rest)
    # squeeze singleton non-spatial extras (z, t, i of size 1)
    while arr.ndim > 4 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


# ----------------------------------------------------------------------------- loading
_CACHE: dict[tuple, ForeignModel] = {}
_CACHE_LOCK = threading.Lock()


def _describe(info: PackageInfo):
    import warnings

    from bioimageio.spec import load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            descr = load_description(info.rdf_path, perform_io_checks=False)
        except Exception as exc:  # the spec library's own failure: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"not a valid bioimage.io description ({first[:300]})", info.path) from None
    if type(descr).__name__ != "ModelDescr":
        summary = getattr(descr, "validation_summary", None)
        detail = ""
        if summary is not None:
            errs = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors][:2]
            detail = "; ".join(errs)
        kind = info.rdf.get("type", "?")
        what = "not a model" if kind != "model" else "an invalid model description"
        raise InputError(f"not a usable bioimage.io model package ({what}{': ' + detail if detail else ''})"[:400],
                         info.path)
    return descr


def _choose_weights(descr, path: Path) -> str:
    w = descr.weights
    for wf in FORMATS:
        if getattr(w, wf, None) is not None:
            return wf
    have = [k for k in ("onnx", "keras_hdf5", "tensorflow_saved_model_bundle", "tensorflow_js")
            if getattr(w, k, None) is not None]
    raise InputError("the package has no torchscript or pytorch_state_dict weights (it has: "
                     f"{', '.join(have) or 'none'}); napari-cellclass runs PyTorch weights only", path)


def load_foreign(path: str | Path, task: str | None = None, device: Any = None, card: dict[str, Any] | None = None,
                 *, source: str | None = None, cache: bool = True) -> ForeignModel:
    """Check and describe a package (no code runs); cached per (sha256, device)."""
    from ..engine.device import DevicePolicy, resolve_device

    if task is not None and task not in HPA_TASKS:
        raise InputError(f"bioimage.io packages from other projects run in the HPA route only; {task!r} needs a "
                         "napari-cellclass checkpoint", path)
    info = check_package(path)
    policy = device if isinstance(device, DevicePolicy) else resolve_device(device)
    key = (info.sha256, policy, task)
    if cache:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
    descr = _describe(info)
    wf = _choose_weights(descr, info.path)
    classes = _class_names(descr, card) or []
    fm = ForeignModel(net=torch.nn.Identity(), meta=None, transform=None, classes=classes, policy=policy,
                      source=source or str(path), path=Path(path), card=card, info=info, descr=descr,
                      weight_format=wf, code_reason=_code_needed(descr, wf),
                      declared_task=(card or {}).get("task") or task or "hpa")
    fm.net = _PackageNet(fm)
    if cache:
        with _CACHE_LOCK:
            _CACHE[key] = fm
    return fm


def as_foreign(spec: Any, task: str | None = "hpa", device: Any = None) -> ForeignModel | None:
    """The :class:`ForeignModel` for a package path, a community name or a ForeignModel; None for anything else."""
    if isinstance(spec, ForeignModel):
        return spec
    if spec is None or isinstance(spec, (LoadedModel, torch.nn.Module)):
        return None
    text = str(spec).strip()
    if not text:
        return None
    from . import card, is_builtin, is_downloadable_package
    from .loaded import load_model

    p = Path(text).expanduser()
    if (p.exists() and is_package_path(p)) or (is_builtin(text) and is_downloadable_package(card(text))):
        fm = load_model(text, task=task, device=device)
        return fm if isinstance(fm, ForeignModel) else None
    return None


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------- import
def import_foreign(package: str | Path, out: str | Path | None = None, *, trust: bool = False) -> dict[str, Any]:
    """Check a foreign package, run its own test input once (after consent where needed), copy it to ``out``.

    Returns a summary: name, format, weights, classes, whether it runs code, the test's
    largest difference from the package's expected output, and where it was written.
    """
    from ..engine.atomic import atomic_path

    fm = load_foreign(package, device="cpu", cache=False)
    if out is not None:
        out = Path(out)
        if out.suffix.lower() != ".zip" or fm.info.kind != "zip":
            raise InputError("a foreign bioimage.io package is used as it is (it cannot become a .safetensors "
                             "checkpoint); give a .zip to copy it to, or no output, and pass the package itself "
                             "as the model", out)
        if out.exists():
            raise InputError("exists already; choose a new file name (nothing is overwritten)", out)
    fm.require_trust(trust)
    summary: dict[str, Any] = {"name": fm.name, "format_version": fm.format_version, "weights": fm.weight_format,
                               "classes": len(fm.classes), "runs_own_code": fm.code_reason, "sha256": fm.sha256}
    test = _own_test(fm)
    if test is not None:
        summary["test_max_abs_diff"] = test
    if out is not None:
        with atomic_path(out) as part:
            shutil.copyfile(fm.info.path, part)
        summary["written"] = str(out)
    return summary


def _own_test(fm: ForeignModel) -> float | None:
    """Largest |difference| between the package's test output and ours on its test input (None: none given)."""
    from bioimageio.spec.utils import download

    t_in, t_out = fm.input_descr, fm.output_descr
    src_in = getattr(t_in, "test_tensor", None)
    src_in = getattr(src_in, "source", None) if src_in is not None else None
    src_out = getattr(getattr(t_out, "test_tensor", None), "source", None)
    if src_in is None and getattr(fm.descr, "test_inputs", None):
        src_in, src_out = fm.descr.test_inputs[0], fm.descr.test_outputs[0]
    if src_in is None or src_out is None:
        return None
    import io

    def _npy(src) -> np.ndarray:
        data = download(src).read()
        if len(data) > 256 << 20:
            raise InputError("the package's test tensor is larger than 256 MB", fm.path)
        return np.load(io.BytesIO(data), allow_pickle=False)

    x, y = _npy(src_in), _npy(src_out)
    from bioimageio.core.digest_spec import create_sample_for_model

    pp = fm.pipeline()
    sample = pp.predict_sample_without_blocking(
        create_sample_for_model(fm.descr, inputs={_tensor_id(t_in): x}, sample_id="test"))
    got = np.asarray(sample.members[_tensor_id(t_out)].data.values, dtype=np.float64)
    if got.shape != y.shape:
        raise InputError(f"the package's own test fails: output shape {got.shape}, expected {y.shape}", fm.path)
    return float(np.max(np.abs(got - y))) if got.size else 0.0
