"""Training batches through a DataLoader with seeded samplers (engine/data.py) and the batch augmenters
gathered in engine/augment.py."""
from __future__ import annotations

import numpy as np
import torch

from napari_cellclass.engine.augment import dihedral, flip_detection
from napari_cellclass.engine.data import Chunks, EpochOrder, SeededBatches
from napari_cellclass.io import wbc_dataset as D
from napari_cellclass.tasks import chromosome as C


def _crops(n=21, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), [0] * 12 + [1] * 6 + [2] * (n - 18)


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_loader_walks_the_same_seeded_batches_as_the_task_object():
    crops, y = _crops()
    for make in (lambda: D.CropBatches(crops, y, 4, seed=3, num_classes=3),
                 lambda: D.AugmentedCropBatches(crops, y, 4, 24, seed=3, num_classes=3, epoch_size=12),
                 lambda: C.CropBatches([c[..., 0] / 255.0 for c in crops], y, (24, 26), 60, 4, seed=2)):
        plain = make()
        direct = [b for _ in range(2) for b in plain]  # 2 epochs, iterated as before
        obj = make()
        loader = obj.loader()
        assert isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.batch_sampler, Chunks)
        assert isinstance(loader.batch_sampler.sampler, EpochOrder) and len(loader) == len(obj)
        via = [b for _ in range(2) for b in loader]
        assert len(via) == len(direct)
        assert all(_same(a, b) for a, b in zip(via, direct))  # same order, same augmentation, same epochs


def test_loader_leaves_the_global_rng_alone():
    crops, y = _crops()
    loader = D.CropBatches(crops, y, 4, seed=3, num_classes=3).loader()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(before, torch.get_rng_state())  # model init / dropout see the same random numbers


def test_balanced_sampler_and_batch_norm_sized_batches():
    crops, y = _crops(n=19)  # 19 crops in batches of 6: the last chunk of 1 is skipped (batch norm)
    b = D.CropBatches(crops, y, 6, seed=0, num_classes=3)
    sizes = [len(t) for _, t in b.loader()]
    assert sizes == [6, 6, 6]
    drawn = torch.cat([t for _ in range(30) for _, t in b.loader()])
    counts = torch.bincount(drawn, minlength=3).float()
    assert counts.min() / counts.max() > 0.7  # 12:6:1 in the data, about even in the batches


def test_seeded_batches_subclass_contract():
    class Squares(SeededBatches):
        batch_size = 3

        def order(self):
            return [4, 3, 2, 1, 0]

        def fetch(self, indices):
            return torch.tensor(indices) ** 2

        def __len__(self):
            return 2

    assert [t.tolist() for t in Squares().loader()] == [[16, 9, 4], [1, 0]]


def test_flip_detection_moves_boxes_and_masks_with_the_image():
    img = torch.zeros(3, 20, 30)
    img[:, 2:6, 3:10] = 1.0  # an object at x 3..10, y 2..6
    boxes = np.array([[3.0, 2.0, 10.0, 6.0]])
    masks = (img[0] > 0).numpy()[None].astype(np.uint8)
    x, b, m = flip_detection(img, boxes, masks, True, True)
    x0, y0, x1, y1 = (int(v) for v in b[0].tolist())
    assert b[0].tolist() == [20.0, 14.0, 27.0, 18.0]
    assert x[0, y0:y1, x0:x1].min() == 1 and x[0].sum() == img[0].sum()
    assert torch.equal(m[0].bool(), x[0] > 0) and b.dtype == torch.float32


def test_dihedral_covers_the_eight_symmetries():
    t = torch.arange(9.0).view(1, 3, 3)
    assert len({tuple(dihedral(t, k).flatten().tolist()) for k in range(8)}) == 8
