"""Classical cell segmentation (scikit-image): nuclei-seeded watershed for HPA fields."""
from .cells import segment_cells, segment_nuclei

__all__ = ["segment_cells", "segment_nuclei"]
