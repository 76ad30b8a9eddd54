"""Feature embeddings of a dataset (penultimate-layer features -> 2-D) coloured by class.

t-SNE and PCA come from scikit-learn.  The features are the input of the model's
last Linear layer; images are prepared by the checkpoint's declared transform
(:mod:`napari_cellclass.preprocess`), as in classification.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .gradcam import logits_of


def extract_features(model: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and predicted class for every image in ``batches``."""
    from ..recipes.regularization import find_head

    found = find_head(model)
    if found is None:
        raise InputError("the model has no Linear head, so there are no penultimate features to embed")
    head = found[2]
    box: list[torch.Tensor] = []
    me = threading.get_ident()  # the network may be shared (zoo.loaded): keep only this thread's forwards

    def keep(m, a):
        if threading.get_ident() == me:
            box.append(a[0].detach().flatten(1).float().cpu())

    handle = head.register_forward_pre_hook(keep)
    preds = []
    if model.training:
        model.eval()
    try:
        with torch.inference_mode():
            for xb in batches:
                preds.append(logits_of(model(xb)).argmax(-1).cpu())
    finally:
        handle.remove()
    if not box:
        raise InputError("no images to embed")
    return torch.cat(box).numpy(), torch.cat(preds).numpy()


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components (zero columns where the data has fewer dimensions)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        return np.zeros((n, 2))
    out = PCA(min(2, n, d)).fit_transform(x)
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))) if out.shape[1] < 2 else out


def embed_2d(features: np.ndarray, method: str = "tsne", seed: int = 0,
             perplexity: float = 30.0) -> tuple[np.ndarray, str]:
    """2-D coordinates and the name of the method actually used (t-SNE needs at least 5 points)."""
    method = method.lower()
    if method not in ("tsne", "pca"):
        raise InputError(f"unknown embedding method {method!r}; choose tsne or pca")
    features = np.asarray(features, dtype=np.float64)
    if method == "pca" or len(features) < 5:
        return pca_2d(features), "pca" if method == "pca" else "pca (too few points for t-SNE)"
    from sklearn.manifold import TSNE

    perp = min(perplexity, max(2.0, (len(features) - 1) / 3))
    return TSNE(2, perplexity=perp, random_state=seed, init="pca").fit_transform(features), "tsne"


def plot_embedding(
    coords: np.ndarray, labels: Sequence[int], class_names: Sequence[str], ax: Any = None,
    title: str = "feature embedding", out: str | Path | None = None,
):
    """Scatter plot coloured by class; optionally saved as PNG. Returns the matplotlib figure."""
    import matplotlib

    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 4.5), dpi=100)
        ax = fig.add_subplot(111)
    else:
        fig = ax.figure
    ax.clear()
    labels = np.asarray(labels)
    cmap = matplotlib.colormaps.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        sel = labels == k
        if sel.any():
            ax.scatter(coords[sel, 0], coords[sel, 1], s=12, color=cmap(k % cmap.N), label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    if out is not None:
        fig.savefig(str(out))
    return fig


def neighbour_agreement(coords: np.ndarray, labels: Sequence[int], k: int = 5) -> float:
    """Fraction of each point's k nearest neighbours (in 2-D) that share its class: a number for the plot."""
    c = torch.from_numpy(np.asarray(coords, dtype=np.float64))
    lab = torch.as_tensor(np.asarray(labels))
    d = torch.cdist(c, c)
    d.fill_diagonal_(float("inf"))
    k = min(k, len(lab) - 1)
    if k < 1:
        return float("nan")
    idx = d.topk(k, largest=False).indices
    return float((lab[idx] == lab[:, None]).float().mean())


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def class_folder_items(root: str | Path, class_names: Sequence[str] = (), limit_per_class: int | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Images of a class-per-folder dataset (``root/<class>/*.png``; a ``train``/``val``/``test`` level is fine).

    Folders are mapped to ``class_names`` (the checkpoint's) where they match;
    others are appended. Returns paths, label indices and the class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset folder does not exist", root)
    names = list(class_names)
    paths: list[Path] = []
    labels: list[int] = []
    class_dirs = sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES})
    for d in class_dirs:
        if d == root:
            continue
        if d.name not in names:
            names.append(d.name)
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class:
            files = files[:limit_per_class]
        paths += files
        labels += [names.index(d.name)] * len(files)
    if not paths:
        raise InputError("no images found in class sub-folders (expected root/<class>/<image>.png)", root)
    return paths, labels, names


def embedding_job(checkpoint: Any, data: str | Path, out: str | Path | None = None, method: str = "tsne",
                  task: str | None = None, limit_per_class: int = 100, batch_size: int = 32, seed: int = 0,
                  device: Any = None):
    """Job: features of a class-per-folder dataset -> 2-D embedding -> PNG (+ CSV of coordinates).

    ``checkpoint`` is a built-in name, a checkpoint path or a loaded model
    (:func:`napari_cellclass.zoo.loaded.load_model`, cached and shared); ``device``
    as everywhere ("auto"/None honours ``CELLCLASS_DEVICE``).

    Yields Progress; returns ``{"png", "csv", "method", "n", "neighbour_agreement", "coords", "labels", "class_names"}``.
    """
    from ..engine.progress import Progress
    from ..io.limits import read_image
    from ..preprocess import get_transform
    from ..zoo.loaded import load_model

    lm = load_model(checkpoint, task=task, device=device)
    model, meta = lm.net, lm.meta
    if meta is None:
        raise InputError("an embedding needs a checkpoint (its classes and declared preprocessing), not a bare network")
    tf = lm.transform if lm.transform is not None else get_transform(meta)  # the checkpoint's own, as in classify
    paths, labels, names = class_folder_items(data, meta.class_names, limit_per_class)
    feats: list[np.ndarray] = []
    total = math.ceil(len(paths) / batch_size)
    for b in range(total):
        chunk = paths[b * batch_size : (b + 1) * batch_size]
        xs = []
        for p in chunk:
            img = read_image(p)  # io/limits: size checked before decoding, stacks refused
            xs.append(tf.batch(img))
        f, _ = extract_features(model, [torch.cat(xs).to(lm.device)])
        feats.append(f)
        yield Progress(step=b + 1, total=total + 1, stage="features", message=f"{min(len(paths), (b + 1) * batch_size)} images")
    features = np.concatenate(feats)
    coords, used = embed_2d(features, method, seed=seed)
    agree = neighbour_agreement(coords, labels)
    yield Progress(step=total + 1, total=total + 1, stage="embedding", message=used)
    result: dict[str, Any] = {"method": used, "n": len(paths), "neighbour_agreement": agree, "coords": coords,
                              "labels": labels, "class_names": names}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        png = out / "embedding.png"
        plot_embedding(coords, labels, names, title=f"{used}, {len(paths)} images, kNN agreement {agree:.2f}", out=png)
        csv = out / "embedding.csv"
        with open(csv, "w") as fh:
            fh.write("path,class,x,y\n")
            for p, lab, (cx, cy) in zip(paths, labels, coords):
                fh.write(f"{p},{names[lab]},{cx:.5g},{cy:.5g}\n")
        result.update(png=str(png), csv=str(csv))
    return result
