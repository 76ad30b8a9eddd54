"""Real sample images that ship with the package (only sources whose licence allows it).

Today: two BCCD blood-smear fields (MIT licence, ``samples/bccd/LICENSE``) with
their VOC boxes and white-cell class.  Used by napari's File > Open Sample and by
``cellclass demo``, which runs the built-in models on them.  Chromosome spreads
and HPA fields cannot ship: their public sources carry no licence.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES_DIR = Path(__file__).parent
BCCD_DIR = SAMPLES_DIR / "bccd"
BCCD_SOURCE = "BCCD (Shenggan, MIT licence)"


@dataclass(frozen=True)
class BloodSample:
    """One real smear: image, VOC boxes and the white cell's class (from the label table)."""

    key: str
    image: Path
    annotation: Path
    wbc_class: str

    def read(self) -> np.ndarray:
        from ..io.wbc_dataset import read_rgb

        return read_rgb(self.image)

    def boxes(self) -> tuple[np.ndarray, list[str]]:
        """(N, 4) boxes as (y0, x0, y1, x1) and their VOC names (RBC, WBC, Platelets)."""
        from ..io.annotations import read_voc

        ann = read_voc(self.annotation)
        b = ann.boxes[:, [1, 0, 3, 2]] if len(ann.boxes) else np.zeros((0, 4))
        return b, list(ann.labels)


def bccd_samples() -> list[BloodSample]:
    """The shipped BCCD smears, in file order."""
    with open(BCCD_DIR / "wbc_labels.csv", newline="", encoding="utf-8") as fh:
        classes = {row["image"]: row["category"] for row in csv.DictReader(fh)}
    out = []
    for jpg in sorted(BCCD_DIR.glob("*.jpg")):
        out.append(BloodSample(key=f"bccd_{classes[jpg.name].lower()}", image=jpg,
                               annotation=jpg.with_suffix(".xml"), wbc_class=classes[jpg.name]))
    return out


def _napari_layers(sample: BloodSample) -> list[tuple[Any, dict[str, Any], str]]:
    from ..synth.blood import boxes_to_rectangles

    boxes, labels = sample.boxes()
    names = [sample.wbc_class if lab == "WBC" else lab for lab in labels]
    colours = {"RBC": "red", "Platelets": "cyan"}
    return [
        (sample.read(), {"name": f"{sample.image.stem} (real, BCCD, MIT)", "rgb": True,
                         "metadata": {"source": BCCD_SOURCE, "path": str(sample.image)}}, "image"),
        (boxes_to_rectangles(boxes),
         {"name": f"{sample.image.stem} cells", "shape_type": "rectangle", "face_color": "transparent",
          "edge_color": [colours.get(n, "yellow") for n in names], "edge_width": 2,
          "features": {"label": names}},
         "shapes"),
    ]


def bccd_eosinophil() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a real BCCD smear with an eosinophil, red cells and platelets boxed."""
    return _napari_layers(next(s for s in bccd_samples() if s.wbc_class == "EOSINOPHIL"))


def bccd_lymphocyte() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a real BCCD smear with a lymphocyte, red cells and platelets boxed."""
    return _napari_layers(next(s for s in bccd_samples() if s.wbc_class == "LYMPHOCYTE"))
