"""SimCLR: symmetric InfoNCE on the projector output (Chen et al. 2020; Rusak et al. 2022 Eq. 1, Cosentino et al. 2022, arXiv:2205.06926 Eq. 1).

Variants as configuration: a per-dimension temperature vector (Rusak et al. 2022's τ_c ≠ τ_s), and the
un-normalised loss with a negative ℓp distance (cl-ica's box setting, Rusak et al. 2022 §4.1).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from ..params import Param
from ..distributed import gather
from .base import METHODS, Method, encode
from .losses import info_nce


@METHODS.register("simclr")
class SimCLR(Method):
    """InfoNCE over 2N−2 negatives with cosine (default), dot or negative-ℓp similarity."""

    name = "simclr"
    summary = "InfoNCE / NT-Xent; per-dimension temperatures; optional un-normalised ℓp similarity (Rusak et al. 2022, 002)"
    params = [
        Param("temperature", 0.5, "floats", "τ, a float or one value per projector dimension (τ_c ≠ τ_s)", low=0, low_open=True),
        Param("similarity", "cosine", "choice", "cosine (ℓ2-normalised), dot, or neg_lp (−‖a−b‖_p^p, no normalisation)",
              choices=("cosine", "dot", "neg_lp")),
        Param("p", 2.0, "float", "exponent of the ℓp distance for similarity=neg_lp", low=0, low_open=True),
    ]
    default_heads = {"projector": {"kind": "mlp", "out_dim": 128, "hidden_dim": 2048, "layers": 2, "bn": True}}

    def check_output_dim(self, dim: int) -> None:
        t = self.cfg["temperature"]
        if isinstance(t, list) and len(t) != dim:
            from ..errors import ReprscopeError

            raise ReprscopeError(
                f"The 'temperature' parameter of method simclr has {len(t)} values but the projector outputs {dim} "
                f"dimensions; give one value or {dim}."
            )

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        e1, e2 = encode(bundle, views[:2], joint=True)  # one forward so BatchNorm sees both views together
        z1, z2 = gather(e1["z"]), gather(e2["z"])  # negatives from every rank, with gradient
        loss = info_nce(z1, z2, self.cfg["temperature"], self.cfg["similarity"], self.cfg["p"])
        reg, logs = self.regularize([e1["z"], e2["z"]])
        logs["info_nce"] = loss.detach()
        return loss + reg, logs
