"""DINOv2 checkpoints (Oquab et al. 2024, facebookresearch/dinov2): hub backbones, registers, SwiGLU, chunked
blocks, and the training dumps' teacher/student.

Layouts:

* hub backbone (``dinov2_vits14_pretrain.pth``, ``…_reg4_pretrain.pth``): raw ViT keys plus ``mask_token``
  [1, D] and, with registers, ``register_tokens`` [1, R, D]; LayerScale ``blocks.i.ls1.gamma``; ViT-g's MLP is
  a fused SwiGLU ``mlp.w12`` (D → 2H, gate and value) / ``mlp.w3`` (H → D);
* training dumps: blocks chunked for FSDP as ``blocks.<chunk>.<i>.`` (``i`` global; the chunk pads with
  Identity) and the backbone under ``backbone.`` next to ``dino_head.`` / ``ibot_head.``, in a ``teacher`` dict
  (``teacher_checkpoint.pth``) or under ``student.`` / ``teacher.`` of ``model``.

Key mapping onto timm's ``VisionTransformer`` (as timm's own ``_convert_dinov2``): ``w12``/``w3`` →
``fc1``/``fc2`` of a packed SwiGLU (``SwiGLUPacked``: ``silu(first half) * second half``, DINOv2's order);
with registers, timm's ``no_embed_class`` layout: ``reg_token`` = ``register_tokens``, ``cls_token`` =
``cls_token + pos_embed[:, 0]`` and ``pos_embed`` = ``pos_embed[:, 1:]`` (DINOv2 adds the class position before
inserting the registers, which carry none). ``mask_token`` only replaces masked patches in training: unused.
``dino_head`` (MLP → ℓ2 → weight-normed last layer) is the projector; ``ibot_head`` (patch tokens) is unused.

Heads: every DINOv2 ViT has head_dim 64 (ViT-S/B/L/g: 6/12/16/24). Position embedding: DINOv2 interpolates it
to any input, so the encoder is built with timm's ``dynamic_img_size`` and, without registers, resamples the
embedding as DINOv2's ``interpolate_pos_encoding`` does (bicubic, scale factor (g + 0.1)/M, no antialiasing:
:meth:`~reprscope.formats.vit.ViTEncoder.interpolate_like_dino`); the register variants interpolate with
offset 0 and antialiasing, which is timm's own resize. The default preprocessing is DINOv2's evaluation
transform (bicubic resize 256, centre crop 224, ImageNet statistics).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import torch

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import find_state_dict, strip_state, sub_state, unused
from .vit import _result, build_vit_bundle, dino_head_spec

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
_PLAIN_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|attn|ls1|norm2|mlp|ls2)\.")
_BACKBONE_ROOTS = ("cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed", "blocks", "norm", "head")
_HEAD_ROOTS = ("dino_head", "ibot_head")


def _heads_hint(dim: int) -> Tuple[int, str]:
    return max(dim // 64, 1), f"DINOv2 convention: head_dim 64 for every model (embed_dim {dim})"


def _is_backbone(state: Mapping[str, Any], prefix: str = "") -> bool:
    p = f"{prefix}." if prefix else ""
    mask = state.get(f"{p}mask_token")
    has_blocks = any(k.startswith(f"{p}blocks.") for k in state)
    return (isinstance(mask, torch.Tensor) and mask.dim() == 2 and f"{p}patch_embed.proj.weight" in state
            and has_blocks)


def _branch_states(payload: Mapping[str, Any]) -> Dict[str, Tuple[Dict[str, Any], Dict[str, str], str]]:
    """``branch → (stripped state, stripped key → key in the file, backbone prefix)`` for every branch held."""
    out: Dict[str, Tuple[Dict[str, Any], Dict[str, str], str]] = {}
    dicts = {b: payload.get(b) for b in ("teacher", "student")}
    dicts = {b: d for b, d in dicts.items() if isinstance(d, Mapping) and any(isinstance(v, torch.Tensor) for v in d.values())}
    if dicts:  # teacher_checkpoint.pth: {"teacher": {backbone.*, dino_head.*, ibot_head.*}}
        for b, d in dicts.items():
            st, origin = strip_state(d)
            out[b] = (st, {k: f"{b}.{v}" for k, v in origin.items()}, "backbone")
        return out
    state, container = find_state_dict(payload)
    st, origin = strip_state(state)
    if container is not None:
        origin = {k: f"{container}.{v}" for k, v in origin.items()}
    roots = {k.split(".", 1)[0] for k in st}
    if roots and roots <= {"student", "teacher"}:  # a full training dump: model = {student.*, teacher.*}
        for b in sorted(roots, key=lambda r: r != "teacher"):
            sub = sub_state(st, b)
            out[b] = (sub, {k: origin[f"{b}.{k}"] for k in sub}, "backbone")
        return out
    # a hub backbone (or one under backbone.): released DINOv2 weights are the teacher's
    out["teacher"] = (st, origin, "backbone" if any(k.startswith("backbone.") for k in st) else "")
    return out


def _describe(branch: str, state: Mapping[str, Any], origin: Mapping[str, str], prefix: str) -> str:
    """Where a branch's backbone sits in the file (``teacher.backbone.*``), for ``inspect`` and messages."""
    k0 = next((k for k in state if not prefix or k.startswith(prefix + ".")), next(iter(state)))
    o = origin[k0]
    base = o[: len(o) - len(k0)]
    kind = "EMA teacher" if branch == "teacher" else "student"
    if not prefix and not base:
        kind += "; released DINOv2 weights are the teacher's"
    where = f"{base}{prefix + '.' if prefix else ''}*" if base or prefix else "every key"
    return f"{where} ({kind})"


def _detect(payload: Mapping[str, Any]) -> bool:
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return False
    try:
        branches = _branch_states(payload)
    except ReprscopeError:
        return False
    return any(_is_backbone(st, prefix) for st, _, prefix in branches.values())


def convert_dinov2(backbone: Mapping[str, torch.Tensor], origin: Mapping[str, str]
                   ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """DINOv2 backbone keys → timm ``VisionTransformer`` keys (see the module docstring).

    Args:
        backbone: the backbone's tensors by their DINOv2 names (``blocks.1.4.mlp.w12.weight`` …).
        origin: DINOv2 name → key in the file.

    Returns:
        ``(timm state, timm key → key(s) in the file, DINOv2 names left out: mask_token)``.

    Raises:
        ReprscopeError: a block index met twice (inconsistent chunks), an unknown root.
    """
    out: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    skipped: List[str] = []
    seen: Dict[str, str] = {}
    for k, v in backbone.items():
        root = k.split(".", 1)[0]
        if root not in _BACKBONE_ROOTS:
            raise ReprscopeError(f"DINOv2 backbone has '{origin.get(k, k)}', which is not a DINOv2 ViT weight")
        if k == "mask_token":
            skipped.append(k)
            continue
        name = k
        m = _CHUNKED.match(k)
        if m and not _PLAIN_BLOCK.match(k):  # blocks.<chunk>.<i>.rest → blocks.<i>.rest
            name = f"blocks.{m.group(2)}.{m.group(3)}"
        name = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", name)
        name = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", name)
        if name in seen:
            raise ReprscopeError(f"'{origin.get(k, k)}' and '{seen[name]}' are the same DINOv2 weight ({name}); "
                                 "the chunked blocks are inconsistent")
        seen[name] = origin.get(k, k)
        out[name], where[name] = v, origin.get(k, k)
    if "register_tokens" in out:
        if "cls_token" not in out or "pos_embed" not in out:
            raise ReprscopeError("DINOv2 backbone with register_tokens needs cls_token and pos_embed")
        pos, cls = out.pop("pos_embed"), out.pop("cls_token")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = cls + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        where["reg_token"] = where.pop("register_tokens")
        where["cls_token"] = f"{where['cls_token']} + {where['pos_embed']}[:, 0]"
        where["pos_embed"] = f"{where['pos_embed']}[:, 1:]"
    return out, where, skipped


@register_format("dinov2", detect=_detect,
                 summary="DINOv2 hub backbone or training dump (mask_token, LayerScale, registers, SwiGLU w12/w3, "
                         "chunked blocks; dino_head = projector); teacher analysed")
def build_dinov2(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    states = _branch_states(payload)
    states = {b: v for b, v in states.items() if _is_backbone(v[0], v[2])}
    if not states:
        raise ReprscopeError("no DINOv2 backbone found (expected mask_token [1, D], patch_embed.proj and blocks.*)")
    branches = {b: _describe(b, st, origin, p) for b, (st, origin, p) in states.items()}
    role = pick_branch("DINOv2", branches, "teacher" if "teacher" in branches else next(iter(branches)), options.branch)
    state, origin, prefix = states[role]
    bb = sub_state(state, prefix) if prefix else {k: v for k, v in state.items() if k.split(".", 1)[0] in _BACKBONE_ROOTS}
    bb_origin = {k: origin[f"{prefix}.{k}" if prefix else k] for k in bb}
    left = [origin[k] for k in state
            if not (k.startswith(f"{prefix}.") if prefix else k.split(".", 1)[0] in _BACKBONE_ROOTS)
            and k.split(".", 1)[0] not in _HEAD_ROOTS]
    if left:
        raise ReprscopeError("DINOv2 checkpoint has tensors no rule of the format accounts for: " + ", ".join(left[:8]))
    head_cls = [k for k in bb if k == "head" or k.startswith("head.")]
    if head_cls:  # the hub model's head is an Identity; weights there are someone's classifier
        bb = {k: v for k, v in bb.items() if k not in set(head_cls)}
    timm_state, where, skipped = convert_dinov2(bb, bb_origin)
    head = None
    heads: Dict[str, Any] = {}
    if any(k.startswith("dino_head.") for k in state):
        spec, weights, src = dino_head_spec(state, "dino_head")
        head = (spec, weights, {k: origin.get(v, v) for k, v in src.items()})
        heads["projector"] = spec
        stray = sorted(origin[k] for k in state if k.startswith("dino_head.") and k not in set(src.values()))
        if stray:
            raise ReprscopeError("DINOv2 dino_head has tensors that are neither 'mlp.*' nor 'last_layer.*': "
                                 + ", ".join(stray[:8]))
    bundle, arch = build_vit_bundle(timm_state, where, "", head, options=options, heads_hint=_heads_hint,
                                    dynamic_img_size=True)
    if "reg_token" not in timm_state:
        # DINOv2's hub models interpolate their 518-px embedding with an offset of 0.1 and no antialiasing; the
        # register variants with offset 0 and antialiasing, which is timm's resize (kept for them)
        bundle.encoder.interpolate_like_dino()
    unused_keys = [f"{bb_origin[k]}: DINOv2 mask token (replaces masked patches in training); not used on whole images"
                   for k in skipped]
    unused_keys += [f"{bb_origin[k]}: classifier on the backbone; not analysed" for k in head_cls]
    unused_keys += unused([k for k in state if k.startswith("ibot_head.")], origin,
                          "DINOv2 iBOT head (patch-token targets); the image-level dino_head is the projector")
    for b, (st, o, _) in states.items():
        if b != role:
            unused_keys += [f"{o[k]}: DINOv2 {b} network; the {role} is analysed" for k in st]
    for k in payload:
        if k in ("optimizer", "iteration", "scaler", "fp16_scaler"):
            unused_keys.append(f"{k}: training state; not part of the model")
    n_reg = int(arch.kwargs.get("reg_tokens", 0)) if not arch.forced else None
    return _result(bundle, arch, "dinov2", "dinov2", None, payload, heads, unused_keys, role=role, branches=branches,
                   preprocess=pp.imagenet(224, "DINOv2 evaluation transform (position embedding interpolated from "
                                               f"its {bundle.encoder.img_size}-pixel grid)", interpolation="bicubic"),
                   branch=role, registers=n_reg)
