"""napari-cellclass: deep-learning cell classification for napari.

The compute (``engine``, ``models``, ``io``, ``synth``, ``karyotype``, ``tasks``)
imports no Qt; ``widgets`` is the only Qt-facing part.  The public Python API lives
in :mod:`napari_cellclass.api` and is re-exported here lazily so that importing the
package stays cheap (napari imports plugins at start-up).

The API names stay the functions whatever has been imported: ``napari_cellclass.karyotype``
is the function even after ``import napari_cellclass.karyotype.segment`` (Python's import
system binds a submodule on its parent package; the package's class refuses that binding
for the API names).  The subpackage itself is reached by ``from napari_cellclass.karyotype
import ...`` or ``importlib.import_module("napari_cellclass.karyotype")``; ``import
napari_cellclass.karyotype.segment as seg`` does not work (the name resolves to the function).
"""
from __future__ import annotations

import sys
import types

from ._compat import avoid_triton_llvm_clash
from ._version import __version__

avoid_triton_llvm_clash()

#: The public functions of :mod:`napari_cellclass.api`, re-exported on the package.
API_NAMES = ("classify", "detect", "karyotype", "karyotype_session", "show", "train", "evaluate", "analyse_smear")

__all__ = ["__version__", *API_NAMES]


class _Package(types.ModuleType):
    """The package's module class: a submodule import never replaces an API function."""

    def __setattr__(self, name: str, value) -> None:
        if name in API_NAMES and isinstance(value, types.ModuleType):
            return  # the import system binding napari_cellclass.karyotype (the subpackage): keep the function
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in API_NAMES:
            return
        super().__delattr__(name)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in API_NAMES:
        from . import api

        fn = getattr(api, name)
        globals()[name] = fn  # cached: later look-ups are plain attributes
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
