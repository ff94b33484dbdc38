"""I-JEPA's own training checkpoints (Assran et al. 2023, arXiv:2301.08243; facebookresearch/ijepa).

Layout (``src/train.py``'s ``save_checkpoint``): ``{"encoder", "predictor", "target_encoder", "opt", "scaler",
"epoch", "loss", "batch_size", "world_size", "lr"}``, the three networks' state dicts saved from their DDP
wrappers (``module.`` prefixes). The encoders are ViTs in timm's key names **without a class token**: the
position embedding is a fixed 2-D sin-cos table over the patch grid only, and ``forward`` returns the patch
tokens after the final LayerNorm (ε = 1e-6).

Choices:

* Branch: the target encoder (``teacher``/``momentum``, I-JEPA's exponential moving average), which is the
  network the paper evaluates ("we use the target-encoder for evaluation and average pool its output");
  ``--branch student`` reads the context ``encoder``.
* The representation (``encoder`` layer) is the average of the patch tokens after the final norm; the
  intermediate blocks are the average of their patch tokens.
* The predictor (a narrow ViT that maps context tokens and mask tokens to target tokens) is listed unused: it
  is not a function of the image alone.
* Input size: I-JEPA's ``interpolate_pos_encoding`` treats the first patch's embedding as a class token when
  resampling (it was written for DINO's layout), so only the training resolution reproduces the original
  module; the encoder is built with that fixed input size.

Detection is by what differs from a plain ViT file: the three networks side by side and the predictor's own
names (``predictor_embed``, ``predictor_blocks``). The plain ``vit`` format refuses such a file.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import strip_state
from .vit import _is_tensor_dict, _result, build_vit_bundle

#: facebookresearch/ijepa src/models/vision_transformer.py: vit_tiny … vit_gigantic (width → heads)
_IJEPA_VITS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12), "vit_large": (1024, 16),
               "vit_huge": (1280, 16), "vit_giant": (1408, 16), "vit_gigantic": (1664, 16)}
_HEADS = {dim: heads for dim, heads in _IJEPA_VITS.values()}

#: the encoder keys an I-JEPA ViT has (no class token, no classifier)
_ENCODER_ROOTS = ("patch_embed", "pos_embed", "blocks", "norm")


def _stripped(d: Any) -> Optional[Dict[str, Any]]:
    if not _is_tensor_dict(d):
        return None
    try:
        return strip_state(d)[0]
    except ReprscopeError:
        return None


def is_ijepa(payload: Mapping[str, Any]) -> bool:
    """The three networks of an I-JEPA training checkpoint, its predictor named as I-JEPA names it."""
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return False
    pred = _stripped(payload.get("predictor"))
    enc = _stripped(payload.get("encoder")) or _stripped(payload.get("target_encoder"))
    return (pred is not None and enc is not None and "patch_embed.proj.weight" in enc
            and any(k.startswith(("predictor_embed.", "predictor_blocks.")) for k in pred))


def _hint(dim: int) -> Optional[Tuple[int, str]]:
    if dim in _HEADS:
        return _HEADS[dim], f"I-JEPA's ViTs: embed_dim {dim} has {_HEADS[dim]} heads (vision_transformer.py)"
    return None


@register_format("ijepa", detect=is_ijepa,
                 summary="I-JEPA training checkpoint (encoder / target_encoder / predictor, Assran et al. 2023); "
                         "target encoder analysed, average of the patch tokens")
def build_ijepa(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    names = {"teacher": "target_encoder", "student": "encoder"}
    branches = {b: f"{k}.* ({'the EMA target encoder, which I-JEPA evaluates' if b == 'teacher' else 'the context encoder'})"
                for b, k in names.items() if _is_tensor_dict(payload.get(k))}
    if not branches:
        raise ReprscopeError("I-JEPA checkpoint holds neither 'target_encoder' nor 'encoder' weights")
    role = pick_branch("I-JEPA", branches, "teacher" if "teacher" in branches else "student", options.branch)
    key = names[role]
    state, origin = strip_state(payload[key])
    origin = {k: f"{key}.{v}" for k, v in origin.items()}
    left = [origin[k] for k in state if k.split(".", 1)[0] not in _ENCODER_ROOTS]
    if "cls_token" in state or left:
        found = ["cls_token"] if "cls_token" in state else left
        raise ReprscopeError(f"the I-JEPA {key} has tensors an I-JEPA ViT does not have ({', '.join(found[:6])}); "
                             "it is not the encoder I-JEPA's code builds")
    bundle, arch = build_vit_bundle(state, origin, "", options=options, heads_hint=_hint)
    vit = bundle.encoder.model
    if vit.global_pool != "avg" or getattr(vit, "has_class_token", False):  # pragma: no cover - infer_vit's rule
        raise ReprscopeError("internal: the I-JEPA encoder must average its patch tokens")
    other = "encoder" if key == "target_encoder" else "target_encoder"
    unused_keys = []
    if _is_tensor_dict(payload.get(other)):
        unused_keys += [f"{other}.{k}: the other I-JEPA encoder; {key} is analysed" for k in payload[other]]
    if _is_tensor_dict(payload.get("predictor")):
        unused_keys += [f"predictor.{k}: I-JEPA predictor (maps context and mask tokens to target tokens); not a "
                        "representation" for k in payload["predictor"]]
    for k in payload:
        if k in ("opt", "scaler") and payload[k] is not None:
            unused_keys.append(f"{k}: training state; not part of the model")
    size = bundle.encoder.img_size
    preprocess = pp.imagenet(size, f"I-JEPA evaluation at its training resolution {size}×{size} (the position "
                                   "embedding is not resampled faithfully elsewhere), ImageNet statistics")
    return _result(bundle, arch, "ijepa", "ijepa", key, payload, {}, unused_keys, role=role, branches=branches,
                   preprocess=preprocess, branch=key, pooling="mean of the patch tokens after the final norm")

