"""Singular-value spectrum of one layer's embeddings and the rank measures built on it.

* ``effective_rank`` — Roy & Vetterli (2007): exp(H(p)), p_k = σ_k / Σ_j σ_j, σ of the column-centred Z.
* ``rankme`` — Garrido et al. (2023), "RankMe": exp(−Σ_k p_k log p_k), p_k = σ_k/‖σ‖₁ + ε, σ of the
  *uncentred* Z.
* ``rank_tau`` — #{σ_k ≥ τ·σ_1} (relative threshold), ``rank_abs`` — #{σ_k ≥ τ_abs} (Cosentino et al. 2022, arXiv:2205.06926 Eq. 2).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare
from .stats import eigvalsh, map_side_by_side, moments, svdvals


def singular_values(z: np.ndarray) -> np.ndarray:
    """Descending singular values of (n, d) float64 ``z``: min(n, d) of them, from the smaller side (LAPACK's
    divide-and-conquer SVD on one thread, :func:`~reprscope.metrics.stats.svdvals`)."""
    a = z if z.shape[0] >= z.shape[1] else z.T
    return svdvals(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))).numpy()


def entropy_rank(p: np.ndarray) -> float:
    """exp(−Σ p_k log p_k) of a non-negative vector ``p`` (0·log 0 = 0)."""
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def _sv_from_psd(m: np.ndarray, device: str) -> np.ndarray:
    """Square roots of the eigenvalues of a PSD matrix, descending (negative rounding clipped to 0); one
    thread on the CPU (:func:`~reprscope.metrics.stats.eigvalsh`)."""
    ev = eigvalsh(torch.from_numpy(np.ascontiguousarray(m)).to(device)).cpu().numpy()[::-1]
    return np.sqrt(np.clip(ev, 0.0, None))


#: Multiple of eps·‖Z‖_F·(1/√d + 1/√n) (the spectral norm of a matrix of rounding errors of the stored
#: embeddings, eps of their dtype) below which a centred σ is below what the stored values resolve.
RESOLUTION_FACTOR = 4.0


def spectra_of_views(data: LayerData) -> "list[tuple[np.ndarray, np.ndarray]]":
    """Centred and uncentred singular values of every view, numerical zeros set to exactly 0.

    Uses the d×d scatter and Gram matrices from the shared streaming moments when n ≥ d (memory bounded by
    d², one pass over the layer for every analyzer), and the n×n Gram of the in-memory view when n < d —
    the n×n ↔ d×d duality: both sides have the same non-zero eigenvalues σ². The 2V eigendecompositions are
    independent and run side by side on the CPU (:func:`~reprscope.metrics.stats.map_side_by_side`).

    Numerical zeros. The eigenvalues of a matrix of products AᵀA carry an absolute error of about
    max(n, d)·eps₆₄·σ_max(A)², so a σ_k ≤ √(max(n, d)·eps₆₄)·σ_max(A) is rounding noise of the product:

    * uncentred σ: A = Z;
    * centred σ: A = Z − c, the embeddings less the point the products were formed about (the streaming
      moments' shift, or the mean), so that a layer with a large common offset keeps the small centred σ it
      resolves (σ_max(Z − c)² ≤ λ_max(scatter) + n‖µ − c‖²). A centred σ_k is also 0 when it is below
      RESOLUTION_FACTOR·eps·‖Z‖_F·(1/√d + 1/√n), eps that of the stored dtype: the size of the rounding errors of
      the stored values themselves, e.g. rows that differ in their last bit only, or the rounding of the mean
      of identical rows. Identical rows give a centred spectrum of exact zeros.

    Returns:
        Per view (centred σ, uncentred σ), each (min(n, d),) float64, descending.
    """
    n, d = data.n, data.dim
    eps64 = float(np.finfo(np.float64).eps)
    eps_data = float(np.finfo(data.dtype).eps) if np.issubdtype(data.dtype, np.floating) else eps64
    eig = lambda a: _sv_from_psd(a, data.device)  # noqa: E731
    if n >= d:  # the d×d matrices are the cached moments: all 2V at once
        mom = moments(data)
        svs = map_side_by_side(eig, [x for m in mom for x in (m.scatter, m.gram)], data.device)
        scales = [math.sqrt(m.shifted_scale2(float(svs[2 * i][0]) ** 2 if svs[2 * i].size else 0.0))
                  for i, m in enumerate(mom)]
        fro = [math.sqrt(max(float(np.trace(m.gram)), 0.0)) for m in mom]
    else:  # n×n matrices formed for one view at a time (memory: two of them)
        svs, scales, fro = [], [], []
        for vi in range(len(data.views)):
            z = data.view(vi)
            zc = z - z.mean(axis=0)
            svs += map_side_by_side(eig, [zc @ zc.T, z @ z.T], data.device)
            scales.append(float(svs[-2][0]) if svs[-2].size else 0.0)
            fro.append(float(np.linalg.norm(z)))
    k = min(n, d)
    floor = math.sqrt(max(n, d) * eps64)
    resolution = RESOLUTION_FACTOR * eps_data * (1 / math.sqrt(d) + 1 / math.sqrt(n)) if n and d else 0.0
    out = []
    for vi in range(len(data.views)):
        sv_c, sv_unc = svs[2 * vi][:k].copy(), svs[2 * vi + 1][:k].copy()
        tol_unc = floor * (float(sv_unc[0]) if sv_unc.size else 0.0)
        tol_c = max(floor * scales[vi], resolution * fro[vi])
        sv_c[sv_c <= tol_c] = 0.0
        sv_unc[sv_unc <= tol_unc] = 0.0
        out.append((sv_c, sv_unc))
    return out


@declare(
    "spectrum",
    params=[
        Param("tau", 0.01, "float", "relative threshold of rank_tau: count σ_k ≥ tau·σ_1", low=0, low_open=True,
              high=1),
        Param("tau_abs", 0.01, "float", "absolute threshold of rank_abs: count σ_k ≥ tau_abs", low=0),
        Param("eps", 1e-7, "float", "RankMe ε added to the normalised singular values", low=0),
    ],
    summary="singular values of each view's embeddings, effective rank, RankMe, rank_tau and rank_abs",
    paper="Cosentino et al. 2022, arXiv:2205.06926, Eq. 2; Roy & Vetterli 2007; Garrido et al. 2023, arXiv:2210.02885",
    headline=("rankme", "effective_rank", "rank_tau", "rank_abs"),
    split=True,
)
def spectrum(data: LayerData, tau: float = 0.01, tau_abs: float = 0.01, eps: float = 1e-7) -> Result:
    """Spectrum and rank measures of every view separately (``view`` = the view's name).

    Args:
        data: (V, n, d) embeddings, any float dtype; computed in float64.
        tau: relative threshold (> 0); ``rank_tau`` = #{σ_k ≥ tau·σ_1}, σ of the centred Z.
        tau_abs: absolute threshold (≥ 0); ``rank_abs`` = #{σ_k > 0 and σ_k ≥ tau_abs}, centred σ
            (numerical zeros never count, so tau_abs = 0 gives the numerical rank).
        eps: RankMe ε, added after normalising σ by its ℓ1 norm.

    Returns:
        Per view: ``sv`` (vector, descending centred σ, index = rank position 0 … min(n, d) − 1),
        ``log_sv`` (natural log of the positive ones, same index), ``effective_rank``, ``rankme``,
        ``rank_tau``, ``rank_abs``. A collapsed view (all samples identical) has effective_rank = rank_tau =
        rank_abs = 0; an all-zero view has rankme = 0; both with a note.
    """
    res = Result()
    for name, (sv, sv_unc) in zip(data.views, spectra_of_views(data)):
        res.add_vector("sv", sv, view=name)
        pos = np.flatnonzero(sv > 0)
        res.add_vector("log_sv", np.log(sv[pos]), view=name, index=list(pos))
        if pos.size == 0:
            res.notes.append(f"collapsed: all samples identical in view {name}; effective_rank, rank_tau and rank_abs are 0")
            res.add("effective_rank", 0.0, view=name)
            res.add("rank_tau", 0.0, view=name)
            res.add("rank_abs", 0.0, view=name)
        else:
            res.add("effective_rank", entropy_rank(sv / sv.sum()), view=name)
            res.add("rank_tau", float(np.count_nonzero(sv >= tau * sv[0])), view=name)
            res.add("rank_abs", float(np.count_nonzero((sv > 0) & (sv >= tau_abs))), view=name)
        total = sv_unc.sum()
        if total > 0:
            res.add("rankme", entropy_rank(sv_unc / total + eps), view=name)
        else:
            res.notes.append(f"all embeddings are zero in view {name}; rankme is 0")
            res.add("rankme", 0.0, view=name)
    return res
