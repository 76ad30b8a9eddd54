"""Grad-CAM / guided backprop point at the object that carries the class; embeddings separate classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.errors import InputError
from napari_cellclass.explain import embed_2d, embedding_job, explain, find_last_conv, grad_cam, guided_backprop
from napari_cellclass.explain.embedding import neighbour_agreement
from napari_cellclass.preprocess import get_transform
from napari_cellclass.models.tiny import build_tiny_cnn

SIZE, SQ = 64, 14


def _squares(n: int, seed: int):
    """Class 1: a bright square at a random position; class 0: the same noise, no square."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.4
    y = torch.arange(n) % 2
    boxes = []
    for i in range(n):
        r, c = torch.randint(0, SIZE - SQ, (2,), generator=g).tolist()
        boxes.append((r, c))
        if y[i] == 1:
            x[i, 0, r : r + SQ, c : c + SQ] += 0.6
    return x, y, boxes


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y, _ = _squares(96, 0)
    model = build_tiny_cnn(1, 2, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(6):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 16):
            idx = perm[i : i + 16]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # settle the BatchNorm statistics on the final weights (tiny, fast-moving run)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model(x)
    model.eval()
    xt, yt, boxes = _squares(24, 1)
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    assert acc >= 0.9, f"tiny model did not learn the toy task (accuracy {acc:.2f})"
    return model, xt, yt, boxes


def _inside(rc: tuple[int, int], box: tuple[int, int], pad: int = 0) -> bool:
    r, c = rc
    return box[0] - pad <= r < box[0] + SQ + pad and box[1] - pad <= c < box[1] + SQ + pad


def test_gradcam_peaks_on_the_square(trained):
    model, xt, yt, boxes = trained
    assert find_last_conv(model)[0] == "12"
    hits = total = 0
    for i in range(len(xt)):
        if yt[i] != 1:
            continue
        e = grad_cam(model, xt[i : i + 1], class_index=1)
        assert e.heatmap.shape == (SIZE, SIZE) and 0 <= e.heatmap.min() and e.heatmap.max() <= 1
        peak = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
        hits += _inside(peak, boxes[i])
        total += 1
    print("gradcam hits", hits, total)
    assert hits / total >= 0.8, f"CAM peak inside the square for only {hits}/{total} images"


def test_guided_backprop_concentrates_on_the_square(trained):
    model, xt, yt, boxes = trained
    ratios = []
    for i in range(len(xt)):
        if yt[i] != 1:
            continue
        e = guided_backprop(model, xt[i : i + 1])
        r, c = boxes[i]
        mask = np.zeros((SIZE, SIZE), bool)
        mask[r : r + SQ, c : c + SQ] = True
        ratios.append(e.heatmap[mask].mean() / max(e.heatmap[~mask].mean(), 1e-9))
    print("guided ratio median", np.median(ratios))
    assert np.median(ratios) > 2.0, ratios
    # the caller's model keeps its ReLUs
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_explain_dispatch_and_errors(trained):
    model, xt, _, _ = trained
    e = explain(model, xt[:1], "guided-gradcam")
    assert e.method == "guided_gradcam" and e.probabilities.shape == (2,)
    with pytest.raises(InputError, match="unknown explanation"):
        explain(model, xt[:1], "lime")
    with pytest.raises(InputError, match="out of range"):
        grad_cam(model, xt[:1], class_index=5)
    with pytest.raises(InputError, match="1 x C x H x W"):
        grad_cam(model, xt)


def test_gradcam_on_resnet_and_custom_output():
    from torchvision.models import resnet18

    m = resnet18(num_classes=3)
    name, _ = find_last_conv(m)
    assert name.startswith("layer4")
    e = grad_cam(m, torch.rand(1, 3, 64, 64))
    assert e.heatmap.shape == (64, 64)

    class TwoHeads(torch.nn.Module):  # e.g. a global + local model returning a tuple
        def __init__(self):
            super().__init__()
            self.net = build_tiny_cnn(1, 4, width=4)

        def forward(self, x):
            out = self.net(x)
            return out, out.detach() * 0

    e = grad_cam(TwoHeads(), torch.rand(1, 1, 32, 32), class_index=2)
    assert e.class_index == 2


def test_prepare_image_channels_and_normalisation():
    meta = CheckpointMeta(task="toy", arch="tiny_cnn", class_names=["a"], in_channels=3, input_size=[32, 32],
                          normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    tf = get_transform(meta)
    assert tf.name == "generic"
    x = tf.batch(np.full((50, 40, 3), 255, np.uint8))
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x, torch.ones_like(x))
    x = tf.batch(np.zeros((50, 40), np.uint16))
    assert x.shape == (1, 3, 32, 32)
    with pytest.raises(InputError, match="channel"):
        tf.batch(np.zeros((5, 50, 40)))


def test_tsne_separates_clusters():
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(0, 1, (40, 20)), g.normal(6, 1, (40, 20)), g.normal(-6, 1, (40, 20))])
    lab = np.repeat([0, 1, 2], 40)
    coords, used = embed_2d(x, "tsne", perplexity=15)
    assert used == "tsne" and coords.shape == (120, 2) and np.isfinite(coords).all()
    assert neighbour_agreement(coords, lab) > 0.95
    shuffled = g.permutation(lab)
    assert neighbour_agreement(coords, shuffled) < 0.6
    pca, used = embed_2d(x, "pca")
    assert used == "pca" and neighbour_agreement(pca, lab) > 0.95


def test_embedding_job_writes_plot(trained, tmp_path):
    from skimage.io import imsave

    model, xt, yt, _ = trained
    meta = CheckpointMeta(task="toy", arch="tiny_cnn", arch_config={"in_channels": 1, "num_classes": 2, "width": 8},
                          class_names=["empty", "square"], in_channels=1, input_size=[SIZE, SIZE])
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    for i in range(len(xt)):
        d = tmp_path / "data" / ("square" if yt[i] else "empty")
        d.mkdir(parents=True, exist_ok=True)
        imsave(d / f"{i}.png", (xt[i, 0].clamp(0, 1).numpy() * 255).astype(np.uint8), check_contrast=False)
    res = run_sync(embedding_job(ckpt, tmp_path / "data", tmp_path / "out", method="tsne"))
    assert res["n"] == len(xt) and (tmp_path / "out" / "embedding.png").stat().st_size > 1000
    assert res["neighbour_agreement"] > 0.7
    assert (tmp_path / "out" / "embedding.csv").read_text().count("\n") == len(xt) + 1


@pytest.mark.viewer
def test_explain_widget_adds_map_over_image_and_cell(make_napari_viewer, qtbot, trained, tmp_path):
    from napari_cellclass.widgets.explain import ExplainWidget

    model, xt, yt, boxes = trained
    meta = CheckpointMeta(task="toy", arch="tiny_cnn", arch_config={"in_channels": 1, "num_classes": 2, "width": 8},
                          class_names=["empty", "square"], in_channels=1, input_size=[SIZE, SIZE])
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    i = int(np.flatnonzero(yt.numpy() == 1)[0])
    viewer = make_napari_viewer()
    viewer.add_image(xt[i, 0].numpy(), name="field", translate=(10, 20))
    w = ExplainWidget(viewer)
    w.model_edit.setText(str(ckpt))
    w._load_classes()
    assert [w.class_box.itemText(k) for k in range(w.class_box.count())][1:] == ["empty", "square"]
    w.class_box.setCurrentText("square")
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.last_error is None, w.last_error
    layer = viewer.layers["gradcam: square"]
    assert layer.data.shape == (SIZE, SIZE) and tuple(layer.translate) == (10, 20)
    peak = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    assert _inside(peak, boxes[i])

    # one cell: a shapes layer around the square -> map over the crop, offset into the image
    r, c = boxes[i]
    viewer.add_shapes([np.array([[r, c], [r + SQ, c + SQ]])], shape_type="rectangle", name="cells")
    w.cells_box.setCurrentText("cells")
    w.method_box.setCurrentText("guided_backprop")
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.last_error is None, w.last_error
    cell_layer = viewer.layers["guided_backprop: square"]
    r0, c0 = w.last_result["offset"]
    assert r0 <= r and c0 <= c and tuple(cell_layer.translate) == (10 + r0, 20 + c0)

    # embedding of a class-per-folder dataset into the widget's plot and a PNG
    from skimage.io import imsave

    for k in range(len(xt)):
        d = tmp_path / "data" / ("square" if yt[k] else "empty")
        d.mkdir(parents=True, exist_ok=True)
        imsave(d / f"{k}.png", (xt[k, 0].clamp(0, 1).numpy() * 255).astype(np.uint8), check_contrast=False)
    w.data_edit.setText(str(tmp_path / "data"))
    w.embed_method.setCurrentText("pca")
    assert w.canvas.isHidden()  # no empty white plot while there is nothing to show
    w.start_embedding()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.last_error is None, w.last_error
    assert w.last_embedding["n"] == len(xt) and len(w.ax.collections) == 2 and not w.canvas.isHidden()
    assert (tmp_path / "embedding" / "embedding.png").exists()

    w.model_edit.setText(str(tmp_path / "nope.safetensors"))
    assert w.start() is None and "does not exist" in w.last_error
