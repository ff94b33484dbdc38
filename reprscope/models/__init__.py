"""Models: backbones, heads and the one bundle contract."""
from .bundle import LayerInfo, ModelBundle, build_bundle, head_dims, pool_features
from .encoders import BACKBONES, build_backbone
from .heads import HEADS, build_head, head_spec_from_config

__all__ = ["BACKBONES", "HEADS", "LayerInfo", "ModelBundle", "build_backbone", "build_bundle", "build_head",
           "head_dims", "head_spec_from_config", "pool_features"]
