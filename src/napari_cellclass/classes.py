"""The class-name tables, one per domain; every module that names classes imports them from here.

Plain data with no imports of the package, so the synthetic generators, the data
readers, the models and the karyotype rules can all share one table without
importing each other.
"""
from __future__ import annotations

from .errors import InputError

#: Human chromosomes in karyogram order: autosomes 1-22, then X and Y (index 22 = X, 23 = Y).
CHROMOSOME_CLASSES: list[str] = [str(i) for i in range(1, 23)] + ["X", "Y"]

#: The 28 Human Protein Atlas subcellular locations (Kaggle 2018 label ids 0..27, in order).
HPA_CLASSES: list[str] = [
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center", "Nuclear speckles",
    "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus", "Peroxisomes", "Endosomes",
    "Lysosomes", "Intermediate filaments", "Actin filaments", "Focal adhesion sites", "Microtubules",
    "Microtubule ends", "Cytokinetic bridge", "Mitotic spindle", "Microtubule organizing center",
    "Centrosome", "Lipid droplets", "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome",
    "Cytosol", "Cytoplasmic bodies", "Rods & rings",
]

#: White blood cell classes of BCCD (Kaggle "blood cell images"); BASOPHIL is optional (too rare to learn).
WBC_CLASSES: list[str] = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
WBC_OPTIONAL_CLASSES: list[str] = ["BASOPHIL"]


def class_index(name: str | int) -> int:
    """Index into :data:`CHROMOSOME_CLASSES` for "1".."22", "X", "Y" (or 23/24)."""
    s = str(name).strip().upper()
    if s in ("23",):
        s = "X"
    elif s in ("24",):
        s = "Y"
    if s not in CHROMOSOME_CLASSES:
        raise InputError(f"unknown chromosome class {name!r}; expected 1-22, X or Y")
    return CHROMOSOME_CLASSES.index(s)
