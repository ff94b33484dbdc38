"""Barlow Twins: the cross-correlation of the standardised projections of two views driven to the identity
(Zbontar et al. 2021 eq. 1; the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") eq. 37; Tan et al. 2024 (ICML) eq. 3).

::

    C_ij = Σ_b z̄¹_bi z̄²_bj / n,   z̄ = (z − mean_b z) / sqrt(var_b z + ε)   (BatchNorm without affine)
    L = scale · [ Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij² ]

Each view is standardised with its own statistics over the **global** batch (the projections of every rank
are gathered with gradient first, as the reference code's SyncBatchNorm does), with the biased variance and
ε = 1e-5 of ``BatchNorm1d(affine=False)``.

Defaults and where they come from:

* λ (``lambd``) = 5e-3, the paper's value (its code uses 0.0051; solo-learn's CIFAR recipe uses 0.0051 with
  ``scale_loss`` 0.1: ``--set method.lambd=0.0051 --set method.scale_loss=0.1``). ``scale_loss`` 1 is the paper.
* projector ``Linear(2048) → BN → ReLU → Linear(2048) → BN → ReLU → Linear(2048)`` without a bias on the
  last layer: the width of the CIFAR recipes (solo-learn). The paper's ImageNet projector is 8192 wide:
  ``--set projector.hidden_dim=8192 --set projector.out_dim=8192``.
* optimiser: LARS, lr 0.3 at batch 256 (``--set optim.lr_scaling=linear`` for other sizes), weight decay
  1e-4, trust coefficient 0.02 — solo-learn's CIFAR recipe (the paper: LARS lr 0.2·B/256, weight decay
  1.5e-6, batch 2048).

Ablations: ``off_diagonal=false`` keeps only the invariance (diagonal) term — the center-vector paper §3.3 shows Barlow
Twins still avoids collapse through its BatchNorm; VICReg's variance / covariance terms on the projections
with ``var_reg`` / ``cov_reg`` (Bardes et al. 2022, arXiv:2105.04906 Table 3).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from ..distributed import gather
from ..params import Param
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32

BN_EPS = 1e-5



def standardize(z: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Per-dimension standardisation over the batch with the biased variance, (n, d) → (n, d): what
    ``BatchNorm1d(d, affine=False)`` computes in training mode."""
    zc = z - z.mean(dim=0)
    return zc / torch.sqrt(zc.pow(2).mean(dim=0) + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Barlow Twins' (d, d) cross-correlation matrix of two (n, d) batches, each standardised on its own."""
    return standardize(z1, eps).T @ standardize(z2, eps) / z1.shape[0]


def barlow_twins_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = BN_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(invariance Σ_i (1 − C_ii)², redundancy Σ_{i≠j} C_ij²) of the cross-correlation of (n, d) batches."""
    c = cross_correlation(z1, z2, eps)
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on, off


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, off_diagonal: bool = True,
                      scale: float = 1.0, eps: float = BN_EPS) -> torch.Tensor:
    """scale · [Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²] (Zbontar et al. eq. 1); ``off_diagonal=False`` drops the
    redundancy-reduction term (the center-vector paper §3.3). ``z1, z2``: (n, d) projections of the two views."""
    on, off = barlow_twins_terms(z1, z2, eps)
    return scale * (on + lambd * off) if off_diagonal else scale * on


@METHODS.register("barlowtwins")
class BarlowTwins(Method):
    """Cross-correlation of per-view standardised projections towards the identity."""

    name = "barlowtwins"
    summary = "Barlow Twins: cross-correlation → identity, λ=5e-3; ablation without the off-diagonal term (the center-vector paper §3.3)"
    paper = "Zbontar et al. 2021 (Barlow Twins); the center-vector paper §3.3, A.2; Tan et al. 2024 eq. 3"
    params = [
        Param("lambd", 5e-3, "float", "λ, weight of the off-diagonal (redundancy-reduction) term", low=0),
        Param("off_diagonal", True, "bool", "include the off-diagonal term (false: invariance only, the center-vector paper §3.3)"),
        Param("scale_loss", 1.0, "float", "factor on the whole loss (solo-learn's CIFAR recipe: 0.1)", low=0, low_open=True),
    ]
    default_heads = {
        "projector": {"kind": "mlp", "out_dim": 2048, "hidden_dim": 2048, "layers": 3, "bn": True, "bias": False},
    }
    default_optim = {"name": "lars", "lr": 0.3, "weight_decay": 1e-4, "trust_coefficient": 0.02}

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)  # BatchNorm statistics per view, as the reference code
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the correlation in float32 under amp
            z1, z2 = gather(at_least_float32(e1["z"])), gather(at_least_float32(e2["z"]))  # statistics of the global batch
            on, off = barlow_twins_terms(z1, z2)
            loss = self.cfg["scale_loss"] * (on + self.cfg["lambd"] * off if self.cfg["off_diagonal"] else on)
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs.update(invariance=on.detach(), redundancy=off.detach())
        return loss + reg, logs
