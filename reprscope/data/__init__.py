"""Data sets: a registry of generated sets (and, later, sets on disk) with positive-pair samplers."""
from .base import DATASETS, GeneratedDataset, Samples, build_dataset, parse_data_arg
from . import dgp, images, toy  # noqa: F401  (registers the built-in sets)

__all__ = ["DATASETS", "GeneratedDataset", "Samples", "build_dataset", "parse_data_arg"]
