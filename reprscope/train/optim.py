"""Optimisers and learning-rate schedules of the published SSL recipes.

LARS (You et al. 2017) as used by SimCLR, BYOL, Barlow Twins and VICReg: SGD with momentum whose update of
each weight matrix is rescaled by the trust ratio η‖w‖/(‖g‖ + wd‖w‖); biases and normalisation weights are
excluded from the adaptation and from weight decay (``exclude_bias_bn``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch


class LARS(torch.optim.Optimizer):
    """SGD + momentum with layer-wise adaptive rate scaling.

    A param group with ``lars_exclude=True`` gets plain SGD with momentum and no weight decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["lars_exclude"]:
                    if g["weight_decay"]:
                        d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    ratio = torch.where((w_norm > 0) & (d_norm > 0),
                                        g["trust_coefficient"] * w_norm / (d_norm + g["eps"]), torch.ones_like(w_norm))
                    d = d.mul(ratio)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.clone(d).detach()
                else:
                    st["mu"].mul_(g["momentum"]).add_(d)
                p.add_(st["mu"], alpha=-g["lr"])
        return loss


def _is_bias_or_norm(p: torch.Tensor) -> bool:
    """Biases and normalisation weights: the 0-/1-D parameters."""
    return p.dim() <= 1


def split_decay(groups: List[Dict[str, Any]], exclude: bool) -> List[Dict[str, Any]]:
    """Split each group into weights and (biases, norm weights): the latter get no weight decay (and no LARS
    adaptation) when ``exclude``."""
    if not exclude:
        return groups
    out: List[Dict[str, Any]] = []
    for g in groups:
        params = list(g["params"])
        keep = [p for p in params if not _is_bias_or_norm(p)]
        excl = [p for p in params if _is_bias_or_norm(p)]
        if keep:
            out.append({**g, "params": keep})
        if excl:
            out.append({**g, "params": excl, "weight_decay": 0.0, "lars_exclude": True})
    return out


def build_optimizer(groups: List[Dict[str, Any]], cfg: Dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """The optimiser ``cfg['name']`` over ``groups``; each group's lr = ``lr`` × its ``lr_mult``, or its own
    ``lr`` when it brings one (a fixed-lr predictor)."""
    ready = []
    for g in groups:
        g = dict(g)
        mult = float(g.pop("lr_mult", 1.0))
        g.setdefault("lr", lr * mult)
        g.setdefault("fixed_lr", False)
        ready.append(g)
    name = cfg["name"]
    wd = cfg["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(_strip(ready), lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "lars":
        return LARS(ready, lr=lr, momentum=cfg["momentum"], weight_decay=wd, trust_coefficient=cfg["trust_coefficient"])
    if name == "adam":
        return torch.optim.Adam(_strip(ready), lr=lr, weight_decay=wd)
    return torch.optim.AdamW(_strip(ready), lr=lr, weight_decay=wd)


def _strip(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """torch's optimisers accept extra group keys; ``lars_exclude`` only matters to LARS."""
    return [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio`` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
