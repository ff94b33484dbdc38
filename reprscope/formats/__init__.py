"""Checkpoint formats: each a registered unit with a detection rule and a rebuild (after timm's
``checkpoint_filter_fn``). Loading never executes code from a file: ``torch.load(weights_only=True)`` only.
"""
from .base import FORMATS, LoadedModel, load_checkpoint, read_checkpoint_file
from . import native  # noqa: F401  (registers reprscope/1)
from . import resnet_ssl  # noqa: F401  (registers simsiam, moco, torchvision)

__all__ = ["FORMATS", "LoadedModel", "load_checkpoint", "read_checkpoint_file"]
