"""BYOL: an online network with a predictor regresses a momentum (EMA) target (Grill et al. 2020; the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") §2.4).

Loss (Grill et al. eq. 2, summed over the two view orders as in the paper, L + L̃)::

    L = mean_i [2 − 2 cos(q(z₁)_i, sg z'₂_i)] + mean_i [2 − 2 cos(q(z₂)_i, sg z'₁_i)]

with z = g(f(x)) the online projection, q the predictor and z' the target network's projection. The target
(encoder + projector, never the predictor) follows ξ ← m ξ + (1 − m) θ after every optimiser step, m on
BYOL's cosine schedule from ``momentum`` to ``final_momentum`` (``methods/ema.py``).

Defaults and where they come from:

* ``momentum`` 0.99 — the CIFAR-scale base value (solo-learn's CIFAR recipe; the value the center-vector paper §2.4 and
  Bardes et al. 2022, arXiv:2105.04906 B.5 use). BYOL's ImageNet recipe uses 0.996: ``--set method.momentum=0.996``.
* heads: projector and predictor both ``Linear(4096) → BN → ReLU → Linear(256)`` (BYOL §3.3).
* optimiser: LARS, lr 1.0 at batch 256, weight decay 1e-5, trust coefficient 0.02, biases and norm
  weights excluded — solo-learn's CIFAR recipe (other batch sizes: ``--set optim.lr_scaling=linear``).
  BYOL's ImageNet recipe: LARS lr 0.2·B/256, weight decay 1.5e-6, trust coefficient 1e-3, 10 warm-up epochs.

Ablations as configuration: a fixed momentum (the center-vector paper §3.5, Fig. 7) with ``momentum_schedule=constant``
(``momentum=0`` makes the target a copy of the online network after every step, ``momentum=1`` freezes it
at its initialisation); VICReg's variance / covariance terms on the online projections (Bardes et al. 2022 Table 3)
with ``var_reg`` / ``cov_reg``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..distributed import gather, gather_nograd
from ..errors import ReprscopeError
from ..models.heads import head_out_dim
from ..params import Param
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32
from .ema import Target, cosine_momentum, ema_update



def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖p̂ − ẑ‖² = 2 − 2 cos(p, z) per row (BYOL eq. 2), (n,) from two (n, d) batches."""
    return 2 - 2 * F.cosine_similarity(p, z, dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """Symmetrised BYOL loss: mean normalised MSE of view 1's prediction against view 2's target plus the
    swapped term (BYOL's L + L̃). ``p1, p2``: (n, d) online predictions; ``t1, t2``: (n, d) target projections
    (detached here: the target never receives gradient)."""
    return normalized_mse(p1, t2.detach()).mean() + normalized_mse(p2, t1.detach()).mean()


def check_predictor(method: str, heads: Dict[str, Any], encoder_dim: int, required: bool) -> None:
    """The predictor must map the projector's output space onto itself (its output is compared with z).

    Raises:
        ReprscopeError: no predictor where one is required, or a predictor whose output width differs.
    """
    z_dim = head_out_dim(heads["projector"], encoder_dim) if heads.get("projector") else encoder_dim
    if not heads.get("predictor"):
        if required:
            raise ReprscopeError(
                f"Method {method} needs a predictor head (its online branch predicts the target's projection); "
                f"got none. Remove predictor=none from the config or set e.g. predictor.kind=mlp.", arg="config"
            )
        return
    p_dim = head_out_dim(heads["predictor"], z_dim)
    if p_dim != z_dim:
        raise ReprscopeError(
            f"The predictor of method {method} must output the projector's width {z_dim} (its output is compared "
            f"with the projection); got {p_dim}. Set predictor.out_dim={z_dim} in the config.", arg="config"
        )


@METHODS.register("byol")
class BYOL(Method):
    """Online encoder + projector + predictor against an EMA target (Grill et al. 2020)."""

    name = "byol"
    summary = "BYOL: predictor regresses an EMA target, 2−2cos symmetrised; momentum 0.99→1 cosine (fixed: the center-vector paper §3.5)"
    paper = "Grill et al. 2020 (BYOL); the center-vector paper §2.4, §3.5; Bardes et al. 2022 Table 3"
    params = [
        Param("momentum", 0.99, "float", "base EMA momentum m of the target (0.99 CIFAR, 0.996 ImageNet)", low=0, high=1),
        Param("final_momentum", 1.0, "float", "momentum at the end of training (cosine schedule)", low=0, high=1),
        Param("momentum_schedule", "cosine", "choice", "cosine (BYOL: from momentum to final_momentum) or constant "
              "(momentum throughout, the center-vector paper §3.5)", choices=("cosine", "constant")),
    ]
    default_heads = {
        "projector": {"kind": "mlp", "out_dim": 256, "hidden_dim": 4096, "layers": 2, "bn": True},
        "predictor": {"kind": "mlp", "out_dim": 256, "hidden_dim": 4096, "layers": 2, "bn": True},
    }
    default_optim = {"name": "lars", "lr": 1.0, "weight_decay": 1e-5, "trust_coefficient": 0.02}

    def check_model(self, heads: Dict[str, Any], encoder_dim: int) -> None:
        check_predictor(self.name, heads, encoder_dim, required=True)

    def setup(self, bundle) -> None:
        self.target = Target(bundle)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """EMA momentum used after optimiser step ``step`` of ``total_steps``."""
        if self.cfg["momentum_schedule"] == "constant":
            return float(self.cfg["momentum"])
        return cosine_momentum(self.cfg["momentum"], step, total_steps, self.cfg["final_momentum"])

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)  # BatchNorm statistics per view, as the reference code
        with torch.no_grad():
            t1, t2 = self.target(views[0])["z"], self.target(views[1])["z"]
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the loss in float32 under amp
            # the mean over the global batch, so every rank reports the loss a one-process run would
            p1, p2 = gather(at_least_float32(e1["p"])), gather(at_least_float32(e2["p"]))
            loss = byol_loss(p1, p2, gather_nograd(at_least_float32(t1)), gather_nograd(at_least_float32(t2)))
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs["byol"] = loss.detach()
        logs["momentum"] = self.momentum_at(step, total_steps)
        return loss + reg, logs

    def after_step(self, bundle, step: int, total_steps: int) -> None:
        ema_update(self.target, bundle, self.momentum_at(step, total_steps))
