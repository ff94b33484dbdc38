"""Hugging Face ``transformers`` vision models: a model folder (``config.json`` + ``model.safetensors`` /
``pytorch_model.bin``, or a sharded index) or such a weight file with its ``config.json`` beside it.

Read without importing ``transformers``: the architecture comes from ``config.json`` (width, depth, heads,
LayerNorm ε, activation, registers, SwiGLU), the weights are renamed onto the timm ``VisionTransformer`` that
computes the same function and loaded strictly.

* ``hf_vit``: ``ViTModel`` (Dosovitskiy et al. 2021, arXiv:2010.11929), ``ViTMAEModel`` (He et al. 2022,
  arXiv:2111.06377) and ``IJepaModel`` (Assran et al. 2023, arXiv:2301.08243), also saved from their
  ``…ForImageClassification`` / ``ViTMAEForPreTraining`` wrappers (``vit.`` / ``ijepa.`` prefixes, with the
  classifier or the MAE decoder unused). ViT and ViT-MAE use LayerNorm ε = 1e-12 (their config's), not timm's
  1e-6; the model is built with the config's ε. A ``ViTMAEModel`` masks 75 % of the patches at random in its
  forward; the representation is the encoder on the whole image (``mask_ratio = 0``).
* ``hf_dinov2``: ``Dinov2Model`` and ``Dinov2WithRegistersModel`` (Oquab et al. 2024, arXiv:2304.07193; Darcet
  et al. 2024, arXiv:2309.16588), the SwiGLU variant included. transformers resamples the position embedding
  with ``size=(h, w)`` (bicubic, no antialiasing) where DINOv2's own code uses an offset of 0.1: the HF model's
  numbers are reproduced, not the hub model's; the register variant antialiases, as timm does.

Both vocabularies of key names are read: the files' (``encoder.layer.N.attention.attention.query``,
``intermediate.dense``, ``mlp.weights_in`` …, which ``save_pretrained`` writes) and transformers 5's module
names (``layers.N.attention.q_proj``, ``mlp.gate_proj`` …).

Pooling (``--pool`` overrides): the class token after the final ``layernorm`` for ``ViTModel`` and DINOv2 (what
``ViTForImageClassification`` and ``Dinov2Model.pooler_output`` read), the mean of the patch tokens for ViT-MAE
(its fine-tuning) and I-JEPA (``IJepaForImageClassification``). Preprocessing: ``preprocessor_config.json`` beside
the weights where there is one (mean, std, resize, crop, filter), else ImageNet's evaluation transform.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, Preprocess, pick_branch, read_json_file, register_format
from .dinov2 import convert_dinov2
from .vit import _result, build_vit_bundle

#: the model types each format reads (``config.json``'s ``model_type``) and their pooling by default
VIT_TYPES = {"vit": "cls", "vit_mae": "mean", "ijepa": "mean"}
DINOV2_TYPES = {"dinov2": "cls", "dinov2_with_registers": "cls"}
#: prefixes of the task wrappers (``ViTForImageClassification`` saves ``vit.…``) and what else they hold
_WRAPPER_PREFIXES = ("vit.", "dinov2.", "ijepa.", "dinov2_with_registers.")
_WRAPPER_EXTRAS = {"classifier": "the classification head of a …ForImageClassification model; not analysed",
                   "decoder": "the ViT-MAE decoder (pixel reconstruction); not part of the representation",
                   "pooler": "ViTModel's pooler (tanh dense on the class token), which the image classifier "
                             "does not use; not analysed"}
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
#: per-layer names (both vocabularies) → timm's; q/k/v are concatenated into ``attn.qkv``
_IN_LAYER = {
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1", "layernorm_after": "norm2", "norm1": "norm1", "norm2": "norm2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2", "mlp.down_proj": "mlp.fc2",
    "mlp.gate_proj": "gate", "mlp.up_proj": "up",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}
_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "embeddings.register_tokens": "register_tokens", "embeddings.mask_token": "mask_token",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
#: transformers' ``hidden_act`` names → the activation module (the ViT MLP's)
_ACTS = {"gelu": nn.GELU, "gelu_new": partial(nn.GELU, approximate="tanh"),
         "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU,
         "swish": nn.SiLU}


def _strip_wrapper(payload: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
    """``(backbone tensors by model names, model name → key in the file, the wrapper's other keys)``."""
    keys = [k for k in payload if isinstance(k, str)]
    prefix = next((p for p in _WRAPPER_PREFIXES if any(k.startswith(p + "embeddings.") for k in keys)), "")
    state: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    extra: List[str] = []
    for k in keys:
        if prefix and k.startswith(prefix):
            state[k[len(prefix):]], origin[k[len(prefix):]] = payload[k], k
        elif prefix or k.split(".", 1)[0] in _WRAPPER_EXTRAS:
            extra.append(k)
        else:
            state[k], origin[k] = payload[k], k
    return state, origin, extra


def _looks_like(payload: Mapping[str, Any]) -> Optional[str]:
    """``dinov2``, ``vit`` or None from the key names alone."""
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return None
    if not all(isinstance(v, torch.Tensor) for v in payload.values()):
        return None
    state, _, _ = _strip_wrapper(payload)
    if "embeddings.patch_embeddings.projection.weight" not in state or "embeddings.position_embeddings" not in state:
        return None
    layer_keys = [m.group(2) for k in state for m in [_LAYER.match(k)] if m]
    if not layer_keys:
        return None
    return "dinov2" if any(k.startswith("layer_scale1.") for k in layer_keys) else "vit"


def _config_path(source: Optional[str]) -> Optional[Path]:
    if not source:
        return None
    p = Path(source)
    return (p if p.is_dir() else p.parent) / "config.json"


def read_config(options: LoadOptions, fmt: str) -> Dict[str, Any]:
    """``config.json`` of the model folder (or beside the weight file): required, it holds the architecture."""
    path = _config_path(options.source)
    if path is None or not path.is_file():
        raise ReprscopeError(f"these are the weights of a Hugging Face transformers model ({fmt}); its architecture "
                             f"(heads, LayerNorm ε, activation) is in the config.json beside them, which is missing "
                             f"({path}); give the model folder")
    return read_json_file(path, "transformers config")


def _preprocess(options: LoadOptions, default: Preprocess) -> Preprocess:
    """``preprocessor_config.json`` beside the weights (transformers' image processor), else ``default``."""
    path = _config_path(options.source)
    path = path.with_name("preprocessor_config.json") if path is not None else None
    if path is None or not path.is_file():
        return default
    cfg = read_json_file(path, "transformers image processor config")

    def side(v: Any) -> Optional[int]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, Mapping):
            for key in ("shortest_edge", "height"):
                if isinstance(v.get(key), (int, float)) and not isinstance(v.get(key), bool):
                    return int(v[key])
        return None


    size = side(cfg.get("size")) if cfg.get("do_resize", True) else None
    crop = side(cfg.get("crop_size")) if cfg.get("do_center_crop", False) else None
    resolution = crop or size or default.resolution
    if not 8 <= resolution <= 4096 or (size is not None and not 8 <= size <= 8192):
        raise ReprscopeError(f"'{path}' asks for a {resolution}-pixel input; expected 8 … 4096")
    interpolation = {2: "bilinear", 3: "bicubic"}.get(cfg.get("resample"), "bilinear")
    return Preprocess(resolution=int(resolution), mean=pp.rgb_triple(cfg.get("image_mean"), default.mean),
                      std=pp.rgb_triple(cfg.get("image_std"), default.std), resize=int(size or resolution),
                      stats="the image processor's", reason=f"{path.name}: resize {size or resolution}"
                      + (f", centre crop {crop}" if crop else ""), interpolation=interpolation)


def to_timm(state: Mapping[str, Any], origin: Mapping[str, str]
            ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """transformers ViT / DINOv2 names → timm ``VisionTransformer`` names (DINOv2's hub names for the DINOv2
    parts, converted by :func:`~reprscope.formats.dinov2.convert_dinov2` afterwards).

    Returns:
        ``(renamed tensors, new name → key(s) in the file, keys left out: the mask token)``.

    Raises:
        ReprscopeError: a key no rule maps, an incomplete q/k/v or gate/up pair.
    """
    out: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    parts: Dict[Tuple[int, str, str], Tuple[torch.Tensor, str]] = {}
    left: List[str] = []
    skipped: List[str] = []
    for k, v in state.items():
        m = _LAYER.match(k)
        if k in _TOP:
            new = _TOP[k]
            if new == "mask_token":
                skipped.append(k)
                continue
            out[new], where[new] = v, origin[k]
            continue
        if not m:
            left.append(origin[k])
            continue
        i, rest = int(m.group(1)), m.group(2)
        name, _, leaf = rest.rpartition(".")
        mapped = _IN_LAYER.get(name) if leaf in ("weight", "bias") else _IN_LAYER.get(rest)
        if mapped is None:
            left.append(origin[k])
        elif mapped in ("q", "k", "v", "gate", "up"):
            parts[(i, mapped, leaf)] = (v, origin[k])
        elif leaf in ("weight", "bias") and not mapped.endswith("gamma"):
            out[f"blocks.{i}.{mapped}.{leaf}"], where[f"blocks.{i}.{mapped}.{leaf}"] = v, origin[k]
        else:
            out[f"blocks.{i}.{mapped}"], where[f"blocks.{i}.{mapped}"] = v, origin[k]
    if left:
        raise ReprscopeError("transformers checkpoint has tensors no rule of the format accounts for: "
                             + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))
    for (i, kind, leaf) in sorted({(i, "qkv" if p in "qkv" else "glu", leaf) for (i, p, leaf) in parts}):
        names = ("q", "k", "v") if kind == "qkv" else ("gate", "up")
        got = [parts.get((i, n, leaf)) for n in names]
        if any(g is None for g in got):
            have = [n for n, g in zip(names, got) if g is not None]
            raise ReprscopeError(f"layer {i} has {'/'.join(have)} {leaf} but not {'/'.join(n for n in names if n not in have)}")
        new = f"blocks.{i}.{'attn.qkv' if kind == 'qkv' else 'mlp.fc1'}.{leaf}"
        out[new] = torch.cat([g[0] for g in got], dim=0)  # type: ignore[index]
        where[new] = " + ".join(g[1] for g in got)  # type: ignore[index]
    return out, where, skipped


def _check_config(cfg: Mapping[str, Any], timm_state: Mapping[str, torch.Tensor], fmt: str) -> None:
    """The config's width and depth must be the weights' (a config from another model is refused)."""
    dim = int(timm_state["patch_embed.proj.weight"].shape[0])
    depth = 1 + max((int(k.split(".")[1]) for k in timm_state if k.startswith("blocks.")), default=-1)
    for key, value in (("hidden_size", dim), ("num_hidden_layers", depth)):
        if key in cfg and cfg[key] != value:
            raise ReprscopeError(f"config.json says {key} = {cfg[key]!r} but the {fmt} weights have {value}; the "
                                 "config belongs to another model")


def _heads(cfg: Mapping[str, Any]):
    heads = cfg.get("num_attention_heads")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ReprscopeError(f"config.json has no valid num_attention_heads ({heads!r})")
    return lambda d: (heads, "config.json num_attention_heads")


def _norm_and_act(cfg: Mapping[str, Any], eps_default: float, swiglu: bool) -> Dict[str, Any]:
    eps = cfg.get("layer_norm_eps", eps_default)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ReprscopeError(f"config.json layer_norm_eps is {eps!r}; expected a small positive number")
    kw: Dict[str, Any] = {"norm_layer": partial(nn.LayerNorm, eps=float(eps))}
    if not swiglu:  # transformers' SwiGLU always gates with SiLU, whatever hidden_act says
        act = cfg.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise ReprscopeError(f"config.json hidden_act '{act}' is not one reprscope rebuilds "
                                 f"({', '.join(_ACTS)})")
        kw["act_layer"] = _ACTS[act]
    return kw


def _model_type(cfg: Mapping[str, Any], allowed: Mapping[str, str], fmt: str) -> str:
    mt = cfg.get("model_type")
    if mt not in allowed:
        raise ReprscopeError(f"config.json model_type is {mt!r}; the {fmt} format reads {', '.join(allowed)}")
    return str(mt)


def _unused(extra: List[str], skipped: List[str], origin: Mapping[str, str]) -> List[str]:
    out = [f"{origin[k]}: the mask token (replaces masked patches in training); not used on whole images"
           for k in skipped]
    for k in extra:
        root = k.split(".", 1)[0]
        why = _WRAPPER_EXTRAS.get(root)
        if why is None:
            raise ReprscopeError(f"transformers checkpoint has '{k}' beside the model; no rule of the format "
                                 "accounts for it")
        out.append(f"{k}: {why}")
    return out


_ARCH_SOURCE = "config.json (heads, LayerNorm ε, activation) and the weights' shapes"


def _image_default(mt: str, size: int) -> Preprocess:
    """Without ``preprocessor_config.json``: DINOv2's evaluation transform; a fixed-size ViT at its own size."""
    if mt.startswith("dinov2"):
        return pp.imagenet(224, "DINOv2 evaluation transform (resize 256, centre crop 224), ImageNet statistics",
                           interpolation="bicubic")
    return pp.imagenet(size, f"ImageNet evaluation transform at the position embedding's {size}×{size} (no "
                             "preprocessor_config.json beside the weights)")


@register_format("hf_vit", detect=lambda payload: _looks_like(payload) == "vit",
                 summary="Hugging Face transformers ViTModel / ViTMAEModel / IJepaModel folder or weights with "
                         "config.json beside them (architecture read from config.json)")
def build_hf_vit(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    cfg = read_config(options, "hf_vit")
    mt = _model_type(cfg, VIT_TYPES, "hf_vit")
    state, origin, extra = _strip_wrapper(payload)
    timm_state, where, skipped = to_timm(state, origin)
    if mt == "ijepa" and "cls_token" in timm_state or mt != "ijepa" and "cls_token" not in timm_state:
        raise ReprscopeError(f"config.json says {mt} but the weights {'have' if 'cls_token' in timm_state else 'lack'} "
                             "a class token")
    _check_config(cfg, timm_state, "hf_vit")
    kw = _norm_and_act(cfg, 1e-6 if mt == "ijepa" else 1e-12, swiglu=False)
    bundle, arch = build_vit_bundle(timm_state, where, "", options=options, heads_hint=_heads(cfg),
                                    pool=VIT_TYPES[mt], extra_kwargs=kw)
    branches = {"online": "the model's weights (a transformers model holds one network)"}
    role = pick_branch("transformers", branches, "online", options.branch)
    method = {"vit_mae": "mae", "ijepa": "ijepa"}.get(mt, "unknown")
    return _result(bundle, arch, method, "hf_vit", None, payload, {}, _unused(extra, skipped, origin), role=role,
                   branches=branches, preprocess=_preprocess(options, _image_default(mt, bundle.encoder.img_size)), branch=None,
                   model_type=mt, layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), arch_source=_ARCH_SOURCE)


@register_format("hf_dinov2", detect=lambda payload: _looks_like(payload) == "dinov2",
                 summary="Hugging Face transformers Dinov2Model / Dinov2WithRegistersModel folder or weights with "
                         "config.json beside them (registers, SwiGLU; HF's position-embedding resampling)")
def build_hf_dinov2(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    cfg = read_config(options, "hf_dinov2")
    mt = _model_type(cfg, DINOV2_TYPES, "hf_dinov2")
    state, origin, extra = _strip_wrapper(payload)
    hub, where, skipped = to_timm(state, origin)
    n_reg = int(hub["register_tokens"].shape[1]) if "register_tokens" in hub else 0
    if (mt == "dinov2_with_registers") != bool(n_reg) or cfg.get("num_register_tokens", n_reg) != n_reg:
        raise ReprscopeError(f"config.json says {mt} with {cfg.get('num_register_tokens', 0)} register tokens; "
                             f"the weights have {n_reg}")
    timm_state, where2, _ = convert_dinov2(hub, where)
    _check_config(cfg, timm_state, "hf_dinov2")
    swiglu = bool(cfg.get("use_swiglu_ffn", False))
    w1 = timm_state.get("blocks.0.mlp.fc1.weight")
    w2 = timm_state.get("blocks.0.mlp.fc2.weight")
    if w1 is not None and w2 is not None and swiglu != (int(w1.shape[0]) == 2 * int(w2.shape[1])):
        raise ReprscopeError(f"config.json use_swiglu_ffn is {swiglu} but the MLP weights say otherwise")
    kw = _norm_and_act(cfg, 1e-6, swiglu=swiglu)
    bundle, arch = build_vit_bundle(timm_state, where2, "", options=options, heads_hint=_heads(cfg),
                                    dynamic_img_size=True, pool=DINOV2_TYPES[mt], extra_kwargs=kw)
    if not n_reg:  # Dinov2Model: size=(h, w), no antialiasing; with registers: antialiased, timm's own resize
        bundle.encoder.interpolate_like_dino(offset=0)
    branches = {"teacher": "the model's weights (released DINOv2 weights are the teacher's)"}
    role = pick_branch("transformers DINOv2", branches, "teacher", options.branch)
    return _result(bundle, arch, "dinov2", "hf_dinov2", None, payload, {}, _unused(extra, skipped, origin),
                   role=role, branches=branches, preprocess=_preprocess(options, _image_default(mt, bundle.encoder.img_size)), branch=role,
                   model_type=mt, registers=n_reg, layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
                   arch_source=_ARCH_SOURCE)


__all__ = ["DINOV2_TYPES", "VIT_TYPES", "read_config", "to_timm"]
