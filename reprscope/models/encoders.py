"""Backbones: the MLP encoder of Rusak et al. 2022 and any timm model by name.

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


@BACKBONES.register(
    "convnet",
    params=[
        Param("width", 32, "int", "channels of the first block (doubled in each later block)", low=1),
        Param("blocks", 4, "int", "conv blocks; every block after the first halves the resolution", low=1),
    ],
    input="image",
)
class ConvNet(nn.Module):
    """A small VGG-style CNN for CPU-sized image runs (the ``cpu`` scale of the recipes): block k is
    conv 3×3 (stride 1 for the first block, 2 after) → BatchNorm → ReLU, then global average pooling.
    Blocks ``block1`` … ``blockN`` are the extractable intermediate layers. For the papers' settings use a
    timm ResNet (``--backbone resnet18 --set backbone.cifar_stem=true``)."""

    def __init__(self, in_shape: Sequence[int], width: int = 32, blocks: int = 4):
        super().__init__()
        c = int(in_shape[0])
        for i in range(blocks):
            out = width * 2 ** i
            self.add_module(f"block{i + 1}", nn.Sequential(
                nn.Conv2d(c, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(out),
                nn.ReLU(inplace=True)))
            c = out
        self.blocks = blocks
        self.num_features = c
        self.feature_names: List[str] = [f"block{i + 1}" for i in range(blocks - 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class TimmBackbone(nn.Module):
    """A timm model without classifier, exposing the backbone contract.

    ``cifar_stem=True`` gives a ResNet the CIFAR stem of the published 32×32 recipes (SimCLR appendix B.9,
    solo-learn): conv1 = 3×3 stride 1 without the max-pool. A ViT is built for the data's resolution
    (``img_size`` from the input shape unless given); small patches for 32×32 inputs with
    ``--set backbone.patch_size=4``.
    """

    def __init__(self, name: str, in_shape: Sequence[int], cifar_stem: bool = False, **kwargs: Any):
        super().__init__()
        import timm

        if len(in_shape) == 3 and "img_size" not in kwargs and _is_vit(name):
            kwargs["img_size"] = int(in_shape[-1])
        self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        if cifar_stem:
            conv1, pool = getattr(self.model, "conv1", None), getattr(self.model, "maxpool", None)
            if pool is None or not isinstance(conv1, (nn.Conv2d, nn.Sequential)):
                raise ReprscopeError(f"backbone.cifar_stem applies to ResNet-style timm models (conv1 + maxpool); "
                                     f"'{name}' has no such stem")
            if isinstance(conv1, nn.Conv2d):
                self.model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
            else:  # deep stem (resnet*d / *t): keep it, without its stride
                first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
                first.stride = (1, 1)
            self.model.maxpool = nn.Identity()
        self.num_features = int(self.model.num_features)
        info = getattr(self.model, "feature_info", None) or []
        self.feature_names = [f"model.{f['module']}" for f in info if isinstance(f, dict) and f.get("module")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # num_classes=0: pooled pre-logits features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    # -- patch tokens of a ViT, for masked image modelling (methods/mae.py) ---------------------------------
    @property
    def supports_token_masking(self) -> bool:
        """True for a timm ``VisionTransformer`` (patch embedding, prefix tokens, blocks, final norm, pooling),
        whose patch tokens :meth:`forward_masked` can subset."""
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(self.model, VisionTransformer)

    def _require_vit(self) -> None:
        if not self.supports_token_masking:
            raise ReprscopeError(f"backbone '{type(self.model).__name__}' is not a timm VisionTransformer; it has no "
                                 "patch tokens to mask")

    def patch_layout(self) -> Dict[str, Any]:
        """The token layout of a ViT: ``patch_size`` (ph, pw), ``grid_size`` (gh, gw) of the configured image
        size, ``num_prefix_tokens`` (class + register tokens) and ``pos_embed_prefix`` (how many of them have a
        row in ``pos_embed``: 0 for ``no_embed_class`` models)."""
        self._require_vit()
        m = self.model
        return {"patch_size": tuple(int(v) for v in m.patch_embed.patch_size),
                "grid_size": tuple(int(v) for v in m.patch_embed.grid_size),
                "num_prefix_tokens": int(m.num_prefix_tokens),
                "pos_embed_prefix": 0 if m.no_embed_class else int(m.num_prefix_tokens)}

    def forward_masked(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode only some patch tokens of each image (MAE's encoder, He et al. 2022 §3).

        Patch embedding and positional embedding as in ``forward_features``; then the patch tokens
        ``ids_keep`` of each sample (positions in row-major patch order) are kept, the prefix tokens always;
        the blocks, the final norm and the model's own pooling (class token or average, ``fc_norm``) follow.
        ``ids_keep=None`` keeps every patch in order, which equals :meth:`forward_features` in eval mode
        (token dropout ``patch_drop`` is not applied here: masking replaces it).

        Args:
            x: (B, C, H, W) images.
            ids_keep: (B, k) int64 indices of the patch tokens to keep, or None.
        Returns:
            tokens (B, num_prefix_tokens + k, D) after the final norm, and the pooled (B, D) representation.
        """
        self._require_vit()
        m = self.model
        t = m._pos_embed(m.patch_embed(x))  # (B, prefix + L, D), positions added
        if ids_keep is not None:
            n_pre = m.num_prefix_tokens
            patches = torch.gather(t[:, n_pre:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            t = torch.cat([t[:, :n_pre], patches], dim=1)
        t = m.norm(m.blocks(m.norm_pre(t)))
        return t, m.forward_head(t, pre_logits=True)


def _is_vit(name: str) -> bool:
    """A timm ViT-family model (its constructor takes ``img_size``)."""
    from timm.models import is_model_in_modules

    return is_model_in_modules(name, ["vision_transformer", "deit", "vision_transformer_hybrid",
                                      "vision_transformer_relpos", "eva", "beit"])


def build_backbone(name: str, in_shape: Sequence[int], kwargs: Dict[str, Any] | None = None) -> nn.Module:
    """A registered backbone, or any timm model by name."""
    kwargs = dict(kwargs or {})
    if name in BACKBONES:
        cls = BACKBONES.get(name)
        params = resolve_params(f"backbone {name}", BACKBONES.meta(name)["params"], kwargs)
        if BACKBONES.meta(name).get("input") == "image":
            if len(in_shape) != 3:
                raise ReprscopeError(f"backbone '{name}' takes images (C, H, W); the data set gives shape {tuple(in_shape)}")
            return cls(in_shape, **params)
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
