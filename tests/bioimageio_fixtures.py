"""Fixture bioimage.io packages shaped like the HPA community's (tests only; tiny nets, no network).

The real packages could not be downloaded here, so these copy their structure:
format 0.4 (string axes ``bcyx``, ``data_range``, ``scale_range`` preprocessing, an
attached ``hpa_labels.txt``) and 0.5 (axis objects, ``zero_mean_unit_variance``,
output channel names), torchscript or pytorch_state_dict weights (the latter with its
architecture in a source file of the package, which is code the user must trust).
Each package's own test tensors are computed here with the same preprocessing, and
every package is validated by ``bioimageio.spec`` before a test sees it.

The segmentation nets are fixed (not trained) filters that turn bright, smooth regions
into foreground, so on a real HPA field they give real, if crude, cells and nuclei.
"""
from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

ARCH_SOURCE = '''
import torch
from torch import nn


class TinyHPA(nn.Module):
    """A 3x3 conv, global mean, linear head: the smallest net with the HPA input/output shapes."""

    def __init__(self, in_channels=4, n_classes=28):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
'''
_ns: dict = {}
exec(compile(ARCH_SOURCE, "tiny_arch.py", "exec"), _ns)  # the same class the package's file defines
TinyHPA = _ns["TinyHPA"]

CLASSES_2019 = [f"location {i}" for i in range(28)]
CLASSES_2021 = [f"cellclass_{i}" for i in range(19)]


class FixedSeg(nn.Module):
    """(1, 3, H, W) normalised -> (1, 3, H, W): background, boundary, foreground of smooth bright regions."""

    def __init__(self, offset: float, gain: float = 5.0):
        super().__init__()
        self.offset, self.gain = float(offset), float(gain)

    def forward(self, x):
        m = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 7, 1, 3, count_include_pad=False)
        fg = torch.sigmoid(self.gain * (m - self.offset))
        bd = 1.0 - torch.sigmoid(self.gain * m)  # low inside bright cells, high between them
        return torch.cat([1.0 - fg, bd, fg], 1)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _scale_range(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=(2, 3), keepdims=True)
    hi = x.max(axis=(2, 3), keepdims=True)
    return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _zmuv(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(axis=(2, 3), keepdims=True)) / (x.std(axis=(2, 3), keepdims=True) + 1e-6)).astype(np.float32)


def _save_script(net: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Traced TorchScript (what most community packages ship)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net.eval(), example, check_trace=False).save(str(path))


def _zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
    return out


def _validate(pkg: Path) -> None:
    from bioimageio.spec import load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_description(pkg, perform_io_checks=True)
    assert d.validation_summary.status in ("valid-format", "passed"), d.validation_summary.format()


def _common(name: str, fmt: str) -> dict:
    rdf = {"type": "model", "name": name, "description": f"{name} (napari-cellclass test fixture)",
           "authors": [{"name": "napari-cellclass tests"}],
           "cite": [{"text": "Ouyang W et al. Nat Methods 16, 1254-1261 (2019).",
                     "doi": "10.1038/s41592-019-0658-6"}],
           "license": "MIT", "documentation": "README.md", "tags": ["hpa", "fixture"]}
    rdf["format_version"] = "0.4.10" if fmt == "0.4" else "0.5.4"
    if fmt == "0.4":
        rdf["timestamp"] = "2022-01-01T00:00:00"
    return rdf


def classifier_package(out_dir: Path, *, fmt: str = "0.4", weights: str = "torchscript", n_classes: int = 28,
                       labels: str = "file", size: int = 32, seed: int = 0, name: str | None = None) -> Path:
    """An RGBY classifier package (zip).  0.4: scale_range, data_range [0, 255]; 0.5: zero_mean_unit_variance."""
    name = name or f"hpa fixture {fmt.replace('.', '')} {weights} {n_classes}"
    d = Path(out_dir) / name.replace(" ", "_")
    d.mkdir(parents=True, exist_ok=False)
    torch.manual_seed(seed)
    net = TinyHPA(4, n_classes).eval()
    classes = CLASSES_2019[:n_classes] if n_classes == 28 else (CLASSES_2021 + CLASSES_2019)[:n_classes]
    x = (np.random.default_rng(seed).random((1, 4, size, size)) * 255).astype(np.float32)
    pre = _scale_range(x) if fmt == "0.4" else _zmuv(x)
    with torch.no_grad():
        y = net(torch.from_numpy(pre)).numpy().astype(np.float32)
    np.save(d / "test_input.npy", x)
    np.save(d / "test_output.npy", y)
    (d / "README.md").write_text(f"# {name}\n\nA test fixture shaped like an HPA community package.\n")
    if weights == "torchscript":
        _save_script(net, d / "weights_torchscript.pt", torch.from_numpy(pre))
    else:
        torch.save(net.state_dict(), d / "weights_state_dict.pt")
        (d / "tiny_arch.py").write_text(ARCH_SOURCE)
    rdf = _common(name, fmt)
    if labels == "file":
        (d / "hpa_labels.txt").write_text("\n".join(classes) + "\n")
        rdf["attachments"] = {"files": ["hpa_labels.txt"]} if fmt == "0.4" else [{"source": "hpa_labels.txt"}]
    if fmt == "0.4":
        rdf["inputs"] = [{"name": "image", "axes": "bcyx", "data_type": "float32", "data_range": [0, 255],
                          "shape": [1, 4, size, size], "description": "HPA image (RGBY)",
                          "preprocessing": [{"name": "scale_range", "kwargs": {
                              "mode": "per_sample", "axes": "xy", "min_percentile": 0, "max_percentile": 100}}]}]
        rdf["outputs"] = [{"name": "classes", "axes": "bc", "data_type": "float32", "shape": [1, n_classes]}]
        rdf["test_inputs"], rdf["test_outputs"] = ["test_input.npy"], ["test_output.npy"]
        if weights == "torchscript":
            rdf["weights"] = {"torchscript": {"source": "weights_torchscript.pt", "pytorch_version": "2.0"}}
        else:
            rdf["weights"] = {"pytorch_state_dict": {
                "source": "weights_state_dict.pt", "architecture": "tiny_arch.py:TinyHPA",
                "architecture_sha256": _sha(d / "tiny_arch.py"),
                "kwargs": {"in_channels": 4, "n_classes": n_classes}, "pytorch_version": "2.0"}}
    else:
        ch_axis: dict = {"type": "channel", "channel_names": ["red", "green", "blue", "yellow"]}
        out_ch: dict = {"type": "channel"}
        if labels == "channels":
            out_ch["channel_names"] = [c.replace(" ", "_") for c in classes]
        else:
            out_ch["channel_names"] = [f"c{i}" for i in range(n_classes)]
        rdf["inputs"] = [{"id": "cell", "axes": [{"type": "batch"}, ch_axis,
                                                 {"type": "space", "id": "y", "size": size},
                                                 {"type": "space", "id": "x", "size": size}],
                          "test_tensor": {"source": "test_input.npy"},
                          "data": {"type": "float32", "range": [0, 255]},
                          "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]}]
        rdf["outputs"] = [{"id": "scores", "axes": [{"type": "batch"}, out_ch],
                           "test_tensor": {"source": "test_output.npy"}}]
        if weights == "torchscript":
            rdf["weights"] = {"torchscript": {"source": "weights_torchscript.pt", "pytorch_version": "2.0"}}
        else:
            rdf["weights"] = {"pytorch_state_dict": {
                "source": "weights_state_dict.pt", "pytorch_version": "2.0",
                "architecture": {"source": "tiny_arch.py", "callable": "TinyHPA", "sha256": _sha(d / "tiny_arch.py"),
                                 "kwargs": {"in_channels": 4, "n_classes": n_classes}}}}
    (d / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    pkg = _zip(d, Path(out_dir) / f"{d.name}.zip")
    _validate(pkg)
    return pkg


def segmentation_package(out_dir: Path, kind: str, *, fmt: str = "0.5", size_min: int = 64,
                         step: int = 16) -> Path:
    """A cell (``kind="cells"``) or nucleus (``"nuclei"``) segmenter: 3 channels in, (bg, boundary, fg) out."""
    name = f"hpa {kind} segmentation fixture"
    d = Path(out_dir) / name.replace(" ", "_")
    d.mkdir(parents=True, exist_ok=False)
    net = FixedSeg(offset=0.3 if kind == "nuclei" else -0.35)
    x = (np.random.default_rng(1).random((1, 3, size_min, size_min))).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(_zmuv(x))).numpy().astype(np.float32)
    np.save(d / "test_input.npy", x)
    np.save(d / "test_output.npy", y)
    (d / "README.md").write_text(f"# {name}\n")
    _save_script(net, d / "weights_torchscript.pt", torch.from_numpy(x))
    rdf = _common(name, fmt)
    rdf["license"] = "CC-BY-4.0"
    if fmt == "0.4":
        rdf["inputs"] = [{"name": "input0", "axes": "bcyx", "data_type": "float32", "data_range": [0, 1],
                          "shape": {"min": [1, 3, size_min, size_min], "step": [0, 0, step, step]},
                          "preprocessing": [{"name": "zero_mean_unit_variance",
                                             "kwargs": {"mode": "per_sample", "axes": "xy"}}]}]
        rdf["outputs"] = [{"name": "output0", "axes": "bcyx", "data_type": "float32",
                           "shape": {"reference_tensor": "input0", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]}}]
        rdf["test_inputs"], rdf["test_outputs"] = ["test_input.npy"], ["test_output.npy"]
    else:
        rdf["inputs"] = [{"id": "image", "axes": [
            {"type": "batch"}, {"type": "channel", "channel_names": ["c0", "c1", "c2"]},
            {"type": "space", "id": "y", "size": {"min": size_min, "step": step}},
            {"type": "space", "id": "x", "size": {"min": size_min, "step": step}}],
            "test_tensor": {"source": "test_input.npy"}, "data": {"type": "float32", "range": [0, 1]},
            "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]}]
        rdf["outputs"] = [{"id": "maps", "axes": [
            {"type": "batch"}, {"type": "channel", "channel_names": ["background", "boundary", "foreground"]},
            {"type": "space", "id": "y", "size": {"tensor_id": "image", "axis_id": "y"}},
            {"type": "space", "id": "x", "size": {"tensor_id": "image", "axis_id": "x"}}],
            "test_tensor": {"source": "test_output.npy"}}]
    rdf["weights"] = {"torchscript": {"source": "weights_torchscript.pt", "pytorch_version": "2.0"}}
    (d / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    pkg = _zip(d, Path(out_dir) / f"{d.name}.zip")
    _validate(pkg)
    return pkg


def hpa_field(shared: Path, set_id: str = "800_A6_1", size: int = 128) -> np.ndarray:
    """A real HPA field (Kaggle-layout PNGs, 512 px) as (4, size, size) uint8, resized for speed."""
    import imageio.v3 as iio
    from skimage.transform import resize

    folder = shared / "hpa" / "derived_kaggle_format_512"
    chans = [iio.imread(folder / f"{set_id}_{c}.png") for c in ("red", "green", "blue", "yellow")]
    return np.stack([(resize(c, (size, size), preserve_range=True, anti_aliasing=True)).astype(np.uint8)
                     for c in chans])
