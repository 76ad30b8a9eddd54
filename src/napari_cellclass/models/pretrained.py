"""ImageNet/COCO weights via torchvision's weight enums, cache first, never silent.

Offline machines (and every test) must not hang on a download.  We look in the
torch hub cache first; only when the user allows downloading do we fetch; and
when neither works the error says which file to put where.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import PretrainedWeightsUnavailable

ENV_ALLOW_DOWNLOAD = "CELLCLASS_ALLOW_DOWNLOAD"


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_weights_path(weights: Any) -> Path:
    """Where torchvision would keep this enum member's file."""
    filename = os.path.basename(weights.url.split("?")[0])
    return hub_checkpoint_dir() / filename


def weights_help(weights: Any) -> str:
    path = cached_weights_path(weights)
    return (
        f"pretrained weights {weights} are not in the torch hub cache and could not be downloaded. "
        f"Download {weights.url} on a machine with internet and copy it to {path} "
        f"(the cache folder is set by $TORCH_HOME), or train from random weights "
        f"(pretrained=False / --no-pretrained)."
    )


def load_pretrained_state(weights: Any, *, allow_download: bool | None = None) -> dict[str, torch.Tensor]:
    """Return the state dict for a torchvision weights enum member.

    ``allow_download`` defaults to the environment variable
    ``CELLCLASS_ALLOW_DOWNLOAD=1``; otherwise only the cache is used.
    """
    path = cached_weights_path(weights)
    if path.exists() or path.is_symlink():
        return read_cached_weights(path, weights)
    if allow_download is None:
        allow_download = os.environ.get(ENV_ALLOW_DOWNLOAD, "0") == "1"
    if not allow_download:
        raise PretrainedWeightsUnavailable(weights_help(weights) + f" Set {ENV_ALLOW_DOWNLOAD}=1 to allow downloading.")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise PretrainedWeightsUnavailable(weights_help(weights) + f" (download failed: {exc})") from None


def read_cached_weights(path: Path, weights: Any) -> dict[str, torch.Tensor]:
    """The tensors of a torch-hub cache file, or one line naming the file and what to do.

    A damaged, truncated or planted file (one holding code objects, which is never
    unpickled) is refused without torch's own multi-line advice to pass
    ``weights_only=False`` (which would run the planted code).
    """
    fix = (f"delete it (it is downloaded again when {ENV_ALLOW_DOWNLOAD}=1) or replace it with the file from "
           f"{weights.url}")
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"the cached pretrained weights are not a file; {fix}", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's text advises weights_only=False (code execution): never shown
        raise PretrainedWeightsUnavailable(
            "the cached pretrained weights are unreadable: damaged, truncated or not a plain weights file (it "
            f"holds objects other than tensors, and was not unpickled); {fix}", path) from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise PretrainedWeightsUnavailable(f"the cached pretrained weights are not a table of named tensors; {fix}",
                                           path)
    return state
