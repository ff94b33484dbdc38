"""Checkpoint formats: each a registered unit with a detection rule and a rebuild (after timm's
``checkpoint_filter_fn``). Loading never executes code from a file: ``torch.load(weights_only=True)`` only.
"""
from .base import FORMATS, LoadedModel, load_checkpoint, read_checkpoint_file
from . import native  # noqa: F401  (registers reprscope/1)
from . import resnet_ssl  # noqa: F401  (registers simsiam, moco, torchvision)
from . import vit  # noqa: F401  (registers dino, dino_student, mae, vit)
from . import resnet_more  # noqa: F401

__all__ = ["FORMATS", "LoadedModel", "load_checkpoint", "read_checkpoint_file"]
