"""Momentum (EMA) target networks shared by BYOL and DINO (and any method with a teacher).

The target is a frozen copy of the online encoder and projector (never the predictor), updated after each
optimiser step as ξ ← m ξ + (1 − m) θ, with m following BYOL's cosine schedule
m_k = 1 − (1 − m_base)(cos(πk/K) + 1)/2 (Grill et al. 2020 §3.2; DINO uses the same schedule).
"""
from __future__ import annotations

import copy
import math
from typing import Dict

import torch
from torch import nn


class Target(nn.Module):
    """Frozen copy of ``bundle.encoder`` and ``bundle.projector`` (when it has one); ``forward`` gives
    ``{"h", "z"}`` like the online bundle without its predictor."""

    def __init__(self, bundle: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(bundle.encoder)
        self.projector = copy.deepcopy(bundle.projector) if bundle.has("projector") else nn.Identity()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.encoder.forward_features(x)
        return {"h": h, "z": self.projector(h)}


def cosine_momentum(base: float, step: int, total: int, final: float = 1.0) -> float:
    """BYOL's schedule from ``base`` at step 0 to ``final`` at the last step."""
    return final - (final - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


@torch.no_grad()
def ema_update(target: Target, bundle: nn.Module, momentum: float) -> None:
    """ξ ← m ξ + (1 − m) θ for the encoder and projector parameters; buffers (BatchNorm statistics) are
    copied from the online network, as the reference implementations do."""
    pairs = [(target.encoder, bundle.encoder)]
    if bundle.has("projector"):
        pairs.append((target.projector, bundle.projector))
    for tgt, src in pairs:
        for pt, ps in zip(tgt.parameters(), src.parameters()):
            pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
        for bt, bs in zip(tgt.buffers(), src.buffers()):
            bt.copy_(bs)
