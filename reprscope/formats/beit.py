"""BEiT / BEiT v2 checkpoints (Bao et al. 2022, arXiv:2106.08254; Peng et al. 2022, arXiv:2208.06366).

Layout (microsoft/unilm ``beit`` / ``beit2`` ``run_*_pretraining.py``): ``{"model": …, "optimizer", "epoch",
"scaler", "args"}``; the model in BEiT's own key names, which timm's ``Beit`` kept: ``cls_token``,
``patch_embed.proj``, optionally ``pos_embed``, a relative position bias shared by all blocks
(``rel_pos_bias.relative_position_bias_table`` and its index buffer) or one per block
(``blocks.N.attn.relative_position_bias_table``), blocks with ``attn.qkv`` (no bias) plus ``attn.q_bias`` /
``attn.v_bias`` and layer scale ``gamma_1`` / ``gamma_2``, a final ``norm`` (or ``fc_norm`` when fine-tuned with
average pooling). The pre-training heads are listed unused: ``lm_head`` (the visual-token classifier),
BEiT v2's ``cls_pt_layers`` (the extra blocks of its class-token pre-training) and the ``mask_token``; a
fine-tuned classifier ``head`` likewise.

Rebuilt as timm's ``Beit`` with the shapes read from the weights (the number of heads is the bias table's second
dimension, the grid follows from its length); the stored index buffers must equal the ones timm computes.
Representation: the class token after the final norm (``--pool mean``: the patch tokens' mean after it), or
``fc_norm`` of the patch tokens' mean for a fine-tuned model.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Tuple

import torch

from ..errors import ReprscopeError
from ..models.bundle import ModelBundle
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import load_strict
from .resnet_ssl import _resolve
from .vit import ViTArch, ViTEncoder, _result, with_pool

_BACKBONE = ("cls_token", "pos_embed", "patch_embed", "rel_pos_bias", "blocks", "norm", "fc_norm")
_UNUSED = {"lm_head": "BEiT's visual-token prediction head (pre-training); not part of the representation",
           "cls_pt_layers": "BEiT v2's class-token pre-training blocks; not part of the backbone",
           "mask_token": "mask token (replaces masked patches in pre-training); not used on whole images",
           "head": "classifier on the representation; not analysed"}


def _is_beit(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return ("patch_embed.proj.weight" in state and "blocks.0.attn.q_bias" in state
            and ("rel_pos_bias.relative_position_bias_table" in state
                 or "blocks.0.attn.relative_position_bias_table" in state)
            and {k.split(".", 1)[0] for k in state} <= set(_BACKBONE) | set(_UNUSED))


def beit_bundle(weights: Dict[str, torch.Tensor], index: Dict[str, torch.Tensor], origin: Mapping[str, str],
                options: LoadOptions) -> Tuple[ModelBundle, ViTArch, int]:
    """timm's ``Beit`` read from BEiT-named backbone ``weights`` (no index buffers; ``index`` holds them, checked
    against the ones timm computes), loaded strictly. Returns ``(bundle, arch, input side)``."""
    pw = weights["patch_embed.proj.weight"]
    dim, p = int(pw.shape[0]), int(pw.shape[2])
    shared = "rel_pos_bias.relative_position_bias_table" in weights
    table = weights["rel_pos_bias.relative_position_bias_table" if shared else "blocks.0.attn.relative_position_bias_table"]
    heads = int(table.shape[1])
    side = (math.isqrt(int(table.shape[0]) - 3) + 1) // 2  # (2W - 1)² + 3 entries for a W×W grid
    if (2 * side - 1) ** 2 + 3 != int(table.shape[0]):
        raise ReprscopeError(f"relative position bias table of {table.shape[0]} rows fits no square patch grid")
    depth = 1 + max(int(m.group(1)) for k in weights for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    fc1 = weights["blocks.0.mlp.fc1.weight"]
    fc_norm = "fc_norm.weight" in weights
    kwargs = {"img_size": side * p, "patch_size": p, "in_chans": int(pw.shape[1]), "embed_dim": dim, "depth": depth,
              "num_heads": heads, "mlp_ratio": int(fc1.shape[0]) / dim, "qkv_bias": "blocks.0.attn.q_bias" in weights,
              "use_abs_pos_emb": "pos_embed" in weights, "use_shared_rel_pos_bias": shared,
              "use_rel_pos_bias": not shared, "init_values": 0.1 if "blocks.0.gamma_1" in weights else None,
              "global_pool": "avg" if fc_norm else "token", "use_fc_norm": fc_norm, "num_classes": 0}
    # timm.create_model of a registered Beit with every shape given (timm's Beit is BEiT's own module, ported)
    arch = with_pool(ViTArch("beit_base_patch16_224", kwargs, f"the relative position bias table ({heads} heads)",
                             forced=True), options.pool)
    if fc_norm and arch.kwargs["global_pool"] == "token":
        raise ReprscopeError("this BEiT's fc_norm normalises the mean of its patch tokens; pool cls is refused",
                             arg="pool")
    bundle = ModelBundle(ViTEncoder(arch), {})
    buffers = dict(bundle.encoder.model.named_buffers())
    for k, v in index.items():  # the index buffer is derived from the grid: the file's must be timm's
        mine = buffers.get(k)
        if mine is None or tuple(mine.shape) != tuple(v.shape) or not torch.equal(mine.cpu(), v.long()):
            raise ReprscopeError(f"'{origin.get(k, k)}' is not the relative position index of a {side}×{side} grid")
    mapped = {f"encoder.model.{k}": v for k, v in weights.items()}
    where = {f"encoder.model.{k}": origin.get(k, k) for k in weights}
    load_strict(bundle, mapped, where, "timm's Beit read from the weights")
    return bundle, arch, side * p


@register_format("beit", detect=_is_beit,
                 summary="BEiT / BEiT v2 checkpoint ('model': shared or per-block relative position bias, q/v biases, "
                         "gamma_1/2 layer scale; lm_head, cls_pt_layers unused) as timm's Beit; class token")
def build_beit(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("BEiT checkpoint holds no state dict")
    state, origin, container = r
    stray = sorted(origin[k] for k in state if k.split(".", 1)[0] not in set(_BACKBONE) | set(_UNUSED))
    if stray:
        raise ReprscopeError("BEiT checkpoint has tensors no rule of the format accounts for: " + ", ".join(stray[:6]))
    if options.arch is not None:
        raise ReprscopeError("format beit reads its architecture from the weights; --arch does not apply", arg="arch")
    bb = {k: v for k, v in state.items() if k.split(".", 1)[0] in _BACKBONE}
    index_keys = [k for k in bb if k.endswith("relative_position_index")]
    bundle, arch, size = beit_bundle({k: v for k, v in bb.items() if k not in set(index_keys)},
                                     {k: bb[k] for k in index_keys}, origin, options)
    branches = {"online": f"{container + '.' if container else ''}* (BEiT holds one network)"}
    role = pick_branch("BEiT", branches, "online", options.branch)
    unused_keys = [f"{origin[k]}: {_UNUSED[k.split('.', 1)[0]]}" for k in state if k.split(".", 1)[0] in _UNUSED]
    unused_keys += [f"{origin[k]}: relative position index (recomputed; equal to the file's)" for k in index_keys]
    for k in ("optimizer", "scaler"):
        if k in payload:
            unused_keys.append(f"{k}: training state; not part of the model")
    return _result(bundle, arch, "beit", "beit", container, payload, {}, unused_keys, role=role, branches=branches,
                   preprocess=pp.imagenet(size, "BEiT v2 evaluation at the relative position grid's resolution, "
                                                    "ImageNet statistics (BEiT v1 runs normalised with 0.5/0.5: "
                                                    "--set data.mean=0.5 --set data.std=0.5)"), branch=None,
                   arch_source="read from the weights' shapes (timm's Beit with these timm kwargs)")
