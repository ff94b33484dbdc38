"""The native format ``reprscope/1`` (README, Files): a self-describing dict of tensors and plain containers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import ReprscopeError
from ..io_utils import atomic_path
from ..models.bundle import build_bundle
from ..models.heads import spec_problem
from . import preprocess as pp
from .base import LoadOptions, pick_branch, register_format

FORMAT = "reprscope/1"
REQUIRED = ("format", "method", "config", "state_dict", "step")


def save_native(path: os.PathLike | str, payload: Dict[str, Any]) -> Path:
    """Write a native checkpoint atomically (temp file + rename)."""
    payload = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


#: Words in a backbone argument's name that mean a file, a folder or a download: a checkpoint describes a model and
#: never chooses what reprscope reads or fetches (timm opens ``checkpoint_path``, downloads ``pretrained`` weights).
_FILE_WORDS = ("path", "file", "dir", "url", "pretrained", "hub", "download", "cache")

#: A config may describe at most this many times the values the file stores (plus a small allowance for
#: non-persistent buffers), so a small file cannot make reprscope build a huge model before strict loading.
_SIZE_FACTOR, _SIZE_ALLOWANCE = 2, 1_000_000


def _plain(v: Any, depth: int = 0) -> bool:
    """JSON-like data (what a config holds), nested at most a few levels."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    if depth > 6:
        return False
    if isinstance(v, (list, tuple)):
        return len(v) <= 10_000 and all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return len(v) <= 10_000 and all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return False


def model_section(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The validated ``model`` section of a native checkpoint's config (types, shapes and no file choices)."""
    cfg = payload["config"]
    if not isinstance(cfg, dict) or not _plain(cfg):
        raise ReprscopeError(f"reprscope checkpoint 'config' must be a mapping of plain values, got {type(cfg).__name__}")
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise ReprscopeError(f"reprscope checkpoint config 'model' must be a mapping, got {type(model).__name__}")
    if not isinstance(model.get("backbone"), str):
        raise ReprscopeError(f"config model.backbone must be a name, got {model.get('backbone')!r:.60}")
    kwargs = model.get("backbone_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ReprscopeError(f"config model.backbone_kwargs must be a mapping, got {type(kwargs).__name__}")
    chosen = [k for k in kwargs if any(w in k.lower() for w in _FILE_WORDS)]
    if chosen:
        raise ReprscopeError(f"the checkpoint's config sets model.backbone_kwargs.{chosen[0]}, which would make the "
                             "backbone read a file or download weights; a checkpoint describes a model and never "
                             "chooses files (refused)")
    shape = model.get("in_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) not in (1, 3)
            or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 100_000 for x in shape)):
        raise ReprscopeError(f"config model.in_shape must be 1 or 3 positive sizes, got {shape!r:.60}")
    heads = model.get("heads") or {}
    if not isinstance(heads, dict) or not all(
            isinstance(v, list) and all(isinstance(layer, dict) for layer in v) for v in heads.values() if v is not None):
        raise ReprscopeError("config model.heads must map head names to lists of layer mappings")
    for part, spec in heads.items():
        bad = spec_problem(spec) if spec is not None else None
        if bad:
            raise ReprscopeError(f"config model.heads.{part}: {bad}")
    return model


def check_size(model_cfg: Dict[str, Any], state: Dict[str, Any]) -> None:
    """Refuse a config that describes far more values than the file stores, before the model is allocated: the
    model is first built on the meta device (no memory), its size compared with the stored tensors'."""
    stored = sum(int(t.numel()) for t in state.values() if isinstance(t, torch.Tensor))
    try:
        with torch.device("meta"):
            implied = sum(int(t.numel()) for t in build_bundle(model_cfg, model_cfg["in_shape"]).state_dict().values())
    except ReprscopeError:
        raise
    except Exception:  # noqa: BLE001 - a backbone that cannot be built on the meta device: the real build decides
        return
    if implied > _SIZE_FACTOR * stored + _SIZE_ALLOWANCE:
        raise ReprscopeError(f"the checkpoint's config describes a model of {implied:,} values but the file stores "
                             f"{stored:,}; refused before building it")


def _is_native(payload: Dict[str, Any]) -> bool:
    return payload.get("format") == FORMAT


def _momentum_prefix(method_state: Dict[str, Any]) -> "tuple[str, str] | None":
    """``(prefix, branch)`` of an EMA copy in a method's state: ``teacher`` (DINO) or ``target`` (BYOL, the
    momentum branch), recognised by its ``encoder.`` weights."""
    for prefix, branch in (("teacher", "teacher"), ("target", "momentum")):
        if any(k.startswith(prefix + ".encoder.") for k in method_state):
            return prefix, branch
    return None


@register_format("reprscope", detect=_is_native, summary="reprscope's own checkpoints ('reprscope/1')")
def build_native(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ReprscopeError(f"reprscope checkpoint is missing keys {missing}; it was not written by `reprscope train`")
    cfg = payload["config"]
    model_cfg = model_section(payload)
    if not isinstance(payload["state_dict"], dict):
        raise ReprscopeError(f"reprscope checkpoint 'state_dict' must be a mapping of tensors, got "
                             f"{type(payload['state_dict']).__name__}")
    if not isinstance(payload["step"], int) or isinstance(payload["step"], bool):
        raise ReprscopeError(f"reprscope checkpoint 'step' must be a whole number, got {payload['step']!r:.40}")
    if not isinstance(payload.get("method_state") or {}, dict):
        raise ReprscopeError("reprscope checkpoint 'method_state' must be a mapping")
    if options.arch is not None:
        raise ReprscopeError(f"arch does not apply to a reprscope checkpoint: its config names the backbone "
                             f"('{model_cfg.get('backbone')}') and rebuilds it exactly", arg="arch")
    branches = {"online": "state_dict.* (the trained model)"}
    mstate = payload.get("method_state") or {}
    momentum = _momentum_prefix(mstate)
    if momentum:  # BYOL's EMA target / DINO's teacher, kept in the method's state
        branches[momentum[1]] = f"method_state.{momentum[0]}.* (encoder and projector of the EMA copy)"
    role = pick_branch("reprscope", branches, "online", options.branch)
    state = payload["state_dict"]
    if role != "online":
        model_cfg = {**model_cfg, "heads": {k: v for k, v in (model_cfg.get("heads") or {}).items() if k != "predictor"}}
        pre = momentum[0] + "."
        state = {k[len(pre):]: v for k, v in mstate.items() if k.startswith(pre)}
    check_size(model_cfg, state)
    bundle = build_bundle(model_cfg, model_cfg["in_shape"])
    try:
        bundle.load_state_dict(state)  # strict: every key loaded, none left over
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ReprscopeError(f"checkpoint weights do not match the model its config describes: {detail}") from None
    bundle.eval()
    return {"bundle": bundle, "method": str(payload["method"]), "config": cfg, "step": int(payload["step"]),
            "epoch": payload.get("epoch"), "dataset": cfg.get("data"), "branch": role, "branches": branches,
            "preprocess": pp.from_native(cfg.get("data"), model_cfg.get("in_shape"))}
