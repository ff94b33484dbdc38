"""ViT checkpoints: DINO training checkpoints, raw timm / DINO-released ViTs and MAE.

The backbone is rebuilt as a timm ``VisionTransformer`` read from the weights' shapes (:func:`infer_vit`);
the DINO projector (``head.mlp`` → ℓ2 norm → weight-normed ``head.last_layer``) becomes a layer-spec head.
Every tensor is either loaded strictly or listed in ``unused_keys`` with its reason.

Sources: DINO (Caron et al. 2021, facebookresearch/dino ``main_dino.py``, ``vision_transformer.py``),
MAE (He et al. 2022, facebookresearch/mae ``models_mae.py``), timm ``vision_transformer.py``.
"""
from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReprscopeError
from ..models.bundle import ModelBundle
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import (arch_what, build_resnet_bundle, check_timm_name, epoch_of, head_spec_from_state, load_strict,
                     other_networks, strip_state, sub_state, unused)
from .resnet_ssl import _resolve, file_prefix, resolve_with_ema  # the shared payload resolvers

#: top-level module names of a timm VisionTransformer that carry weights
VIT_ROOTS = ("cls_token", "reg_token", "pos_embed", "patch_embed", "blocks", "norm", "fc_norm", "head")

#: timm convention for the number of attention heads by width (all head_dim 64 except SigLIP so400m (72) and
#: EVA/CLIP giants (88, 104)): used where neither the weights nor the source say more
_HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1536: 24, 1664: 16}
_SIZE_BY_DIM = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1152: "so400m", 1280: "huge",
                1408: "giant", 1536: "giant2", 1664: "gigantic"}

#: ``dim → (num_heads, why)`` or None: what a format knows about its own ViTs
HeadsHint = Callable[[int], Optional[Tuple[int, str]]]


# -- architecture from shapes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTArch:
    """A timm-layout VisionTransformer read from its weights (or named with ``--arch``).

    Attributes:
        name: the matching timm model name (informative unless ``forced``; e.g. ``vit_small_patch16_224``).
        kwargs: ``VisionTransformer`` kwargs that rebuild it (with ``forced``: extra ``timm.create_model`` kwargs).
        heads_source: where the number of attention heads came from (it is not in the weights' shapes).
        forced: built with ``timm.create_model(name)`` from ``--arch`` instead of the inferred kwargs.
    """

    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    heads_source: str = ""
    forced: bool = False

    def config(self) -> Dict[str, Any]:
        kw = {k: _kw_name(v) if callable(v) else v for k, v in self.kwargs.items()}
        return {"arch": self.name, "timm_kwargs": kw, "num_heads_source": self.heads_source,
                "arch_source": "--arch" if self.forced else "read from the weights' shapes"}


def _kw_name(v: Any) -> str:
    """A class or ``functools.partial`` kwarg as a name (``SiLU``, ``GluMlp``, ``LayerNorm(eps=1e-12)``) for the
    JSON-able config."""
    name = getattr(v, "__name__", None) or getattr(getattr(v, "func", None), "__name__", None) or type(v).__name__
    kw = getattr(v, "keywords", None)
    return f"{name}({', '.join(f'{k}={x}' for k, x in kw.items())})" if kw else name


def _shape(state: Mapping[str, Any], key: str) -> Optional[Tuple[int, ...]]:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio with ``int(dim * ratio) == hidden`` (timm's Block computes the hidden width that way)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = (hidden + 0.5) / dim
    return ratio


def infer_vit(state: Mapping[str, Any], num_heads: Optional[int] = None, heads_hint: Optional[HeadsHint] = None,
              dynamic_img_size: bool = False) -> ViTArch:
    """Patch size, resolution, width, depth, MLP kind and ratio, pooling of a timm/DINO/MAE-named ViT state dict.

    The number of attention heads is not visible in ``qkv`` (3D × D); it is taken, in this order, from
    ``num_heads``; the per-head ``attn.q_norm`` width (qk-norm ViTs); the source's own convention
    (``heads_hint``: DINO/MAE args, MoCo v3's 12 heads …); timm's convention for the width; else head_dim 64,
    said so in ``heads_source`` (``--arch NAME:num_heads=N`` overrides).

    Args:
        state: backbone weights with timm names (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight`` …);
            a 2-D ``head.weight`` (classifier) may be present and is ignored here.
        num_heads: the head count, given (``--arch …:num_heads=N``).
        heads_hint: the format's convention for its ViTs.
        dynamic_img_size: the source interpolates its position embedding to any input size (DINO, DINOv2).

    Raises:
        ReprscopeError: not a ViT, non-contiguous blocks, a position embedding that fits no square grid.
    """
    pw = _shape(state, "patch_embed.proj.weight")
    if pw is None:
        if any(k.startswith("patch_embed.proj.0.") for k in state):
            raise ReprscopeError("the ViT has a convolutional stem ('patch_embed.proj.0…', MoCo v3 vit_conv_*), "
                                 "which timm's VisionTransformer does not build")
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
    g2 = math.isqrt(T)
    if n_reg and g2 * g2 == T:  # register ViTs (timm reg*, DINOv2 converted) keep the prefix out of pos_embed
        grid, no_embed_class = g2, True
    elif grid * grid != T - n_prefix or grid == 0:
        if n_prefix and g2 * g2 == T:  # position embedding without the prefix tokens (timm no_embed_class)
            grid, no_embed_class = g2, True
        else:
            raise ReprscopeError(f"'pos_embed' has {T} tokens: not {n_prefix} prefix token(s) + a square patch grid")
    idx = {int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if not idx or idx != set(range(max(idx) + 1)):
        raise ReprscopeError(f"ViT blocks {sorted(idx)[:8]}: expected 'blocks.0' … 'blocks.<n-1>'")
    depth = max(idx) + 1
    # the depth read from the key names must be backed by the file's own values: depth × block 0's size may be
    # at most twice what the blocks store (a small file naming blocks.0 … blocks.29999 cannot build a huge model;
    # a block of the wrong shape is left to the strict load, which names the key)
    sizes: Dict[int, int] = {}
    for k, v in state.items():
        m = re.match(r"blocks\.(\d+)\.", k)
        if m and hasattr(v, "numel"):
            sizes[int(m.group(1))] = sizes.get(int(m.group(1)), 0) + int(v.numel())
    if depth * sizes.get(0, 0) > 2 * sum(sizes.values()) + 1_000_000:
        raise ReprscopeError(f"the key names describe a {depth}-block ViT ({depth * sizes.get(0, 0):,} values in its "
                             f"blocks) but the file stores {sum(sizes.values()):,}; refused before building it")
    fc1, fc2 = _shape(state, "blocks.0.mlp.fc1.weight"), _shape(state, "blocks.0.mlp.fc2.weight")
    if fc1 is None:
        have = sorted({k.split(".")[3] for k in state if k.startswith("blocks.0.mlp.") and k.count(".") >= 4})
        raise ReprscopeError(f"'blocks.0.mlp' has {have}; expected fc1/fc2 (or DINOv2's w12/w3 SwiGLU, read by the "
                             "dinov2 format)")
    # a packed SwiGLU: fc1 gives gate and value, fc2 takes half of it (a missing fc2 is reported by the strict load)
    swiglu = fc2 is not None and fc2[1] * 2 == fc1[0]
    if fc2 is not None and not swiglu and fc2[1] != fc1[0]:
        raise ReprscopeError(f"'blocks.0.mlp.fc2.weight' {list(fc2)} does not take the {fc1[0]} outputs of fc1")
    q_norm = _shape(state, "blocks.0.attn.q_norm.weight")
    if num_heads:
        heads, source = int(num_heads), "given with --arch"
    elif q_norm is not None:
        heads, source = dim // int(q_norm[0]), f"read from attn.q_norm.weight (head_dim {int(q_norm[0])})"
    elif heads_hint is not None and heads_hint(dim) is not None:
        heads, source = heads_hint(dim)  # type: ignore[misc]
    elif dim in _HEADS_BY_DIM:
        heads, source = _HEADS_BY_DIM[dim], f"timm convention for embed_dim {dim}"
    else:
        heads = max(dim // 64, 1)
        source = (f"assumed head_dim 64 (no convention for embed_dim {dim}; the weights do not show it); "
                  "override with --arch NAME:num_heads=N")
    if dim % heads:
        raise ReprscopeError(f"embed_dim {dim} is not divisible by {heads} heads ({source})")
    fc_norm = "fc_norm.weight" in state
    if fc_norm:  # timm/MAE fine-tuned with global pooling: fc_norm after average pooling, no final norm
        global_pool = "avg"
    else:
        global_pool = "token" if class_token else "avg"
    kwargs: Dict[str, Any] = {
        "img_size": grid * p, "patch_size": p, "in_chans": in_ch, "embed_dim": dim, "depth": depth,
        "num_heads": heads, "mlp_ratio": _mlp_ratio(int(fc1[0]), dim), "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token, "reg_tokens": n_reg, "no_embed_class": no_embed_class,
        "global_pool": global_pool, "fc_norm": fc_norm, "final_norm": "norm.weight" in state or fc_norm,
        "num_classes": 0,
    }
    if q_norm is not None:
        kwargs["qk_norm"] = True
    if "norm_pre.weight" in state:  # a LayerNorm before the blocks (CLIP's ln_pre); timm then drops the patch bias
        kwargs["pre_norm"] = True
    if swiglu:
        from timm.layers import SwiGLUPacked

        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    if "blocks.0.ls1.gamma" in state:
        kwargs["init_values"] = 1.0
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    size = _SIZE_BY_DIM.get(dim, f"d{dim}")
    return ViTArch(name=f"vit_{size}_patch{p}_{grid * p}", kwargs=kwargs, heads_source=source)


def vit_arch(state: Mapping[str, Any], options: Optional[LoadOptions] = None, heads_hint: Optional[HeadsHint] = None,
             dynamic_img_size: bool = False) -> ViTArch:
    """The ViT of ``state``: :func:`infer_vit`, or with ``--arch NAME[:kwargs]`` the timm model ``NAME``
    (``--arch vit:num_heads=N`` keeps the shape inference and sets only the head count)."""
    if options is None or options.arch is None:
        return infer_vit(state, heads_hint=heads_hint, dynamic_img_size=dynamic_img_size)
    name, kwargs = options.arch_name, dict(options.arch_kwargs)
    if name == "vit":  # shape inference with given kwargs (the head count, which the weights do not show)
        arch = infer_vit(state, num_heads=kwargs.pop("num_heads", None), heads_hint=heads_hint,
                         dynamic_img_size=dynamic_img_size)
        return ViTArch(arch.name, {**arch.kwargs, **kwargs}, arch.heads_source, forced=False)
    check_timm_name(name, "VisionTransformer")
    if dynamic_img_size:
        kwargs.setdefault("dynamic_img_size", True)
    return ViTArch(name=name, kwargs=kwargs, heads_source=f"timm model '{name}' given with --arch", forced=True)


class ViTEncoder(nn.Module):
    """A timm VisionTransformer without classifier, following the backbone contract.

    ``forward_features(x)`` → (B, D): the CLS token after the final norm (``global_pool="token"``, DINO/MAE
    convention), or the ``fc_norm`` of the average-pooled patch tokens for globally pooled ViTs. Intermediate
    layers are a few evenly spaced blocks (token sequences, mean-pooled at extraction). State-dict keys are
    ``model.<timm name>``. ``fixed_input_size`` is the (h, w) the position embedding requires, or None when it
    is interpolated to any input (``dynamic_img_size``).
    """

    image_input = True

    def __init__(self, arch: ViTArch):
        super().__init__()
        #: how token sequences become vectors: ``cls`` (the class token) or ``mean`` (the patch tokens' mean)
        if arch.forced:
            import timm

            self.model = timm.create_model(arch.name, pretrained=False, **{**arch.kwargs, "num_classes": 0})
        else:
            from timm.models.vision_transformer import VisionTransformer

            self.model = VisionTransformer(**arch.kwargs)
        self.num_features = int(self.model.num_features)
        depth = len(self.model.blocks)
        picks = sorted({max(round((i + 1) * depth / 4) - 1, 0) for i in range(4)})
        self.feature_names: List[str] = [f"model.blocks.{i}" for i in picks]
        size = tuple(int(v) for v in self.model.patch_embed.img_size)
        self.img_size = size[0]
        self.pool = "cls" if self.model.global_pool == "token" else "mean"
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.fixed_input_size = None if getattr(self.model, "dynamic_img_size", False) else size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """An intermediate block's (B, T, D) output as (B, D), pooled as the encoder pools: its class token
        (``cls``) or the mean of its patch tokens, the prefix (class and register) tokens left out (``mean``)."""
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def interpolate_like_dino(self, offset: Optional[float] = None) -> None:
        """Resample the position embedding to another input size as DINO's and DINOv2's own
        ``interpolate_pos_encoding`` do (:func:`dino_resample_pos_embed`: ``interpolate_offset`` 0.1, no
        antialiasing) instead of timm's antialiased resize: at the training resolution nothing changes, elsewhere
        (DINOv2's 518-px embedding at 224 px) the numbers become the original model's. DINOv2's register variants
        interpolate with offset 0 and antialiasing, which is timm's resize: they keep it.

        Args:
            offset: None: DINO's offset (:data:`DINO_INTERPOLATE_OFFSET`); ``0``: the target grid size itself, as
                transformers' ``Dinov2Model`` resamples (``size=(h, w)``, bicubic, no antialiasing).
        """
        self.model.pos_resample_offset = DINO_INTERPOLATE_OFFSET if offset is None else float(offset)
        self.model._pos_embed = types.MethodType(_dino_pos_embed, self.model)


#: DINO's and DINOv2's ``interpolate_offset``: the patch grid size is increased by this before the scale factor
#: is formed (a workaround for floating-point rounding in ``F.interpolate``, kept for identical numbers).
DINO_INTERPOLATE_OFFSET = 0.1


def dino_resample_pos_embed(posemb: torch.Tensor, new_size: Tuple[int, int], old_size: Tuple[int, int],
                            num_prefix_tokens: int, offset: float = DINO_INTERPOLATE_OFFSET) -> torch.Tensor:
    """DINO's / DINOv2's interpolation of a (1, prefix + M·M, D) position embedding to a (h, w) patch grid:
    bicubic ``F.interpolate`` of the M×M grid with ``scale_factor = ((w + 0.1)/M, (h + 0.1)/M)`` on the
    (1, D, M, M) layout they use, no antialiasing, in float32; the prefix (class token) entries are kept.
    ``offset=0``: transformers' ``Dinov2Model``, ``size=(h, w)`` (no scale factor), otherwise the same."""
    if tuple(new_size) == tuple(old_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    m0, m1 = old_size
    h, w = new_size
    g = grid.float().reshape(1, m0, m1, dim).permute(0, 3, 1, 2)
    if offset:
        g = F.interpolate(g, scale_factor=((w + offset) / m0, (h + offset) / m1), mode="bicubic", antialias=False)
        want = (w, h)
    else:
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
        want = (h, w)
    if tuple(g.shape[-2:]) != want:  # pragma: no cover - the offset makes the sizes exact
        raise RuntimeError(f"position embedding resampled to {tuple(g.shape[-2:])}, expected {want}")
    g = g.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, g], dim=1)


def _dino_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` for a dynamic input size, resampling with
    :func:`dino_resample_pos_embed` (bound to the model by :meth:`ViTEncoder.interpolate_like_dino`)."""
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
    b, h, w, c = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = dino_resample_pos_embed(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size), prefix,
                                  getattr(self, "pos_resample_offset", DINO_INTERPOLATE_OFFSET))
    x = x.reshape(b, -1, c)
    if self.no_embed_class:
        x = x + pos
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos
    return self.pos_drop(x)


# -- DINO head ----------------------------------------------------------------------------------------------


def dino_head_spec(state: Mapping[str, Any], prefix: str = "head", mlp: str = "mlp"
                   ) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]:
    """DINO's projector: ``mlp`` (Linear–[BN]–GELU–…–Linear) → ℓ2 norm → weight-normed ``last_layer``
    (lightly's DINOProjectionHead names its MLP ``layers``: ``mlp="layers"``).

    Returns:
        ``(spec, renamed weights, renamed key → stripped key in the file)`` for ``models.heads.build_head``.
        ``last_layer.weight_g``/``weight_v`` (old ``nn.utils.weight_norm``) and
        ``parametrizations.weight.original0/1`` map onto the parametrized Linear's ``original0`` (g) and
        ``original1`` (v); a plain ``last_layer.weight`` becomes a bias-free Linear.
    """
    spec, mlp_w = head_spec_from_state(state, f"{prefix}.{mlp}")
    # head_spec_from_state reads a skipped index as ReLU; DINO's hidden activation is GELU
    spec = [{"type": "gelu"} if s["type"] == "relu" else s for s in spec]
    where = {k: (f"{prefix}.{mlp}.{k}" if f"{prefix}.{mlp}.{k}" in state else f"{prefix}.{mlp}.{k[2:]}") for k in mlp_w}
    renamed = dict(mlp_w)
    if spec[-1]["type"] != "linear":
        raise ReprscopeError(f"'{prefix}.{mlp}' must end with a Linear (DINO bottleneck); got {spec[-1]['type']}")
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
                     options: Optional[LoadOptions] = None, heads_hint: Optional[HeadsHint] = None,
                     dynamic_img_size: bool = False, extra_heads: Optional[Dict[str, Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]]] = None,
                     pool: Optional[str] = None, extra_kwargs: Optional[Dict[str, Any]] = None,
                     ) -> Tuple[ModelBundle, ViTArch]:
    """A bundle from timm-named ViT weights (no classifier) and optional heads ``(spec, weights, where)``.

    Args:
        head: the projector; ``extra_heads``: more parts (``predictor``) in the same form.
        options: ``--arch`` replaces the architecture read from the shapes; ``--pool`` the pooling.
        heads_hint, dynamic_img_size: see :func:`infer_vit`.
        pool: the source's own pooling (``cls`` or ``mean``, what its evaluation reads); None: the class token
            where the ViT has one, else the patch tokens' mean (a ``fc_norm`` always pools the patch tokens).
        extra_kwargs: more ``VisionTransformer`` kwargs the source fixes (its LayerNorm ε, activation).
    """
    arch = vit_arch(backbone, options, heads_hint, dynamic_img_size)
    arch = with_pool(arch, (options.pool if options is not None else None) or pool)
    if extra_kwargs and not arch.forced:
        arch = ViTArch(arch.name, {**arch.kwargs, **extra_kwargs}, arch.heads_source, arch.forced)
    parts = {**({"projector": head} if head else {}), **(extra_heads or {})}
    bundle = ModelBundle(ViTEncoder(arch), {p: h[0] for p, h in parts.items()})
    mapped: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    bp = f"{backbone_prefix}." if backbone_prefix else ""
    for k, v in backbone.items():
        mapped[f"encoder.model.{k}"] = v
        where[f"encoder.model.{k}"] = origin.get(bp + k, bp + k)
    for part, (_, weights, src_of) in parts.items():
        for k, v in weights.items():
            mapped[f"{part}.{k}"] = v
            src = src_of.get(k, k)
            where[f"{part}.{k}"] = origin.get(src, src)
    load_strict(bundle, mapped, where, arch_what(arch.name, arch.forced))
    return bundle, arch


#: the ViT poolings ``--pool`` chooses between
POOLS = ("cls", "mean")


def with_pool(arch: ViTArch, pool: Optional[str]) -> ViTArch:
    """``arch`` pooling as ``pool`` says: ``cls`` is timm's ``global_pool="token"`` (the class token after the final
    norm), ``mean`` its ``"avg"`` (the mean of the patch tokens after the final norm, prefix tokens left out).

    Raises:
        ReprscopeError: an unknown pooling; ``cls`` for a ViT without a class token or for one whose ``fc_norm``
            was trained on the patch tokens' mean.
    """
    if pool is None:
        return arch
    if pool not in POOLS:
        raise ReprscopeError(f"pool must be one of {', '.join(POOLS)}; got '{pool}'", arg="pool")
    kw = dict(arch.kwargs)
    if pool == "cls":
        if not arch.forced and not kw.get("class_token", True):
            raise ReprscopeError("this ViT has no class token (it averages its patch tokens); pool cls is not "
                                 "possible", arg="pool")
        if kw.get("fc_norm"):
            raise ReprscopeError("this ViT's fc_norm normalises the mean of its patch tokens (timm/MAE global "
                                 "pooling); its class token is not a trained output, so pool cls is refused", arg="pool")
    kw["global_pool"] = "token" if pool == "cls" else "avg"
    return ViTArch(arch.name, kw, arch.heads_source, arch.forced)


def indexed_head(state: Mapping[str, Any], prefix: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]:
    """:func:`head_spec_from_state` in the ``(spec, weights, where)`` form of :func:`build_vit_bundle`."""
    spec, renamed = head_spec_from_state(state, prefix)
    where = {k: (f"{prefix}.{k}" if f"{prefix}.{k}" in state else f"{prefix}.{k[2:]}") for k in renamed}
    return spec, renamed, where


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
                             "is a projector, not a classifier (MoCo v3 ViTs: format moco_v3_vit)", arg="fmt")
    return {k: v for k, v in sub.items() if k not in head}, head


def saved_args(payload: Mapping[str, Any]) -> Dict[str, Any]:
    """The scalar entries of a pickled ``argparse.Namespace`` ``args`` (DINO, MAE, timm)."""
    args = payload.get("args")
    if args is not None and hasattr(args, "__dict__"):
        return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool)) or v is None}
    return {}


def _result(bundle, arch, method: str, fmt: str, container: Optional[str], payload: Mapping[str, Any],
            heads: Dict[str, List[Dict[str, Any]]], unused_keys: List[str], *, role: str, branches: Dict[str, str],
            preprocess: Any = None, **extra: Any) -> Dict[str, Any]:
    config = {"format": fmt, "container": container, **arch.config(), "heads": heads, **extra}
    saved = saved_args(payload)
    if saved:
        config["args_saved"] = saved
    if preprocess is None:
        preprocess = pp.for_vit(bundle.encoder.img_size, arch.name)
    return {"bundle": bundle, "method": method, "config": config, "epoch": epoch_of(payload),
            "unused_keys": unused_keys, "branch": role, "branches": branches, "preprocess": preprocess}


def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and any(isinstance(v, torch.Tensor) for v in d.values())


def _arch_hint(table: Mapping[str, Tuple[int, int]], name: Any, source: str) -> Optional[HeadsHint]:
    """A hint from a saved architecture name (``args.arch = "vit_small"``) whose width matches the weights."""
    if not isinstance(name, str):
        return None
    for key, (dim, heads) in table.items():
        if key in name:
            return lambda d, dim=dim, heads=heads, key=key: (heads, f"{source} '{name}' ({key}: {heads} heads)") if d == dim else None
    return None


# -- DINO training checkpoint -------------------------------------------------------------------------------

#: facebookresearch/dino vision_transformer.py: vit_tiny/small/base (all head_dim 64)
_DINO_VITS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}


def _dino_hint(arch: Any) -> HeadsHint:
    """``args.arch`` where it matches the width; else DINO's convention (every DINO ViT has head_dim 64)."""
    named = _arch_hint(_DINO_VITS, arch, "DINO args.arch")

    def hint(dim: int) -> Optional[Tuple[int, str]]:
        if named is not None and named(dim) is not None:
            return named(dim)
        return max(dim // 64, 1), f"DINO convention: head_dim 64 (vit_tiny/small/base: 3/6/12 heads; embed_dim {dim})"

    return hint


def _dino_like(payload: Mapping[str, Any]) -> bool:
    """A DINO-style training checkpoint: teacher/student dicts with ``backbone.*`` and ``head.last_layer.*``."""
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


#: what an iBOT checkpoint has beyond DINO's layout (main_ibot.py, head.py): the patch-token head, the masked
#: patch embedding of the student and the loss state with its patch centre
_IBOT_HEAD = ("head.last_layer2.", "head.mlp2.", "head.last_norm2.")


def _is_ibot(payload: Mapping[str, Any]) -> bool:
    if not _dino_like(payload):
        return False
    if isinstance(payload.get("ibot_loss"), Mapping):
        return True
    for branch in ("teacher", "student"):
        d = payload.get(branch)
        if _is_tensor_dict(d):
            s, _ = strip_state(d)
            if any(k.startswith(_IBOT_HEAD) or k == "backbone.masked_embed" for k in s):
                return True
    return False


def _is_dino(payload: Mapping[str, Any]) -> bool:
    return _dino_like(payload) and not _is_ibot(payload)


def _build_dino(payload: Mapping[str, Any], options: LoadOptions, default: str = "teacher",
                project: str = "DINO") -> Dict[str, Any]:
    """A DINO (or, ``project="iBOT"``, an iBOT) training checkpoint's ``default`` branch."""
    ibot = project == "iBOT"
    branches = {b: f"{b}.backbone.* + {b}.head.* ({'EMA teacher' if b == 'teacher' else 'student'})"
                for b in ("teacher", "student") if _is_tensor_dict(payload.get(b))}
    if default not in branches:
        raise ReprscopeError(f"{project} checkpoint has no '{default}' state dict (top-level keys: {', '.join(map(str, payload))})")
    branch = pick_branch(project, branches, default, options.branch)
    other = "student" if branch == "teacher" else "teacher"
    state, origin = strip_state(payload[branch])
    origin = {k: f"{branch}.{v}" for k, v in origin.items()}
    left = [origin[k] for k in state if not (k.startswith("backbone.") or k.startswith("head."))]
    if left:
        raise ReprscopeError(f"{project} checkpoint has tensors no rule of the format accounts for: "
                             + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))
    patch_head = sorted(k for k in state if ibot and k.startswith(_IBOT_HEAD))
    masked = [k for k in state if ibot and k == "backbone.masked_embed"]
    state_model = {k: v for k, v in state.items() if k not in set(patch_head) | set(masked)}
    head = dino_head_spec(state_model, "head")
    head_keys = {k for k in state_model if k.startswith("head.")}
    used_head = set(head[2].values())
    stray = sorted(origin[k] for k in head_keys - used_head)
    if stray:
        raise ReprscopeError(f"{project} head has tensors that are neither 'head.mlp.*' nor 'head.last_layer.*': "
                             + ", ".join(stray[:8]))
    backbone_all = sub_state(state_model, "backbone")
    preprocess = None
    if "conv1.weight" in backbone_all:  # DINO ResNet-50: torchvision names, fc = Identity
        # the head's renamed keys ("7.parametrizations.weight.original0") point at their names in the file
        head_origin = {f"head.{k}": origin.get(head[2][k], head[2][k]) for k in head[1]}
        bundle, arch = build_resnet_bundle(backbone_all, {"projector": (head[0], head[1])}, {**origin, **head_origin},
                                           "backbone", {"projector": "head"}, options=options)
        classifier: List[str] = []
        preprocess = pp.for_resnet(arch.cifar_stem, arch.name)
    else:
        backbone, classifier = _split_vit(state_model, origin, "backbone")
        hint = _dino_hint(saved_args(payload).get("arch"))
        # DINO's ViT interpolates its position embedding to any input size (vision_transformer.py)
        bundle, arch = build_vit_bundle(backbone, origin, "backbone", head, options=options, heads_hint=hint,
                                        dynamic_img_size=True)
        bundle.encoder.interpolate_like_dino()
        preprocess = pp.imagenet(224, f"{project} evaluation: resize 256, centre crop 224, ImageNet statistics")
    unused_keys = unused([f"backbone.{k}" for k in classifier], origin, "classifier on the backbone; not analysed")
    unused_keys += unused(patch_head, origin, "iBOT patch-token head (masked image modelling targets); the image-level "
                                              "head.mlp + head.last_layer is the projector")
    unused_keys += unused(masked, origin, "iBOT's embedding of masked patches (training only); not used on whole images")
    if isinstance(payload.get(other), Mapping):
        o_state = payload[other]
        unused_keys += [f"{other}.{k}: {project} {other} network; the {branch} is analysed" for k in o_state]
    for k, v in payload.items():
        if k in (branch, other, "args", "epoch"):
            continue
        if k in ("dino_loss", "ibot_loss") and isinstance(v, Mapping):
            unused_keys += [f"{k}.{kk}: {project} loss state (teacher centres); not part of the model" for kk in v]
        elif k == "optimizer":
            unused_keys.append("optimizer: optimizer state; not part of the model")
        elif k in ("fp16_scaler", "scaler"):
            unused_keys.append(f"{k}: mixed-precision scaler state; not part of the model")
        elif isinstance(v, torch.Tensor) or _is_tensor_dict(v):
            unused_keys.append(f"{k}: not part of a {project} model")
    name = project.lower()
    return _result(bundle, arch, name, name, branch, payload, {"projector": head[0]}, unused_keys,
                   role=branch, branches=branches, preprocess=preprocess, branch=branch)


@register_format("dino", detect=_is_dino,
                 summary="DINO training checkpoint (student/teacher, [module.]backbone + head.mlp/head.last_layer); "
                         "teacher analysed (--branch student for the student)")
def build_dino(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    return _build_dino(payload, options, "teacher")


@register_format("ibot", detect=_is_ibot,
                 summary="iBOT training checkpoint (Zhou et al. 2022: DINO's layout + head.last_layer2 patch head, "
                         "masked_embed, ibot_loss); teacher analysed, CLS token")
def build_ibot(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    return _build_dino(payload, options, "teacher", project="iBOT")


@register_format("dino_student", detect=lambda payload: False,
                 summary="a DINO training checkpoint read on its student branch (never auto-detected; the same as "
                         "--format dino --branch student)")
def build_dino_student(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    if options.branch not in (None, "student", "online"):
        raise ReprscopeError(f"format dino_student reads the student; branch '{options.branch}' contradicts it "
                             "(use format dino with branch teacher)", arg="branch")
    return _build_dino(payload, options, "student")


# -- MoCo v3 ViT --------------------------------------------------------------------------------------------

#: facebookresearch/moco-v3 vits.py: vit_small and vit_base both use 12 heads (ViT-S: head_dim 32, not 64)
_MOCO_VITS = {"vit_small": (384, 12), "vit_base": (768, 12), "vit_conv_small": (384, 12), "vit_conv_base": (768, 12)}


def _mocov3_hint(payload: Mapping[str, Any]) -> HeadsHint:
    named = _arch_hint(_MOCO_VITS, payload.get("arch"), "MoCo v3 arch")

    def hint(dim: int) -> Optional[Tuple[int, str]]:
        if named is not None and named(dim) is not None:
            return named(dim)
        if dim in (384, 768):
            return 12, f"MoCo v3 convention: its vit_small/vit_base use 12 heads (embed_dim {dim})"
        return None

    return hint


def _is_moco_v3_vit(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return ("base_encoder.pos_embed" in state and any(k.startswith("momentum_encoder.") for k in state)
            and any(re.match(r"base_encoder\.head\.\d+\.", k) for k in state))


@register_format("moco_v3_vit", detect=_is_moco_v3_vit,
                 summary="MoCo v3 ViT (module.base_encoder ViT + head.{0..7} projector, predictor, momentum_encoder); "
                         "online analysed")
def build_moco_v3_vit(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("MoCo v3 checkpoint holds no state dict")
    state, origin, container = r
    branches = {"online": f"{file_prefix(state, origin, 'base_encoder')} + predictor (base encoder)",
                "momentum": f"{file_prefix(state, origin, 'momentum_encoder')} (momentum encoder)"}
    role = pick_branch("MoCo v3", branches, "online", options.branch)
    net, other = ("base_encoder", "momentum_encoder") if role == "online" else ("momentum_encoder", "base_encoder")
    left = [origin[k] for k in state if k.split(".", 1)[0] not in ("base_encoder", "momentum_encoder", "predictor")]
    if left:
        raise ReprscopeError("MoCo v3 checkpoint has tensors no rule of the format accounts for: " + ", ".join(left[:8]))
    sub = sub_state(state, net)
    backbone = {k: v for k, v in sub.items() if not (k == "head" or k.startswith("head."))}
    head = indexed_head(state, f"{net}.head")
    extra = {}
    predictor = [k for k in state if k.startswith("predictor.")]
    if predictor and role == "online":
        extra["predictor"] = indexed_head(state, "predictor")
    bundle, arch = build_vit_bundle(backbone, origin, net, head, options=options, heads_hint=_mocov3_hint(payload),
                                    extra_heads=extra)
    what = ("MoCo v3 momentum encoder; the online base_encoder is analysed" if role == "online"
            else "MoCo v3 base (online) encoder; the momentum encoder is analysed")
    unused_keys = unused([k for k in state if k.startswith(other + ".")], origin, what)
    if role != "online":
        unused_keys += unused(predictor, origin, "MoCo v3 predictor of the online branch; the momentum branch has none")
    for k in payload:
        if k in ("optimizer", "scaler"):
            unused_keys.append(f"{k}: training state; not part of the model")
    heads = {"projector": head[0], **{p: h[0] for p, h in extra.items()}}
    return _result(bundle, arch, "moco_v3", "moco_v3_vit", container, payload, heads, unused_keys, role=role,
                   branches=branches, branch=net,
                   arch_saved=payload.get("arch") if isinstance(payload.get("arch"), str) else None)


# -- MAE ----------------------------------------------------------------------------------------------------


_MAE_DECODER = re.compile(r"^(decoder_|mask_token$)")
#: facebookresearch/mae models_mae.py: mae_vit_base/large/huge (huge: 1280 wide, 16 heads, head_dim 80)
_MAE_VITS = {"vit_base": (768, 12), "vit_large": (1024, 16), "vit_huge": (1280, 16)}


def _is_mae(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return "patch_embed.proj.weight" in state and any(k.startswith("decoder_pred.") for k in state)


@register_format("mae", detect=_is_mae,
                 summary="MAE pre-training checkpoint ('model': ViT encoder + decoder_*, mask_token); encoder analysed")
def build_mae(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("MAE checkpoint holds no state dict")
    state, origin, container = r
    branches = {"online": f"{file_prefix(state, origin, '')} (the encoder; MAE has one network)"}
    role = pick_branch("MAE", branches, "online", options.branch)
    decoder = [k for k in state if _MAE_DECODER.match(k)]
    enc = {k: v for k, v in state.items() if k not in set(decoder)}
    left = [origin[k] for k in enc if k.split(".", 1)[0] not in VIT_ROOTS]
    if left:
        raise ReprscopeError("MAE checkpoint has tensors no rule of the format accounts for: " + ", ".join(left[:8]))
    backbone, classifier = _split_vit(enc, origin)
    hint = _arch_hint(_MAE_VITS, saved_args(payload).get("model"), "MAE args.model")
    # MAE fine-tunes on the mean of the patch tokens (models_vit.py global_pool; the decoder-free encoder has no
    # fc_norm, so the mean is taken after the final norm); --pool cls reads the class token its linear probe uses
    bundle, arch = build_vit_bundle(backbone, origin, "", options=options, heads_hint=hint, pool="mean")
    unused_keys = (unused(decoder, origin, "MAE decoder (pixel reconstruction); not part of the representation")
                   + unused(classifier, origin, "classifier (2-D head); not analysed"))
    for k in payload:
        if k in ("optimizer", "scaler"):
            unused_keys.append(f"{k}: training state; not part of the model")
    return _result(bundle, arch, "mae", "mae", container, payload, {}, unused_keys, role=role, branches=branches,
                   branch=None)


# -- raw timm / DINO-released / MAE-encoder ViT -------------------------------------------------------------


def _is_vit(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    if other_networks(payload, r[2]):
        return False
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        return False
    if any(k.split(".", 1)[0] not in VIT_ROOTS for k in state):
        return False
    if claimed_by_timm(payload):
        return False
    return all(_is_classifier(state, k) for k in state if k == "head" or k.startswith("head."))


@register_format("vit", detect=_is_vit,
                 summary="a raw timm-layout ViT state dict (DINO released backbone, MAE encoder, timm); 2-D head = classifier, unused")
def build_vit(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    if _resolve(payload) is None:
        raise ReprscopeError("ViT checkpoint holds no state dict")
    state, origin, container, role, branches, ema_unused = resolve_with_ema(payload, options, "ViT")
    others = other_networks(payload, container)
    if others:
        raise ReprscopeError(f"the file holds several networks ('{container}' and {', '.join(map(repr, others[:4]))}): "
                             "a training checkpoint of another format, not one raw ViT")
    left = [origin[k] for k in state if k.split(".", 1)[0] not in VIT_ROOTS]
    if left:
        raise ReprscopeError("ViT checkpoint has tensors that are not timm ViT weights: " + ", ".join(left[:8]))
    backbone, classifier = _split_vit(state, origin)
    bundle, arch = build_vit_bundle(backbone, origin, "", options=options)
    unused_keys = unused(classifier, origin, "classifier (2-D head) on top of the representation; not analysed")
    return _result(bundle, arch, "unknown", "vit", container, payload, {}, unused_keys + ema_unused, role=role,
                   branches=branches, branch=None)


# -- torchvision ViT (vit_b_16, vit_l_16, vit_h_14 …) ----------------------------------------------------------

#: torchvision's names (``torchvision.models.vision_transformer``) → timm's, per encoder block
_TV_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TV_IN_BLOCK = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight", "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight", "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",  # torchvision ≥ 0.13 (MLPBlock)
    "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
    "mlp.linear_1.weight": "mlp.fc1.weight", "mlp.linear_1.bias": "mlp.fc1.bias",  # older state dicts
    "mlp.linear_2.weight": "mlp.fc2.weight", "mlp.linear_2.bias": "mlp.fc2.bias",
}
_TV_TOP = {"class_token": "cls_token", "conv_proj.weight": "patch_embed.proj.weight",
           "conv_proj.bias": "patch_embed.proj.bias", "encoder.pos_embedding": "pos_embed",
           "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias"}
#: torchvision's ViTs: hidden dim → heads (vit_h_14 has head_dim 80, so the width alone does not say it)
_TV_HEADS = {768: 12, 1024: 16, 1280: 16}


def _is_torchvision_vit(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return ("class_token" in state and "conv_proj.weight" in state and "encoder.pos_embedding" in state
            and any(_TV_BLOCK.match(k) for k in state))


@register_format("torchvision_vit", detect=_is_torchvision_vit,
                 summary="a torchvision VisionTransformer state dict (vit_b_16 …: class_token, conv_proj, "
                         "encoder.layers); read as the same timm ViT, classifier heads unused")
def build_torchvision_vit(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _resolve(payload) or (None, None, None)
    if state is None:
        raise ReprscopeError("torchvision ViT checkpoint holds no state dict")
    mapped: Dict[str, Any] = {}
    where: Dict[str, str] = {}
    classifier: List[str] = []
    left: List[str] = []
    for k, v in state.items():
        m = _TV_BLOCK.match(k)
        if k in _TV_TOP:
            new = _TV_TOP[k]
        elif m and m.group(2) in _TV_IN_BLOCK:
            new = f"blocks.{m.group(1)}.{_TV_IN_BLOCK[m.group(2)]}"
        elif k.startswith("heads."):
            classifier.append(k)
            continue
        else:
            left.append(origin.get(k, k))
            continue
        mapped[new] = v
        where[new] = origin.get(k, k)
    if left:
        raise ReprscopeError("torchvision ViT checkpoint has tensors that are not torchvision ViT weights: "
                             + ", ".join(left[:8]))
    dim = int(mapped["cls_token"].shape[-1])
    hint: HeadsHint = lambda d: (_TV_HEADS[d], f"torchvision's ViT of width {d}: {_TV_HEADS[d]} heads") if d in _TV_HEADS else None  # noqa: E731
    bundle, arch = build_vit_bundle(mapped, where, "", options=options, heads_hint=hint)
    unused_keys = unused(classifier, origin, "torchvision's classification head; not analysed")
    del dim
    return _result(bundle, arch, "unknown", "torchvision_vit", container, payload, {}, unused_keys, role="online",
                   branches={"online": "the only network in the file"}, branch=None)


def claimed_by_timm(payload: Mapping[str, Any]) -> bool:
    """A timm training checkpoint (its ``arch`` names a timm model whose keys the weights match) is read by
    the ``timm`` format, not by the raw ``vit``/``torchvision`` ones."""
    from .timm_plain import is_timm_checkpoint

    return is_timm_checkpoint(payload)
