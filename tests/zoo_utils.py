"""Tiny checkpoints and throw-away model folders for the zoo tests (never the shipped folder)."""
from __future__ import annotations

from pathlib import Path

import torch

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.models.registry import build_model

WBC_CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def tiny_checkpoint(path: Path, task: str = "wbc", *, classes: list[str] | None = None, channels: int = 3,
                    size: int = 32, trained_on: str = "BCCD test fixture", metrics: dict | None = None,
                    seed: int = 0, normalization: dict | None = None) -> Path:
    classes = classes or list(WBC_CLASSES)
    torch.manual_seed(seed)
    cfg = {"in_channels": channels, "num_classes": len(classes), "width": 4}
    net = build_model("tiny_cnn", **cfg)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load shows in the outputs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    meta = CheckpointMeta(
        task=task, arch="tiny_cnn", arch_config=cfg, class_names=classes, in_channels=channels,
        input_size=[size, size],
        normalization=normalization if normalization is not None else {"mean": [0.5] * channels,
                                                                      "std": [0.25] * channels},
        training={"n_train": 40, "n_val": 10, "epochs": 1},
        metrics=metrics if metrics is not None else {"macro_f1": 0.5, "accuracy": 0.6, "epoch": 1},
        trained_on=trained_on,
    )
    return save_checkpoint(path, net, meta)


def add(ckpt: Path, name: str, folder: Path, **kw):
    from napari_cellclass.zoo.add import add_model

    args = dict(command="cellclass train wbc data --epochs 1", wall_time_s=12.5, device="cpu",
                data_source="BCCD test fixture", licence="MIT", split_rule="by image, 20% held out")
    args.update(kw)
    return add_model(ckpt, name=name, folder=folder, **args)


def make_zoo(tmp_path: Path, monkeypatch, models: dict[str, dict] | None = None) -> Path:
    """A model folder with the given {name: tiny_checkpoint kwargs (+ 'add' kwargs)}, made current."""
    folder = tmp_path / "zoo"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("CELLCLASS_ZOO_DIR", str(folder))
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", str(tmp_path / "cache"))
    for name, kw in (models or {}).items():
        kw = dict(kw)
        add_kw = kw.pop("add", {})
        ck = tiny_checkpoint(tmp_path / f"src-{name}.safetensors", **kw)
        add(ck, name, folder, **add_kw)
    return folder
