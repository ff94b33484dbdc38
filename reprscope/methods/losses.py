"""Loss functions as small pure functions (after lightly's ``loss/``), shared by the method units."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

Temperature = Union[float, Sequence[float], torch.Tensor]


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32: half-precision activations under autocast are upcast for the loss, float64
    stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _temperature_vector(temperature: Temperature, dim: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(temperature, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(dim)
    if t.numel() != dim:
        raise ValueError(f"per-dimension temperature has {t.numel()} entries but the embedding has {dim} dimensions")
    return t


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor, temperature: Temperature = 0.5, similarity: str = "cosine",
                        p: float = 2.0) -> torch.Tensor:
    """Logits sim(a_i, b_j)/τ for all pairs, (n, m).

    A per-dimension temperature vector τ ∈ ℝ^d weights each coordinate separately (Rusak et al. 2022 §3, τ_c ≠ τ_s):

    * ``cosine``: Σ_k â_k b̂_k / τ_k with â = a/‖a‖ (Cosentino et al. 2022, arXiv:2205.06926 Eq. 1 with a scalar τ);
    * ``dot``: Σ_k a_k b_k / τ_k (no normalisation);
    * ``neg_lp``: −Σ_k |a_k − b_k|^p / τ_k, the un-normalised InfoNCE of cl-ica / Rusak et al. 2022 for the box.
    """
    d = a.shape[-1]
    tau = _temperature_vector(temperature, d, a)
    if similarity == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return (a / tau) @ b.T
    if similarity == "dot":
        return (a / tau) @ b.T
    if similarity == "neg_lp":
        if p == 2.0:
            # ||a-b||²_τ = Σ a²/τ + Σ b²/τ − 2 Σ a b/τ, without an (n, m, d) intermediate.
            aa = (a * a / tau).sum(-1, keepdim=True)
            bb = (b * b / tau).sum(-1, keepdim=True)
            return -(aa + bb.T - 2 * (a / tau) @ b.T).clamp_min(0)
        diff = (a[:, None, :] - b[None, :, :]).abs().pow(p)
        return -(diff / tau).sum(-1)
    raise ValueError(f"unknown similarity {similarity!r}")


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: Temperature = 0.5, similarity: str = "cosine",
             p: float = 2.0) -> torch.Tensor:
    """Symmetric InfoNCE / NT-Xent over 2N−2 negatives (SimCLR; Rusak et al. 2022 Eq. 1, Cosentino et al. 2022 Eq. 1).

    For each of the 2N embeddings the positive is its pair and the negatives are the other 2N−2 embeddings
    of both views; the loss is the mean cross-entropy over all 2N anchors.

    Args:
        z1, z2: (N, d) embeddings of the two views, row i of each from the same sample.
    Returns:
        Scalar loss.
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    logits = pairwise_similarity(z, z, temperature, similarity, p)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term (Bardes et al. 2022, arXiv:2105.04906 eq. 1): mean over dimensions of max(0, γ − sqrt(Var(z_j) + ε)),
    with the unbiased variance over the batch. ``z``: (n, d)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term (Bardes et al. 2022 eq. 2): (1/d) Σ_{i≠j} C(z)_{ij}², with C the unbiased covariance
    over the batch. ``z``: (n, d)."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / max(1, n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d
