"""More ResNet SSL checkpoints: Barlow Twins, VICReg, SwAV, SimCLR (sthalles) and BYOL (lucidrains port).

Same contract as :mod:`.resnet_ssl`: a detection rule on the container-resolved, prefix-stripped state dict and
a key mapping onto the one model contract; every tensor is loaded strictly or listed in ``unused_keys`` with
its reason, and a tensor no rule accounts for is an error.

Detection is by the set of top-level roots (after ``module.`` is stripped), so the rules exclude each other and
the formats of :mod:`.resnet_ssl`:

* ``barlowtwins``: roots ``{backbone, projector, bn}`` with ``bn.running_mean`` (container ``model`` or raw);
* ``vicreg``: roots ``{backbone, projector}`` (container ``model`` or raw);
* ``swav``: torchvision roots without ``fc`` plus ``projection_head`` (and ``prototypes``);
* ``simclr_sthalles``: root ``backbone`` only, with the projector in ``backbone.fc.N``;
* ``byol``: roots within ``{net, online_encoder, online_predictor, target_encoder, augment1, augment2}``.

Choices (recorded in ``config``):

* Barlow Twins' ``bn`` (BatchNorm1d(affine=False) of the projector width) normalises each branch's embedding
  before the cross-correlation in the loss; it is appended to the projector as its last layer (as SimSiam's
  and MoCo v3's affine-free last BN are), so ``z`` is the embedding the loss correlates (eval mode: running
  statistics). ``config["projector_last_bn"] = "bn"``.
* SwAV normalises the projection-head output before scoring it against the prototypes; the projector is the
  projection head followed by an ℓ2 normalisation, so ``z`` is the 128-d unit-norm embedding the loss uses.
  The prototypes ([K,128] cluster centres; DeepCluster-v2 ``prototypes.prototypesN``) are listed unused:
  they are a clustering of ``z``, not a representation (their number K is recorded as ``n_prototypes``).
* BYOL: the online branch is analysed (encoder, projector, predictor); the target (momentum) encoder and the
  torchvision ``fc`` of the wrapped net (never trained: BYOL reads the ``avgpool`` output) are unused.

Sources: facebookresearch/barlowtwins ``main.py``, facebookresearch/vicreg ``main_vicreg.py``,
facebookresearch/swav ``src/resnet50.py`` / ``main_swav.py``, sthalles/SimCLR ``models/resnet_simclr.py``,
lucidrains/byol-pytorch ``byol_pytorch.py``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Set

import torch

from ..errors import ReprscopeError
from .base import LoadOptions, pick_branch, register_format
from .common import (RESNET_ROOTS, build_resnet_bundle, build_resnet_with_heads, head_spec_from_state, strip_state,
                     sub_state, unused)
from .resnet_ssl import (_backbone, _check_accounted, _must_resolve, _resolve, _result, _under, file_prefix,
                         single_branch)


def _roots(state: Mapping[str, Any]) -> Set[str]:
    return {k.split(".", 1)[0] for k in state}


def _is_resnet_under(state: Mapping[str, Any], prefix: str) -> bool:
    p = f"{prefix}." if prefix else ""
    return f"{p}conv1.weight" in state and f"{p}layer1.0.conv1.weight" in state


# -- Barlow Twins / VICReg ----------------------------------------------------------------------------------


def _backbone_projector(payload: Mapping[str, Any], with_bn: bool) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state, _, container = r
    if container not in ("model", None) or not _is_resnet_under(state, "backbone"):
        return False
    if "projector.0.weight" not in state or any(k.startswith("backbone.fc.") for k in state):
        return False
    if with_bn:
        return _roots(state) == {"backbone", "projector", "bn"} and "bn.running_mean" in state and "bn.weight" not in state
    return _roots(state) == {"backbone", "projector"}


def _is_barlowtwins(payload: Mapping[str, Any]) -> bool:
    return _backbone_projector(payload, with_bn=True)


def _is_vicreg(payload: Mapping[str, Any]) -> bool:
    return _backbone_projector(payload, with_bn=False)


@register_format("barlowtwins", detect=_is_barlowtwins,
                 summary="Barlow Twins (facebookresearch/barlowtwins): module.backbone + module.projector + module.bn "
                         "(affine-free BN appended to the projector)")
def build_barlowtwins(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    role, branches = single_branch(state, origin, "backbone", options, "Barlow Twins")
    spec, renamed = head_spec_from_state(state, "projector")
    bn = sub_state(state, "bn")
    odd = sorted(set(bn) - {"running_mean", "running_var", "num_batches_tracked"})
    if odd:
        raise ReprscopeError(f"Barlow Twins 'bn' should be an affine-free BatchNorm but has {[origin['bn.' + k] for k in odd]}")
    i = len(spec)
    spec = spec + [{"type": "batchnorm", "in": int(bn["running_mean"].numel()), "affine": False}]
    origin = dict(origin)
    for k, v in bn.items():
        renamed[f"{i}.{k}"] = v
        origin[f"projector.{i}.{k}"] = origin[f"bn.{k}"]
    heads = {"projector": (spec, renamed)}
    _check_accounted(state, origin, set(_under(state, "backbone")) | set(_under(state, "projector"))
                     | set(_under(state, "bn")), "Barlow Twins")
    bundle, arch = build_resnet_bundle(sub_state(state, "backbone"), heads, origin, "backbone",
                                       {"projector": "projector"}, options=options)
    return _result(bundle, arch, "barlowtwins", "barlowtwins", container, payload, {"projector": spec}, [],
                   role=role, branches=branches, branch="backbone", projector_last_bn="bn")


@register_format("vicreg", detect=_is_vicreg,
                 summary="VICReg (facebookresearch/vicreg): module.backbone + module.projector (no module.bn)")
def build_vicreg(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    role, branches = single_branch(state, origin, "backbone", options, "VICReg")
    heads = {"projector": head_spec_from_state(state, "projector")}
    _check_accounted(state, origin, set(_under(state, "backbone")) | set(_under(state, "projector")), "VICReg")
    bundle, arch = build_resnet_bundle(sub_state(state, "backbone"), heads, origin, "backbone",
                                       {"projector": "projector"}, options=options)
    return _result(bundle, arch, "vicreg", "vicreg", container, payload,
                   {p: s for p, (s, _) in heads.items()}, [], role=role, branches=branches, branch="backbone")


# -- SwAV ---------------------------------------------------------------------------------------------------

_SWAV_ROOTS = (set(RESNET_ROOTS) - {"fc"}) | {"projection_head", "prototypes"}


def _is_swav(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    if not _is_resnet_under(state, ""):
        return False
    has_head = "projection_head.0.weight" in state or "projection_head.weight" in state
    return has_head and _roots(state) <= _SWAV_ROOTS


@register_format("swav", detect=_is_swav,
                 summary="SwAV (facebookresearch/swav): torchvision names + projection_head (+ l2norm); "
                         "prototypes unused")
def build_swav(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    role, branches = single_branch(state, origin, "", options, "SwAV")
    spec, renamed = head_spec_from_state(state, "projection_head")
    spec = spec + [{"type": "l2norm"}]
    heads = {"projector": (spec, renamed)}
    protos = _under(state, "prototypes")
    backbone = {k: v for k, v in state.items() if k.split(".", 1)[0] in RESNET_ROOTS}
    _check_accounted(state, origin, set(backbone) | set(_under(state, "projection_head")) | set(protos), "SwAV")
    bundle, arch = build_resnet_bundle(backbone, heads, origin, "", {"projector": "projection_head"}, options=options)
    n_protos = [int(state[k].shape[0]) for k in protos if k.endswith("weight") and state[k].dim() == 2]
    unused_keys = unused(protos, origin, "SwAV prototypes (cluster centres scoring the l2-normalised projector "
                                         "output); a clustering of z, not a representation")
    return _result(bundle, arch, "swav", "swav", container, payload, {"projector": spec}, unused_keys,
                   role=role, branches=branches, branch=None, n_prototypes=n_protos)


# -- SimCLR (sthalles) --------------------------------------------------------------------------------------


def _is_simclr_sthalles(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return (_is_resnet_under(state, "backbone") and "backbone.fc.0.weight" in state
            and _roots(state) == {"backbone"})


@register_format("simclr_sthalles", detect=_is_simclr_sthalles,
                 summary="SimCLR (sthalles/SimCLR): backbone.* with the projector in backbone.fc.{0,2}")
def build_simclr_sthalles(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    role, branches = single_branch(state, origin, "backbone", options, "SimCLR (sthalles)")
    heads = {"projector": head_spec_from_state(state, "backbone.fc")}
    _check_accounted(state, origin, set(_under(state, "backbone")), "SimCLR (sthalles)")
    bundle, arch = build_resnet_bundle(_backbone(state, "backbone"), heads, origin, "backbone",
                                       {"projector": "backbone.fc"}, options=options)
    return _result(bundle, arch, "simclr", "simclr_sthalles", container, payload,
                   {p: s for p, (s, _) in heads.items()}, [], role=role, branches=branches, branch="backbone")


# -- BYOL (lucidrains/byol-pytorch learner) -----------------------------------------------------------------

_BYOL_ROOTS = {"net", "online_encoder", "online_predictor", "target_encoder", "augment1", "augment2"}
#: byol-pytorch's simplicial embedding (``use_simplicial_embeddings=True``, the default since 0.9): its group size
#: and temperature are constructor arguments, not weights; these are the defaults (``sem_simplex_dim``,
#: ``sem_temperature``)
BYOL_SEM_SIMPLEX_DIM, BYOL_SEM_TEMPERATURE = 8, 0.1


def _is_byol(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    return _is_resnet_under(state, "online_encoder.net") and _roots(state) <= _BYOL_ROOTS


def _mlp_prefix(state: Mapping[str, Any], prefix: str) -> Optional[str]:
    """``prefix.net`` (old ``class MLP`` with ``self.net``) or ``prefix`` (``MLP`` returning a Sequential)."""
    if _under(state, f"{prefix}.net"):
        return f"{prefix}.net"
    return prefix if _under(state, prefix) else None


def byol_projector(state: Mapping[str, Any], prefix: str):
    """byol-pytorch's projector as ``(spec, weights, weight key → stripped key)``: since 0.9 ``Sequential(embedder =
    Sequential(Linear, BatchNorm), SEM, MLP)`` (``prefix.0.0``, ``prefix.0.1``, ``prefix.2.N``), before it the MLP
    alone (``prefix.N``, or ``prefix.net.N``). The SEM becomes a ``simplicial`` layer (groups of
    :data:`BYOL_SEM_SIMPLEX_DIM` at temperature :data:`BYOL_SEM_TEMPERATURE`, byol-pytorch's defaults)."""
    if f"{prefix}.0.0.weight" not in state:
        p = _mlp_prefix(state, prefix) or prefix
        spec, weights = head_spec_from_state(state, p)
        return spec, weights, {k: f"{p}.{k}" for k in weights}
    odd = [k for k in _under(state, prefix) if not k.startswith((f"{prefix}.0.", f"{prefix}.2."))]
    if odd:
        raise ReprscopeError(f"BYOL projector with a simplicial embedding has {odd[:4]} beyond its embedder "
                             f"({prefix}.0) and MLP ({prefix}.2)")
    emb_spec, emb_w = head_spec_from_state(state, f"{prefix}.0")
    if [l["type"] for l in emb_spec] != ["linear", "batchnorm"]:
        raise ReprscopeError(f"BYOL embedder '{prefix}.0' is {[l['type'] for l in emb_spec]}; expected Linear + BatchNorm")
    dim = int(emb_spec[0]["out"])
    if dim % BYOL_SEM_SIMPLEX_DIM:
        raise ReprscopeError(f"BYOL simplicial embedding of width {dim} is not a multiple of byol-pytorch's default "
                             f"simplex size {BYOL_SEM_SIMPLEX_DIM}; its group size is not in the weights")
    mlp_spec, mlp_w = head_spec_from_state(state, f"{prefix}.2")
    sem = {"type": "simplicial", "in": dim, "simplex_dim": BYOL_SEM_SIMPLEX_DIM, "temperature": BYOL_SEM_TEMPERATURE}
    spec = emb_spec + [sem] + mlp_spec
    weights = dict(emb_w)
    where = {k: f"{prefix}.0.{k}" for k in emb_w}
    for k, v in mlp_w.items():
        i, _, rest = k.partition(".")
        weights[f"{int(i) + 3}.{rest}"], where[f"{int(i) + 3}.{rest}"] = v, f"{prefix}.2.{k}"
    return spec, weights, where


@register_format("byol", detect=_is_byol,
                 summary="BYOL learner of byol-pytorch (lucidrains; ≥ 0.9 with the simplicial-embedding projector and "
                         "net.* beside online_encoder.net.*): online_encoder.{net,projector} + online_predictor; "
                         "target encoder and the untrained fc unused")
def build_byol(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container = _must_resolve(payload)
    branches = {"online": f"{file_prefix(state, origin, 'online_encoder')} + online_predictor (online network)"}
    if _is_resnet_under(state, "target_encoder.net"):
        branches["momentum"] = f"{file_prefix(state, origin, 'target_encoder')} (target network, an EMA of the online one)"
    role = pick_branch("BYOL", branches, "online", options.branch)
    enc = "online_encoder" if role == "online" else "target_encoder"
    net = f"{enc}.net"
    fc = _under(state, f"{net}.fc")
    odd = [origin[k] for k in fc if k not in (f"{net}.fc.weight", f"{net}.fc.bias")]
    if odd:
        raise ReprscopeError(f"BYOL {role} net has an indexed fc ({', '.join(odd[:4])}); expected the torchvision "
                             "classifier that BYOL never trains")
    # BYOL.net is the module online_encoder.net wraps: the file holds it twice, with equal tensors
    alias = _under(state, "net")
    differ = [origin[k] for k in alias if not (f"online_encoder.{k}" in state
                                                and torch.equal(state[k], state[f"online_encoder.{k}"]))]
    if differ:
        raise ReprscopeError(f"BYOL learner's net.* should be the module online_encoder.net wraps, but "
                             f"{', '.join(differ[:4])} differ from it")
    heads: Dict[str, Any] = {}
    parts = [("projector", f"{enc}.projector")] + ([("predictor", "online_predictor")] if role == "online" else [])
    for part, prefix in parts:
        if _under(state, prefix):
            heads[part] = byol_projector(state, prefix)
    if "predictor" in heads and "projector" not in heads:
        raise ReprscopeError("BYOL learner has an online_predictor but no online_encoder.projector")
    other = "target_encoder" if role == "online" else "online_encoder"
    other_keys = _under(state, other) + ([] if role == "online" else _under(state, "online_predictor"))
    aug = _under(state, "augment1") + _under(state, "augment2")
    used = set(_under(state, net)) | {k for h in heads.values() for k in h[2].values()}
    _check_accounted(state, origin, used | set(other_keys) | set(aug) | set(alias), "BYOL")
    bundle, arch = build_resnet_with_heads(_backbone(state, net), heads, origin, net, options=options)
    what = ("BYOL target (momentum) encoder; the online branch is analysed" if role == "online"
            else "BYOL online network; the target (momentum) branch is analysed")
    unused_keys = (unused(fc, origin, "torchvision classifier of the wrapped net; BYOL reads the avgpool output, "
                                      "so it was never trained")
                   + unused(other_keys, origin, what)
                   + unused(alias, origin, "the wrapped net again (BYOL.net is online_encoder.net)")
                   + unused(aug, origin, "augmentation module state; not part of the model"))
    sem = any(l["type"] == "simplicial" for l in heads.get("projector", ([],))[0])
    return _result(bundle, arch, "byol", "byol", container, payload,
                   {p: h[0] for p, h in heads.items()}, unused_keys, role=role, branches=branches, branch=enc,
                   simplicial_embedding=({"simplex_dim": BYOL_SEM_SIMPLEX_DIM, "temperature": BYOL_SEM_TEMPERATURE,
                                          "source": "byol-pytorch defaults (not in the weights)"} if sem else None))


# -- BYOL re-implementations' released backbones --------------------------------------------------------------

#: top-level keys of BYOL re-implementations that release the backbones only (``{"online_backbone": {"module.…"}}``)
_BYOL_RELEASE = {"online": "online_backbone", "momentum": "target_backbone"}


def _resnet_dict(d: Any) -> Optional[Dict[str, Any]]:
    if not (isinstance(d, Mapping) and any(isinstance(v, torch.Tensor) for v in d.values())):
        return None
    try:
        state, _ = strip_state(d)
    except ReprscopeError:
        return None
    if not _is_resnet_under(state, "") or _roots(state) - set(RESNET_ROOTS):
        return None
    return state


def _is_byol_backbones(payload: Mapping[str, Any]) -> bool:
    return (isinstance(payload, Mapping) and payload.get("format") is None
            and _resnet_dict(payload.get("online_backbone")) is not None)


@register_format("byol_backbones", detect=_is_byol_backbones,
                 summary="a BYOL re-implementation's release: {'online_backbone': ResNet [, 'target_backbone': …]} "
                         "(module. prefixes); online analysed, --branch momentum the target")
def build_byol_backbones(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    branches = {b: f"{k}.* ({'online network' if b == 'online' else 'target network, an EMA of the online one'})"
                for b, k in _BYOL_RELEASE.items() if _resnet_dict(payload.get(k)) is not None}
    role = pick_branch("BYOL release", branches, "online", options.branch)
    key = _BYOL_RELEASE[role]
    state, origin = strip_state(payload[key])
    origin = {k: f"{key}.{v}" for k, v in origin.items()}
    fc = [k for k in state if k == "fc" or k.startswith("fc.")]
    if any(k not in ("fc.weight", "fc.bias") for k in fc):
        raise ReprscopeError(f"{key} has an indexed fc ({', '.join(origin[k] for k in fc[:4])}); expected a ResNet "
                             "with at most its classifier")
    bundle, arch = build_resnet_bundle({k: v for k, v in state.items() if k not in fc}, {}, origin, "", {},
                                       options=options)
    unused_keys = unused(fc, origin, "classifier (2-D fc) on the backbone; not analysed")
    for k, v in payload.items():
        if k == key or not (isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())):
            continue
        what = ("the other BYOL network" if k in _BYOL_RELEASE.values() else
                "a part whose layout is that re-implementation's own (a projector or predictor); not read")
        unused_keys.append(f"{k}.* ({sum(isinstance(t, torch.Tensor) for t in v.values())} tensors): {what}")
    return _result(bundle, arch, "byol", "byol_backbones", key, payload, {}, unused_keys, role=role,
                   branches=branches, branch=key)
