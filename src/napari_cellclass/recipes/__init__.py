"""Training recipes (seed 004, the ResNet review): losses, optimisers, LR schedules,
regularisation, activation and normalisation choices as configuration.

See :class:`Recipe` and ``docs/training.md``.
"""
from .config import OPTIMIZERS, Recipe, build_recipe_model
from .losses import LOSSES, features_and_logits
from .regularization import augment_batch
from .schedules import SCHEDULES, lr_curve

__all__ = [
    "Recipe", "OPTIMIZERS", "LOSSES", "SCHEDULES", "augment_batch", "build_recipe_model",
    "features_and_logits", "lr_curve",
]
