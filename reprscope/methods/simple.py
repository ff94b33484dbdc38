"""Paper 000's simplified SSL objective: augmentation invariance with a center-vector penalty (eq. 32).

Paper 000 frames two-stream SSL as the constrained problem min L(f) s.t. s = 0 (eq. 3), with
ẑ = f(x)/‖f(x)‖ on the unit sphere, the invariance L(f) = E_{x,ω}[‖ẑ − ẑ_ω‖²] (eq. 2, D the squared
Euclidean distance) and the center vector s = E_x E_ω[ẑ_ω] (eq. 1). Its unconstrained Lagrangian is the
simple objective (eq. 32)::

    L_Simple(f) = 0.5 (L(f) − λ_L L_s),      λ_L = −1   (the paper's setting, §3.1)

where L_s is the center-vector magnitude, so with λ_L = −1 the loss is 0.5 (L(f) + ‖s‖²) (the paper's text
leaves the power of the magnitude implicit; ``center_penalty=norm`` uses ‖s‖ instead of the default ‖s‖²).
On a batch of two views: L(f) = mean_i ‖ẑ¹_i − ẑ²_i‖² and ŝ = the mean of the 2n normalised embeddings of
the **global** batch (gathered with gradient).

There is no predictor, no stop-gradient and no momentum encoder ("without the architectural complexity of
SimSiam"); the paper optimises it with mini-batch SGD on its toy sets (blobs, moons) and gives no further
recipe, so the optimiser is the trainer's default. Head: the SimCLR-style projector ``Linear(2048) → BN →
ReLU → Linear(128)`` for comparability with the other methods; ``--set projector=none`` applies the loss to the
encoder output as in the paper's toy experiments. VICReg's variance / covariance terms (Bardes et al. 2022, arXiv:2105.04906 Table 3)
act on the projections with ``var_reg`` / ``cov_reg``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..params import Param
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32

PENALTIES = ("squared", "norm")



def simple_terms(z1: torch.Tensor, z2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(invariance mean_i ‖ẑ¹_i − ẑ²_i‖², center vector ŝ (d,)) of two (n, d) batches, rows ℓ2-normalised
    (the center-vector paper, ICLR 2024 submission, eq. 1–2)."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    invariance = (z1 - z2).pow(2).sum(dim=1).mean()
    center = torch.cat([z1, z2], dim=0).mean(dim=0)
    return invariance, center


def center_magnitude(center: torch.Tensor, penalty: str = "squared") -> torch.Tensor:
    """L_s: ‖s‖² (``squared``) or ‖s‖ (``norm``) of a (d,) center vector.

    Raises:
        ValueError: an unknown ``penalty``.
    """
    if penalty == "squared":
        return center.pow(2).sum()
    if penalty == "norm":
        return center.norm()
    raise ValueError(f"unknown center penalty {penalty!r}; valid: {', '.join(PENALTIES)}")


def simple_loss(z1: torch.Tensor, z2: torch.Tensor, lagrange: float = -1.0, penalty: str = "squared") -> torch.Tensor:
    """Paper 000 eq. 32: 0.5 (L(f) − λ_L L_s) with λ_L = ``lagrange``. ``z1, z2``: (n, d) embeddings of two views."""
    invariance, center = simple_terms(z1, z2)
    return 0.5 * (invariance - lagrange * center_magnitude(center, penalty))


@METHODS.register("simple")
class Simple(Method):
    """Invariance between ℓ2-normalised views plus a penalty on the batch center vector (the center-vector paper eq. 32)."""

    name = "simple"
    summary = "the center-vector paper's simple objective 0.5(L_inv − λ_L‖s‖²), λ_L = −1: invariance + center-vector penalty (eq. 32)"
    paper = "the center-vector paper §2.1 eq. 1–3, §3.1 eq. 32"
    params = [
        Param("lagrange", -1.0, "float", "λ_L, the Lagrange multiplier of eq. 32 (−1: penalise the center vector)"),
        Param("center_penalty", "squared", "choice", "L_s: squared (‖s‖²) or norm (‖s‖) of the center vector",
              choices=PENALTIES),
    ]
    default_heads = {"projector": {"kind": "mlp", "out_dim": 128, "hidden_dim": 2048, "layers": 2, "bn": True}}

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)
        c = self.cfg
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the loss in float32 under amp
            z1, z2 = gather(at_least_float32(e1["z"])), gather(at_least_float32(e2["z"]))  # the center of the global batch
            invariance, center = simple_terms(z1, z2)
            magnitude = center_magnitude(center, c["center_penalty"])
            loss = 0.5 * (invariance - c["lagrange"] * magnitude)
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs.update(invariance=invariance.detach(), center_norm=center.detach().norm())
        return loss + reg, logs
