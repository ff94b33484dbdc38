"""VICReg: variance, invariance and covariance terms on the projections of two views (Bardes, Ponce & LeCun
2022 — Bardes et al. 2022, arXiv:2105.04906 eq. 1–6 and Algorithm 1).

::

    ℓ(Z, Z') = λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')]
    v(Z) = (1/d) Σ_j max(0, γ − sqrt(Var(Z_:,j) + ε))        (unbiased variance, eq. 1–2)
    c(Z) = (1/d) Σ_{i≠j} C(Z)_ij²                            (unbiased covariance, eq. 3–4)
    s(Z, Z') = mse_loss(Z, Z')                                (Algorithm 1: the mean over the n·d entries;
                                                               eq. 5 writes the sum over d, i.e. d times this)

All three terms are computed on the **global** batch (the projections of every rank are gathered with
gradient). Any of λ, μ, ν may be 0 (Bardes et al. 2022 Table 4a).

Normalisation variants of Bardes et al. 2022 Table 4b (``normalization``):

* ``none`` — VICReg (the default: no normalisation in the loss);
* ``standardize`` — "VICReg + Standardization": each view's projections standardised over the batch before
  the loss (BatchNorm without affine at the end of the projector, computed in the loss so the stored
  projector output stays the raw z); the covariance matrix becomes the auto-correlation matrix;
* ``l2`` — "VICReg + ℓ2-normalization": rows projected on the unit sphere, the invariance term becomes the
  negative cosine similarity (eq. 9) and the variance target γ becomes γ/√d.

The table's "No BN in proj." rows are a projector setting: ``--set projector.bn=false`` (with
``normalization=standardize`` for "Standardization + No BN in proj.").

Defaults and where they come from: λ = μ = 25, ν = 1, γ = 1, ε = 1e-4 (Bardes et al. 2022 §4.3 and Algorithm 1);
projector ``Linear(2048) → BN → ReLU → Linear(2048) → BN → ReLU → Linear(2048)`` without a bias on the last
layer — the width of the CIFAR recipes (solo-learn); the paper's ImageNet projector is 8192 wide
(``--set projector.hidden_dim=8192 --set projector.out_dim=8192``); optimiser LARS, lr 0.3 at batch 256
(``--set optim.lr_scaling=linear`` for other sizes), weight decay 1e-4, trust coefficient 0.02 (solo-learn's
CIFAR recipe; the paper: LARS lr 0.2·B/256, weight decay 1e-6, batch 2048, 10 warm-up epochs, final lr
0.002).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..params import Param
from .barlow import standardize
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32, covariance_term, variance_term

NORMALIZATIONS = ("none", "standardize", "l2")



def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4,
                 normalization: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance s, variance v(Z) + v(Z'), covariance c(Z) + c(Z')) of Bardes et al. 2022 Algorithm 1 for two
    (n, d) batches, after the Table 4b ``normalization`` (None or "none": the raw projections).

    Raises:
        ValueError: an unknown normalisation.
    """
    normalization = normalization or "none"
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if normalization == "standardize":
        z1, z2 = standardize(z1), standardize(z2)
    if normalization == "l2":
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        inv = -(z1 * z2).sum(dim=1).mean()  # eq. 9
        gamma = gamma / math.sqrt(z1.shape[1])  # Σ_j Var(z_j) ≤ 1 on the sphere, so 1/√d is the largest common std
    else:
        inv = F.mse_loss(z1, z2)
    var = variance_term(z1, gamma, eps) + variance_term(z2, gamma, eps)
    cov = covariance_term(z1) + covariance_term(z2)
    return inv, var, cov


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 25.0, mu: float = 25.0, nu: float = 1.0,
                gamma: float = 1.0, eps: float = 1e-4, normalization: Optional[str] = None) -> torch.Tensor:
    """λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')] (Bardes et al. 2022 eq. 6, Algorithm 1). ``z1, z2``: (n, d)."""
    inv, var, cov = vicreg_terms(z1, z2, gamma, eps, normalization)
    return lambd * inv + mu * var + nu * cov


@METHODS.register("vicreg")
class VICReg(Method):
    """Invariance + variance hinge + covariance penalty, no normalisation in the loss by default."""

    name = "vicreg"
    summary = "VICReg: λ=μ=25, ν=1 (any may be 0); normalisation variants none/standardize/l2 of Bardes et al. 2022 Table 4b"
    paper = "Bardes et al. 2022 (Bardes, Ponce & LeCun 2022) eq. 1–6, Algorithm 1, Tables 3–4"
    params = [
        Param("lambd", 25.0, "float", "λ, weight of the invariance term", low=0),
        Param("mu", 25.0, "float", "μ, weight of the variance term (summed over both views)", low=0),
        Param("nu", 1.0, "float", "ν, weight of the covariance term (summed over both views)", low=0),
        Param("gamma", 1.0, "float", "γ, target standard deviation of each dimension", low=0, low_open=True),
        Param("eps", 1e-4, "float", "ε inside the square root of the variance term", low=0, low_open=True),
        Param("normalization", None, "choice", "Bardes et al. 2022 Table 4b: none, standardize (per-view batch "
              "standardisation), l2 (unit-norm rows, cosine invariance, γ/√d)", choices=NORMALIZATIONS, nullable=True),
    ]
    default_heads = {
        "projector": {"kind": "mlp", "out_dim": 2048, "hidden_dim": 2048, "layers": 3, "bn": True, "bias": False},
    }
    default_optim = {"name": "lars", "lr": 0.3, "weight_decay": 1e-4, "trust_coefficient": 0.02}

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)  # BatchNorm statistics per view, as the reference code
        c = self.cfg
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the covariance in float32 under amp
            z1, z2 = gather(at_least_float32(e1["z"])), gather(at_least_float32(e2["z"]))  # statistics of the global batch
            inv, var, cov = vicreg_terms(z1, z2, c["gamma"], c["eps"], c["normalization"])
            loss = c["lambd"] * inv + c["mu"] * var + c["nu"] * cov
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs.update(invariance=inv.detach(), variance=var.detach(), covariance=cov.detach())
        return loss + reg, logs
