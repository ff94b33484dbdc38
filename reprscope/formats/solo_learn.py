"""solo-learn checkpoints (da Costa et al. 2022, vturrisi/solo-learn): Lightning ``.ckpt`` files.

Layout: ``state_dict`` (no ``module.``) with the online network
``backbone.`` (old releases: ``encoder.``), ``projector.``, ``predictor.``, DINO's ``head.`` (MLP → ℓ2 →
weight-normed last layer); momentum methods add ``momentum_backbone.`` (old: ``momentum_encoder.``),
``momentum_projector.`` / ``momentum_head.``; every method trains an online linear ``classifier.`` on detached
features. The run's config is ``args.json`` beside the checkpoint (``method``, ``backbone.name``,
``data.dataset``, crop sizes); solo-learn does not store it in the ``.ckpt``.

Choices:

* Branch: the momentum (EMA) network by default where there is one, else the online one; ``--branch online`` reads ``backbone.`` + its heads.
* CIFAR ResNets: solo-learn replaces conv1 by a 3×3 stride-1 conv with **padding 2** and drops the max-pool
  (``solo/methods/base.py``); the padding is not visible in the weights and is rebuilt as written there.
* Unused, each with its reason: the other branch, ``classifier.`` / ``momentum_classifier.``, queues
  (``queue``, ``queue_ptr``, ``queue_y``), SwAV / DeepCluster-v2 ``prototypes.``, the MAE ``decoder.``, loss
  buffers (``*loss_func.*``, e.g. DINO's centre). Any other root is an error.
* Preprocessing: ``args.json``'s ``data.dataset`` (CIFAR: 32×32, CIFAR statistics; else ImageNet 224), else
  read from the backbone (CIFAR stem or not).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import build_resnet_with_heads, epoch_of, strip_state, sub_state, unused
from .vit import _split_vit, build_vit_bundle, dino_head_spec, indexed_head

LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "optimizer_states", "lr_schedulers", "loops",
                  "callbacks")

_ONLINE = ("backbone", "encoder")
_MOMENTUM = ("momentum_backbone", "momentum_encoder")
_UNUSED_ROOTS = {
    "classifier": "online linear classifier (trained on detached features during pre-training); not analysed",
    "momentum_classifier": "linear classifier on the momentum backbone; not analysed",
    "queue": "queue of past embeddings (negatives / neighbours); not part of the model",
    "queue_ptr": "queue pointer; not part of the model",
    "queue_y": "labels of the queued embeddings; not part of the model",
    "queue_idx": "indices of the queued embeddings; not part of the model",
    "prototypes": "SwAV / DeepCluster-v2 prototypes (a clustering of z); not a representation",
    "decoder": "MAE decoder (pixel reconstruction); not part of the representation",
}


def is_lightning(payload: Mapping[str, Any]) -> bool:
    """A PyTorch Lightning checkpoint: a ``state_dict`` next to Lightning's own bookkeeping keys."""
    sd = payload.get("state_dict")
    return isinstance(sd, Mapping) and any(k in payload for k in LIGHTNING_KEYS)


def _roots(state: Mapping[str, Any]) -> set:
    return {k.split(".", 1)[0] for k in state}


def _detect(payload: Mapping[str, Any]) -> bool:
    if not isinstance(payload, Mapping) or payload.get("format") is not None or not is_lightning(payload):
        return False
    try:
        state, _ = strip_state(payload["state_dict"])
    except ReprscopeError:
        return False
    roots = _roots(state)
    if "projection_head" in roots or "online_classifier" in roots:  # lightly
        return False
    return bool(roots & set(_ONLINE)) and bool(roots & ({"classifier"} | set(_MOMENTUM)))


def read_args_json(source: Optional[str]) -> Dict[str, Any]:
    """``args.json`` beside the checkpoint (solo-learn writes the run's config there), or ``{}``."""
    if not source:
        return {}
    path = Path(source).parent / "args.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReprscopeError(f"'{path}' beside the checkpoint is not readable JSON ({exc}); remove or fix it") from None
    return data if isinstance(data, dict) else {}


def _cfg(args: Mapping[str, Any], *path: str) -> Any:
    cur: Any = args
    for p in path:
        if not isinstance(cur, Mapping) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _preprocess(args: Mapping[str, Any], fallback):
    dataset = _cfg(args, "data", "dataset") or args.get("dataset")
    if not isinstance(dataset, str):
        return fallback
    augs = args.get("augmentations")
    crop = None
    if isinstance(augs, list) and augs and isinstance(augs[0], Mapping):
        crop = augs[0].get("crop_size")
    crop = crop or args.get("crop_size")
    return pp.from_dataset_name(dataset, f"solo-learn args.json: data.dataset = {dataset}",
                                int(crop) if isinstance(crop, int) else None)


def _vit_heads(method: Any):
    """solo-learn builds its ViTs by method (``solo/backbones/vit``): MoCo v3 gets MoCo v3's ViT, whose ViT-S and
    ViT-B have 12 heads (ViT-S: head_dim 32, not timm's 6 heads); the other methods timm's ViTs. Without
    ``args.json`` the method is unknown: timm's convention, said so with the override."""
    if method is None:
        def unknown(dim: int):
            from .vit import _HEADS_BY_DIM

            if dim not in _HEADS_BY_DIM:
                return None
            return _HEADS_BY_DIM[dim], (f"timm convention for embed_dim {dim}; no args.json beside the checkpoint says "
                                        "the method (solo-learn's MoCo v3 ViT-S/B have 12 heads: --arch vit:num_heads=12)")
        return unknown
    if method != "mocov3":
        return None

    def hint(dim: int):
        if dim in (384, 768):
            return 12, f"solo-learn method mocov3 builds MoCo v3's ViT: 12 heads for embed_dim {dim}"
        return None

    return hint


@register_format("solo_learn", detect=_detect,
                 summary="solo-learn Lightning .ckpt (backbone/projector/predictor, momentum_*, classifier; "
                         "args.json beside it); momentum branch analysed where there is one")
def build_solo_learn(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    if not isinstance(payload.get("state_dict"), Mapping):
        raise ReprscopeError("solo-learn checkpoint has no 'state_dict'")
    state, origin = strip_state(payload["state_dict"])
    origin = {k: f"state_dict.{v}" for k, v in origin.items()}
    roots = _roots(state)
    online = next((r for r in _ONLINE if r in roots), None)
    momentum = next((r for r in _MOMENTUM if r in roots), None)
    if online is None:
        raise ReprscopeError("solo-learn checkpoint has no 'backbone.' (or old 'encoder.') weights")
    parts = {"online": {"backbone": online, "projector": "projector", "head": "head", "predictor": "predictor"},
             "momentum": {"backbone": momentum, "projector": "momentum_projector", "head": "momentum_head"}}
    branches = {"online": f"state_dict.{online}.* + projector/predictor/head (online network)"}
    if momentum:
        branches["momentum"] = f"state_dict.{momentum}.* + momentum_projector/momentum_head (EMA network)"
    role = pick_branch("solo-learn", branches, "momentum" if momentum else "online", options.branch)
    mine = {r for r in parts[role].values() if r and r in roots}
    theirs = {r for b, ps in parts.items() if b != role for r in ps.values() if r and r in roots}
    loss = {r for r in roots if r.endswith("loss_func") or r.endswith("_loss")}
    known = mine | theirs | loss | set(_UNUSED_ROOTS)
    stray = sorted(origin[k] for k in state if k.split(".", 1)[0] not in known)
    if stray:
        raise ReprscopeError("solo-learn checkpoint has tensors no rule of the format accounts for: "
                             + ", ".join(stray[:8]) + (" …" if len(stray) > 8 else ""))
    p = parts[role]
    heads: Dict[str, Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]] = {}
    if p["head"] in roots:  # DINO: head = MLP → l2 → weight-normed last layer
        heads["projector"] = dino_head_spec(state, p["head"])
    elif p["projector"] in roots:
        heads["projector"] = indexed_head(state, p["projector"])
    if p.get("predictor") in roots:
        heads["predictor"] = indexed_head(state, p["predictor"])
    backbone = sub_state(state, p["backbone"])
    args = read_args_json(options.source)
    if "conv1.weight" in backbone:
        bundle, arch = build_resnet_with_heads(backbone, heads, origin, p["backbone"], cifar_padding=2,
                                               options=options)
        fallback = pp.for_resnet(arch.cifar_stem, f"solo-learn {arch.name}")
        arch_cfg = arch.config()
        classifier: List[str] = []
    elif "patch_embed.proj.weight" in backbone:
        backbone, classifier = _split_vit(state, origin, p["backbone"])
        head = heads.pop("projector", None)
        bundle, arch = build_vit_bundle(backbone, origin, p["backbone"], head, options=options, extra_heads=heads,
                                        heads_hint=_vit_heads(_cfg(args, "method")))
        if head is not None:
            heads["projector"] = head
        fallback = pp.for_vit(bundle.encoder.img_size, f"solo-learn {arch.name}")
        arch_cfg = arch.config()
    else:
        name = _cfg(args, "backbone", "name") or "?"
        raise ReprscopeError(f"solo-learn backbone '{name}' ({sorted(backbone)[:3]} …) is neither a ResNet nor a ViT, "
                             "the backbones reprscope rebuilds from solo-learn checkpoints")
    unused_keys = unused([k for k in state if k.split(".", 1)[0] in theirs], origin,
                         f"solo-learn {'momentum' if role == 'online' else 'online'} branch; the {role} branch is analysed")
    unused_keys += unused([f"{p['backbone']}.{k}" for k in classifier], origin, "classifier on the backbone; not analysed")
    for root, why in _UNUSED_ROOTS.items():
        unused_keys += unused([k for k in state if k.split(".", 1)[0] == root], origin, why)
    unused_keys += unused([k for k in state if k.split(".", 1)[0] in loss], origin, "loss state; not part of the model")
    for k in payload:
        if k in ("optimizer_states", "lr_schedulers"):
            unused_keys.append(f"{k}: training state; not part of the model")
    method = _cfg(args, "method") if isinstance(_cfg(args, "method"), str) else "unknown"
    config = {"format": "solo_learn", "container": "state_dict", **arch_cfg,
              "heads": {k: v[0] for k, v in heads.items()}, "branch": p["backbone"],
              "args_json": bool(args), "cifar_padding": 2 if arch_cfg.get("cifar_stem") else None}
    return {"bundle": bundle, "method": method, "config": config, "epoch": epoch_of(payload),
            "step": payload.get("global_step") if isinstance(payload.get("global_step"), int) else None,
            "unused_keys": unused_keys, "branch": role, "branches": branches,
            "preprocess": _preprocess(args, fallback)}
