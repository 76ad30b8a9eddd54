"""A tiny untrained GRiCoL checkpoint shared by the karyotype, widget and zoo tests."""
from __future__ import annotations

from pathlib import Path

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.models.registry import build_model
from napari_cellclass.synth.chromosomes import CHROMOSOME_CLASSES

SIZE = (32, 34)


def tiny_checkpoint(path: Path) -> Path:
    """An untrained, very small GRiCoL: enough to exercise the plumbing (not accuracy)."""
    cfg = {"num_classes": 24, "in_channels": 1, "input_size": list(SIZE), "width": 0.0625, "layers": [1, 1, 1, 1],
           "grid": 3, "overlap": True}
    import torch

    torch.manual_seed(0)
    net = build_model("gricol", **cfg)
    meta = CheckpointMeta(task="chromosome", arch="gricol", class_names=list(CHROMOSOME_CLASSES), in_channels=1,
                          input_size=list(SIZE), arch_config=cfg,
                          normalization={"preprocess": "prepare_crop", "pad_to": 60}, trained_on="untrained test")
    save_checkpoint(path, net, meta)
    return path
