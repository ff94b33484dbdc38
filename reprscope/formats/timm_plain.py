"""timm training checkpoints (``timm/train.py`` through ``CheckpointSaver``): any timm architecture.

Layout: ``{"epoch", "arch": args.model, "state_dict", "optimizer", "version", "args": Namespace, "metric"}``
plus ``state_dict_ema`` when the run kept a model EMA. ``arch`` names the
model, so the architecture is rebuilt with ``timm.create_model(arch, num_classes=0)`` (``--arch`` replaces it)
and the weights must fit it exactly; the classifier (``pretrained_cfg["classifier"]``: ``fc``, ``head``,
``head.fc`` …) is listed unused. ``state_dict_ema`` is the ``momentum`` branch (``--branch momentum``).
Preprocessing: the run's own ``args`` (``input_size``/``img_size``, ``mean``, ``std``, ``crop_pct``) where it
set them, else the model's timm ``pretrained_cfg``.

A file without an ``arch`` that names a timm model is left to the raw ``torchvision`` / ``vit`` formats.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import ReprscopeError
from ..models.bundle import ModelBundle
from . import preprocess as pp
from .base import LoadOptions, register_format
from .common import arch_what, check_timm_name, epoch_of, find_state_dict, load_strict, strip_state, unused
from .resnet_ssl import resolve_with_ema

_NO_COUNT = "num_batches_tracked"


def _saved_arch(payload: Mapping[str, Any]) -> Optional[str]:
    """``arch`` (train.py stores ``args.model`` there), else ``args.model``."""
    arch = payload.get("arch")
    if isinstance(arch, str) and arch:
        return arch
    args = payload.get("args")
    model = getattr(args, "model", None) if args is not None else None
    return model if isinstance(model, str) and model else None


def _classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (clf,) if isinstance(clf, str) else tuple(clf)


@functools.lru_cache(maxsize=32)
def _layout(arch: str) -> Optional[Tuple[FrozenSet[str], Tuple[str, ...]]]:
    """``(every state-dict key of timm model arch, its classifier prefixes)``, built on the meta device."""
    import timm

    if not timm.is_model(arch):
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False)
    except (RuntimeError, TypeError, ValueError, AssertionError):  # meta-device copies raise RuntimeError subclasses
        return None  # a model that cannot be built on the meta device is not detected (pick it with --format timm)
    return frozenset(model.state_dict()), _classifier_prefixes(model)


def _under_any(key: str, prefixes: Tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_timm_checkpoint(payload: Mapping[str, Any]) -> bool:
    """``arch`` names a timm model and the ``state_dict`` has exactly its keys (the classifier may be absent)."""
    if not isinstance(payload, Mapping) or payload.get("format") is not None:
        return False
    arch = _saved_arch(payload)
    layout = _layout(arch) if arch else None
    if layout is None:
        return False
    try:
        state, _ = find_state_dict(payload)
        stripped, _ = strip_state(state)
    except ReprscopeError:
        return False
    keys, clf = layout
    have = {k for k in stripped if not k.endswith(_NO_COUNT)}
    want = {k for k in keys if not k.endswith(_NO_COUNT)}
    body = {k for k in want if not _under_any(k, clf)}
    return body <= have <= want


class TimmEncoder(nn.Module):
    """Any timm model without its classifier, following the backbone contract.

    ``forward_features(x)`` → (B, num_features): ``forward_head(forward_features(x), pre_logits=True)``, the
    pooled input of the classifier. Intermediate layers: up to four evenly spaced entries of timm's
    ``feature_info`` past the stem. State-dict keys are ``model.<timm name>``.
    """

    image_input = True

    def __init__(self, name: str, **kwargs: Any):
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 0})
        self.num_features = int(self.model.num_features)
        modules = dict(self.model.named_modules())
        infos = [fi for fi in (getattr(self.model, "feature_info", None) or []) if isinstance(fi, dict)]
        names = [fi["module"] for fi in infos if fi.get("module") in modules and fi.get("reduction", 4) > 2]
        if len(names) > 4:
            names = [names[i] for i in sorted({max(round((j + 1) * len(names) / 4) - 1, 0) for j in range(4)})]
        self.feature_names: List[str] = [f"model.{n}" for n in names]
        pe = getattr(self.model, "patch_embed", None)
        fixed = (pe is not None and getattr(pe, "img_size", None) is not None
                 and not getattr(self.model, "dynamic_img_size", False) and getattr(pe, "strict_img_size", True))
        self.fixed_input_size = tuple(int(v) for v in pe.img_size) if fixed else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def _preprocess(model: nn.Module, args: Mapping[str, Any], name: str):
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = args.get("img_size") or None
    input_size = args.get("input_size")
    if isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        size = input_size[-1]
    from_args = any(args.get(k) is not None for k in ("mean", "std", "crop_pct")) or size is not None
    size = int(size or (cfg.get("input_size") or (3, 224, 224))[-1])
    mean = args.get("mean") or cfg.get("mean") or pp.IMAGENET_MEAN
    std = args.get("std") or cfg.get("std") or pp.IMAGENET_STD
    crop = float(args.get("crop_pct") or cfg.get("crop_pct") or pp.CROP_PCT)
    why = "the run's timm args" if from_args else f"timm pretrained_cfg of '{name}'"
    stats = "ImageNet" if tuple(mean) == pp.IMAGENET_MEAN and tuple(std) == pp.IMAGENET_STD else "the run's"
    # timm's evaluation transform resizes with the model's interpolation (bicubic for nearly every model)
    interp = str(args.get("interpolation") or cfg.get("interpolation") or "bicubic")
    interp = interp if interp in ("bilinear", "bicubic") else "bicubic"
    return pp.imagenet(size, why, crop_pct=crop, mean=mean, std=std, stats=stats, interpolation=interp)


@register_format("timm", detect=is_timm_checkpoint,
                 summary="timm training checkpoint ('arch' + 'state_dict' [+ 'state_dict_ema' = --branch momentum], "
                         "'args'): any timm model, classifier unused")
def build_timm(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    state, origin, container, role, branches, ema_unused = resolve_with_ema(payload, options, "timm")
    saved = _saved_arch(payload)
    name = options.arch_name or saved
    if not name:
        raise ReprscopeError("timm checkpoint names no architecture (no 'arch', no args.model); give arch=NAME", arg="arch")
    check_timm_name(name)
    encoder = TimmEncoder(name, **options.arch_kwargs)
    clf = _classifier_prefixes(encoder.model)
    classifier = [k for k in state if _under_any(k, clf) and f"model.{k}" not in encoder.state_dict()]
    mapped = {f"encoder.model.{k}": v for k, v in state.items() if k not in set(classifier)}
    where = {f"encoder.model.{k}": origin.get(k, k) for k in state}
    bundle = ModelBundle(encoder, {})
    load_strict(bundle, mapped, where, arch_what(name, options.arch is not None))
    args = {}
    if payload.get("args") is not None and hasattr(payload["args"], "__dict__"):
        args = dict(vars(payload["args"]))
    unused_keys = unused(classifier, origin, "classifier on top of the representation; not analysed") + ema_unused
    for k in payload:
        if k in ("optimizer", "metric", "version", "amp_scaler", "scaler"):
            unused_keys.append(f"{k}: training state; not part of the model")
    config = {"format": "timm", "container": container, "arch": name, "timm_kwargs": dict(options.arch_kwargs),
              "arch_source": "--arch" if options.arch else "the checkpoint's 'arch'", "arch_saved": saved,
              "heads": {}}
    return {"bundle": bundle, "method": "unknown", "config": config, "epoch": epoch_of(payload),
            "unused_keys": unused_keys, "branch": role, "branches": branches,
            "preprocess": _preprocess(encoder.model, args, name)}
