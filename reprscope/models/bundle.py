"""The one model contract (STYLE.md principle 3).

Whatever produced the weights, the loader returns a :class:`ModelBundle`: an encoder that follows the backbone
contract plus optional projector, predictor and teacher heads. Extraction asks the bundle for its layers and
for their outputs; it never branches on the method or the architecture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ReprscopeError
from .encoders import build_backbone
from .heads import activation_positions, build_head, head_out_dim

HEAD_PARTS = ("projector", "predictor")


@dataclass(frozen=True)
class LayerInfo:
    """An extractable layer: dotted name, the space it lives in (``encoder``, ``projector`` …) and its depth order."""

    name: str
    space: str
    order: int


def pool_features(t: torch.Tensor) -> torch.Tensor:
    """Flatten a layer output to (B, d): conv maps are average-pooled over space, token sequences over tokens."""
    if t.dim() == 2:
        return t
    if t.dim() == 4:
        return t.mean(dim=(2, 3))
    if t.dim() == 3:
        return t.mean(dim=1)
    return t.flatten(1)


class ModelBundle(nn.Module):
    """Encoder + heads with named, extractable layers.

    Args:
        encoder: a backbone (``forward_features``, ``num_features``, ``feature_names``).
        heads: part name (``projector``, ``predictor``) → layer-spec list (see ``models.heads``).
        teacher: optional module holding a teacher/momentum copy (its ``encoder`` and heads).
    """

    def __init__(self, encoder: nn.Module, heads: Dict[str, List[Dict[str, Any]]], teacher: Optional[nn.Module] = None):
        super().__init__()
        self.encoder = encoder
        self.head_specs: Dict[str, List[Dict[str, Any]]] = {k: list(v) for k, v in heads.items() if v is not None}
        for part, spec in self.head_specs.items():
            self.add_module(part, build_head(spec))
        if teacher is not None:
            self.teacher = teacher

    # -- shapes -----------------------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        return int(self.encoder.num_features)

    def has(self, part: str) -> bool:
        return part in self.head_specs

    def layer_infos(self) -> List[LayerInfo]:
        """Every extractable layer, shallow to deep: encoder intermediates, encoder, projector (hidden and
        output), predictor."""
        out: List[LayerInfo] = []
        for name in getattr(self.encoder, "feature_names", []):
            out.append(LayerInfo(f"encoder.{name}", "intermediate", len(out)))
        out.append(LayerInfo("encoder", "encoder", len(out)))
        for part in HEAD_PARTS:
            if part not in self.head_specs or not self.head_specs[part]:
                continue
            for i in activation_positions(self.head_specs[part]):
                out.append(LayerInfo(f"{part}.{i}", part, len(out)))
            out.append(LayerInfo(part, part, len(out)))
        return out

    def resolve_layers(self, names: Optional[Sequence[str]]) -> List[LayerInfo]:
        infos = self.layer_infos()
        if not names:
            return infos
        by_name = {i.name: i for i in infos}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ReprscopeError(f"unknown layer '{missing[0]}'; this model has: {', '.join(by_name)}")
        return [by_name[n] for n in names]

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training forward: ``{"h": encoder output, "z": projector output, "p": predictor output?}``."""
        h = self.encoder.forward_features(x)
        out = {"h": h, "z": self.projector(h) if self.has("projector") else h}
        if self.has("predictor"):
            out["p"] = self.predictor(out["z"])
        return out

    def forward_layers(self, x: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Outputs (B, d) of the named layers for a batch ``x``; hidden layers are read with forward hooks."""
        want = set(names)
        got: Dict[str, torch.Tensor] = {}
        hooks = []
        modules: Dict[str, nn.Module] = {}
        for name in want:
            if name in ("encoder",) + HEAD_PARTS:
                continue
            part, _, sub = name.partition(".")
            try:
                root = self.encoder if part == "encoder" else getattr(self, part)
                modules[name] = root.get_submodule(sub)
            except AttributeError:
                raise ReprscopeError(f"unknown layer '{name}'; this model has: "
                                     f"{', '.join(i.name for i in self.layer_infos())}") from None
        for name, module in modules.items():
            hooks.append(module.register_forward_hook(lambda _m, _i, o, n=name: got.__setitem__(n, o)))
        try:
            h = self.encoder.forward_features(x)
            got["encoder"] = h
            heads_wanted = {n.split(".")[0] for n in want}
            z = h
            if heads_wanted & set(HEAD_PARTS):
                z = self.projector(h) if self.has("projector") else h
                got["projector"] = z
            if "predictor" in heads_wanted and self.has("predictor"):
                got["predictor"] = self.predictor(z)
        finally:
            for hk in hooks:
                hk.remove()
        missing = [n for n in names if n not in got]
        if missing:
            raise ReprscopeError(f"unknown layer '{missing[0]}'; this model has: "
                                 f"{', '.join(i.name for i in self.layer_infos())}")
        tokens = getattr(self.encoder, "pool_tokens", None)  # a ViT pools its blocks' tokens as it pools its output
        return {n: tokens(got[n]) if tokens is not None and n.startswith("encoder.") and got[n].dim() == 3
                else pool_features(got[n]) for n in names}


def build_bundle(model_cfg: Dict[str, Any], in_shape: Sequence[int]) -> ModelBundle:
    """Rebuild a bundle from the ``model`` section of a native config (backbone name/kwargs and head specs)."""
    encoder = build_backbone(model_cfg["backbone"], in_shape, model_cfg.get("backbone_kwargs") or {})
    heads = dict(model_cfg.get("heads") or {})
    return ModelBundle(encoder, heads)


def head_dims(bundle: ModelBundle) -> Dict[str, int]:
    """Output width of each part."""
    d = {"encoder": bundle.num_features}
    z = d["encoder"]
    for part in HEAD_PARTS:
        if bundle.has(part):
            z = head_out_dim(bundle.head_specs[part], z)
            d[part] = z
    return d
