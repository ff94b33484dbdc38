"""SwAV: swapped prediction of Sinkhorn–Knopp cluster assignments (Caron et al. 2020, NeurIPS).

For two views with ℓ2-normalised embeddings z₁, z₂ (n, d) and ℓ2-normalised prototypes C (K, d), the scores
are s_v = z_v Cᵀ (n, K). The codes q_v are the equipartitioned assignments of Sinkhorn–Knopp on s_v
(SwAV eq. 3, ε = 0.05, 3 iterations, no gradient), and the loss predicts each view's code from the other
view's scores (SwAV eq. 1–2)::

    L = −½ [ mean_i Σ_k q₁ᵢₖ log softmax(s₂ᵢ/τ)ₖ + mean_i Σ_k q₂ᵢₖ log softmax(s₁ᵢ/τ)ₖ ],   τ = 0.1

Paper 000 (§3.4, A.1) reads Sinkhorn's equipartition over prototypes spread on the sphere as what keeps the
center vector of SwAV small; its ablation trains with the prototypes fixed at their random initialisation
(``freeze_prototypes=true``).

Design (reference: facebookresearch/swav ``main_swav.py``):

* The projector ends at the normalised z (head kind ``swav``: MLP → ℓ2 norm), so the analyzers read the
  embedding that is scored, as the ``swav`` checkpoint format does; the prototypes are the method's own
  bias-free linear layer (saved in ``method_state``), renormalised after every optimiser step.
* Prototypes start uniformly distributed on the unit sphere (normalised Gaussian rows), the initialisation
  the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") §3.4 assumes for the fixed-prototype ablation (zero mean over prototypes).
* Sinkhorn runs on the *global* batch: the scores of every rank are gathered, so each rank computes the same
  codes and the same loss as one process on the whole batch. The optional queue holds gathered (global)
  embeddings, identical on every rank, so a checkpoint written by rank 0 resumes every rank exactly.
* ``freeze_prototypes_steps`` reproduces ``freeze_prototypes_niters``: the prototypes get a zero gradient
  (zero rather than None, so DDP sees every parameter used) and keep their values for the first N steps.

Defaults are the paper's / reference's (τ = 0.1, ε = 0.05, 3 iterations, K = 3000, d = 128, hidden 2048,
``freeze_prototypes_niters`` = 313, LARS with weight decay 1e-6 and cosine decay to 1/1000 of the peak); the
learning rate is the CIFAR recipe's (0.6 at batch 256, solo-learn ``scripts/pretrain/cifar/swav.yaml``;
the paper's bs-256 recipe uses the same value), and the CIFAR recipes keep K = 3000. The queue is off by
default as in the reference; the paper uses 3840 entries for batches ≤ 256 starting at epoch 15, here
``queue_start_step`` = 2940 (15 epochs of CIFAR-10 at batch 256, 196 steps per epoch).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather, gather_nograd
from ..models.heads import HEADS, mlp_head
from ..params import Param
from .base import METHODS, Method, encode
from .losses import at_least_float32


# -- head kind: the SwAV projection head ends at the normalised embedding ---------------------------------


@HEADS.register(
    "swav",
    params=[
        Param("out_dim", 128, "int", "dimension of the normalised embedding z (SwAV feat_dim)", low=1),
        Param("hidden_dim", 2048, "int", "width of the hidden layers (SwAV hidden_mlp)", low=1),
        Param("layers", 2, "int", "number of linear layers", low=1),
        Param("bn", True, "bool", "BatchNorm after each hidden linear layer"),
    ],
)
def swav_head(in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, layers: int = 2, bn: bool = True) -> List[Dict[str, Any]]:
    """SwAV's projection head (Caron et al. 2020, ``resnet50.py``): (linear → BN → ReLU) × (layers−1) →
    linear → ℓ2 norm. The prototypes that score z are not part of it (they live in the method)."""
    return mlp_head(in_dim, out_dim=out_dim, hidden_dim=hidden_dim, layers=layers, bn=bn) + [{"type": "l2norm"}]


# -- functional core ---------------------------------------------------------------------------------------



@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft assignments of samples to prototypes (SwAV eq. 3; ``distributed_sinkhorn``).

    Q = exp(scores/ε)ᵀ (K, B) is scaled to sum to 1, then each iteration rescales every row (prototype) to sum
    to 1/K and every column (sample) to sum to 1/B; the result is multiplied by B so that every sample's
    assignment sums to 1. The same iterations run in the log domain (log-sum-exp normalisations), so a small ε
    neither overflows nor underflows to 0/0.

    Args:
        scores: (B, K) scores of the whole (global) batch, queue rows included.
        epsilon: entropic regularisation ε.
        iterations: number of row/column normalisation rounds.

    Returns:
        (B, K) codes (float32 at least) whose rows sum to 1 (and whose columns sum to B/K once converged).
    """
    log_q = at_least_float32(scores.detach()).t() / epsilon  # (K, B) as in the paper's notation
    k, b = log_q.shape
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)
    return torch.exp(log_q + math.log(b)).t()


def swapped_prediction_loss(scores: List[torch.Tensor], codes: List[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction (eq. 1–2): for every view i whose code is used, the cross-entropy between
    q_i and softmax(s_v/τ) of every other view v, averaged over the samples, the other views and the coded
    views (``main_swav.py``).

    Args:
        scores: per view, (n, K) scores z Cᵀ (with gradient).
        codes: per view, (n, K) codes from :func:`sinkhorn_knopp` (no gradient).
        temperature: τ of the softmax over prototypes.
    """
    views = len(scores)
    logp = [F.log_softmax(at_least_float32(s) / temperature, dim=1) for s in scores]
    total = logp[0].new_zeros(())
    for i, q in enumerate(codes):
        sub = sum(-(q * logp[v]).sum(dim=1).mean() for v in range(views) if v != i)
        total = total + sub / (views - 1)
    return total / len(codes)


# -- the method --------------------------------------------------------------------------------------------


@METHODS.register("swav")
class SwAV(Method):
    """Online clustering with swapped prediction; prototypes (learnable, frozen for N steps, or fixed) and an
    optional queue of past embeddings for small batches."""

    name = "swav"
    summary = "SwAV: Sinkhorn–Knopp codes on the global batch, swapped prediction, prototypes (frozen/fixed), queue"
    paper = "Caron et al. 2020 (SwAV); the center-vector paper §3.4 and A.1 (fixed prototypes)"
    params = [
        Param("temperature", 0.1, "float", "τ of the softmax over prototype scores (SwAV)", low=0, low_open=True),
        Param("epsilon", 0.05, "float", "ε of the Sinkhorn–Knopp entropic regularisation", low=0, low_open=True),
        Param("sinkhorn_iterations", 3, "int", "Sinkhorn–Knopp normalisation rounds", low=1),
        Param("n_prototypes", 3000, "int", "number of prototypes K (3000 on ImageNet and in the CIFAR recipes)", low=1),
        Param("queue_length", 0, "int", "embeddings of past global batches added to Sinkhorn's input (0: no queue; "
              "3840 for batch 256 in the paper)", low=0),
        Param("queue_start_step", 2940, "int", "step from which the queue is filled (it is used once full); the "
              "paper's epoch 15 at 196 steps/epoch", low=0),
        Param("freeze_prototypes_steps", 313, "int", "the prototypes get no update for the first N steps "
              "(freeze_prototypes_niters)", low=0),
        Param("freeze_prototypes", False, "bool", "keep the prototypes at their random initialisation for the whole "
              "run (the center-vector paper §3.4)"),
    ]
    default_heads = {"projector": {"kind": "swav", "out_dim": 128, "hidden_dim": 2048, "layers": 2, "bn": True}}
    default_optim = {"name": "lars", "lr": 0.6, "weight_decay": 1e-6, "warmup_epochs": 10, "min_lr_ratio": 0.001}
    smoke_sets = {"method.n_prototypes": 24}

    def __init__(self, **given: Any):
        super().__init__(**given)
        self.prototypes: Optional[nn.Linear] = None
        self._snapshot: Optional[torch.Tensor] = None

    # -- hooks --------------------------------------------------------------------------------------------
    def setup(self, bundle: nn.Module) -> None:
        """Create the prototypes (K, d) on the unit sphere and, with ``queue_length`` > 0, the queue
        (2, L, d) of past embeddings with its fill count (both buffers, so resume restores them)."""
        from ..models.bundle import head_dims

        dims = head_dims(bundle)
        d = dims.get("projector", dims["encoder"])
        ref = next(bundle.parameters())
        self.prototypes = nn.Linear(d, self.cfg["n_prototypes"], bias=False).to(ref.device)
        with torch.no_grad():
            self.prototypes.weight.normal_()
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        if self.cfg["freeze_prototypes"]:
            self.prototypes.weight.requires_grad_(False)
        if self.cfg["queue_length"]:
            self.register_buffer("queue", torch.zeros(2, self.cfg["queue_length"], d, device=ref.device))
            self.register_buffer("queue_count", torch.zeros((), dtype=torch.long, device=ref.device))

    def _frozen(self, step: int) -> bool:
        return step < self.cfg["freeze_prototypes_steps"] and not self.cfg["freeze_prototypes"]

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        assert self.prototypes is not None, "SwAV.setup(bundle) must run before training_step"
        e1, e2 = encode(bundle, views[:2], joint=True)  # one forward of both views, as the reference
        zs = [F.normalize(e["z"], dim=1) for e in (e1, e2)]  # idempotent after the swav head; any head works
        w = self.prototypes.weight
        if self._frozen(step):
            # zero gradient (not None): DDP expects every parameter in the graph; values restored in after_step
            self._snapshot = w.detach().clone()
            w = w.detach() + 0.0 * w
        scores = [gather(z @ w.t()) for z in zs]  # (B_global, K) with gradient to this rank's rows
        codes, used = self._codes(scores, zs, step)
        loss = swapped_prediction_loss(scores, codes, self.cfg["temperature"])
        reg, logs = self.regularize([e1["z"], e2["z"]])
        logs["swav_loss"] = loss.detach()
        if self.cfg["queue_length"]:
            logs["queue_used"] = float(used)
        return loss + reg, logs

    @torch.no_grad()
    def _codes(self, scores: List[torch.Tensor], zs: List[torch.Tensor], step: int) -> Tuple[List[torch.Tensor], bool]:
        """Sinkhorn codes of each view's global batch, with the queue's scores prepended once the queue is
        full (``use_the_queue``); then the batch's embeddings enter the queue from ``queue_start_step`` on."""
        length = self.cfg["queue_length"]
        use = bool(length) and int(self.queue_count) >= length
        codes = []
        for i, s in enumerate(scores):
            out = at_least_float32(s.detach())
            if use:
                out = torch.cat([(self.queue[i] @ self.prototypes.weight.detach().t()).to(out.dtype), out])
            codes.append(sinkhorn_knopp(out, self.cfg["epsilon"], self.cfg["sinkhorn_iterations"])[-s.shape[0]:])
        if length and step >= self.cfg["queue_start_step"]:
            for i, z in enumerate(zs):
                new = gather_nograd(z).to(self.queue.dtype)
                n = min(new.shape[0], length)
                # newest batch first, older rows shift back and the oldest fall off (queue[i, bs:] = queue[i, :-bs])
                self.queue[i] = torch.cat([new[:n], self.queue[i, : length - n]])
            self.queue_count.fill_(min(length, int(self.queue_count) + new.shape[0]))
        return codes, use

    @torch.no_grad()
    def after_step(self, bundle: nn.Module, step: int, total_steps: int) -> None:
        """Prototypes back on the unit sphere (the reference renormalises before every forward); during the
        frozen steps they are restored exactly instead (the optimiser may have decayed them)."""
        if self.prototypes is None or self.cfg["freeze_prototypes"]:
            return
        w = self.prototypes.weight
        if self._frozen(step) and self._snapshot is not None:
            w.copy_(self._snapshot)
            self._snapshot = None
        else:
            w.copy_(F.normalize(w, dim=1))
