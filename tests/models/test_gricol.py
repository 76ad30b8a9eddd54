"""GRiCoL geometry, shapes, size, loss schedule; a tiny GRiCoL learns generated chromosomes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellclass.models.gricol import (
    GRiCoLLoss,
    build_gricol,
    build_gril,
    build_resnet50_chromosome,
    count_parameters,
    grid_geometry,
    spiral_order,
    tile_boxes,
)
from napari_cellclass.models.registry import build_model

SMALL = dict(input_size=(64, 68), width=0.125, layers=(1, 1, 1, 1))



def test_seed_tile_geometry():
    (th, tw), rows, cols = grid_geometry((448, 456), 3, overlap=True)
    assert (th, tw) == (224, 224)
    assert rows == [0, 112, 224] and cols == [0, 120, 232]
    boxes = tile_boxes((448, 456))
    # R1 top-left, clockwise round the ring to R8, R9 in the centre
    assert boxes[0] == (0, 0, 224, 224)
    assert boxes[1] == (0, 120, 224, 344)
    assert boxes[2] == (0, 232, 224, 456)
    assert boxes[3] == (112, 232, 336, 456)
    assert boxes[4] == (224, 232, 448, 456)
    assert boxes[5] == (224, 120, 448, 344)
    assert boxes[6] == (224, 0, 448, 224)
    assert boxes[7] == (112, 0, 336, 224)
    assert boxes[8] == (112, 120, 336, 344)
    # neighbours overlap, every pixel is covered
    cover = np.zeros((448, 456), int)
    for y0, x0, y1, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and cover.max() > 1


def test_spiral_and_non_overlap():
    assert spiral_order(3) == [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (1, 1)]
    assert len(set(spiral_order(4))) == 16 and spiral_order(2) == [(0, 0), (0, 1), (1, 1), (1, 0)]
    (th, tw), rows, cols = grid_geometry((448, 456), 3, overlap=False)
    assert (th, tw) == (149, 152) and rows == [0, 149, 298] and cols == [0, 152, 304]


def test_full_size_parameter_count_without_running():
    with torch.device("meta"):  # no memory, no compute
        m = build_gricol()
        r = build_resnet50_chromosome()
    n = count_parameters(m)
    # seed: ~27.5 M for N = 3 with the half-width ResNet-50 and one (w_k, W'_k) pair per tile
    assert 24.0e6 < n < 28.5e6, n
    assert m.feature_dim == 1024 and m.n_tiles == 9 and len(m.heads) == 11
    assert m.gate[0].weight.shape == (1024, 1024) and m.fuse[8].weight.shape == (1024, 1024)
    assert 23.0e6 < count_parameters(r) < 24.5e6  # a standard ResNet-50 body


def test_global_branch_size_full():
    with torch.device("meta"):
        m = build_gricol()
        g = m.global_conv(torch.zeros(1, 1, 448, 456))
        assert tuple(g.shape[-2:]) == (224, 228)  # the seed's stride-2 conv
        assert tuple(m.global_input(torch.zeros(1, 1, 448, 456)).shape[-2:]) == (224, 224)


@pytest.mark.parametrize("builder", [build_gricol, build_gril])
def test_small_shapes(builder, one_thread):
    m = builder(**SMALL)
    x = torch.randn(2, 1, 64, 68)
    assert m.tiles(x).shape == (18, 1, 32, 32)
    # tile R4 of image 0 is rows 16..48, cols 36..68
    assert torch.equal(m.tiles(x)[3, 0], x[0, 0, 16:48, 36:68])
    out = m.forward_all(x)
    assert out.shape == (2, 11, 24)
    m.eval()
    assert m(x).shape == (2, 24)
    m.full_inference = True
    assert m(x).shape == (2, 24)
    with pytest.raises(ValueError):
        m(torch.randn(1, 1, 60, 60))


def test_variants_registered_and_json_config():
    cfg = {"num_classes": 24, "in_channels": 1, "input_size": [64, 68], "width": 0.125, "layers": [1, 1, 1, 1],
           "grid": 2, "overlap": False}
    m = build_model("gricol", **cfg)
    assert m.n_tiles == 4 and m.forward_all(torch.randn(1, 1, 64, 68)).shape == (1, 6, 24)
    assert not build_model("gril", **cfg).reconstruction
    r = build_model("resnet50_chromosome", input_size=[64, 68], width=0.125, layers=[1, 1, 1, 1])
    assert r(torch.randn(2, 1, 64, 68)).shape == (2, 24)


def test_loss_weights_schedule():
    L = GRiCoLLoss(beta=0.1, lam=150)
    w0 = L.weights(0)
    assert w0[0] == pytest.approx(1.0)  # Y_0: min(1, 10 * 0.1)
    assert w0[1:] == pytest.approx([0.1 * k for k in range(1, 10)])
    assert L.weights(149)[1] == pytest.approx(0.1 + np.exp(-1))
    assert L.weights(150) == pytest.approx([1.0] * 10)
    assert L.weights(400) == pytest.approx([1.0] * 10)
    # the loss is the weighted sum of the heads' cross-entropies plus the global one
    torch.manual_seed(0)
    out = torch.randn(3, 11, 24)
    y = torch.tensor([0, 5, 23])
    ce = [torch.nn.functional.cross_entropy(out[:, k], y) for k in range(11)]
    expect = sum(w * c for w, c in zip(w0, ce[:10])) + ce[10]
    assert L(out, y, 0).item() == pytest.approx(expect.item(), rel=1e-5)
    # plain baseline output: plain cross-entropy
    assert L(out[:, 10], y, 0).item() == pytest.approx(ce[10].item(), rel=1e-5)


@pytest.mark.slow
def test_tiny_gricol_learns_generated_chromosomes(one_thread):
    """4 classes of generated chromosomes; held-out accuracy of the global branch well above chance (0.25)."""
    from napari_cellclass.io.chromosome_dataset import prepare_crop
    from napari_cellclass.synth.chromosomes import make_chromosome

    torch.manual_seed(0)
    classes = [0, 6, 12, 20]  # chromosomes 1, 7, 13, 21

    def data(seeds):
        xs, ys = [], []
        for s in seeds:
            for j, c in enumerate(classes):
                img, mask = make_chromosome(c, seed=s, rotate=True, scale=6.0)
                xs.append(prepare_crop(img, mask, size=(64, 68), pad_to=60))
                ys.append(j)
        return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys)

    xtr, ytr = data(range(24))
    xte, yte = data(range(100, 112))
    m = build_gricol(num_classes=4, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    loss_fn = GRiCoLLoss()
    g = torch.Generator().manual_seed(0)
    for epoch in range(12):
        m.train()
        for idx in torch.randperm(len(ytr), generator=g).split(16):
            loss = loss_fn(m.forward_all(xtr[idx]), ytr[idx], epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = (m(xte).argmax(1) == yte).float().mean().item()
    assert acc >= 0.7, acc
