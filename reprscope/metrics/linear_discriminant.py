"""LiDAR (Thilak et al. 2023, arXiv:2312.04000): the effective rank of the linear-discriminant matrix of a layer,
each input being a class whose members are its augmented views.

With z_{i,v} the embedding of view v of sample i (V augmented views, n samples), μ_i = (1/V) Σ_v z_{i,v} and
μ = (1/n) Σ_i μ_i:

* Σ_b = (1/n) Σ_i (μ_i − μ)(μ_i − μ)ᵀ (between the samples),
* Σ_w = (1/(nV)) Σ_i Σ_v (z_{i,v} − μ_i)(z_{i,v} − μ_i)ᵀ + δ I (within a sample's views, regularised),
* Σ_lidar = Σ_w^{-1/2} Σ_b Σ_w^{-1/2} with eigenvalues λ_k ≥ 0,
* LiDAR = exp(−Σ_k p_k log p_k), p_k = λ_k / Σ_j λ_j + ε (RankMe's smoothed entropy, on Σ_lidar).

The expectations are the plain means over samples and views (1/n, 1/(nV)); δ (default 1e-4) and ε (default
1e-7, RankMe's) are parameters because implementations differ in them. Only the augmented views count
(``clean`` is not a draw of the augmentation). Everything comes from d×d sums streamed in chunks about the exact
view means: the per-view scatters are the layer's shared moments, only the cross-products between views take a
pass of their own.
"""
from __future__ import annotations

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare
from ._ranks import sum_over_ranks
from .stats import moments


def lidar_matrices(data: LayerData) -> "tuple[np.ndarray, np.ndarray, int]":
    """(Σ_b, Σ_w without δ, n) of the augmented views of ``data``.

    With a_iv = z_iv − m_v (m_v the mean of view v), C_vw = Σ_i a_iv a_iwᵀ and m̄ the mean of the m_v:
    n Σ_b = (1/V²) Σ_{v,w} C_vw and nV Σ_w = Σ_v C_vv − (1/V) Σ_{v,w} C_vw + n Σ_v (m_v − m̄)(m_v − m̄)ᵀ.
    C_vv are the per-view scatters the layer's shared moments hold already (computed once for every analyzer
    that needs them); only the V(V−1)/2 cross-products C_vw, v < w, take a pass of their own, about the exact
    means, in float64.
    """
    views = data.aug_view_ids()
    d, v = data.dim, len(views)
    mom = moments(data)
    means = [mom[i].mean for i in views]
    dev = torch.device(data.device)
    total = sum(mom[i].scatter for i in views).astype(np.float64)
    if v > 1:
        mt = torch.from_numpy(np.stack(means)).to(device=dev, dtype=torch.float64)  # (V, d)
        cross = torch.zeros(d, d, dtype=torch.float64, device=dev)
        for _start, c in data.shared_chunks(views=views, dtype=data.dtype):  # a torchrun job: its share
            t = torch.from_numpy(np.ascontiguousarray(c)).to(device=dev, dtype=torch.float64, copy=True)
            t -= mt[:, None, :]
            for a in range(v):
                for b in range(a + 1, v):
                    cross.addmm_(t[a].T, t[b])
        cross = sum_over_ranks(cross.cpu().numpy())
        total = total + cross + cross.T
    n = mom[views[0]].n
    sigma_b = total / (v * v * n)
    mbar = np.mean(means, axis=0)
    spread = sum(np.outer(m - mbar, m - mbar) for m in means)
    sigma_w = (sum(mom[i].scatter for i in views) - total / v + n * spread) / (n * v)
    return (sigma_b + sigma_b.T) / 2, (sigma_w + sigma_w.T) / 2, n


def lidar_of(sigma_b: np.ndarray, sigma_w: np.ndarray, delta: float, eps: float) -> "tuple[float, np.ndarray]":
    """LiDAR and the eigenvalues of Σ_lidar (descending) from Σ_b and the unregularised Σ_w."""
    d = sigma_w.shape[0]
    w, u = np.linalg.eigh(sigma_w + delta * np.eye(d))
    w = np.clip(w, np.finfo(np.float64).tiny, None)
    inv_sqrt = (u / np.sqrt(w)) @ u.T
    m = inv_sqrt @ sigma_b @ inv_sqrt
    lam = np.clip(np.linalg.eigvalsh((m + m.T) / 2)[::-1], 0.0, None)
    total = lam.sum()
    if total <= 0:
        return float("nan"), lam
    p = lam / total + eps
    return float(np.exp(-np.sum(p * np.log(p)))), lam


@declare(
    "lidar",
    params=[
        Param("delta", 1e-4, "float", "δ added to the within-sample covariance Σ_w", low=0.0),
        Param("eps", 1e-7, "float", "ε added to the normalised eigenvalues in the entropy", low=0.0),
    ],
    needs=("two_views",),
    summary="LiDAR: effective rank of the linear-discriminant matrix, every input a class of its augmented views",
    paper="Thilak et al. 2023, arXiv:2312.04000",
    min_samples=2,
    split=True,
)
def lidar(data: LayerData, delta: float = 1e-4, eps: float = 1e-7) -> Result:
    """LiDAR of the layer's augmented views (row ``lidar``, view = the views joined by ``|``)."""
    res = Result()
    sigma_b, sigma_w, _ = lidar_matrices(data)
    if delta == 0 and np.linalg.eigvalsh(sigma_w)[0] <= 0:
        res.notes.append("the within-sample covariance is singular and delta = 0: LiDAR is undefined (use delta > 0)")
        return res
    value, _ = lidar_of(sigma_b, sigma_w, delta, eps)
    res.add("lidar", value, view="|".join(data.views[i] for i in data.aug_view_ids()))
    return res
