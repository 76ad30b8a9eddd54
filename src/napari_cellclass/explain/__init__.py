"""Explanations: Grad-CAM and guided backprop maps, feature embeddings (t-SNE/PCA)."""
from .embedding import embed_2d, embedding_job, extract_features, plot_embedding
from .gradcam import Explanation, default_target, find_last_conv, grad_cam
from .guided_backprop import explain, guided_backprop, guided_grad_cam

__all__ = ["Explanation", "default_target", "embed_2d", "embedding_job", "explain", "extract_features", "find_last_conv",
           "grad_cam", "guided_backprop", "guided_grad_cam", "plot_embedding"]
