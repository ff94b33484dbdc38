"""VISSL model-zoo checkpoints (Goyal et al. 2021, facebookresearch/vissl).

Layouts:

* ``model_final_checkpoint_phaseN.torch`` (``hooks/log_hooks.py``): ``{"phase_idx", "iteration", "loss",
  "iteration_num", "train_phase_idx", "classy_state_dict": {"base_model": {"model": {"trunk": …, "heads": …},
  "meta": …}, …}}``. The ResNe(X)t trunk keeps torchvision's modules in a ``ModuleDict`` named
  ``_feature_blocks`` (``_feature_blocks.conv1.weight``, ``_feature_blocks.layer1.0.conv1.weight`` …); the heads
  are a list, ``heads.<i>.…``: an ``mlp`` head (``heads.i.clf.N``: Linear [BN] [ReLU] …), a ``swav_head``
  (``heads.i.projection_head.N`` then an ℓ2 normalisation, and ``prototypesK`` cluster centres) or a linear-eval
  classifier (``eval_mlp``: ``heads.i.channel_bn`` + ``heads.i.clf.clf.N``).
* older zoo files: ``{"model_state_dict": {"_feature_blocks.…": numpy array}}`` (NPID), read through the
  allow-listed numpy array reconstruction (data only) and converted to tensors;
* a trunk without container (``_feature_blocks.*`` keys). The torchvision file VISSL's
  ``convert_vissl_to_torchvision.py`` writes (the ``_feature_blocks.`` prefix removed) is a plain torchvision
  ResNet, read by the ``torchvision`` format.

The projector: a single head that is an ``mlp`` (its Sequential's layers; the activations between weighted layers
are not in the weights: ReLU, VISSL's default, GELU where the loss state says DINO, whose VISSL configs use it) or the ``swav_head``'s projection head followed by its ℓ2 normalisation. Several chained
heads are not read as a projector: the activations *between* heads are in the run's YAML config (SimCLR's first
head ends with a ReLU only because ``skip_last_layer_relu_bn`` is false there), not in the weights; the trunk is
analysed and the heads are listed unused with that reason. The method is named where the loss state says it
(SwAV's ``swav_criterion`` / queues, DeepCluster v2's memory, MoCo's queue, Barlow Twins', SimCLR's criteria, the
NCE memory of NPID / PIRL, DINO's centre).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import build_resnet_with_heads, head_spec_from_state, strip_state, sub_state
from .resnet_ssl import _result

PREFIX = "_feature_blocks."
_TRUNK_PATH = ("classy_state_dict", "base_model", "model", "trunk")
_HEADS_PATH = ("classy_state_dict", "base_model", "model", "heads")
#: a marker in the loss state → the method (VISSL's losses register these buffers / sub-modules)
_LOSS_MARKERS = (("swav_criterion.", "swav"), ("local_queue", "swav"), ("local_memory_embeddings", "deepclusterv2"),
                 ("bt_criterion.", "barlowtwins"), ("info_criterion.", "simclr"), ("nce_criterion.", "npid"),
                 ("memory", "npid"), ("queue_ptr", "moco"), ("center", "dino"))


def _get(payload: Any, path: Tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(payload, Mapping):
            return None
        payload = payload.get(key)
    return payload


def _as_tensors(d: Mapping[str, Any], where: str) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise ReprscopeError(f"'{where}{k}' is a numpy array of dtype {v.dtype}; expected numbers")
            v = torch.from_numpy(v.copy(order="C"))  # keeps 0-d arrays 0-d (a BatchNorm counter)
        if not isinstance(v, torch.Tensor):
            raise ReprscopeError(f"'{where}{k}' is a {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out


def _is_vit_trunk(d: Any) -> bool:
    return isinstance(d, Mapping) and "patch_embed.proj.weight" in d and "cls_token" in d and "pos_embed" in d


def _trunk(payload: Mapping[str, Any]) -> Optional[Tuple[Dict[str, Any], str]]:
    """``(trunk weights as stored, where they sit)`` of a VISSL file, or None."""
    for path in (_TRUNK_PATH, ("model_state_dict",)):
        d = _get(payload, path)
        if isinstance(d, Mapping) and d and (any(str(k).startswith(PREFIX) for k in d)
                                            or (path == _TRUNK_PATH and _is_vit_trunk(d))):
            return dict(d), ".".join(path) + "."
    if payload and all(str(k).startswith(PREFIX) for k in payload):
        return dict(payload), ""
    return None


def _detect(payload: Mapping[str, Any]) -> bool:
    return isinstance(payload, Mapping) and payload.get("format") is None and _trunk(payload) is not None


def _method(payload: Mapping[str, Any]) -> str:
    loss = payload.get("loss")
    if isinstance(loss, Mapping):
        for marker, method in _LOSS_MARKERS:
            if any(str(k).startswith(marker) for k in loss):
                return method
    return "unknown"


def _projector(heads: Mapping[str, Any], where: str, gelu: bool = False):
    """``(projector (spec, weights, where) or None, the head keys left unused with their reason)``. The hidden
    activations are not in the weights: ReLU, VISSL's default, or GELU (``gelu``: VISSL's DINO configs)."""
    proj, left = _projector_relu(heads, where)
    if proj is not None and gelu:
        proj = ([{"type": "gelu"} if l["type"] == "relu" else l for l in proj[0]], proj[1], proj[2])
    return proj, left


def _projector_relu(heads: Mapping[str, Any], where: str):
    idx = sorted({int(m.group(1)) for k in heads for m in [re.match(r"(\d+)\.", k)] if m})
    odd = [k for k in heads if not re.match(r"\d+\.", k)]
    if odd:
        raise ReprscopeError(f"VISSL heads have {[where + k for k in odd[:4]]}; expected heads.<i>.…")
    if not idx:
        return None, []
    kinds = {}
    for i in idx:
        sub = sub_state(heads, str(i))
        if any(k.startswith("projection_head.") for k in sub):
            kinds[i] = "swav_head"
        elif any(k.startswith("channel_bn.") or k.startswith("clf.clf.") for k in sub):
            kinds[i] = "eval_mlp"
        elif all(k.startswith("clf.") for k in sub):
            kinds[i] = "mlp"
        else:
            raise ReprscopeError(f"VISSL head {where}{i} has {sorted(sub)[:4]}; not an mlp, swav_head or eval_mlp head")
    if any(k == "eval_mlp" for k in kinds.values()):
        return None, [(k, "linear-evaluation classifier (eval_mlp) on the trunk; not analysed") for k in heads]
    if len(idx) > 1:
        why = (f"one of {len(idx)} chained VISSL heads; the activations between heads are in the run's config, not "
               "in the weights, so the trunk alone is analysed")
        return None, [(k, why) for k in heads]
    i = idx[0]
    if kinds[i] == "mlp":
        spec, weights = head_spec_from_state(heads, f"{i}.clf")
        return (spec, weights, {k: f"{i}.clf.{k}" for k in weights}), []
    spec, weights = head_spec_from_state(heads, f"{i}.projection_head")
    spec = spec + [{"type": "l2norm"}]  # SwAVPrototypesHead normalises the projection before the prototypes
    left = [k for k in heads if not k.startswith(f"{i}.projection_head.")]
    bad = [k for k in left if not re.match(rf"{i}\.prototypes\d+\.", k)]
    if bad:
        raise ReprscopeError(f"VISSL swav_head has {[where + k for k in bad[:4]]} besides its projection head and prototypes")
    return ((spec, weights, {k: f"{i}.projection_head.{k}" for k in weights}),
            [(k, "SwAV prototypes (cluster centres of the projection); not a representation") for k in left])


def _heads(payload: Mapping[str, Any], where: str):
    heads_raw = _get(payload, _HEADS_PATH) if where.startswith("classy_state_dict") else None
    heads = _as_tensors(heads_raw, "classy_state_dict.base_model.model.heads.") if isinstance(heads_raw, Mapping) else {}
    hwhere = "classy_state_dict.base_model.model.heads."
    projector, head_unused = _projector(heads, hwhere, gelu=_method(payload) == "dino")
    return heads, hwhere, projector, head_unused


def _unused(payload: Mapping[str, Any], hwhere: str, head_unused) -> list:
    out = [f"{hwhere}{k}: {why}" for k, why in head_unused]
    for k in ("loss", "optimizer"):
        if isinstance(payload.get(k), Mapping) and payload[k]:
            out.append(f"{k}: training state; not part of the model")
    cs = payload.get("classy_state_dict")
    if isinstance(cs, Mapping):
        out += [f"classy_state_dict.{k}: training state; not part of the model" for k in cs if k != "base_model"]
    return out


def _build_vit(payload: Mapping[str, Any], trunk: Dict[str, Any], where: str, options: LoadOptions) -> Dict[str, Any]:
    """VISSL's ``vision_transformer`` trunk: DINO's ViT in timm's names (LayerNorm ε 1e-6, the class token after the
    final norm). Its head count is in the run's YAML (``NUM_HEADS``), not in the file; VISSL's zoo ViTs (DeiT-S,
    ViT-B/L/H) follow timm's convention for their widths, which is used and said."""
    from .vit import _split_vit, build_vit_bundle

    state, origin = strip_state(trunk)
    origin = {k: f"{where}{v}" for k, v in origin.items()}
    backbone, classifier = _split_vit(state, origin)
    heads, hwhere, projector, head_unused = _heads(payload, where)
    head = None
    if projector:
        spec, w, wh = projector
        head = (spec, w, {k: f"{hwhere}{src}" for k, src in wh.items()})
    bundle, arch = build_vit_bundle(backbone, origin, "", head, options=options)
    branches = {"online": f"{where}* (the ViT trunk; VISSL files hold one network)"}
    role = pick_branch("VISSL", branches, "online", options.branch)
    unused_keys = _unused(payload, hwhere, head_unused) + [f"{origin[k]}: classifier; not analysed" for k in classifier]
    config = {"format": "vissl", "container": where.rstrip("."), **arch.config(),
              "heads": {"projector": head[0]} if head else {}}
    config["num_heads_source"] = f"{arch.heads_source} (VISSL keeps NUM_HEADS in the run's config, not in the file)"
    return {"bundle": bundle, "method": _method(payload), "config": config, "unused_keys": unused_keys,
            "epoch": payload.get("train_phase_idx") + 1 if isinstance(payload.get("train_phase_idx"), int) else None,
            "step": payload.get("iteration") if isinstance(payload.get("iteration"), int) else None,
            "branch": role, "branches": branches,
            "preprocess": pp.for_vit(bundle.encoder.img_size, f"VISSL {arch.name}")}


@register_format("vissl", detect=_detect,
                 summary="VISSL model-zoo checkpoint (classy_state_dict.base_model.model.trunk _feature_blocks.* + "
                         "heads; or model_state_dict with numpy arrays; SimCLR, SwAV, DeepCluster v2, SeLa v2, PIRL, "
                         "NPID, NPID++, ClusterFit, Jigsaw, RotNet, Barlow Twins, MoCo on ResNet-50; ViT trunks)")
def build_vissl(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    found = _trunk(payload)
    if found is None:
        raise ReprscopeError("no VISSL trunk (_feature_blocks.*) in the file")
    raw, where = found
    trunk = _as_tensors(raw, where)
    if _is_vit_trunk(trunk):
        return _build_vit(payload, trunk, where, options)
    stray = [k for k in trunk if not k.startswith(PREFIX)]
    if stray:
        raise ReprscopeError(f"VISSL trunk has {[where + k for k in stray[:4]]} outside _feature_blocks")
    state = {k[len(PREFIX):]: v for k, v in trunk.items()}
    state, origin = strip_state(state)
    origin = {k: f"{where}{PREFIX}{v}" for k, v in origin.items()}
    if "conv1.weight" not in state:
        raise ReprscopeError(f"VISSL trunk is not a ResNe(X)t ({sorted(state)[:3]} …); reprscope reads VISSL's ResNet "
                             "trunks")
    fc = [k for k in state if k.split(".", 1)[0] == "fc"]
    if fc:
        raise ReprscopeError(f"VISSL trunk has {[origin[k] for k in fc[:3]]}; VISSL's ResNe(X)t trunk has no fc")
    heads, hwhere, projector, head_unused = _heads(payload, where)
    parts = {"projector": projector} if projector else {}
    horigin = {f"<h>.{k}": f"{hwhere}{k}" for k in heads}
    bundle, arch = build_resnet_with_heads(
        state, {p: (s, w, {k: f"<h>.{src}" for k, src in wh.items()}) for p, (s, w, wh) in parts.items()},
        {**origin, **horigin}, "", options=options)
    branches = {"online": f"{where}{PREFIX}* (the trunk; VISSL files hold one network)"}
    role = pick_branch("VISSL", branches, "online", options.branch)
    unused_keys = _unused(payload, hwhere, head_unused)
    result = _result(bundle, arch, _method(payload), "vissl", where.rstrip(".") or None, payload,
                     {p: h[0] for p, h in parts.items()}, unused_keys, role=role, branches=branches)
    result["epoch"] = payload.get("train_phase_idx") + 1 if isinstance(payload.get("train_phase_idx"), int) else None
    result["step"] = payload.get("iteration") if isinstance(payload.get("iteration"), int) else None
    result["preprocess"] = pp.for_resnet(arch.cifar_stem, f"VISSL {arch.name}")
    return result

