"""Checkpoint formats: each a registered unit with a detection rule and a rebuild (after timm's
``checkpoint_filter_fn``). Loading never executes code from a file: ``torch.load(weights_only=True)`` or
safetensors only.
"""
from .base import (FORMATS, READERS, LoadedModel, LoadOptions, Preprocess, load_checkpoint, payload_summary,
                   read_checkpoint, read_checkpoint_file)
from . import native  # noqa: F401  (registers reprscope/1)
from . import resnet_ssl  # noqa: F401  (registers simsiam, moco, torchvision)
from . import vit  # noqa: F401  (registers dino, dino_student, moco_v3_vit, mae, vit)
from . import resnet_more  # noqa: F401  (barlowtwins, vicreg, swav, simclr_sthalles, byol)
from . import dinov2  # noqa: F401
from . import timm_plain  # noqa: F401  (timm)
from . import solo_learn  # noqa: F401
from . import lightly  # noqa: F401
from . import ijepa  # noqa: F401
from . import hf_transformers  # noqa: F401  (hf_vit, hf_dinov2)
from . import open_clip  # noqa: F401
from . import vissl  # noqa: F401
from . import mmpretrain  # noqa: F401
from . import beit  # noqa: F401

__all__ = ["FORMATS", "READERS", "LoadedModel", "LoadOptions", "Preprocess", "load_checkpoint", "payload_summary",
           "read_checkpoint", "read_checkpoint_file"]
