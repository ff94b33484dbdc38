"""ResNet checkpoints of SSL projects and raw torchvision/timm ResNets.

Each format is a detection rule on the (container-resolved, prefix-stripped) state dict and a key mapping
onto the one model contract. Every tensor of the state dict is either loaded strictly or listed in
``unused_keys`` with its reason; a tensor no rule accounts for is an error.

Sources: SimSiam (Chen & He 2021, facebookresearch/simsiam ``main_simsiam.py``), MoCo v1/v2 (He et al. 2020,
Chen et al. 2020, facebookresearch/moco), MoCo v3 (Chen et al. 2021, facebookresearch/moco-v3).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import (RESNET_ROOTS, build_resnet_bundle, epoch_of, find_state_dict, head_spec_from_state,
                     other_networks, strip_state, sub_state, unused)

Resolved = Tuple[Dict[str, torch.Tensor], Dict[str, str], Optional[str]]


def _resolve(payload: Mapping[str, Any]) -> Optional[Resolved]:
    """``(stripped state, stripped → original key, container)``, or None when the payload has no tensor dict."""
    if payload.get("format") is not None:  # reprscope's own files are self-describing
        return None
    try:
        state, container = find_state_dict(payload)
        stripped, origin = strip_state(state)
    except ReprscopeError:
        return None
    return stripped, origin, container


def _must_resolve(payload: Mapping[str, Any]) -> Resolved:
    state, container = find_state_dict(payload)
    stripped, origin = strip_state(state)
    return stripped, origin, container


def _under(state: Mapping[str, Any], prefix: str) -> List[str]:
    p = prefix + "."
    return [k for k in state if k.startswith(p)]


def _check_accounted(state: Mapping[str, Any], origin: Mapping[str, str], accounted: set, fmt: str) -> None:
    left = [origin.get(k, k) for k in state if k not in accounted]
    if left:
        raise ReprscopeError(f"{fmt} checkpoint has tensors no rule of the format accounts for: "
                             + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""))


def _backbone(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """The torchvision-named backbone under ``prefix`` without its ``fc`` slot (which holds the projector)."""
    return {k: v for k, v in sub_state(state, prefix).items() if not (k == "fc" or k.startswith("fc."))}


def file_prefix(state: Mapping[str, Any], origin: Mapping[str, str], prefix: str) -> str:
    """``prefix.*`` as it is spelled in the file (``module.encoder_q.*``), for messages and ``inspect``."""
    p = f"{prefix}." if prefix else ""
    for k in state:
        if k.startswith(p):
            o = origin.get(k, k)
            return o[: len(o) - len(k)] + p + "*"
    return p + "*"


def resolve_with_ema(payload: Mapping[str, Any], options: LoadOptions, fmt: str
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], Optional[str], str, Dict[str, str], List[str]]:
    """A raw/timm-style file whose ``state_dict`` may come with ``state_dict_ema`` (timm's model EMA): the EMA
    copy is the ``momentum`` branch, the trained weights ``online`` (the default).

    Returns:
        ``(state, origin, container, branch, branches, unused entries for the other copy)``.
    """
    state, origin, container = _must_resolve(payload)
    ema = payload.get("state_dict_ema") if container == "state_dict" else None
    if not (isinstance(ema, Mapping) and any(isinstance(v, torch.Tensor) for v in ema.values())):
        role, branches = single_branch(state, origin, "", options, fmt)
        return state, origin, container, role, branches, []
    branches = {"online": "state_dict.* (the trained weights)",
                "momentum": "state_dict_ema.* (their exponential moving average)"}
    role = pick_branch(fmt, branches, "online", options.branch)
    if role == "momentum":
        state, origin = strip_state(ema)
        origin = {k: f"state_dict_ema.{v}" for k, v in origin.items()}
        container, skipped = "state_dict_ema", "state_dict: the trained (non-EMA) weights; 'state_dict_ema' is analysed"
    else:
        skipped = "state_dict_ema: EMA copy of the weights; 'state_dict' is analysed (--branch momentum reads it)"
    return state, origin, container, role, branches, [skipped]


def single_branch(state: Mapping[str, Any], origin: Mapping[str, str], prefix: str,
                  options: LoadOptions, fmt: str) -> Tuple[str, Dict[str, str]]:
    """``(branch, branches)`` of a file that holds one network (under ``prefix``): ``online``."""
    branches = {"online": f"{file_prefix(state, origin, prefix)}, the only network in the file"}
    return pick_branch(fmt, branches, "online", options.branch), branches


def _result(bundle, arch, method: str, fmt: str, container: Optional[str], payload: Mapping[str, Any],
            heads: Dict[str, List[Dict[str, Any]]], unused_keys: List[str], *, role: str,
            branches: Dict[str, str], **extra: Any) -> Dict[str, Any]:
    config = {"format": fmt, "container": container, **arch.config(), "heads": heads, **extra}
    if isinstance(payload.get("arch"), str):
        config["arch_saved"] = payload["arch"]
    return {"bundle": bundle, "method": method, "config": config, "epoch": epoch_of(payload),
            "unused_keys": unused_keys, "branch": role, "branches": branches,
            "preprocess": pp.for_resnet(arch.cifar_stem, f"{arch.name}")}


# -- SimSiam ------------------------------------------------------------------------------------------------


def _is_simsiam(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return "encoder.conv1.weight" in state and bool(_under(state, "encoder.fc")) and bool(_under(state, "predictor"))


@register_format("simsiam", detect=_is_simsiam,
                 summary="SimSiam (facebookresearch/simsiam): module.encoder.* + encoder.fc projector + module.predictor")
def build_simsiam(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    role, branches = single_branch(state, origin, "encoder", options, "SimSiam")
    backbone = _backbone(state, "encoder")
    heads = {"projector": head_spec_from_state(state, "encoder.fc"),
             "predictor": head_spec_from_state(state, "predictor")}
    _check_accounted(state, origin, set(_under(state, "encoder")) | set(_under(state, "predictor")), "SimSiam")
    bundle, arch = build_resnet_bundle(backbone, heads, origin, "encoder",
                                       {"projector": "encoder.fc", "predictor": "predictor"}, options=options)
    return _result(bundle, arch, "simsiam", "simsiam", container, payload,
                   {p: s for p, (s, _) in heads.items()}, [], role=role, branches=branches, branch="encoder")


# -- MoCo v1 / v2 / v3 --------------------------------------------------------------------------------------


def _is_moco(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    v12 = "encoder_q.conv1.weight" in state
    v3 = "base_encoder.conv1.weight" in state and bool(_under(state, "momentum_encoder"))
    return v12 or v3


@register_format("moco", detect=_is_moco,
                 summary="MoCo v1/v2 (module.encoder_q, queue) and v3 ResNet (module.base_encoder, momentum_encoder)")
def build_moco(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    if "encoder_q.conv1.weight" in state:  # v1 / v2: query encoder (online) and key encoder (momentum)
        prefixes = {"online": "encoder_q", "momentum": "encoder_k"}
        branches = {"online": f"{file_prefix(state, origin, 'encoder_q')} (query encoder)"}
        if _under(state, "encoder_k"):
            branches["momentum"] = f"{file_prefix(state, origin, 'encoder_k')} (key encoder)"
        role = pick_branch("MoCo", branches, "online", options.branch)
        net = prefixes[role]
        heads = {"projector": head_spec_from_state(state, f"{net}.fc")}
        n_linear = sum(s["type"] == "linear" for s in heads["projector"][0])
        method = "moco_v1" if n_linear == 1 else "moco_v2"
        other = prefixes["momentum" if role == "online" else "online"]
        other_keys = _under(state, other)
        queue = [k for k in ("queue", "queue_ptr") if k in state]
        what = {"encoder_k": "MoCo key (momentum) encoder", "encoder_q": "MoCo query (online) encoder"}[other]
        unused_keys = (unused(other_keys, origin, f"{what}; the {role} branch ({net}) is analysed")
                       + unused(queue, origin, "MoCo negative-key queue; not part of the model"))
        accounted = set(_under(state, net)) | set(other_keys) | set(queue)
        head_prefixes = {"projector": f"{net}.fc"}
    else:  # v3: base_encoder (+ predictor) and momentum_encoder
        branches = {"online": f"{file_prefix(state, origin, 'base_encoder')} + predictor (base encoder)",
                    "momentum": f"{file_prefix(state, origin, 'momentum_encoder')} (momentum encoder)"}
        role = pick_branch("MoCo v3", branches, "online", options.branch)
        net = "base_encoder" if role == "online" else "momentum_encoder"
        heads = {"projector": head_spec_from_state(state, f"{net}.fc")}
        predictor = _under(state, "predictor")
        if predictor and role == "online":
            heads["predictor"] = head_spec_from_state(state, "predictor")
        method = "moco_v3"
        other = "momentum_encoder" if role == "online" else "base_encoder"
        other_keys = _under(state, other)
        what = {"momentum_encoder": "MoCo v3 momentum encoder", "base_encoder": "MoCo v3 base (online) encoder"}[other]
        unused_keys = unused(other_keys, origin, f"{what}; the {role} branch ({net}) is analysed")
        if role != "online":
            unused_keys += unused(predictor, origin, "MoCo v3 predictor of the online branch; the momentum branch has none")
        accounted = set(_under(state, "base_encoder")) | set(predictor) | set(_under(state, "momentum_encoder"))
        head_prefixes = {"projector": f"{net}.fc", "predictor": "predictor"}
    _check_accounted(state, origin, accounted, "MoCo")
    bundle, arch = build_resnet_bundle(_backbone(state, net), heads, origin, net, head_prefixes, options=options)
    return _result(bundle, arch, method, "moco", container, payload,
                   {p: s for p, (s, _) in heads.items()}, unused_keys, role=role, branches=branches, branch=net)


# -- raw torchvision / timm ResNet --------------------------------------------------------------------------


def _is_torchvision(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        return False
    if any(k.split(".", 1)[0] not in RESNET_ROOTS for k in state) or other_networks(payload, r[2]):
        return False
    if r[2] in ("online_backbone", "target_backbone"):  # a BYOL release: format byol_backbones
        return False
    from .timm_plain import is_timm_checkpoint  # a timm training checkpoint is read by the timm format

    if is_timm_checkpoint(payload):
        return False
    fc = state.get("fc.weight")
    return fc is None or (isinstance(fc, torch.Tensor) and fc.dim() == 2)


@register_format("torchvision", detect=_is_torchvision,
                 summary="a raw torchvision/timm ResNet state dict (2-D fc = classifier, unused); no heads")
def build_torchvision(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container, role, branches, ema_unused = resolve_with_ema(payload, options, "torchvision")
    others = other_networks(payload, container)
    if others:
        raise ReprscopeError(f"the file holds several networks ('{container}' and {', '.join(map(repr, others[:4]))}): "
                             "a training checkpoint of another format, not one raw ResNet")
    fc = [k for k in state if k == "fc" or k.startswith("fc.")]
    odd = [origin[k] for k in fc if k not in ("fc.weight", "fc.bias")]
    if odd:
        raise ReprscopeError(f"torchvision ResNet has an indexed fc ({', '.join(odd[:4])}): that is a projector, "
                             "not a classifier; use the format of the SSL project that wrote it")
    backbone = {k: v for k, v in state.items() if k not in fc}
    bundle, arch = build_resnet_bundle(backbone, {}, origin, "", {}, options=options)
    unused_keys = unused(fc, origin, "classifier (2-D fc) on top of the representation; not analysed "
                                     "(in lucidrains-BYOL saves it was never trained)") + ema_unused
    return _result(bundle, arch, "unknown", "torchvision", container, payload, {}, unused_keys, role=role,
                   branches=branches, branch=None)
