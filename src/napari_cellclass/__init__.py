"""napari-cellclass: deep-learning cell classification for napari.

The compute (``engine``, ``models``, ``io``, ``synth``, ``karyotype``, ``tasks``)
imports no Qt; ``widgets`` is the only Qt-facing part.  The public Python API lives
in :mod:`napari_cellclass.api` and is re-exported here lazily so that importing the
package stays cheap (napari imports plugins at start-up).
"""
from __future__ import annotations

from ._compat import avoid_triton_llvm_clash
from ._version import __version__

avoid_triton_llvm_clash()

__all__ = ["__version__", "classify", "detect", "karyotype", "train", "evaluate"]


def __getattr__(name: str):
    if name in {"classify", "detect", "karyotype", "train", "evaluate"}:
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
