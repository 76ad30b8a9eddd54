"""bioimage.io model packages (format 0.5) from our classifiers, and back.

``export_package(model, out.zip)`` writes, through ``bioimageio.spec``:

* **torchscript** weights: the network traced together with its input
  normalisation and output activation, so deepImageJ, ilastik and
  ``bioimageio.core`` run it with no napari-cellclass installed;
* **pytorch_state_dict** weights of the same module, with the architecture
  taken from this package (``napari_cellclass.zoo.bioimageio:build_exported``),
  for environments that ``pip install napari-cellclass`` (torchscript is
  deprecated in recent PyTorch; the state dict is the durable copy);
* a test input (one cell crop) and the expected output, a cover image, a
  README and citations of the papers the architectures come from;
* our checkpoint header under ``config["napari-cellclass"]``, which is what
  ``import_package`` uses to rebuild one of our checkpoints.

The package's input is one crop, ``batch x channel x y x x``, float32 scaled to
[0, 1] and resized to the model's input size (what our own pipeline does before
normalising); its output is the class probabilities (softmax, or sigmoid for the
multi-label HPA model).  Detectors are not exported: their variable-length box
lists have no bioimage.io 0.5 tensor description.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError

CONFIG_KEY = "napari-cellclass"
INPUT_ID = "cell"
OUTPUT_ID = "probabilities"
LICENSE = "BSD-3-Clause"
CHANNEL_NAMES = {1: ["gray"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "yellow"]}

# the papers our architectures and training recipes come from (../shared/seeds)
SEED_CITATIONS = {
    "wbc": [{"text": "Ma L, Shuai R, Liu W, Li W. White blood cell classification based on an improved residual "
                     "neural network (in Chinese). Computer Engineering and Design, 2020, 41(10).",
             "doi": "10.16208/j.issn1000-7024.2020.10.046"}],
    "chromosome": [{"text": "Zhang L, Yi X, Wang G, Fan X, Liu H, Wang X. A grid reconstruction learning model for "
                            "chromosome classification (GRiCoL). Acta Automatica Sinica, 2024, 50(10): 2013-2021.",
                    "doi": "10.16383/j.aas.c210303"}],
    "hpa": [],  # seed 000 (Chang C., ResNet HPA classification) has no DOI or URL: named in the README instead
}
RECIPE_CITATION = {"text": "Zhou T, Huo BQ, Lu HL, Shi HB. Progress of residual neural network optimization "
                           "algorithm for medical imaging disease diagnosis. Journal of Image and Graphics, 2020, "
                           "25(10): 2079-2092.",
                   "doi": "10.11834/jig.200207"}
HPA_SEED_TEXT = ("Chang C. Research on the classification of Human Protein Atlas images based on a ResNet deep "
                 "network (in Chinese), Wuhan University School of Remote Sensing and Information Engineering.")


def _bioimageio():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise InputError("bioimage.io export/import needs the 'bioimageio.spec' package: "
                         "pip install bioimageio.spec bioimageio.core") from None


class ExportedClassifier(nn.Module):
    """Our network with its input normalisation and output activation built in."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], activation: str):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.sigmoid = activation == "sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net((x - self.mean) / self.std)
        return torch.sigmoid(y) if self.sigmoid else torch.softmax(y, dim=1)


def build_exported(arch: str, arch_config: dict[str, Any], mean: list[float], std: list[float],
                   activation: str) -> nn.Module:
    """Architecture callable of the pytorch_state_dict weights (needs napari-cellclass installed)."""
    from ..models.registry import build_model

    return ExportedClassifier(build_model(arch, **arch_config), mean, std, activation).eval()


def _norm(meta) -> tuple[list[float], list[float]]:
    n = meta.normalization or {}
    c = int(meta.in_channels)
    mean = [float(v) for v in n.get("mean", [0.0] * c)]
    std = [float(v) for v in n.get("std", [1.0] * c)]
    if len(mean) != c or len(std) != c:
        raise CheckpointError(f"normalisation has {len(mean)}/{len(std)} values for {c} channel(s)")
    return mean, std


def _activation(meta) -> str:
    return "sigmoid" if (meta.thresholds is not None or meta.task == "hpa") else "softmax"


def test_input_for(meta, image: Path | np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """``1 x C x H x W`` float32 in [0, 1]: a given image resized, else a smooth deterministic pattern."""
    import torch.nn.functional as F

    from ..preprocess import scale01, to_chw

    c = int(meta.in_channels)
    h, w = (int(s) for s in meta.input_size)
    if image is None:
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(seed)
        a = np.stack([gaussian_filter(rng.random((h, w)), 3.0) for _ in range(c)]).astype(np.float32)
        a = (a - a.min()) / max(float(np.ptp(a)), 1e-6)
    else:
        if not isinstance(image, np.ndarray):
            from ..io.wbc_dataset import read_rgb

            image = read_rgb(Path(image)) if c == 3 else _read_any(Path(image))
        a = scale01(to_chw(np.asarray(image), c))
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).numpy().astype(np.float32)


def _read_any(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001  (any unreadable file: one message)
        raise InputError(f"cannot read the test input image: {exc}", path) from None


def _cover(x: np.ndarray, probs: np.ndarray, classes: list[str], path: Path) -> None:
    """A 2:1 PNG: the test crop and its class probabilities."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=80)
    ax = fig.add_subplot(1, 2, 1)
    img = x[0]
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.moveaxis(img[:3], 0, -1).clip(0, 1))
    ax.set_axis_off()
    ax.set_title("test input")
    ax2 = fig.add_subplot(1, 2, 2)
    order = np.argsort(-probs)[:8]
    ax2.barh([str(classes[i]) for i in order][::-1], probs[order][::-1], color="tab:blue")
    ax2.set_xlim(0, 1)
    ax2.set_title("class probabilities")
    fig.tight_layout()
    fig.savefig(path)


def _readme(meta, card: dict[str, Any] | None, name: str, activation: str, citations: list[dict]) -> str:
    from .provenance import synthetic_warning

    trained = (card or {}).get("trained_on") or {}
    lines = [f"# {name}", "", (card or {}).get("one_line") or f"napari-cellclass {meta.task} classifier ({meta.arch}).",
             ""]
    warn = synthetic_warning("synthetic" if trained.get("synthetic") else meta.trained_on)
    if warn:
        lines += [f"**{warn}**", ""]
    lines += [
        "## Input", "",
        f"One cell crop per batch item: {meta.in_channels} channel(s) "
        f"({', '.join(CHANNEL_NAMES.get(int(meta.in_channels), ['c']))}), {meta.input_size[0]} x {meta.input_size[1]} "
        "pixels, float32 scaled to [0, 1] (8-bit images divided by 255). The normalisation "
        f"(mean {_norm(meta)[0]}, std {_norm(meta)[1]}) is part of the model.",
        "", "## Output", "",
        f"{len(meta.class_names)} class probabilities ({activation}): {', '.join(map(str, meta.class_names))}.",
        "", "## Training", "",
        f"- data: {trained.get('source', meta.trained_on)}"
        + (f" (licence {trained['licence']}); split: {trained.get('split_rule')}" if trained.get("licence") else ""),
    ]
    if card and card.get("metrics"):
        lines.append("- validation: " + ", ".join(f"{k} {v}" for k, v in card["metrics"].items()))
    if card and card.get("training"):
        lines.append(f"- command: `{card['training'].get('command')}`")
    lines += ["", "## Weights", "",
              "- torchscript: network + normalisation + activation, traced; runs without napari-cellclass.",
              "- pytorch_state_dict: the same module; its architecture is "
              "`napari_cellclass.zoo.bioimageio.build_exported` (pip install napari-cellclass).",
              "", "Made with napari-cellclass (`cellclass export bioimageio`); "
              "`cellclass import bioimageio` turns this package back into a napari-cellclass checkpoint.",
              "", "## References", ""]
    lines += [f"- {c['text']} doi:{c['doi']}" if c.get("doi") else f"- {c['text']} {c.get('url', '')}"
              for c in citations]
    if meta.task == "hpa":
        lines.append(f"- {HPA_SEED_TEXT}")
    return "\n".join(lines) + "\n"


def export_package(model: str | Path, out: str | Path, *, test_input: Path | np.ndarray | None = None,
                   name: str | None = None) -> Path:
    """Write a bioimage.io 0.5 model package (zip) for a built-in name or a checkpoint path."""
    _bioimageio()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    from ..engine.atomic import atomic_path
    from ..models.registry import ARCH_MODULES
    from .loaded import load_model

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError("the bioimage.io package must be a .zip file", out)
    lm = load_model(model, device="cpu")  # the shared, cached model: wrapped below, never changed
    net, meta, card, path = lm.net, lm.meta, lm.card, lm.path
    if meta is None or path is None:
        raise InputError("export needs a checkpoint file or a built-in model's name, not a network in memory")
    if meta.task == "detect" or meta.arch.startswith(("fasterrcnn", "maskrcnn")):
        raise InputError("detectors cannot be exported to bioimage.io: their outputs (variable-length box lists) "
                         "have no bioimage.io 0.5 tensor description; only classifiers are exported", path)
    if meta.arch not in ARCH_MODULES:
        raise InputError(f"architecture {meta.arch!r} is not one of napari-cellclass's; cannot export it", path)
    mean, std = _norm(meta)
    activation = _activation(meta)
    wrapped = ExportedClassifier(net, mean, std, activation).eval()
    x = test_input_for(meta, test_input)
    with torch.no_grad():
        y = wrapped(torch.from_numpy(x)).numpy().astype(np.float32)
    name = name or (card["name"] if card else path.stem)
    c, (h, w) = int(meta.in_channels), (int(s) for s in meta.input_size)
    citations = SEED_CITATIONS.get(meta.task, []) + [RECIPE_CITATION]

    with tempfile.TemporaryDirectory(prefix="cellclass-bioimageio-") as tmp_s:
        tmp = Path(tmp_s)
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        _cover(x, y[0], list(meta.class_names), tmp / "cover.png")
        (tmp / "README.md").write_text(_readme(meta, card, name, activation, citations), encoding="utf-8")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the portable format
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed by the package's input
            traced = torch.jit.trace(wrapped, torch.from_numpy(x), check_trace=False)
            traced.save(str(tmp / "weights_torchscript.pt"))
        torch.save(wrapped.state_dict(), tmp / "weights_state_dict.pt")
        (tmp / "environment.yaml").write_text(
            "name: napari-cellclass\nchannels: [conda-forge]\ndependencies:\n  - python>=3.10\n  - pip\n"
            f"  - pip:\n    - napari-cellclass>={meta.version}\n", encoding="utf-8")

        ch_names = CHANNEL_NAMES.get(c, [f"c{i}" for i in range(c)])
        inputs = [bio.InputTensorDescr(
            id=bio.TensorId(INPUT_ID),
            description=f"one cell crop, {c} channel(s) scaled to [0, 1], {h}x{w} px",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=list(ch_names)),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=h), bio.SpaceInputAxis(id=bio.AxisId("x"), size=w)],
            test_tensor=bio.FileDescr(source=tmp / "test_input.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            preprocessing=[bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32"))],
        )]
        outputs = [bio.OutputTensorDescr(
            id=bio.TensorId(OUTPUT_ID),
            description=f"{activation} class probabilities",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[_ident(n) for n in meta.class_names])],
            test_tensor=bio.FileDescr(source=tmp / "test_output.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )]
        torch_version = bio.Version(torch.__version__.split("+")[0])
        weights = bio.WeightsDescr(
            torchscript=bio.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                    pytorch_version=torch_version),
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=tmp / "weights_state_dict.pt",
                architecture=bio.ArchitectureFromLibraryDescr(
                    import_from="napari_cellclass.zoo.bioimageio", callable=bio.Identifier("build_exported"),
                    kwargs={"arch": meta.arch, "arch_config": _plain(meta.arch_config), "mean": mean, "std": std,
                            "activation": activation}),
                pytorch_version=torch_version,
                dependencies=bio.FileDescr(source=tmp / "environment.yaml"),
            ),
        )
        descr = bio.ModelDescr(
            name=_title(name),
            description=((card or {}).get("one_line") or f"napari-cellclass {meta.task} classifier ({meta.arch})")[:1000],
            authors=[bio.Author(name="napari-cellclass developers")],
            cite=[bio.CiteEntry(**c) for c in citations],
            license=bio.LicenseId(LICENSE),
            documentation=bio.FileDescr(source=tmp / "README.md"),
            covers=[bio.FileDescr(source=tmp / "cover.png")],
            tags=["napari-cellclass", "classification", meta.task, "2d", "pytorch"],
            inputs=inputs,
            outputs=outputs,
            weights=weights,
            config={CONFIG_KEY: {"checkpoint_meta": _plain(asdict(meta)), "card": _plain(card) if card else None}},
        )
        written = save_bioimageio_package(descr, output_path=tmp / "package.zip")
        with atomic_path(out) as part:  # the user's file appears only complete
            shutil.copyfile(written, part)
    return out


def _ident(name: Any) -> str:
    """Channel names must be identifiers: keep letters, digits and '_'; a leading digit gets 'c'."""
    s = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name)) or "c"
    return s if not s[0].isdigit() else f"c{s}"


def _title(name: str) -> str:
    """A package name bioimage.io accepts (letters, digits, spaces, '_', '-', '(' ')', at most 128 chars)."""
    keep = "".join(ch if ch.isalnum() or ch in " _-()" else " " for ch in name).strip()
    if len(keep) < 5:
        keep = f"napari-cellclass {keep}".strip()
    return keep[:128]


def _plain(obj: Any) -> Any:
    """JSON/YAML-safe copy (NaN -> None; tuples -> lists)."""
    return json.loads(json.dumps(obj, default=str).replace("NaN", "null"))


# ----------------------------------------------------------------------------- import
def is_ours(package: str | Path) -> bool:
    """Whether a (checked) package was exported by napari-cellclass (it carries our checkpoint header)."""
    from .trust import check_package

    cfg = (check_package(package).rdf.get("config") or {})
    return isinstance(cfg, dict) and isinstance(cfg.get(CONFIG_KEY), dict) and "checkpoint_meta" in cfg[CONFIG_KEY]


def import_any(package: str | Path, out: str | Path | None = None, *, trust: bool = False) -> str:
    """``cellclass import bioimageio``: ours -> a .safetensors checkpoint; another project's -> checked, its own
    test run once (after consent where it runs code), optionally copied to a .zip; returns what to print."""
    from .trust import check_package

    info = check_package(package)  # non-packages, zip bombs, YAML aliases/tags: one line, nothing inflated
    cfg = info.rdf.get("config") or {}
    if isinstance(cfg, dict) and isinstance(cfg.get(CONFIG_KEY), dict):
        if out is None:
            raise InputError("name the checkpoint to write (.safetensors): this package was exported by "
                             "napari-cellclass and imports back into one", package)
        return f"wrote checkpoint {import_package(package, out)}"
    from .foreign import import_foreign

    s = import_foreign(package, out, trust=trust)
    lines = [f"bioimage.io package {s['name']!r}: format {s['format_version']}, {s['weights']} weights, "
             f"{s['classes']} classes; sha256 {s['sha256']}"]
    lines.append(f"runs its own code: {s['runs_own_code']} (trusted)" if s["runs_own_code"]
                 else "runs no code of its own (TorchScript or napari-cellclass architecture)")
    if "test_max_abs_diff" in s:
        lines.append(f"its own test input: largest difference from its test output {s['test_max_abs_diff']:.3g}")
    lines.append(f"copied to {s['written']}" if s.get("written") else
                 f"use it as the model: cellclass predict hpa {package} FILES")
    return "\n".join(lines)


def import_package(package: str | Path, out: str | Path) -> Path:
    """Rebuild one of our checkpoints from a package written by :func:`export_package`."""
    _bioimageio()
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5 as bio

    from ..engine.checkpoint import CheckpointMeta, load_state_strict, save_checkpoint
    from ..models.registry import build_model
    from .trust import check_package

    package, out = Path(package), Path(out)
    if not package.exists():
        raise InputError("no such bioimage.io package", package)
    if out.suffix != ".safetensors":
        raise InputError("the checkpoint to write must end in .safetensors", out)
    if out.exists():
        raise InputError("exists already; choose a new file name (nothing is overwritten)", out)
    info = check_package(package)  # sizes, names, YAML aliases/tags: before anything inflates or parses
    descr = load_description(info.rdf_path, perform_io_checks=False)
    if not isinstance(descr, bio.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        raise InputError(f"not a valid bioimage.io 0.5 model package ({summary.status if summary else 'invalid'})",
                         package)
    extra = descr.config if isinstance(descr.config, dict) else (getattr(descr.config, "model_extra", None) or {})
    cfg = extra.get(CONFIG_KEY)
    if not cfg or "checkpoint_meta" not in cfg:
        raise InputError("this bioimage.io model was not exported by napari-cellclass (no "
                         f"config['{CONFIG_KEY}']); only our own architectures can be imported into a .safetensors "
                         "checkpoint; another project's package is used as it is (`cellclass import bioimageio "
                         "PACKAGE` checks it)", package)
    meta = CheckpointMeta.from_dict(dict(cfg["checkpoint_meta"]), package)
    state = _package_state(descr, package)
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if not net_state:
        raise InputError("the package's weights hold no network parameters", package)
    net = build_model(meta.arch, **meta.arch_config)
    load_state_strict(net, net_state, package)
    meta.training = {**(meta.training or {}), "imported_from": f"bioimage.io package {package.name}"}
    return save_checkpoint(out, net, meta)


def _package_state(descr, package: Path) -> dict[str, torch.Tensor]:
    """The wrapped module's state dict, from the pytorch_state_dict weights (else the torchscript ones)."""
    import io

    from bioimageio.spec.utils import download

    w = descr.weights
    if w.pytorch_state_dict is not None:
        data = io.BytesIO(download(w.pytorch_state_dict.source).read())
        return torch.load(data, map_location="cpu", weights_only=True)  # tensors only: no code runs
    if w.torchscript is not None:
        import warnings

        data = io.BytesIO(download(w.torchscript.source).read())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return dict(torch.jit.load(data, map_location="cpu").state_dict())
    raise InputError("the package has neither pytorch_state_dict nor torchscript weights", package)
