"""Builders shared by the method tests (imported as a plain module: pytest puts this folder on sys.path):
tiny resolved configs, a built bundle + method, and short training runs through the real trainer (a width-32
MLP encoder, heads 32 wide with 16 outputs, batch 64, CPU)."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from reprscope.methods import METHODS, build_method
from reprscope.models.bundle import build_bundle
from reprscope.models.heads import HEADS
from reprscope.train import apply_sets, default_config, resolve_config, train

BASE_SETS: Dict[str, Any] = {
    "backbone.width": 32,
    "backbone.depth": 2,
    "train.steps": 30,
    "train.batch_size": 64,
    "train.save_every": 0,
    "train.log_every": 1,
    "train.device": "cpu",
    "train.knn_every": 0,
    "optim.name": "adamw",
    "optim.lr": 1e-3,
    "optim.weight_decay": 0.0,
    "optim.schedule": "constant",
    "optim.warmup_steps": 0,
    "optim.warmup_epochs": None,
}


def make_config(name: str, data: str = "blobs", **sets: Any) -> Dict[str, Any]:
    """A resolved config for method ``name``; ``sets`` are ``--set`` assignments with ``__`` for dots."""
    cls = METHODS.get(name)
    sets = {k.replace("__", "."): v for k, v in sets.items()}
    assignments = dict(BASE_SETS)
    for part, head in cls.default_heads.items():  # shrink the published heads to test size
        if part in sets:  # replaced (e.g. predictor=none)
            continue
        names = {p.name for p in HEADS.meta(head.get("kind", "linear"))["params"]}
        if "hidden_dim" in names:
            assignments[f"{part}.hidden_dim"] = 32
        if "out_dim" in names:
            assignments[f"{part}.out_dim"] = 16
    assignments.update(sets)
    first = lambda kv: not (kv[0] in ("projector", "predictor") or kv[0].endswith(".kind"))  # noqa: E731  (heads first)
    ordered = sorted(assignments.items(), key=first)
    return resolve_config(apply_sets(default_config(name, {"name": data}), [(k.split("."), v) for k, v in ordered]))


def make_model(cfg: Dict[str, Any], seed: int = 0):
    """(bundle, method) built from a resolved config as the trainer builds them (setup included)."""
    torch.manual_seed(seed)
    bundle = build_bundle(cfg["model"], cfg["model"]["in_shape"])
    method = build_method(cfg["method"]["name"], {k: v for k, v in cfg["method"].items() if k != "name"})
    method.setup(bundle)
    return bundle, method


def views_for(cfg: Dict[str, Any], n: int = 32, seed: int = 0) -> List[torch.Tensor]:
    """Two correlated random views shaped like the config's input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *cfg["model"]["in_shape"], generator=g)
    return [x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)]


def run_training(cfg: Dict[str, Any], out) -> Tuple[List[Dict[str, float]], Any]:
    """Train ``cfg`` into ``out``; returns the logged values of every step and the TrainResult."""
    logged: List[Dict[str, float]] = []
    result = train(cfg, out, progress=False, on_log=lambda _s, m: logged.append(m))
    return logged, result

