"""Explain one image (or one object in it) with the model's own declared preprocessing.

The input goes through the transform the checkpoint declares
(:func:`napari_cellclass.preprocess.get_transform`), the same object classify and
evaluate use, so the map explains what the classifier saw: a chromosome is
straightened, polarity-flipped and padded onto its canvas first.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError

PREDICTED = "(predicted class)"


def explain_job(checkpoint: Any, image: np.ndarray, box: tuple[int, int, int, int] | None, method: str,
                class_name: str | None, device: str | None, cancel: CancelToken | None = None):
    """Job: load the model, prepare the (cropped) image, compute the map.

    ``checkpoint`` is a built-in name, a checkpoint path or a
    :class:`~napari_cellclass.zoo.loaded.LoadedModel`; it is loaded through
    :func:`~napari_cellclass.zoo.loaded.load_model` (cached, shared).  The maps need
    gradients and hooks, so they are computed on a private copy of the network:
    the shared one is never changed.

    ``aligned`` in the result says whether ``heatmap`` lies on the image at
    ``offset`` (the box, or for a white-cell model the square window around the box
    centre that the network sees, clipped to the image); when it is False (a chromosome canvas, rotated and padded) the map
    belongs to ``model_input`` (the network's view, H x W or H x W x C) and
    ``model_heatmap`` is the map at that resolution.
    """
    from skimage.transform import resize

    from ..engine.progress import check_cancel
    from ..preprocess import get_transform
    from ..zoo.loaded import load_model
    from .guided_backprop import explain

    yield Progress(0, 3, "explain", "loading the model")
    lm = load_model(checkpoint, device=device)
    meta, policy = lm.meta, lm.policy
    if meta is None:
        raise CellClassError("explain needs a checkpoint (its classes and declared preprocessing), not a bare network")
    # Grad-CAM registers hooks and back-propagates into the weights: never on the shared network
    model = copy.deepcopy(lm.net).float().eval()
    check_cancel(cancel)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    hw = (image.shape[-3 if rgb else -2], image.shape[-2 if rgb else -1])
    r0, c0, r1, c1 = box if box is not None else (0, 0, hw[0], hw[1])
    tf = lm.transform if lm.transform is not None else get_transform(meta)
    # the whole image and the box, as classify gives them: a transform that looks past the box
    # (the white-cell window around the box centre) sees the real surroundings, not a padded crop
    x = tf.batch(image, box).to(policy.device)
    yield Progress(1, 3, "explain", f"{method} on {policy.describe()}")
    idx = None
    if class_name and class_name != PREDICTED:
        if class_name not in meta.class_names:
            raise CellClassError(f"class {class_name!r} is not one of the model's classes")
        idx = meta.class_names.index(class_name)
    multilabel = meta.thresholds is not None or meta.task == "hpa"
    e = explain(model, x, method, class_index=idx, multilabel=multilabel)
    check_cancel(cancel)
    aligned = bool(tf.aligned)
    if callable(getattr(tf, "input_window", None)):  # the model input is a known square of the image: put the map there
        w0, w1, w2, w3 = tf.input_window(hw, box)
        full = resize(e.heatmap, (w2 - w0, w3 - w1), order=1, preserve_range=True, anti_aliasing=False)
        r0, c0, r1, c1 = max(w0, 0), max(w1, 0), min(w2, hw[0]), min(w3, hw[1])
        heat = np.ascontiguousarray(full[r0 - w0:r1 - w0, c0 - w1:c1 - w1], dtype=np.float32)
        aligned = True
    else:
        heat = resize(e.heatmap, (r1 - r0, c1 - c0), order=1, preserve_range=True,
                      anti_aliasing=False).astype(np.float32)
    yield Progress(3, 3, "explain", "done")
    view = x[0].detach().float().cpu().numpy()
    view = view[0] if view.shape[0] == 1 else np.moveaxis(view, 0, -1)
    probs = {n: float(p) for n, p in zip(meta.class_names, e.probabilities)}
    return {"heatmap": heat, "offset": (r0, c0), "class": meta.class_names[e.class_index], "score": e.score,
            "probabilities": probs, "method": e.method, "layer": e.layer, "device": policy.describe(),
            "trained_on": meta.trained_on, "preprocess": tf.name, "aligned": aligned,
            "model_input": view, "model_heatmap": e.heatmap}
