"""``python -m napari_cellclass ...`` is the ``cellclass`` CLI (what torchrun starts on every rank)."""
import sys

from .cli import main

sys.exit(main())
