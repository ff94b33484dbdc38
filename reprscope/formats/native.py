"""The native format ``reprscope/1`` (SPEC §3): a self-describing dict of tensors and plain containers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import ReprscopeError
from ..io_utils import atomic_path
from ..models.bundle import build_bundle
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


def _is_native(payload: Dict[str, Any]) -> bool:
    return payload.get("format") == FORMAT


def _momentum_prefix(method_state: Dict[str, Any]) -> "tuple[str, str] | None":
    """``(prefix, branch)`` of an EMA copy in a method's state: ``teacher`` (DINO) or ``target`` (BYOL, the
    momentum branch), recognised by its ``encoder.`` weights."""
    for prefix, branch in (("teacher", "teacher"), ("target", "momentum")):
        if any(k.startswith(prefix + ".encoder.") for k in method_state):
            return prefix, branch
    return None


@register_format("reprscope", detect=_is_native, summary="reprscope's own checkpoints (SPEC §3, 'reprscope/1')")
def build_native(payload: Dict[str, Any], options: LoadOptions) -> Dict[str, Any]:
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ReprscopeError(f"reprscope checkpoint is missing keys {missing}; it was not written by `reprscope train`")
    cfg = payload["config"]
    model_cfg = cfg.get("model", {})
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
