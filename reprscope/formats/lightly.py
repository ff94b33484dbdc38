"""lightly checkpoints (lightly-ai/lightly): benchmark Lightning ``.ckpt`` files and the examples' saves.

Layouts:

* benchmarks (``benchmarks/imagenet/*``): ``state_dict`` with ``backbone.`` (torchvision names; ViTs as
  ``backbone.vit.`` inside ``MaskedVisionTransformerTIMM``, whose ``mask_token`` is unused),
  ``projection_head.layers.N`` (lightly's ``ProjectionHead`` blocks flattened: Linear, [BN], [activation]),
  ``prediction_head.layers.N``, the other network under a tagged name (``student_backbone`` /
  ``student_projection_head`` for DINO, ``teacher_*`` for BYOL, ``query_*`` / ``key_*`` for MoCo), an
  ``online_classifier.`` and loss buffers under ``criterion.``;
* the MAE example (``examples/pytorch/mae.py``): ``backbone.vit.*`` (a timm ViT inside
  ``MaskedVisionTransformerTIMM``) beside ``decoder.*`` and a ``mask_token``, no head; read, as lightly's own
  evaluation does, with the ViT's pooling (the class token after the final norm);
* examples: ``nn.Sequential(*resnet.children()[:-1])`` as ``backbone`` (``backbone.0`` = conv1, ``.1`` = bn1,
  ``.4``–``.7`` = layer1–4), heads as above (DINO: ``student_head`` / ``teacher_head``; MoCo/BYOL:
  ``backbone_momentum`` / ``projection_head_momentum``), or only the backbone's children under a custom key
  (``{"resnet18_parameters": …}``).

Branches: the untagged network is the one lightly's ``forward`` and its online classifier evaluate (the default;
DINO: the teacher, BYOL: the online network, MoCo benchmark: the key encoder); a tag names the other one.
Hidden activations are not in the weights: ReLU (lightly's projection heads), GELU for DINO heads (a
``last_layer`` after the MLP, ℓ2-normalised in between).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import ReprscopeError
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format
from .common import build_resnet_with_heads, epoch_of, find_state_dict, strip_state, sub_state, unused
from .vit import _split_vit, build_vit_bundle, dino_head_spec, indexed_head

_PARTS = ("backbone", "projection_head", "prediction_head", "head")
#: tag in a module name → the branch it holds
_TAGS = {"student": "student", "teacher": "teacher", "key": "momentum", "momentum": "momentum", "query": "online"}
_UNUSED_ROOTS = {
    "online_classifier": "lightly OnlineLinearClassifier (trained on detached features); not analysed",
    "criterion": "loss state (DINO centre, memory bank of negatives); not part of the model",
    "decoder": "MAE decoder (lightly's MAEDecoderTIMM: pixel reconstruction); not part of the representation",
    "mask_token": "MAE decoder's mask token; not used on whole images",
}
#: torchvision ResNet children by position in ``nn.Sequential(*resnet.children()[:-1])``
_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _split_root(root: str) -> Optional[Tuple[Optional[str], str]]:
    """``student_projection_head`` → ``("student", "projection_head")``; ``backbone`` → ``(None, "backbone")``."""
    for part in _PARTS:
        if root == part:
            return None, part
        for tag in _TAGS:
            if root in (f"{tag}_{part}", f"{part}_{tag}"):
                return tag, part
    return None


def _is_children_resnet(state: Mapping[str, Any], prefix: str = "") -> bool:
    p = f"{prefix}." if prefix else ""
    w = state.get(f"{p}0.weight")
    return isinstance(w, torch.Tensor) and w.dim() == 4 and f"{p}4.0.conv1.weight" in state


def _resolve(payload: Mapping[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, str], Optional[str]]]:
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return None
    try:
        state, container = find_state_dict(payload)
        stripped, origin = strip_state(state)
    except ReprscopeError:
        return None
    if container is not None:
        origin = {k: f"{container}.{v}" for k, v in origin.items()}
    return stripped, origin, container


def _groups(state: Mapping[str, Any]) -> Optional[Dict[Optional[str], Dict[str, str]]]:
    """``tag → {part: root}``, or None when a root is neither a lightly part nor a known unused module."""
    groups: Dict[Optional[str], Dict[str, str]] = {}
    for root in {k.split(".", 1)[0] for k in state}:
        if root in _UNUSED_ROOTS:
            continue
        split = _split_root(root)
        if split is None:
            return None
        groups.setdefault(split[0], {})[split[1]] = root
    return groups


def _detect(payload: Mapping[str, Any]) -> bool:
    r = _resolve(payload)
    if r is None:
        return False
    state = r[0]
    roots = {k.split(".", 1)[0] for k in state}
    if roots and all(x.isdigit() for x in roots):  # only the backbone's children ({"resnet18_parameters": …})
        return _is_children_resnet(state)
    groups = _groups(state)
    if not groups:
        return False
    if "decoder" in roots and any(k.startswith("backbone.vit.") for k in state):  # the MAE example: no head
        return True
    return any(_is_head_key(k) for k in state) and any("backbone" in g for g in groups.values())


def _is_head_key(key: str) -> bool:
    """``projection_head.layers.0.weight``, ``student_head.layers.…``: a weight of a lightly head's MLP."""
    root = key.split(".", 1)[0]
    split = _split_root(root)
    return split is not None and split[1] != "backbone" and bool(re.match(rf"^{root}\.layers\.\d+\.", key))


def _roles(groups: Mapping[Optional[str], Mapping[str, str]]) -> Dict[str, Optional[str]]:
    """branch name → tag (None: the untagged network)."""
    tags = [t for t in groups if t is not None]
    out: Dict[str, Optional[str]] = {}
    for t in tags:
        out[_TAGS[t]] = t
    if None in groups:
        roles = {_TAGS[t] for t in tags}
        main = "teacher" if "student" in roles else "momentum" if roles == {"online"} else "online"
        if main in out:
            raise ReprscopeError(f"lightly checkpoint has two '{main}' networks ({', '.join(sorted(groups[None].values()))} "
                                 f"and the '{out[main]}_' ones); pick one with a format name and a cleaner file", arg="fmt")
        out[main] = None
    return out


def _head(state: Mapping[str, Any], root: str):
    """A lightly head: DINO (``layers`` + ``last_layer``) or a ``ProjectionHead`` (``layers``)."""
    if any(k.startswith(f"{root}.last_layer.") for k in state):
        return dino_head_spec(state, root, mlp="layers")
    stray = [k for k in state if k.startswith(f"{root}.") and not k.startswith(f"{root}.layers.")]
    if stray:
        raise ReprscopeError(f"lightly head '{root}' has {stray[:4]}; expected '{root}.layers.N.*' (and "
                             f"'{root}.last_layer' for DINO heads)")
    return indexed_head(state, f"{root}.layers")


@register_format("lightly", detect=_detect,
                 summary="lightly benchmark .ckpt / example save (backbone, projection_head.layers.N, "
                         "prediction_head, student_/teacher_/key_/query_ networks, online_classifier)")
def build_lightly(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    r = _resolve(payload)
    if r is None:
        raise ReprscopeError("lightly checkpoint holds no state dict")
    state, origin, container = r
    roots = {k.split(".", 1)[0] for k in state}
    if roots and all(x.isdigit() for x in roots):
        groups: Dict[Optional[str], Dict[str, str]] = {None: {"backbone": ""}}
    else:
        found = _groups(state)
        if found is None:
            stray = sorted(origin[k] for k in state if _split_root(k.split(".", 1)[0]) is None
                           and k.split(".", 1)[0] not in _UNUSED_ROOTS)
            raise ReprscopeError("lightly checkpoint has tensors no rule of the format accounts for: " + ", ".join(stray[:8]))
        groups = found
    roles = _roles(groups)
    branches = {}
    for role, tag in roles.items():
        parts = groups[tag]
        where = ", ".join(f"{v}.*" if v else "*" for v in parts.values())
        branches[role] = where + ("" if tag else " (untagged: what lightly's forward evaluates)")
    default = next(r for r, t in roles.items() if t is None) if None in groups else (
        "teacher" if "teacher" in roles else next(iter(roles)))
    role = pick_branch("lightly", branches, default, options.branch)
    parts = groups[roles[role]]
    if "backbone" not in parts:
        raise ReprscopeError(f"lightly checkpoint's {role} branch has no backbone ({', '.join(parts.values())})")
    heads: Dict[str, Any] = {}
    proj = parts.get("projection_head") or parts.get("head")
    if proj:
        heads["projector"] = _head(state, proj)
    if parts.get("prediction_head"):
        heads["predictor"] = _head(state, parts["prediction_head"])
    root = parts["backbone"]
    backbone = sub_state(state, root) if root else dict(state)
    skipped: List[str] = []
    if _is_children_resnet(backbone):  # nn.Sequential(*resnet.children()[:-1]) → torchvision names
        renamed, rorigin = {}, {}
        for k, v in backbone.items():
            idx, _, rest = k.partition(".")
            if idx not in _CHILDREN:
                raise ReprscopeError(f"lightly backbone child '{origin[(root + '.' if root else '') + k]}' is not a "
                                     "ResNet child with weights (expected 0, 1, 4–7)")
            renamed[f"{_CHILDREN[idx]}.{rest}"] = v
            rorigin[f"{_CHILDREN[idx]}.{rest}"] = origin[(root + "." if root else "") + k]
        origin = {**origin, **{f"<backbone>.{k}": v for k, v in rorigin.items()}}
        bundle, arch = build_resnet_with_heads(renamed, heads, origin, "<backbone>", options=options)
        prep = pp.for_resnet(arch.cifar_stem, f"lightly {arch.name}")
        classifier: List[str] = []
    elif "conv1.weight" in backbone:
        bundle, arch = build_resnet_with_heads(backbone, heads, origin, root, options=options)
        prep = pp.for_resnet(arch.cifar_stem, f"lightly {arch.name}")
        classifier = []
    else:
        vit_root = f"{root}.vit" if any(k.startswith("vit.") for k in backbone) else root
        if vit_root != root:  # MaskedVisionTransformerTIMM: the timm ViT under .vit, plus a mask token
            skipped = [f"{root}.{k}" for k in backbone if not k.startswith("vit.")]
            odd = [origin[k] for k in skipped if k != f"{root}.mask_token"]
            if odd:
                raise ReprscopeError(f"lightly masked ViT has {odd[:4]} besides 'vit.*' and 'mask_token'")
        vit, classifier = _split_vit(state, origin, vit_root)
        head = heads.pop("projector", None)
        bundle, arch = build_vit_bundle(vit, origin, vit_root, head, options=options, extra_heads=heads)
        if head is not None:
            heads["projector"] = head
        prep = pp.for_vit(bundle.encoder.img_size, f"lightly {arch.name}")
        classifier = [f"{vit_root}.{k}" for k in classifier]
    used_roots = set(parts.values())
    unused_keys = unused([k for k in state if root and k.split(".", 1)[0] not in used_roots
                          and k.split(".", 1)[0] not in _UNUSED_ROOTS], origin,
                         f"lightly network other than the {role} branch; not analysed")
    unused_keys += unused(skipped, origin, "mask token of the masked ViT (masked-image modelling); not used on whole images")
    unused_keys += unused(classifier, origin, "classifier on the backbone; not analysed")
    for r_, why in _UNUSED_ROOTS.items():
        unused_keys += unused([k for k in state if k.split(".", 1)[0] == r_], origin, why)
    for k in payload:
        if k in ("optimizer_states", "lr_schedulers"):
            unused_keys.append(f"{k}: training state; not part of the model")
    spec = {k: v[0] for k, v in heads.items()}
    method = ("dino" if proj and any(k.startswith(f"{proj}.last_layer.") for k in state)
              else "mae" if any(k.startswith("decoder.") for k in state) else "unknown")
    config = {"format": "lightly", "container": container, **arch.config(), "heads": spec,
              "branch": root or None, "activations": "hidden activations read as ReLU (GELU in DINO heads); not in the weights"}
    hp = payload.get("hyper_parameters")
    if isinstance(hp, Mapping):
        config["hyper_parameters"] = {k: v for k, v in hp.items() if isinstance(v, (str, int, float, bool))}
    return {"bundle": bundle, "method": method, "config": config, "epoch": epoch_of(payload),
            "step": payload.get("global_step") if isinstance(payload.get("global_step"), int) else None,
            "unused_keys": unused_keys, "branch": role, "branches": branches, "preprocess": prep}
