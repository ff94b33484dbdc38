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
* ``byol``: roots within ``{online_encoder, online_predictor, target_encoder, augment1, augment2}``.

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


from ..errors import ReprscopeError
from .base import LoadOptions, pick_branch, register_format
from .common import RESNET_ROOTS, build_resnet_bundle, head_spec_from_state, sub_state, unused
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

_BYOL_ROOTS = {"online_encoder", "online_predictor", "target_encoder", "augment1", "augment2"}


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


@register_format("byol", detect=_is_byol,
                 summary="BYOL learner (lucidrains/byol-pytorch): online_encoder.{net,projector} + online_predictor; "
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
    heads: Dict[str, Any] = {}
    head_prefixes: Dict[str, str] = {}
    parts = [("projector", f"{enc}.projector")] + ([("predictor", "online_predictor")] if role == "online" else [])
    for part, prefix in parts:
        p = _mlp_prefix(state, prefix)
        if p is not None:
            heads[part] = head_spec_from_state(state, p)
            head_prefixes[part] = p
    if "predictor" in heads and "projector" not in heads:
        raise ReprscopeError("BYOL learner has an online_predictor but no online_encoder.projector")
    other = "target_encoder" if role == "online" else "online_encoder"
    other_keys = _under(state, other) + ([] if role == "online" else _under(state, "online_predictor"))
    aug = _under(state, "augment1") + _under(state, "augment2")
    used = set(_under(state, net)) | {k for p in head_prefixes.values() for k in _under(state, p)}
    _check_accounted(state, origin, used | set(other_keys) | set(aug), "BYOL")
    bundle, arch = build_resnet_bundle(_backbone(state, net), heads, origin, net, head_prefixes, options=options)
    what = ("BYOL target (momentum) encoder; the online branch is analysed" if role == "online"
            else "BYOL online network; the target (momentum) branch is analysed")
    unused_keys = (unused(fc, origin, "torchvision classifier of the wrapped net; BYOL reads the avgpool output, "
                                      "so it was never trained")
                   + unused(other_keys, origin, what)
                   + unused(aug, origin, "augmentation module state; not part of the model"))
    return _result(bundle, arch, "byol", "byol", container, payload,
                   {p: s for p, (s, _) in heads.items()}, unused_keys, role=role, branches=branches, branch=enc)
