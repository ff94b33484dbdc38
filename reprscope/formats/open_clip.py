"""open_clip / CLIP image towers (Radford et al. 2021, arXiv:2103.00020; Cherti et al. 2023, arXiv:2212.07143).

Layout: an open_clip ``CLIP`` state dict (``visual.*`` beside the text tower: ``token_embedding``,
``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``), or the image tower alone
(``model.visual.state_dict()``: ``class_embedding``, ``positional_embedding``, ``conv1``, ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj[, ls_1, ls_2]}``,
``ln_post``, ``proj``), as ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` with
``open_clip_config.json`` beside it (the Hub's layout).

The tower is rebuilt as the timm ``VisionTransformer`` that computes the same function (timm's own
``_convert_openai_clip`` mapping: ``pre_norm`` = ``ln_pre``, a bias-free patch embedding, ``norm`` = ``ln_post``);
``proj`` is the projector (a bias-free Linear into the joint image–text space). The activation is not in the
weights: OpenAI-trained CLIP and the ``-quickgelu`` models use QuickGELU (x·σ(1.702x)), the others GELU; it is
read from ``open_clip_config.json`` (``model_cfg.quick_gelu``), which is therefore required, with the head
width (default 64), the LayerNorm ε (open_clip's default 1e-5, not timm's 1e-6) and the preprocessing
(``preprocess_cfg``: mean, std, interpolation; default OpenAI's CLIP statistics, bicubic resize, centre crop).

Layers: ``encoder`` = ``ln_post`` of the class token (the image feature before the projection), ``projector``
= the image embedding CLIP compares with text (``encode_image`` without normalisation). Towers with an
attentional pooler, a timm trunk or a ModifiedResNet are refused with one line.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, Preprocess, pick_branch, read_json_file, register_format
from .vit import _result, build_vit_bundle

#: OpenAI CLIP's preprocessing statistics (open_clip ``OPENAI_DATASET_MEAN`` / ``_STD``)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "open_clip_config.json"

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_IN_BLOCK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
             "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma"}
_TOP = {"conv1.weight": "patch_embed.proj.weight", "ln_pre.weight": "norm_pre.weight", "ln_pre.bias": "norm_pre.bias",
        "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias"}
_TEXT_ROOTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection",
               "logit_scale", "logit_bias", "attn_mask")


def _split(payload: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
    """``(image-tower tensors without 'visual.', name → key in the file, the text tower's keys)``."""
    keys = [k for k in payload if isinstance(k, str)]
    if any(k.startswith("visual.") for k in keys):
        vis = {k[7:]: payload[k] for k in keys if k.startswith("visual.")}
        return vis, {k: f"visual.{k}" for k in vis}, [k for k in keys if not k.startswith("visual.")]
    return dict(payload), {k: k for k in keys}, []


def _detect(payload: Mapping[str, Any]) -> bool:
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return False
    if not all(isinstance(v, torch.Tensor) for v in payload.values()):
        return False
    vis, _, _ = _split(payload)
    return "class_embedding" in vis and "positional_embedding" in vis and (
        "conv1.weight" in vis or any(k.startswith(("trunk.", "attn_pool.", "layer1.")) for k in vis))


def _config(options: LoadOptions) -> Dict[str, Any]:
    src = Path(options.source) if options.source else None
    path = (src if src is not None and src.is_dir() else (src.parent if src else Path("."))) / CONFIG_NAME
    if src is None or not path.is_file():
        raise ReprscopeError(f"this is an open_clip image tower; whether it uses QuickGELU (OpenAI-trained weights) "
                             f"or GELU is not in the weights but in the {CONFIG_NAME} beside them, which is missing "
                             f"({path}); for OpenAI's CLIP weights write {{\"model_cfg\": {{\"quick_gelu\": true}}}} "
                             "there")
    cfg = read_json_file(path, "open_clip config")
    model_cfg = cfg.get("model_cfg", cfg)
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg", {}), dict):
        raise ReprscopeError(f"'{path}' has no model_cfg.vision_cfg object")
    return cfg


def _num(v: Any, name: str, lo: float, hi: float) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise ReprscopeError(f"{CONFIG_NAME} {name} is {v!r}; expected a number in [{lo}, {hi}]")
    return float(v)


def to_timm(vis: Mapping[str, Any], origin: Mapping[str, str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """open_clip image-tower names → timm ``VisionTransformer`` names (``proj`` is left to the projector)."""
    out: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    left: List[str] = []
    for k, v in vis.items():
        m = _BLOCK.match(k)
        if k == "class_embedding":
            out["cls_token"], where["cls_token"] = v.reshape(1, 1, -1), origin[k]
        elif k == "positional_embedding":
            out["pos_embed"], where["pos_embed"] = v.unsqueeze(0), origin[k]
        elif k in _TOP:
            out[_TOP[k]], where[_TOP[k]] = v, origin[k]
        elif k == "proj":
            continue
        elif m:
            rest = m.group(2)
            name, _, leaf = rest.rpartition(".")
            new = _IN_BLOCK.get(rest) or (f"{_IN_BLOCK[name]}.{leaf}" if name in _IN_BLOCK and leaf in ("weight", "bias") else None)
            if new is None:
                left.append(origin[k])
            else:
                out[f"blocks.{m.group(1)}.{new}"], where[f"blocks.{m.group(1)}.{new}"] = v, origin[k]
        else:
            left.append(origin[k])
    if left:
        odd = [k for k in left if re.search(r"(^|\.)(trunk|attn_pool|layer1|attnpool)\.", k)]
        what = ("a timm trunk, an attentional pooler or a ModifiedResNet, which reprscope does not rebuild from "
                "open_clip files" if odd else "tensors the standard open_clip ViT tower does not have")
        raise ReprscopeError(f"open_clip image tower has {what}: " + ", ".join(left[:6]) + (" …" if len(left) > 6 else ""))
    return out, where


@register_format("open_clip", detect=_detect,
                 summary="open_clip / CLIP ViT image tower (visual.* of a CLIP state dict, or the tower alone) with "
                         "open_clip_config.json beside it; ln_post class token, proj = projector")
def build_open_clip(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    cfg = _config(options)
    model_cfg = cfg.get("model_cfg", cfg)
    vcfg = model_cfg.get("vision_cfg", {})
    for flag in ("attentional_pool", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                 "scale_attn", "scale_fc", "timm_model_name"):
        if vcfg.get(flag):
            raise ReprscopeError(f"{CONFIG_NAME} sets vision_cfg.{flag} = {vcfg[flag]!r}: a tower reprscope does not "
                                 "rebuild exactly")
    vis, origin, text = _split(payload)
    timm_state, where = to_timm(vis, origin)
    if "patch_embed.proj.weight" not in timm_state or "norm_pre.weight" not in timm_state:
        raise ReprscopeError("open_clip image tower without conv1 or ln_pre (no_ln_pre towers are not rebuilt)")
    width = int(timm_state["patch_embed.proj.weight"].shape[0])
    head_width = int(_num(vcfg.get("head_width", 64), "vision_cfg.head_width", 1, 4096))
    if width % head_width:
        raise ReprscopeError(f"{CONFIG_NAME} head_width {head_width} does not divide the tower's width {width}")
    eps = _num((vcfg.get("norm_kwargs") or {}).get("eps", 1e-5), "vision_cfg.norm_kwargs.eps", 1e-12, 0.1)
    quick = model_cfg.get("quick_gelu", False)
    if not isinstance(quick, bool):
        raise ReprscopeError(f"{CONFIG_NAME} model_cfg.quick_gelu is {quick!r}; expected true or false")
    from timm.layers import QuickGELU

    pool_type = vcfg.get("pool_type", "tok")
    if pool_type not in ("tok", "avg") or (pool_type == "avg" and vcfg.get("final_ln_after_pool")):
        raise ReprscopeError(f"{CONFIG_NAME} vision_cfg pool_type {pool_type!r}"
                             f"{' with final_ln_after_pool' if pool_type == 'avg' else ''} is not rebuilt exactly")
    kw = {"norm_layer": partial(nn.LayerNorm, eps=eps), "act_layer": QuickGELU if quick else nn.GELU,
          "pre_norm": True}
    heads = width // head_width
    proj = vis.get("proj")
    head = None
    if isinstance(proj, torch.Tensor):
        if proj.dim() != 2 or int(proj.shape[0]) != width:
            raise ReprscopeError(f"open_clip 'proj' has shape {list(proj.shape)}; expected [{width}, embed_dim]")
        spec = [{"type": "linear", "in": width, "out": int(proj.shape[1]), "bias": False}]
        head = (spec, {"0.weight": proj.t().contiguous()}, {"0.weight": f"{origin['proj']} (transposed)"})
    bundle, arch = build_vit_bundle(timm_state, where, "", head, options=options,
                                    heads_hint=lambda d: (heads, f"{CONFIG_NAME} head_width {head_width}"),
                                    pool="cls" if pool_type == "tok" else "mean", extra_kwargs=kw)
    branches = {"online": "the image tower (CLIP has one image network)"}
    role = pick_branch("open_clip", branches, "online", options.branch)
    unused_keys = [f"{k}: CLIP text tower; not part of the image representation" for k in text]
    pre = cfg.get("preprocess_cfg") if isinstance(cfg.get("preprocess_cfg"), dict) else {}
    size = bundle.encoder.img_size


    interp = pre.get("interpolation", "bicubic")
    preprocess = Preprocess(resolution=size, mean=pp.rgb_triple(pre.get("mean"), OPENAI_MEAN),
                            std=pp.rgb_triple(pre.get("std"), OPENAI_STD), resize=size, stats="CLIP",
                            reason=f"open_clip: resize the shorter side to {size}, centre crop ({CONFIG_NAME})",
                            interpolation=interp if interp in ("bilinear", "bicubic") else "bicubic")
    return _result(bundle, arch, "clip", "open_clip", None, payload, {"projector": head[0]} if head else {},
                   unused_keys, role=role, branches=branches, preprocess=preprocess, branch=None,
                   quick_gelu=quick, layer_norm_eps=eps,
                   arch_source=f"{CONFIG_NAME} (activation, head width, LayerNorm ε) and the weights' shapes")
