"""SimSiam: a predictor on one branch, stop-gradient on the other (Chen & He 2021; the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") eq. 15–17).

Loss (SimSiam eq. 4 / the center-vector paper eq. 15)::

    L = ½ mean_i [−cos(p₁_i, sg z₂_i)] + ½ mean_i [−cos(p₂_i, sg z₁_i)]

with z = g(f(x)) the projection and p = h(z) the prediction. Without a predictor (``--set predictor=none``)
p = z; without stop-gradient (``stop_gradient=false``) the gradient also flows through z — the two collapsing
ablations of the center-vector paper §3.2 / B.3.

Defaults and where they come from (SimSiam §3 for the heads, its CIFAR-10 recipe for the optimiser):

* projector ``Linear(2048) → BN → ReLU → Linear(2048) → BN → ReLU → Linear(2048) → BN`` with the output BN
  affine-free and no biases before BN (``last_bn``);
* predictor bottleneck ``Linear(512) → BN → ReLU → Linear(2048)`` (no BN on the output);
* the predictor is trained with a **fixed** learning rate (no schedule) — ``predictor_fixed_lr`` — and
  ``predictor_lr_mult`` scales it (the center-vector paper B.4 sweeps it from 1% to 100%; BYOL's is ~10%);
* optimiser: SGD, lr 0.03·B/256 = 0.06 at the default batch 512, momentum 0.9, weight decay 5e-4
  (SimSiam's CIFAR-10 recipe; ImageNet: lr 0.05·B/256, weight decay 1e-4). Other batch sizes:
  ``--set optim.lr=0.03 --set optim.lr_scaling=linear``.

VICReg's variance / covariance terms (Bardes et al. 2022, arXiv:2105.04906 Table 3) act on the projections z₁, z₂ (``var_reg``, ``cov_reg``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..distributed import gather
from ..params import Param
from .base import METHODS, Logs, Method, encode
from .losses import at_least_float32
from .byol import check_predictor



def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """−cos(p_i, z_i) per row, (n,) from two (n, d) batches (SimSiam's D)."""
    return -F.cosine_similarity(p, z, dim=-1)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 stop_gradient: bool = True) -> torch.Tensor:
    """½ D(p₁, sg z₂) + ½ D(p₂, sg z₁) with D the mean negative cosine similarity (SimSiam eq. 4).

    Args:
        p1, p2: (n, d) predictions of the two views (the projections themselves without a predictor).
        z1, z2: (n, d) projections of the two views.
        stop_gradient: detach z (SimSiam); ``False`` lets the gradient flow into both branches.
    """
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    return 0.5 * negative_cosine(p1, z2).mean() + 0.5 * negative_cosine(p2, z1).mean()


@METHODS.register("simsiam")
class SimSiam(Method):
    """Symmetric negative cosine between a prediction and the other view's stop-gradient projection."""

    name = "simsiam"
    summary = "SimSiam: predictor (fixed lr) + stop-gradient; without predictor / stop-gradient (the center-vector paper §3.2, B.4)"
    paper = "Chen & He 2021 (SimSiam); the center-vector paper §2.3, §3.2, B.3, B.4; Bardes et al. 2022 Table 3"
    params = [
        Param("stop_gradient", True, "bool", "stop the gradient through the projection z (false: the center-vector paper §3.2 ablation)"),
        Param("predictor_fixed_lr", True, "bool", "train the predictor at a fixed lr, without the schedule (SimSiam)"),
        Param("predictor_lr_mult", 1.0, "float", "predictor lr as a multiple of the peak lr (the center-vector paper B.4)",
              low=0, low_open=True),
    ]
    default_heads = {
        "projector": {"kind": "mlp", "out_dim": 2048, "hidden_dim": 2048, "layers": 3, "bn": True, "last_bn": True},
        "predictor": {"kind": "mlp", "out_dim": 2048, "hidden_dim": 512, "layers": 2, "bn": True},
    }
    default_optim = {"name": "sgd", "lr": 0.06, "weight_decay": 5e-4, "momentum": 0.9}
    default_train = {"batch_size": 512}

    def check_model(self, heads: Dict[str, Any], encoder_dim: int) -> None:
        check_predictor(self.name, heads, encoder_dim, required=False)

    def param_groups(self, bundle) -> List[Dict[str, Any]]:
        """Encoder and projector on the schedule; the predictor in its own group with a fixed lr and/or a
        multiplier (the center-vector paper B.4). Without a predictor: one group."""
        if not bundle.has("predictor"):
            return super().param_groups(bundle)
        pred = [p for p in bundle.predictor.parameters() if p.requires_grad]
        ids = {id(p) for p in pred}
        rest = [p for p in list(bundle.parameters()) + list(self.parameters()) if p.requires_grad and id(p) not in ids]
        group: Dict[str, Any] = {"params": pred, "lr_mult": self.cfg["predictor_lr_mult"]}
        if self.cfg["predictor_fixed_lr"]:
            group["fixed_lr"] = True
        return [{"params": rest}, group]

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        e1, e2 = encode(bundle, views[:2], joint=False)  # BatchNorm statistics per view, as the reference code
        with torch.autocast(device_type=e1["z"].device.type, enabled=False):  # the loss in float32 under amp
            # the mean over the global batch, so every rank reports the loss a one-process run would
            z1, z2 = gather(at_least_float32(e1["z"])), gather(at_least_float32(e2["z"]))
            p1, p2 = (gather(at_least_float32(e1["p"])), gather(at_least_float32(e2["p"]))) if "p" in e1 else (z1, z2)
            loss = simsiam_loss(p1, p2, z1, z2, self.cfg["stop_gradient"])
            reg, logs = self.regularize([at_least_float32(e1["z"]), at_least_float32(e2["z"])])
        logs["simsiam"] = loss.detach()
        return loss + reg, logs
