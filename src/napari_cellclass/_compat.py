"""Work-arounds for clashes between napari's OpenGL stack and PyTorch's optional parts."""
from __future__ import annotations

import sys
from pathlib import Path


def avoid_triton_llvm_clash() -> None:
    """Keep torch from importing triton when Mesa's libLLVM is already loaded.

    With software OpenGL (Mesa llvmpipe: Xvfb, VMs, remote desktops) the viewer loads
    libLLVM; importing torchvision afterwards pulls in triton, whose own LLVM then
    crashes the process.  triton only serves torch.compile on GPUs, which this plugin
    does not use, so it is hidden in exactly that situation (``import triton`` then
    raises ImportError, which torch handles).
    """
    if "triton" in sys.modules:
        return
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    if "libLLVM" in maps:
        sys.modules["triton"] = None  # type: ignore[assignment]
