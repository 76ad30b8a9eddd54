"""Feature embeddings of a dataset (penultimate-layer features -> 2-D) coloured by class.

t-SNE comes from scikit-learn when it is installed; otherwise a small exact t-SNE
written here (fine for a few thousand points) is used, and ``method="pca"`` gives a
linear projection. The features are the input of the model's last Linear layer.
"""
from __future__ import annotations

import math
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
    handle = head.register_forward_pre_hook(lambda m, a: box.append(a[0].detach().flatten(1).float().cpu()))
    preds = []
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
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric t-SNE input affinities with a per-point bandwidth found by bisection."""
    n = x.shape[0]
    d = torch.cdist(x, x).pow(2)
    target = math.log(perplexity)
    beta = torch.ones(n, dtype=x.dtype)
    lo = torch.full((n,), 0.0, dtype=x.dtype)
    hi = torch.full((n,), float("inf"), dtype=x.dtype)
    eye = torch.eye(n, dtype=torch.bool)
    for _ in range(60):
        p = torch.exp(-d * beta[:, None]).masked_fill(eye, 0)
        s = p.sum(1).clamp_min(1e-12)
        h = torch.log(s) + beta * (d * p).sum(1) / s  # entropy in nats
        too_high = h > target  # entropy too high -> increase beta
        lo = torch.where(too_high, beta, lo)
        hi = torch.where(too_high, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    p = p / s[:, None]
    p = (p + p.T) / (2 * n)
    return p.clamp_min(1e-12)


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, iters: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008): PCA init, early exaggeration, momentum."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 5:
        return pca_2d(x)
    perplexity = min(perplexity, (n - 1) / 3)
    xt = torch.from_numpy(x - x.mean(0))
    if xt.shape[1] > 50:
        xt = torch.from_numpy(pca_like(x, 50))
    p = _affinities(xt, perplexity)
    y0 = pca_2d(x)
    y0 = y0 / (y0[:, 0].std() + 1e-12) * 1e-4 if n > 1 else y0
    g = torch.Generator().manual_seed(seed)
    y = torch.from_numpy(y0) + 1e-6 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    vel = torch.zeros_like(y)
    gains = torch.ones_like(y)
    lr = max(n / 12.0, 50.0)
    eye = torch.eye(n, dtype=torch.bool)
    for it in range(iters):
        exag = 12.0 if it < 100 else 1.0
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num = num.masked_fill(eye, 0)
        q = (num / num.sum()).clamp_min(1e-12)
        w = (exag * p - q) * num
        grad = 4 * (torch.diag(w.sum(1)) - w) @ y
        mom = 0.5 if it < 100 else 0.8
        same = torch.sign(grad) == torch.sign(vel)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        vel = mom * vel - lr * gains * grad
        y = y + vel
        y = y - y.mean(0)
    return y.numpy()


def pca_like(x: np.ndarray, k: int) -> np.ndarray:
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:k].T


def embed_2d(features: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, str]:
    """2-D coordinates and the name of the method actually used."""
    method = method.lower()
    if method == "pca":
        return pca_2d(features), "pca"
    if method != "tsne":
        raise InputError(f"unknown embedding method {method!r}; choose tsne or pca")
    try:
        from sklearn.manifold import TSNE  # type: ignore

        perp = min(perplexity, max(2.0, (len(features) - 1) / 3))
        return TSNE(2, perplexity=perp, random_state=seed, init="pca").fit_transform(features), "tsne (scikit-learn)"
    except ImportError:
        return tsne_2d(features, perplexity, seed=seed), "tsne (built-in)"


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


def embedding_job(checkpoint: str | Path, data: str | Path, out: str | Path | None = None, method: str = "tsne",
                  task: str | None = None, limit_per_class: int = 100, batch_size: int = 32, seed: int = 0):
    """Job: features of a class-per-folder dataset -> 2-D embedding -> PNG (+ CSV of coordinates).

    Yields Progress; returns ``{"png", "csv", "method", "n", "neighbour_agreement", "coords", "labels", "class_names"}``.
    """
    from ..engine.checkpoint import build_from_checkpoint
    from ..io.limits import read_image
    from ..engine.progress import Progress
    from .preprocess import prepare_image, task_preprocess

    model, meta = build_from_checkpoint(checkpoint, task=task)
    paths, labels, names = class_folder_items(data, meta.class_names, limit_per_class)
    feats: list[np.ndarray] = []
    total = math.ceil(len(paths) / batch_size)
    for b in range(total):
        chunk = paths[b * batch_size : (b + 1) * batch_size]
        xs = []
        for p in chunk:
            img = read_image(p)  # io/limits: size checked before decoding, stacks refused
            xs.append(task_preprocess(meta.task, img, meta) if task else prepare_image(img, meta))
        f, _ = extract_features(model, [torch.cat(xs)])
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
