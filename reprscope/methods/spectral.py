"""Spectral contrastive loss (HaoChen, Wei, Gaidon & Ma 2021; Tan et al. 2024 (ICML) eq. 2).

Population form −2 E_{x,x⁺}[f(x)ᵀf(x⁺)] + E_{x,x⁻}[(f(x)ᵀf(x⁻))²]; Tan et al. 2024 eq. 2 writes the batch version
Σ_i ‖z¹_i − z²_i‖² + λ Σ_{i≠j} (z¹_iᵀ z²_j)² for unit-norm rows (where ‖z¹ − z²‖² = 2 − 2 z¹ᵀz², so the first
sum is the attraction term up to a constant). The batch estimate of HaoChen et al.'s code is used::

    attraction = −(2/n) Σ_i z¹_iᵀ z²_i
    repulsion  = 1/(n(n−1)) Σ_{i≠j} (z¹_iᵀ z²_j)²
    L = (attraction + λ · repulsion) / μ

after each row is kept inside the ball of radius √μ (``norm=clip``: rows longer than √μ are rescaled to √μ,
HaoChen et al.'s projection), put on the sphere of radius √μ (``norm=sphere``: Tan et al. 2024's ‖z‖ = 1 with
μ = 1), or left as they are (``norm=none``: the population loss on raw features). The pairs i ≠ j come from
the **global** batch (projections gathered with gradient).

Defaults and where they come from (HaoChen et al.'s CIFAR-10 configuration): μ = 1, λ = 1 (Tan et al. 2024's λ;
HaoChen et al. weight both terms equally), the ``clip`` projection; projector ``Linear(2048) → BN → ReLU →
Linear(1000) → BN`` (their ``mlp1000_norelu`` head; the output BN is affine-free here, theirs has an affine);
optimiser SGD, lr 0.03·B/256 = 0.06 at the default batch 512, momentum 0.9, weight decay 5e-4 (10 warm-up
epochs, 800 epochs; other batch sizes: ``--set optim.lr=0.03 --set optim.lr_scaling=linear``).
VICReg's variance / covariance terms on the projections with ``var_reg`` / ``cov_reg`` (Bardes et al. 2022, arXiv:2105.04906 Table 3).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..params import Param
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32

NORMS = ("clip", "sphere", "none")



def radius_projection(z: torch.Tensor, mu: float = 1.0, norm: Optional[str] = "clip") -> torch.Tensor:
    """Rows of (n, d) ``z`` kept within (``clip``) or put on (``sphere``) the sphere of radius √μ; None or
    ``none`` returns ``z``.

    Raises:
        ValueError: an unknown ``norm``.
    """
    if norm in (None, "none"):
        return z
    r = math.sqrt(mu)
    if norm == "sphere":
        return F.normalize(z, dim=1) * r
    if norm == "clip":
        inside = (z.norm(dim=1, keepdim=True) < r).to(z.dtype)
        return inside * z + (1 - inside) * F.normalize(z, dim=1) * r
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def spectral_terms(z1: torch.Tensor, z2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(attraction −(2/n) Σ_i z¹_iᵀz²_i, repulsion Σ_{i≠j} (z¹_iᵀz²_j)² / (n(n−1))) for two (n, d) batches."""
    n = z1.shape[0]
    attraction = -2 * (z1 * z2).sum(dim=1).mean()
    sq = (z1 @ z2.T).pow(2)
    repulsion = (sq.sum() - torch.diagonal(sq).sum()) / (n * (n - 1))
    return attraction, repulsion


def spectral_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, mu: float = 1.0, lambd: float = 1.0,
                              norm: Optional[str] = "clip") -> torch.Tensor:
    """(−2 Ê[z¹ᵀz²] + λ Ê_{i≠j}[(z¹_iᵀz²_j)²]) / μ after the radius-√μ projection (Tan et al. 2024 eq. 2 with
    HaoChen et al.'s batch estimate). ``z1, z2``: (n, d) with n ≥ 2."""
    a, r = spectral_terms(radius_projection(z1, mu, norm), radius_projection(z2, mu, norm))
    return (a + lambd * r) / mu


@METHODS.register("spectral")
class SpectralContrastive(Method):
    """Spectral contrastive loss: attraction of positive pairs, squared inner products of negative pairs."""

    name = "spectral"
    summary = "spectral contrastive loss −2E[z₁ᵀz₂] + λE[(z₁ᵀz₂')²], rows clipped to radius √μ (Tan et al. 2024 eq. 2)"
    paper = "HaoChen et al. 2021 (spectral contrastive loss); Tan et al. 2024 eq. 2"
    params = [
        Param("mu", 1.0, "float", "μ: rows are kept within radius √μ and the loss is divided by μ", low=0, low_open=True),
        Param("lambd", 1.0, "float", "λ, weight of the repulsion term (Tan et al. 2024 eq. 2)", low=0),
        Param("norm", "clip", "choice", "clip (rows longer than √μ rescaled to √μ), sphere (every row on radius √μ), "
              "or none", choices=NORMS, nullable=True),
    ]
    default_heads = {
        "projector": {"kind": "mlp", "out_dim": 1000, "hidden_dim": 2048, "layers": 2, "bn": True, "last_bn": True},
    }
    default_optim = {"name": "sgd", "lr": 0.06, "weight_decay": 5e-4, "momentum": 0.9}
    default_train = {"batch_size": 512}

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)  # BatchNorm statistics per view, as the reference code
        c = self.cfg
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the loss in float32 under amp
            z1, z2 = gather(at_least_float32(e1["z"])), gather(at_least_float32(e2["z"]))  # negatives from the global batch
            a, r = spectral_terms(radius_projection(z1, c["mu"], c["norm"]), radius_projection(z2, c["mu"], c["norm"]))
            loss = (a + c["lambd"] * r) / c["mu"]
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs.update(attraction=(a / c["mu"]).detach(), repulsion=(r / c["mu"]).detach())
        return loss + reg, logs
