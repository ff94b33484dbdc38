"""Singular-value spectrum of one layer's embeddings and the rank measures built on it (SPEC §6 *spectrum*).

* ``effective_rank`` — Roy & Vetterli (2007): exp(H(p)), p_k = σ_k / Σ_j σ_j, σ of the column-centred Z.
* ``rankme`` — Garrido et al. (2023), "RankMe": exp(−Σ_k p_k log p_k), p_k = σ_k/‖σ‖₁ + ε, σ of the
  *uncentred* Z.
* ``rank_tau`` — #{σ_k ≥ τ·σ_1} (relative threshold), ``rank_abs`` — #{σ_k ≥ τ_abs} (paper 002 Eq. 2).
"""
from __future__ import annotations

import numpy as np
import torch

from ..params import Param
from .base import LayerData, Result, register_analyzer
from .stats import eigvalsh, map_side_by_side, moments, svdvals


def singular_values(z: np.ndarray) -> np.ndarray:
    """Descending singular values of (n, d) float64 ``z``: min(n, d) of them, from the smaller side (LAPACK's
    divide-and-conquer SVD on one thread, :func:`~reprscope.analyzers.stats.svdvals`)."""
    a = z if z.shape[0] >= z.shape[1] else z.T
    return svdvals(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))).numpy()


def entropy_rank(p: np.ndarray) -> float:
    """exp(−Σ p_k log p_k) of a non-negative vector ``p`` (0·log 0 = 0)."""
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def spectra(z: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """Centred and uncentred singular values of an in-memory (n, d) matrix by SVD (small matrices such as
    head weights), numerical zeros (≤ max(n, d)·eps·σ_max) set to exactly 0."""
    z = np.array(z, dtype=np.float64, copy=True)
    n, d = z.shape
    sv_unc = singular_values(z)
    tol = max(n, d) * np.finfo(np.float64).eps * (float(sv_unc[0]) if sv_unc.size else 0.0)
    z = np.zeros_like(z) if (z == z[:1]).all() else z - z.mean(axis=0)
    sv_c = singular_values(z)
    sv_c[sv_c <= tol] = 0.0
    sv_unc[sv_unc <= tol] = 0.0
    return sv_c, sv_unc


def _sv_from_psd(m: np.ndarray, device: str) -> np.ndarray:
    """Square roots of the eigenvalues of a PSD matrix, descending (negative rounding clipped to 0); one
    thread on the CPU (:func:`~reprscope.analyzers.stats.eigvalsh`)."""
    ev = eigvalsh(torch.from_numpy(np.ascontiguousarray(m)).to(device)).cpu().numpy()[::-1]
    return np.sqrt(np.clip(ev, 0.0, None))


def spectra_of_views(data: LayerData) -> "list[tuple[np.ndarray, np.ndarray]]":
    """Centred and uncentred singular values of every view, numerical zeros set to exactly 0.

    Uses the d×d scatter and Gram matrices from the shared streaming moments when n ≥ d (memory bounded by
    d², one pass over the layer for every analyzer), and the n×n Gram of the in-memory view when n < d —
    the n×n ↔ d×d duality: both sides have the same non-zero eigenvalues σ². The 2V eigendecompositions are
    independent and run side by side on the CPU (:func:`~reprscope.analyzers.stats.map_side_by_side`).

    Eigenvalues of a Gram matrix carry an absolute error of about max(n, d)·eps·σ_max², so σ_k with
    σ_k² ≤ max(n, d)·eps·σ_max(Z)² (σ_max of the uncentred Z, the scale of the data) are rounding noise and
    become 0: identical rows give a centred spectrum of exact zeros.

    Returns:
        Per view (centred σ, uncentred σ), each (min(n, d),) float64, descending.
    """
    n, d = data.n, data.dim
    eig = lambda a: _sv_from_psd(a, data.device)  # noqa: E731
    if n >= d:  # the d×d matrices are the cached moments: all 2V at once
        svs = map_side_by_side(eig, [x for m in moments(data) for x in (m.scatter, m.gram)], data.device)
    else:  # n×n matrices formed for one view at a time (memory: two of them)
        svs = []
        for vi in range(len(data.views)):
            z = data.view(vi)
            zc = z - z.mean(axis=0)
            svs += map_side_by_side(eig, [zc @ zc.T, z @ z.T], data.device)
    k = min(n, d)
    out = []
    for vi in range(len(data.views)):
        sv_c, sv_unc = svs[2 * vi][:k].copy(), svs[2 * vi + 1][:k].copy()
        tol = np.sqrt(max(n, d) * np.finfo(np.float64).eps) * (float(sv_unc[0]) if sv_unc.size else 0.0)
        sv_c[sv_c <= tol] = 0.0
        sv_unc[sv_unc <= tol] = 0.0
        out.append((sv_c, sv_unc))
    return out


@register_analyzer(
    "spectrum",
    params=[
        Param("tau", 0.01, "float", "relative threshold of rank_tau: count σ_k ≥ tau·σ_1", low=0, low_open=True),
        Param("tau_abs", 0.01, "float", "absolute threshold of rank_abs: count σ_k ≥ tau_abs", low=0),
        Param("eps", 1e-7, "float", "RankMe ε added to the normalised singular values", low=0),
    ],
    summary="singular values of each view's embeddings, effective rank, RankMe, rank_tau and rank_abs",
    paper="002 Eq. 2; Roy & Vetterli 2007; Garrido et al. 2023",
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
