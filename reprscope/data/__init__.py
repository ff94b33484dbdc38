"""Data sets: a registry of generated sets and sets on disk with positive-pair samplers, and the batched image
augmentation presets (``AUGMENTATIONS``)."""
from .base import DATASETS, GeneratedDataset, Samples, build_dataset, parse_data_arg
from .augment import AUGMENTATIONS, AugmentationPreset, ViewConfig, augment_images, get_preset
from . import dgp, images, shapes, toy  # noqa: F401  (registers the built-in sets)

__all__ = ["AUGMENTATIONS", "AugmentationPreset", "DATASETS", "GeneratedDataset", "Samples", "ViewConfig",
           "augment_images", "build_dataset", "get_preset", "parse_data_arg"]
