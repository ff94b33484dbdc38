"""ViT checkpoints: DINO training checkpoints, raw timm / DINO-released ViTs and MAE (CHECKPOINT_FORMATS.md).

The backbone is rebuilt as a timm ``VisionTransformer`` read from the weights' shapes (:func:`infer_vit`);
the DINO projector (``head.mlp`` → ℓ2 norm → weight-normed ``head.last_layer``) becomes a layer-spec head.
Every tensor is either loaded strictly or listed in ``unused_keys`` with its reason.

Sources: DINO (Caron et al. 2021, facebookresearch/dino ``main_dino.py``, ``vision_transformer.py``),
MAE (He et al. 2022, facebookresearch/mae ``models_mae.py``), timm ``vision_transformer.py``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import ReprscopeError
from ..models.bundle import ModelBundle
from .base import register_format
from .common import (build_resnet_bundle, epoch_of, head_spec_from_state, load_strict,
                     strip_state, sub_state, unused)
from .resnet_ssl import _resolve  # the shared payload → (state, origin, container) resolver

#: top-level module names of a timm VisionTransformer that carry weights
VIT_ROOTS = ("cls_token", "reg_token", "pos_embed", "patch_embed", "blocks", "norm", "fc_norm", "head")

#: timm convention for the number of attention heads (not visible in the weights); else head_dim 64
_HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
_SIZE_BY_DIM = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1408: "giant"}


# -- architecture from shapes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTArch:
    """A timm-layout VisionTransformer read from its weights.

    Attributes:
        name: the matching timm model name (informative; e.g. ``vit_small_patch16_224``).
        kwargs: ``timm.models.vision_transformer.VisionTransformer`` kwargs that rebuild it.
    """

    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def config(self) -> Dict[str, Any]:
        return {"arch": self.name, "timm_kwargs": dict(self.kwargs)}


def _shape(state: Mapping[str, Any], key: str) -> Optional[Tuple[int, ...]]:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def infer_vit(state: Mapping[str, Any], num_heads: Optional[int] = None) -> ViTArch:
    """Patch size, resolution, width, depth, MLP ratio and pooling of a timm/DINO/MAE-named ViT state dict.

    Args:
        state: backbone weights with timm names (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight`` …);
            a 2-D ``head.weight`` (classifier) may be present and is ignored here.
        num_heads: override of the head count (not visible in the weights; timm convention otherwise).

    Raises:
        ReprscopeError: not a ViT, non-contiguous blocks, a position embedding that fits no square grid.
    """
    pw = _shape(state, "patch_embed.proj.weight")
    if pw is None:
        raise ReprscopeError("not a timm-layout ViT: there is no 'patch_embed.proj.weight'")
    if len(pw) != 4 or pw[2] != pw[3]:
        raise ReprscopeError(f"'patch_embed.proj.weight' has shape {list(pw)}; expected [D, C, p, p]")
    dim, in_ch, p = int(pw[0]), int(pw[1]), int(pw[2])
    pe = _shape(state, "pos_embed")
    if pe is None or len(pe) != 3 or pe[2] != dim:
        raise ReprscopeError(f"'pos_embed' has shape {list(pe) if pe else None}; expected [1, T, {dim}]")
    class_token = "cls_token" in state
    reg = _shape(state, "reg_token")
    n_reg = int(reg[1]) if reg is not None else 0
    n_prefix = int(class_token) + n_reg
    T = int(pe[1])
    no_embed_class = False
    grid = math.isqrt(max(T - n_prefix, 0))
    if grid * grid != T - n_prefix or grid == 0:
        g2 = math.isqrt(T)
        if n_prefix and g2 * g2 == T:  # position embedding without the prefix tokens (timm no_embed_class)
            grid, no_embed_class = g2, True
        else:
            raise ReprscopeError(f"'pos_embed' has {T} tokens: not {n_prefix} prefix token(s) + a square patch grid")
    idx = {int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if not idx or idx != set(range(max(idx) + 1)):
        raise ReprscopeError(f"ViT blocks {sorted(idx)[:8]}: expected 'blocks.0' … 'blocks.<n-1>'"
                             + (" (chunked 'blocks.<chunk>.<i>' dumps are not supported yet)" if idx else ""))
    depth = max(idx) + 1
    fc1 = _shape(state, "blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ReprscopeError("'blocks.0.mlp.fc1.weight' is missing (SwiGLU 'mlp.w12' ViTs are not supported yet)")
    mlp_ratio = fc1[0] / dim
    heads = int(num_heads) if num_heads else _HEADS_BY_DIM.get(dim, max(dim // 64, 1))
    if dim % heads:
        raise ReprscopeError(f"embed_dim {dim} is not divisible by {heads} heads")
    fc_norm = "fc_norm.weight" in state
    if fc_norm:  # timm/MAE fine-tuned with global pooling: fc_norm after average pooling, no final norm
        global_pool = "avg"
    else:
        global_pool = "token" if class_token else "avg"
    kwargs: Dict[str, Any] = {
        "img_size": grid * p, "patch_size": p, "in_chans": in_ch, "embed_dim": dim, "depth": depth,
        "num_heads": heads, "mlp_ratio": mlp_ratio, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token, "reg_tokens": n_reg, "no_embed_class": no_embed_class,
        "global_pool": global_pool, "fc_norm": fc_norm, "final_norm": "norm.weight" in state or fc_norm,
        "num_classes": 0,
    }
    if "blocks.0.ls1.gamma" in state:
        kwargs["init_values"] = 1.0
    size = _SIZE_BY_DIM.get(dim, f"d{dim}")
    return ViTArch(name=f"vit_{size}_patch{p}_{grid * p}", kwargs=kwargs)


class ViTEncoder(nn.Module):
    """A timm VisionTransformer without classifier, following the backbone contract.

    ``forward_features(x)`` → (B, D): the CLS token after the final norm (``global_pool="token"``, DINO/MAE
    convention), or the ``fc_norm`` of the average-pooled patch tokens for globally pooled ViTs. Intermediate
    layers are a few evenly spaced blocks (token sequences, mean-pooled at extraction). State-dict keys are
    ``model.<timm name>``.
    """

    def __init__(self, arch: ViTArch):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.model = VisionTransformer(**arch.kwargs)
        self.num_features = int(self.model.num_features)
        depth = int(arch.kwargs["depth"])
        picks = sorted({max(round((i + 1) * depth / 4) - 1, 0) for i in range(4)})
        self.feature_names: List[str] = [f"model.blocks.{i}" for i in picks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


# -- DINO head ----------------------------------------------------------------------------------------------


def dino_head_spec(state: Mapping[str, Any], prefix: str = "head") -> Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]:
    """DINO's projector: ``mlp`` (Linear–[BN]–GELU–…–Linear) → ℓ2 norm → weight-normed ``last_layer``.

    Returns:
        ``(spec, renamed weights, renamed key → stripped key in the file)`` for ``models.heads.build_head``.
        ``last_layer.weight_g``/``weight_v`` (old ``nn.utils.weight_norm``) and
        ``parametrizations.weight.original0/1`` map onto the parametrized Linear's ``original0`` (g) and
        ``original1`` (v); a plain ``last_layer.weight`` becomes a bias-free Linear.
    """
    spec, mlp_w = head_spec_from_state(state, f"{prefix}.mlp")
    # head_spec_from_state reads a skipped index as ReLU; DINO's hidden activation is GELU
    spec = [{"type": "gelu"} if s["type"] == "relu" else s for s in spec]
    where = {k: (f"{prefix}.mlp.{k}" if f"{prefix}.mlp.{k}" in state else f"{prefix}.mlp.{k[2:]}") for k in mlp_w}
    renamed = dict(mlp_w)
    if spec[-1]["type"] != "linear":
        raise ReprscopeError(f"'{prefix}.mlp' must end with a Linear (DINO bottleneck); got {spec[-1]['type']}")
    spec.append({"type": "l2norm"})
    n = len(spec)
    last = sub_state(state, f"{prefix}.last_layer")
    if not last:
        raise ReprscopeError(f"DINO head has no '{prefix}.last_layer' weights")
    names = {"weight_g": "original0", "weight_v": "original1",
             "parametrizations.weight.original0": "original0", "parametrizations.weight.original1": "original1"}
    if "weight" in last:
        odd = sorted(set(last) - {"weight", "bias"})
        w = last["weight"]
        spec.append({"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0]), "bias": "bias" in last})
        for k in ("weight", "bias"):
            if k in last:
                renamed[f"{n}.{k}"], where[f"{n}.{k}"] = last[k], f"{prefix}.last_layer.{k}"
    else:
        odd = sorted(set(last) - set(names) - {"bias"})
        got = {names[k]: (k, v) for k, v in last.items() if k in names}
        if set(got) != {"original0", "original1"}:
            raise ReprscopeError(f"'{prefix}.last_layer' has {sorted(last)}; expected weight_g + weight_v "
                                 "(or parametrizations.weight.original0/1, or a plain weight)")
        v = got["original1"][1]
        spec.append({"type": "weightnorm_linear", "in": int(v.shape[1]), "out": int(v.shape[0]), "bias": "bias" in last})
        for o, (k, t) in got.items():
            renamed[f"{n}.parametrizations.weight.{o}"] = t
            where[f"{n}.parametrizations.weight.{o}"] = f"{prefix}.last_layer.{k}"
        if "bias" in last:
            renamed[f"{n}.bias"], where[f"{n}.bias"] = last["bias"], f"{prefix}.last_layer.bias"
    if odd:
        raise ReprscopeError(f"'{prefix}.last_layer' has unknown tensors {odd}")
    return spec, renamed, where


# -- shared building ----------------------------------------------------------------------------------------


def build_vit_bundle(backbone: Mapping[str, torch.Tensor], origin: Mapping[str, str], backbone_prefix: str,
                     head: Optional[Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]] = None,
                     num_heads: Optional[int] = None) -> Tuple[ModelBundle, ViTArch]:
    """A bundle from timm-named ViT weights (no classifier) and an optional projector ``(spec, weights, where)``."""
    arch = infer_vit(backbone, num_heads=num_heads)
    heads = {"projector": head[0]} if head else {}
    bundle = ModelBundle(ViTEncoder(arch), heads)
    mapped: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    bp = f"{backbone_prefix}." if backbone_prefix else ""
    for k, v in backbone.items():
        mapped[f"encoder.model.{k}"] = v
        where[f"encoder.model.{k}"] = origin.get(bp + k, bp + k)
    if head:
        for k, v in head[1].items():
            mapped[f"projector.{k}"] = v
            src = head[2].get(k, k)
            where[f"projector.{k}"] = origin.get(src, src)
    load_strict(bundle, mapped, where)
    return bundle, arch


def _is_classifier(state: Mapping[str, Any], k: str) -> bool:
    return k in ("head.weight", "head.bias") and _shape(state, "head.weight") is not None and len(_shape(state, "head.weight")) == 2


def _split_vit(state: Mapping[str, Any], origin: Mapping[str, str], prefix: str = "") -> Tuple[Dict[str, Any], List[str]]:
    """``(backbone weights without classifier, classifier keys)`` of the ViT under ``prefix`` (stripped keys)."""
    sub = sub_state(state, prefix) if prefix else dict(state)
    head = [k for k in sub if k == "head" or k.startswith("head.")]
    odd = [k for k in head if not _is_classifier(sub, k)]
    if odd:
        p = f"{prefix}." if prefix else ""
        raise ReprscopeError(f"ViT has an indexed head ({', '.join(origin.get(p + k, p + k) for k in odd[:4])}): that "
                             "is a projector (e.g. MoCo v3), not a classifier; its format is not supported yet")
    return {k: v for k, v in sub.items() if k not in head}, head


def _result(bundle, arch, method: str, fmt: str, container: Optional[str], payload: Mapping[str, Any],
            heads: Dict[str, List[Dict[str, Any]]], unused_keys: List[str], **extra: Any) -> Dict[str, Any]:
    config = {"format": fmt, "container": container, **arch.config(), "heads": heads, **extra}
    args = payload.get("args")
    if args is not None and hasattr(args, "__dict__"):
        saved = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool)) or v is None}
        if saved:
            config["args_saved"] = saved
    return {"bundle": bundle, "method": method, "config": config, "epoch": epoch_of(payload),
            "unused_keys": unused_keys}


def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and any(isinstance(v, torch.Tensor) for v in d.values())


# -- DINO training checkpoint -------------------------------------------------------------------------------


def _is_dino(payload: Mapping[str, Any]) -> bool:
    if payload.get("format") is not None:
        return False
    for branch in ("teacher", "student"):
        d = payload.get(branch)
        if _is_tensor_dict(d):
            try:
                s, _ = strip_state(d)
            except ReprscopeError:
                return False
            if any(k.startswith("head.last_layer.") for k in s) and any(k.startswith("backbone.") for k in s):
                return True
    return False


def _build_dino(payload: Mapping[str, Any], branch: str) -> Dict[str, Any]:
    other = "student" if branch == "teacher" else "teacher"
    if not _is_tensor_dict(payload.get(branch)):
        raise ReprscopeError(f"DINO checkpoint has no '{branch}' state dict (top-level keys: {', '.join(map(str, payload))})")
    state, origin = strip_state(payload[branch])
    origin = {k: f"{branch}.{v}" for k, v in origin.items()}
    left = [origin[k] for k in state if not (k.startswith("backbone.") or k.startswith("head."))]
    if left:
        raise ReprscopeError("DINO checkpoint has tensors no rule of the format accounts for: "
                             + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))
    head = dino_head_spec(state, "head")
    head_keys = {k for k in state if k.startswith("head.")}
    used_head = set(head[2].values())
    stray = sorted(origin[k] for k in head_keys - used_head)
    if stray:
        raise ReprscopeError("DINO head has tensors that are neither 'head.mlp.*' nor 'head.last_layer.*': " + ", ".join(stray[:8]))
    backbone_all = sub_state(state, "backbone")
    if "conv1.weight" in backbone_all:  # DINO ResNet-50: torchvision names, fc = Identity
        bundle, arch = build_resnet_bundle(backbone_all, {}, origin, "backbone", {})
        # attach the head through the same strict path as the ViT case
        bundle = ModelBundle(bundle.encoder, {"projector": head[0]})
        mapped = {f"encoder.model.{k}": v for k, v in backbone_all.items()}
        where = {f"encoder.model.{k}": origin.get(f"backbone.{k}", f"backbone.{k}") for k in backbone_all}
        for k, v in head[1].items():
            mapped[f"projector.{k}"] = v
            where[f"projector.{k}"] = origin.get(head[2][k], head[2][k])
        load_strict(bundle, mapped, where)
        classifier: List[str] = []
    else:
        backbone, classifier = _split_vit(state, origin, "backbone")
        bundle, arch = build_vit_bundle(backbone, origin, "backbone", head)
    unused_keys = unused([f"backbone.{k}" for k in classifier], origin, "classifier on the backbone; not analysed")
    if isinstance(payload.get(other), Mapping):
        o_state = payload[other]
        unused_keys += [f"{other}.{k}: DINO {other} network; the {branch} is analysed" for k in o_state]
    for k, v in payload.items():
        if k in (branch, other, "args", "epoch"):
            continue
        if k == "dino_loss" and isinstance(v, Mapping):
            unused_keys += [f"dino_loss.{kk}: DINO loss state (teacher centre); not part of the model" for kk in v]
        elif k == "optimizer":
            unused_keys.append("optimizer: optimizer state; not part of the model")
        elif k in ("fp16_scaler", "scaler"):
            unused_keys.append(f"{k}: mixed-precision scaler state; not part of the model")
        elif isinstance(v, torch.Tensor) or _is_tensor_dict(v):
            unused_keys.append(f"{k}: not part of a DINO model")
    return _result(bundle, arch, "dino", "dino", branch, payload, {"projector": head[0]}, unused_keys, branch=branch)


@register_format("dino", detect=_is_dino,
                 summary="DINO training checkpoint (student/teacher, [module.]backbone + head.mlp/head.last_layer); teacher analysed")
def build_dino(payload: Dict[str, Any]) -> Dict[str, Any]:
    return _build_dino(payload, "teacher")


@register_format("dino_student", detect=lambda payload: False,
                 summary="a DINO training checkpoint read on its student branch (never auto-detected; pick it by name)")
def build_dino_student(payload: Dict[str, Any]) -> Dict[str, Any]:
    return _build_dino(payload, "student")


# -- MAE ----------------------------------------------------------------------------------------------------


_MAE_DECODER = re.compile(r"^(decoder_|mask_token$)")


def _is_mae(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return "patch_embed.proj.weight" in state and any(k.startswith("decoder_pred.") for k in state)


@register_format("mae", detect=_is_mae,
                 summary="MAE pre-training checkpoint ('model': ViT encoder + decoder_*, mask_token); encoder analysed")
def build_mae(payload: Dict[str, Any]) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("MAE checkpoint holds no state dict")
    state, origin, container = r
    decoder = [k for k in state if _MAE_DECODER.match(k)]
    enc = {k: v for k, v in state.items() if k not in set(decoder)}
    left = [origin[k] for k in enc if k.split(".", 1)[0] not in VIT_ROOTS]
    if left:
        raise ReprscopeError("MAE checkpoint has tensors no rule of the format accounts for: " + ", ".join(left[:8]))
    backbone, classifier = _split_vit(enc, origin)
    bundle, arch = build_vit_bundle(backbone, origin, "")
    unused_keys = (unused(decoder, origin, "MAE decoder (pixel reconstruction); not part of the representation")
                   + unused(classifier, origin, "classifier (2-D head); not analysed"))
    for k in payload:
        if k in ("optimizer", "scaler"):
            unused_keys.append(f"{k}: training state; not part of the model")
    return _result(bundle, arch, "mae", "mae", container, payload, {}, unused_keys, branch=None)


# -- raw timm / DINO-released / MAE-encoder ViT -------------------------------------------------------------


def _is_vit(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        return False
    if any(k.split(".", 1)[0] not in VIT_ROOTS for k in state):
        return False
    return all(_is_classifier(state, k) for k in state if k == "head" or k.startswith("head."))


@register_format("vit", detect=_is_vit,
                 summary="a raw timm-layout ViT state dict (DINO released backbone, MAE encoder, timm); 2-D head = classifier, unused")
def build_vit(payload: Dict[str, Any]) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("ViT checkpoint holds no state dict")
    state, origin, container = r
    left = [origin[k] for k in state if k.split(".", 1)[0] not in VIT_ROOTS]
    if left:
        raise ReprscopeError("ViT checkpoint has tensors that are not timm ViT weights: " + ", ".join(left[:8]))
    backbone, classifier = _split_vit(state, origin)
    bundle, arch = build_vit_bundle(backbone, origin, "")
    unused_keys = unused(classifier, origin, "classifier (2-D head) on top of the representation; not analysed")
    if container == "state_dict" and _is_tensor_dict(payload.get("state_dict_ema")):
        unused_keys.append("state_dict_ema: EMA copy of the weights; 'state_dict' is analysed")
    return _result(bundle, arch, "unknown", "vit", container, payload, {}, unused_keys, branch=None)
