"""MMSelfSup (0.x, 1.x) and MMPretrain checkpoints (OpenMMLab; Contributors 2023, open-mmlab/mmpretrain).

Layout: ``{"meta": …, "state_dict": {…}}`` (full training checkpoints add ``optimizer``, ``param_schedulers`` and
MMEngine's pickled ``message_hub``, read through the inert-placeholder unpickler and left unused). The model's
``state_dict`` holds the parts of a self-supervised algorithm (``mmpretrain/models/selfsup``):

* ``backbone.*``: a ResNet in torchvision's key names (MMPretrain's ``ResNet``, ``style='pytorch'``; the CIFAR
  variant with a 3×3 stem), or a ViT in MMPretrain's names (``patch_embed.projection``, ``layers.N.ln1`` /
  ``attn.qkv`` / ``attn.proj`` / ``ln2`` / ``ffn.layers.0.0`` / ``ffn.layers.1``, layer scale ``attn.gamma1`` /
  ``ffn.gamma2``, a final ``ln1``; ``ln2`` after the mean of the patch tokens for ``out_type='avg_featmap'``),
  rebuilt as the timm ``VisionTransformer`` that computes the same function (LayerNorm ε 1e-6, GELU);
* ``neck.*``: the projector — ``NonLinearNeck`` (``fc0``, ``bn0``, then ReLU, ``fcI``, [``bnI``] …),
  ``MoCoV2Neck`` (``mlp.0``, ReLU, ``mlp.2``), ``LinearNeck`` (``fc``), ``SwAVNeck`` (``projection_neck``), fed with
  the average-pooled ResNet features or the ViT's class token; the reconstruction necks of masked image
  modelling (MAE's decoder …) are listed unused;
* ``head.*``: ``head.predictor`` (BYOL, SimSiam, MoCo v3: a ``NonLinearNeck``) is the predictor; other heads
  (prototypes, loss modules) are unused;
* the momentum network: ``encoder_k.module.{0,1}`` (MoCo v2, DenseCL), ``target_net.module.{0,1}`` (BYOL 1.x),
  ``momentum_encoder.module.{0,1}`` (MoCo v3) — ``--branch momentum`` reads it; MMSelfSup 0.x's
  ``online_net.{0,1}`` / ``target_net.{0,1}`` (aliases of backbone and neck, and the target);
* ``data_preprocessor.mean`` / ``std`` (0–255 scale): the input normalisation, used as the preprocessing;
  ``target_generator.*`` (HOG, a tokenizer), queues: unused.

BEiT-style backbones (``BEiTViT``: relative position bias, ``q_bias`` / ``v_bias``, ``gamma_1`` / ``gamma_2``; BEiT
v1/v2, CAE) are rebuilt as timm's ``Beit`` (their necks, masked-image-modelling heads, are unused). Refused with
one line: a ViT with both a final ``ln1`` and an ``ln2`` after pooling (timm's ViT has one of them). The number of attention heads comes from MMPretrain's ``arch_zoo`` by width and depth (``small`` is 768
wide with 8 heads and 8 layers), and MoCo v3's ViT-S/B have 12 heads (``mocov3-small``).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import ReprscopeError
from .base import LoadOptions, Preprocess, pick_branch, register_format
from .common import build_resnet_with_heads, head_spec_from_state, strip_state, sub_state
from .vit import build_vit_bundle

#: roots of an MMPretrain / MMSelfSup algorithm's state dict
_PARTS = {"backbone", "neck", "head", "data_preprocessor", "target_generator", "encoder_k", "target_net",
          "momentum_encoder", "online_net", "queue", "queue_ptr", "queue2", "queue2_ptr", "teacher", "mask_token"}
#: momentum networks (an ``nn.Sequential(backbone, neck)`` inside MMEngine's averaged model ``.module``)
_MOMENTUM = ("encoder_k", "target_net", "momentum_encoder")
#: MMPretrain's ViT arch_zoo: (width, depth) → heads
_ARCH_HEADS = {(768, 8): 8, (768, 12): 12, (1024, 24): 16, (1280, 32): 16, (1408, 40): 16, (192, 12): 3,
               (384, 12): 6, (1536, 40): 24}
_VIT_BLOCK = {"ln1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "ln2": "norm2",
              "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2", "attn.gamma1": "ls1", "ffn.gamma2": "ls2"}


def _state(payload: Mapping[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, str]]]:
    sd = payload.get("state_dict") if isinstance(payload, Mapping) else None
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        return None
    try:
        state, origin = strip_state(sd)
    except ReprscopeError:
        return None
    return state, {k: f"state_dict.{v}" for k, v in origin.items()}


def _roots(state: Mapping[str, Any]) -> set:
    return {k.split(".", 1)[0] for k in state}


def _detect(payload: Mapping[str, Any]) -> bool:
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return False
    r = _state(payload)
    if r is None:
        return False
    roots = _roots(r[0])
    marks = {"neck", "data_preprocessor", "target_generator"} | set(_MOMENTUM) | {"online_net"}
    return "backbone" in roots and roots <= _PARTS and bool(roots & marks)


def neck_spec(state: Mapping[str, Any], prefix: str):
    """An MMPretrain neck as ``(spec, weights, weight key → stripped key)``."""
    sub = sub_state(state, prefix)
    if any(k.startswith("mlp.") for k in sub):  # MoCoV2Neck: Linear, ReLU, Linear
        spec, w = head_spec_from_state(state, f"{prefix}.mlp")
        return spec, w, {k: f"{prefix}.mlp.{k}" for k in w}
    if any(k.startswith("projection_neck.") for k in sub):  # SwAVNeck
        spec, w = head_spec_from_state(state, f"{prefix}.projection_neck")
        return spec + [{"type": "l2norm"}], w, {k: f"{prefix}.projection_neck.{k}" for k in w}
    if set(sub) <= {"fc.weight", "fc.bias"} and sub:  # LinearNeck
        spec, w = head_spec_from_state(state, f"{prefix}.fc")
        return spec, w, {k: f"{prefix}.fc.{k[2:]}" for k in w}
    if "fc0.weight" not in sub:
        raise ReprscopeError(f"'{prefix}' is not a neck reprscope rebuilds (NonLinearNeck fc0/bn0…, MoCoV2Neck mlp, "
                             f"LinearNeck fc, SwAVNeck projection_neck): {sorted(sub)[:4]}")
    spec: List[Dict[str, Any]] = []
    weights: Dict[str, Any] = {}
    where: Dict[str, str] = {}
    i = 0
    while f"fc{i}.weight" in sub:
        if i:
            spec.append({"type": "relu"})
        for name in (f"fc{i}", f"bn{i}"):
            params = sub_state(sub, name)
            if not params:
                continue
            n = len(spec)
            if name.startswith("fc"):
                w = params["weight"]
                spec.append({"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0]), "bias": "bias" in params})
            else:
                spec.append({"type": "batchnorm", "in": int(params["running_mean"].numel()), "affine": "weight" in params})
            for p, t in params.items():
                weights[f"{n}.{p}"], where[f"{n}.{p}"] = t, f"{prefix}.{name}.{p}"
        i += 1
    left = sorted(set(f"{prefix}.{k}" for k in sub) - set(where.values()))
    if left:
        raise ReprscopeError(f"NonLinearNeck '{prefix}' has tensors it cannot place: {left[:4]}")
    return spec, weights, where


def _vit_to_timm(bb: Mapping[str, Any], origin: Mapping[str, str], bp: str):
    """MMPretrain ViT names → timm ``VisionTransformer`` names."""
    out: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    left: List[str] = []
    for k, v in bb.items():
        m = re.match(r"layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        top = {"cls_token": "cls_token", "pos_embed": "pos_embed", "patch_embed.projection.weight": "patch_embed.proj.weight",
               "patch_embed.projection.bias": "patch_embed.proj.bias", "ln1.weight": "norm.weight", "ln1.bias": "norm.bias",
               "ln2.weight": "fc_norm.weight", "ln2.bias": "fc_norm.bias", "pre_norm.weight": "norm_pre.weight",
               "pre_norm.bias": "norm_pre.bias"}
        if k in top:
            new = top[k]
        elif m and m.group(2) in _VIT_BLOCK:
            name = _VIT_BLOCK[m.group(2)]
            new = f"blocks.{m.group(1)}.{name}.gamma" if name in ("ls1", "ls2") else f"blocks.{m.group(1)}.{name}.{m.group(3)}"
        else:
            left.append(origin[f"{bp}.{k}"])
            continue
        out[new], where[new] = v, origin[f"{bp}.{k}"]
    if left:
        rel = [k for k in left if "relative_position" in k]
        what = ("BEiT-style relative position bias, which the timm ViT reprscope builds does not compute" if rel
                else "tensors an MMPretrain VisionTransformer does not have")
        raise ReprscopeError(f"MMPretrain ViT backbone has {what}: " + ", ".join(left[:5]))
    if "norm.weight" in out and "fc_norm.weight" in out:
        raise ReprscopeError("MMPretrain ViT with both a final ln1 and an ln2 after pooling: timm's ViT has one of them")
    return out, where


def _beit_to_timm(bb: Mapping[str, Any], origin: Mapping[str, str], bp: str):
    """MMPretrain ``BEiTViT`` names → timm ``Beit`` names: ``(weights, where, index buffers)``."""
    out: Dict[str, torch.Tensor] = {}
    index: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    top = {"patch_embed.projection.weight": "patch_embed.proj.weight", "patch_embed.projection.bias": "patch_embed.proj.bias",
           "ln1.weight": "norm.weight", "ln1.bias": "norm.bias", "ln2.weight": "fc_norm.weight", "ln2.bias": "fc_norm.bias"}
    block = {"ln1": "norm1", "ln2": "norm2", "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2"}
    for k, v in bb.items():
        m = re.match(r"layers\.(\d+)\.(.+)$", k)
        if k in top:
            new = top[k]
        elif k in ("cls_token", "pos_embed") or k.startswith("rel_pos_bias."):
            new = k
        elif m:
            rest = m.group(2)
            name, _, leaf = rest.rpartition(".")
            if name in block:
                new = f"blocks.{m.group(1)}.{block[name]}.{leaf}"
            elif rest in ("gamma_1", "gamma_2") or rest.startswith("attn."):
                new = f"blocks.{m.group(1)}.{rest}"
            else:
                raise ReprscopeError(f"MMPretrain BEiT backbone has '{origin[f'{bp}.{k}']}', which timm's Beit has not")
        else:
            raise ReprscopeError(f"MMPretrain BEiT backbone has '{origin[f'{bp}.{k}']}', which timm's Beit has not")
        where[new] = origin[f"{bp}.{k}"]
        (index if new.endswith("relative_position_index") else out)[new] = v
    return out, where, index


@register_format("mmpretrain", detect=_detect,
                 summary="MMSelfSup 0.x/1.x and MMPretrain checkpoints (state_dict backbone/neck/head, meta): ResNets "
                         "(MoCo v2, SimCLR, BYOL, SimSiam, Barlow Twins, DenseCL, SwAV, ODC, RelativeLoc …) and plain "
                         "ViTs (MAE, MoCo v3, MaskFeat, MILAN, PixMIM, EVA) and BEiT-style ViTs (BEiT v2, CAE) as timm "
                         "Beit; neck = projector")
def build_mmpretrain(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    r = _state(payload)
    if r is None:
        raise ReprscopeError("MMPretrain checkpoint has no state_dict")
    state, origin = r
    roots = _roots(state)
    stray = sorted(origin[k] for k in state if k.split(".", 1)[0] not in _PARTS)
    if stray:
        raise ReprscopeError("MMPretrain checkpoint has tensors no rule of the format accounts for: " + ", ".join(stray[:6]))
    momentum = next((m for m in _MOMENTUM if m in roots), None)
    mom_prefix = None
    if momentum:
        mom_prefix = f"{momentum}.module" if any(k.startswith(f"{momentum}.module.") for k in state) else momentum
    branches = {"online": "state_dict.backbone.* + neck.* (+ head.predictor)"}
    if mom_prefix:
        branches["momentum"] = f"state_dict.{mom_prefix}.0.* + {mom_prefix}.1.* (the momentum network)"
    role = pick_branch("MMPretrain", branches, "online", options.branch)
    if "online_net" in roots:  # MMSelfSup 0.x: online_net = Sequential(backbone, neck), the same modules
        for k in (k for k in state if k.startswith("online_net.")):
            idx, _, rest = k[len("online_net."):].partition(".")
            twin = f"{'backbone' if idx == '0' else 'neck'}.{rest}"
            if twin not in state or not torch.equal(state[twin], state[k]):
                raise ReprscopeError(f"'{origin[k]}' should be the same module as '{twin}' but differs")
    bb_prefix, neck_prefix = ("backbone", "neck") if role == "online" else (f"{mom_prefix}.0", f"{mom_prefix}.1")
    bb = sub_state(state, bb_prefix)
    heads: Dict[str, Any] = {}
    neck_keys = [k for k in state if k.startswith(neck_prefix + ".")]
    beit_style = any("relative_position_bias_table" in k for k in bb)
    # masked image modelling: its neck reconstructs (MAE's decoder, BEiT v2's class-token blocks …), no projector
    mim = bool(neck_keys) and (beit_style or "target_generator" in roots
                               or any(re.search(r"decoder|mask_token|pred|cls_pt_layers", k) for k in neck_keys))
    if neck_keys and not mim:
        heads["projector"] = neck_spec(state, neck_prefix)
    if role == "online" and any(k.startswith("head.predictor.") for k in state):
        if "projector" not in heads:
            raise ReprscopeError("MMPretrain checkpoint has head.predictor but no neck to feed it")
        heads["predictor"] = neck_spec(state, "head.predictor")
    used = {src for h in heads.values() for src in h[2].values()} | {f"{bb_prefix}.{k}" for k in bb}
    vit = "patch_embed.projection.weight" in bb
    if "conv1.weight" in bb:
        bundle, arch = build_resnet_with_heads(bb, heads, origin, bb_prefix, options=options)
        cfg = arch.config()
        img = 32 if arch.cifar_stem else 224
    elif vit and beit_style:  # BEiT v2, CAE: timm's Beit
        from .beit import beit_bundle

        weights, where, index = _beit_to_timm(bb, origin, bb_prefix)
        bundle, arch, img = beit_bundle(weights, index, where, options)
        cfg = {**arch.config(), "arch_source": "read from the weights' shapes (timm's Beit)"}
        heads = {}  # BEiT's necks are masked-image-modelling heads
        used = {f"{bb_prefix}.{k}" for k in bb}
    elif vit:
        timm_state, where = _vit_to_timm(bb, origin, bb_prefix)
        dim, depth = int(timm_state["patch_embed.proj.weight"].shape[0]), 1 + max(
            int(k.split(".")[1]) for k in timm_state if k.startswith("blocks."))
        if "momentum_encoder" in roots and dim in (384, 768):
            hint = (12, "MMPretrain MoCoV3ViT (mocov3-small / base): 12 heads")
        elif (dim, depth) in _ARCH_HEADS:
            hint = (_ARCH_HEADS[(dim, depth)], f"MMPretrain arch_zoo: width {dim}, {depth} layers")
        else:
            hint = None
        extra = {"fc_norm": True, "final_norm": False, "global_pool": "avg"} if "fc_norm.weight" in timm_state else {}
        head = heads.pop("projector", None)
        bundle, arch = build_vit_bundle(timm_state, where, "", head, options=options,
                                        heads_hint=(lambda d: hint) if hint else None, extra_kwargs=extra,
                                        extra_heads=heads)
        if head is not None:
            heads = {"projector": head, **heads}
        cfg = arch.config()
        img = bundle.encoder.img_size
    else:
        raise ReprscopeError(f"MMPretrain backbone is neither a ResNet nor a VisionTransformer ({sorted(bb)[:3]} …)")
    unused_keys = []
    for k in state:
        if k in used:
            continue
        root = k.split(".", 1)[0]
        why = {"online_net": "MMSelfSup 0.x alias of backbone and neck", "data_preprocessor": "input normalisation "
               "(used as the preprocessing)", "target_generator": "target generator of masked image modelling (HOG, "
               "a tokenizer); not part of the representation", "head": "algorithm head (loss, prototypes); not a "
               "representation"}.get(root)
        if root in ("backbone", "neck"):
            why = ("the online network; the momentum network is analysed" if role == "momentum" else
                   "reconstruction neck of masked image modelling; not part of the representation")
        if root in _MOMENTUM:
            why = "the momentum network; --branch momentum reads it" if role == "online" else "momentum-average counter"
        if root.startswith("queue") or root == "mask_token":
            why = "queue / training buffer; not part of the model"
        unused_keys.append(f"{origin[k]}: {why}")
    for k in ("optimizer", "param_schedulers", "message_hub"):
        if k in payload:
            unused_keys.append(f"{k}: training state; not part of the model")
    mean, std = state.get("data_preprocessor.mean"), state.get("data_preprocessor.std")
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.numel() == 3 and std.numel() == 3:
        m3 = tuple(float(v) / 255.0 for v in mean.flatten())
        s3 = tuple(float(v) / 255.0 for v in std.flatten())
        preprocess = Preprocess(resolution=img, mean=m3, std=s3, resize=int(img / 0.875) if img >= 64 else None,
                                stats="the checkpoint's data_preprocessor", reason="data_preprocessor.mean/std")
    else:
        from . import preprocess as pp

        preprocess = pp.imagenet(img, "MMPretrain ImageNet evaluation") if img >= 64 else pp.cifar("MMPretrain CIFAR ResNet")
    meta = payload.get("meta") if isinstance(payload.get("meta"), Mapping) else {}
    config = {"format": "mmpretrain", "container": "state_dict", **cfg,
              "heads": {p: h[0] for p, h in heads.items()}, "branch": bb_prefix}
    return {"bundle": bundle, "method": _method(roots, state, meta), "config": config,
            "epoch": meta.get("epoch") if isinstance(meta.get("epoch"), int) else None,
            "step": meta.get("iter") if isinstance(meta.get("iter"), int) else None, "unused_keys": unused_keys,
            "branch": role, "branches": branches, "preprocess": preprocess}


def _method(roots: set, state: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The algorithm as far as the file says it: the structure, else ``unknown``."""
    if "queue2" in roots:
        return "densecl"
    if "encoder_k" in roots:
        return "mocov2"
    if "momentum_encoder" in roots:
        return "mocov3"
    if "target_net" in roots:
        return "byol"
    if any(k.startswith("head.predictor.") for k in state):
        return "simsiam"
    if any(k.startswith("neck.decoder") for k in state) or "target_generator" in roots:
        return "masked_image_modelling"
    return "unknown"
