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
(``clean`` is not a draw of the augmentation). Everything comes from d×d sums streamed in chunks; Σ_b is summed
about a shift (the first chunk's mean) so that a large common offset costs no precision.
"""
from __future__ import annotations

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare


def lidar_matrices(data: LayerData) -> "tuple[np.ndarray, np.ndarray, int]":
    """(Σ_b, Σ_w without δ, n) of the augmented views of ``data``, from one streamed pass in float64."""
    views = data.aug_view_ids()
    d, v = data.dim, len(views)
    dev = torch.device(data.device)
    sb = torch.zeros(d, d, dtype=torch.float64, device=dev)
    sw = torch.zeros(d, d, dtype=torch.float64, device=dev)
    s_mu = torch.zeros(d, dtype=torch.float64, device=dev)
    shift = None
    n = 0
    for c in data.chunks(views=views, dtype=data.dtype):
        t = torch.from_numpy(np.ascontiguousarray(c)).to(device=dev, dtype=torch.float64)  # (V, b, d)
        mu = t.mean(dim=0)  # (b, d)
        if shift is None:
            shift = mu.mean(dim=0)
        dev_mu = mu - shift
        sb.addmm_(dev_mu.T, dev_mu)
        s_mu += dev_mu.sum(dim=0)
        within = (t - mu).reshape(-1, d)
        sw.addmm_(within.T, within)
        n += mu.shape[0]
    mean = s_mu / n
    sigma_b = (sb / n - torch.outer(mean, mean)).cpu().numpy()
    return (sigma_b + sigma_b.T) / 2, (sw / (n * v)).cpu().numpy(), n


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
