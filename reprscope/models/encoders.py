"""Backbones: the MLP encoder of paper 001 and any timm model by name.

Every backbone follows one contract (after timm): ``forward_features(x)`` returns the (B, num_features)
representation h, ``num_features`` is its width, and ``feature_names`` lists the dotted sub-module paths whose
outputs are the extractable intermediate layers, shallow to deep.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from ..errors import ReprscopeError
from ..params import Param, resolve_params
from ..registry import Registry

BACKBONES: Registry = Registry("backbone")


@BACKBONES.register(
    "mlp",
    params=[
        Param("width", 64, "int", "width of every hidden layer", low=1),
        Param("depth", 6, "int", "number of layers (each Linear + LeakyReLU)", low=1),
        Param("out_dim", None, "int", "width of the last layer (default: width)", low=1, nullable=True),
        Param("slope", 0.2, "float", "LeakyReLU slope", low=0),
        Param("bias", True, "bool", "use biases"),
    ],
)
class MLPEncoder(nn.Module):
    """MLP encoder whose every layer is a named, extractable module ``layer1`` … ``layer{depth}``.

    Paper 001 §4.1 uses a 7-layer LeakyReLU MLP; in reprscope that is ``depth=6`` plus a linear projector,
    so the last layer is the one the paper calls the projector.

    Args:
        in_dim: input dimension (the data set's ``input_shape``).
    """

    def __init__(self, in_dim: int, width: int = 64, depth: int = 6, out_dim: int | None = None,
                 slope: float = 0.2, bias: bool = True):
        super().__init__()
        dims = [in_dim] + [width] * (depth - 1) + [out_dim or width]
        for i in range(depth):
            layer = nn.Sequential(nn.Linear(dims[i], dims[i + 1], bias=bias), nn.LeakyReLU(slope))
            self.add_module(f"layer{i + 1}", layer)
        self.depth = depth
        self.num_features = dims[-1]
        self.feature_names: List[str] = [f"layer{i + 1}" for i in range(depth - 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class TimmBackbone(nn.Module):
    """A timm model without classifier, exposing the backbone contract."""

    def __init__(self, name: str, in_shape: Sequence[int], **kwargs: Any):
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.num_features = int(self.model.num_features)
        info = getattr(self.model, "feature_info", None) or []
        self.feature_names = [f"model.{f['module']}" for f in info if isinstance(f, dict) and f.get("module")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # num_classes=0: pooled pre-logits features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def build_backbone(name: str, in_shape: Sequence[int], kwargs: Dict[str, Any] | None = None) -> nn.Module:
    """A registered backbone, or any timm model by name."""
    kwargs = dict(kwargs or {})
    if name in BACKBONES:
        cls = BACKBONES.get(name)
        params = resolve_params(f"backbone {name}", BACKBONES.meta(name)["params"], kwargs)
        if len(in_shape) != 1:
            raise ReprscopeError(f"backbone '{name}' takes vector inputs; the data set gives shape {tuple(in_shape)}")
        return cls(int(in_shape[0]), **params)
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        timm = None
    if timm is not None and timm.is_model(name):
        return TimmBackbone(name, in_shape, **kwargs)
    raise ReprscopeError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES.names())} or any timm model name")
