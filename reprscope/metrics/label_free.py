"""Label-free quality measures of one layer: eigenspectrum decay, spectrum-based ranks and intrinsic dimension.

* ``alpha_req`` — α-ReQ (Agrawal et al. 2022, NeurIPS, "α-ReQ: assessing representation quality in
  self-supervised learning by measuring eigenspectrum decay"): the power-law exponent α of the covariance
  eigenvalues, λ_k ∝ k^(−α), fitted by least squares on (log k, log λ_k) over the ranks ``fit_start`` …
  ``fit_end`` (1-based; default: every positive eigenvalue). The fitted range and the fit's R² are reported,
  since α depends on them.
* ``nesum`` — Σ_k λ_k / λ_1 of the covariance eigenvalues (He & Ozay 2022, "Exploring the gap between collapsed
  and whitened features in self-supervised learning", ICML).
* ``stable_rank`` — ‖Z‖_F² / ‖Z‖₂² = Σσ_k²/σ_1² of the *uncentred* embeddings (Rudelson & Vershynin 2007), the
  matrix's own stable rank; NESum is the same ratio for the centred (covariance) spectrum.
* ``id_twonn`` — TwoNN (Facco et al. 2017, Sci. Rep. 7:12140) in its maximum-likelihood form
  d̂ = n' / Σ_i log(r₂(i)/r₁(i)), r₁, r₂ the distances to the first and second nearest neighbour (samples with a
  duplicate at distance 0 left out; Facco's original fits a line through the origin instead: both estimate the
  same Pareto exponent, the MLE without a discarded tail).
* ``id_mle`` — Levina & Bickel (2004) with k neighbours, averaged as MacKay & Ghahramani propose (the mean of
  the per-sample inverse estimates, then inverted): d̂ = [(1/n) Σ_i (1/(k−1)) Σ_{j<k} log(T_k(i)/T_j(i))]⁻¹.

The spectrum comes from the same streamed moments as the ``spectrum`` analyzer; the nearest neighbours are
exact (blocks of squared Euclidean distances in float64) on a seeded subset of at most ``max_samples``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..params import Param
from ._core import LayerData, Result, declare
from .spectrum import spectra_of_views

#: Rows of one block of the distance computation.
_BLOCK = 1024

#: Elements of one (rows, k, d) block of neighbour differences.
_DIFF_ELEMS = 1 << 22


@dataclass
class PowerLawFit:
    """A least-squares fit of log λ_k = c − α log k over the ranks ``start`` … ``end`` (1-based)."""

    alpha: float
    r2: float
    start: int
    end: int


#: Weightings of α-ReQ's least squares: ``uniform``, or ``inverse_rank`` (weights 1/k, the fit of Stringer et al.
#: 2019 that the α-ReQ authors' ``reptrix`` package uses).
WEIGHTINGS = ("uniform", "inverse_rank")


def power_law_fit(eigenvalues: np.ndarray, fit_start: int = 1, fit_end: Optional[int] = None,
                  weighting: str = "uniform") -> Optional[PowerLawFit]:
    """α-ReQ's fit of descending eigenvalues (None when fewer than two positive ones lie in the range): least
    squares of log λ_k = c − α log k over the ranks, every rank weighted equally or by 1/k (``inverse_rank``);
    R² is that of the line on the fitted ranks, unweighted."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    positive = int(np.count_nonzero(lam > 0))
    end = positive if fit_end is None else min(int(fit_end), positive)
    start = max(1, int(fit_start))
    if end - start + 1 < 2:
        return None
    k = np.arange(start, end + 1, dtype=np.float64)
    x, y = np.log(k), np.log(lam[start - 1:end])
    if weighting == "inverse_rank":  # weighted normal equations, weights w_k = 1/k
        a = np.stack([x, np.ones_like(x)], axis=1)
        w = 1.0 / k
        slope, intercept = np.linalg.solve(a.T @ (a * w[:, None]), (a * w[:, None]).T @ y)
    else:
        slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(alpha=float(-slope), r2=r2, start=start, end=end)


def nesum_of(sv: np.ndarray) -> float:
    """NESum Σλ_k/λ_1 from descending centred singular values (λ ∝ σ²); 0 for a collapsed view."""
    return float(np.sum(sv ** 2) / sv[0] ** 2) if sv.size and sv[0] > 0 else 0.0


def stable_rank_of(sv: np.ndarray) -> float:
    """Σσ_k²/σ_1² from descending singular values; 0 for an all-zero matrix."""
    return float(np.sum(sv ** 2) / sv[0] ** 2) if sv.size and sv[0] > 0 else 0.0


def nearest_distances(x: np.ndarray, k: int) -> np.ndarray:
    """(m, k) ascending Euclidean distances of every row of (m, d) ``x`` to its k nearest other rows (exact).

    The neighbours are found from blocks of squared distances by the expansion ‖a‖² + ‖b‖² − 2a·b; their
    distances are then recomputed from the differences themselves, so a duplicate point is at distance exactly 0
    and a close pair keeps its digits (the expansion cancels there)."""
    m, d = x.shape
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((m, k))
    sub = max(1, _DIFF_ELEMS // max(1, k * d))
    for s in range(0, m, _BLOCK):
        e = min(m, s + _BLOCK)
        d2 = sq[s:e, None] + sq[None, :] - 2.0 * (x[s:e] @ x.T)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf  # not its own neighbour
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        for t in range(0, e - s, sub):
            rows = slice(s + t, min(e, s + t + sub))
            diff = x[rows, None, :] - x[idx[t:t + sub]]
            out[rows] = np.sort(np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)), axis=1)
    return out


def twonn_dimension(r: np.ndarray) -> Optional[float]:
    """TwoNN's maximum-likelihood dimension from (m, ≥2) neighbour distances; None without usable samples."""
    ok = (r[:, 0] > 0) & np.isfinite(r[:, 1])
    mu = r[ok, 1] / r[ok, 0]
    logs = np.log(mu)
    return float(ok.sum() / logs.sum()) if ok.any() and logs.sum() > 0 else None


def levina_bickel_dimension(r: np.ndarray, k: int) -> Optional[float]:
    """Levina–Bickel with k neighbours, MacKay–Ghahramani average, from (m, ≥k) neighbour distances."""
    t = r[:, :k]
    ok = (t[:, 0] > 0)
    if not ok.any():
        return None
    inv = np.mean(np.log(t[ok, k - 1:k] / t[ok, :k - 1]), axis=1)  # (1/(k−1)) Σ_{j<k} log(T_k/T_j)
    mean_inv = float(inv.mean())
    return 1.0 / mean_inv if mean_inv > 0 else None


@declare(
    "label_free",
    params=[
        Param("fit_start", 1, "int", "first rank (1-based) of α-ReQ's power-law fit", low=1),
        Param("fit_end", None, "int", "last rank of α-ReQ's fit (none: the last positive eigenvalue)", low=2,
              nullable=True),
        Param("fit_weighting", "uniform", "choice", "α-ReQ's least squares: uniform, or inverse_rank (weights 1/k, "
              "as reptrix)", choices=WEIGHTINGS),
        Param("k", 20, "int", "neighbours of the Levina–Bickel estimate", low=2),
        Param("max_samples", 5000, "int", "intrinsic dimension on a seeded subset of this many samples", low=3),
        Param("seed", 0, "int", "seed of that subset", low=0),
    ],
    summary="α-ReQ eigenspectrum decay (with fit range and R²), NESum, stable rank and intrinsic dimension "
            "(TwoNN, Levina–Bickel) of each view",
    paper="Agrawal et al. 2022 (α-ReQ, NeurIPS); He & Ozay 2022 (NESum, ICML); Facco et al. 2017 (TwoNN, "
          "Sci. Rep.); Levina & Bickel 2004 (NeurIPS)",
    min_samples=3,
    no_bootstrap="copies of a sample are nearest neighbours at distance 0 (intrinsic dimension)",
    headline=("alpha_req", "alpha_req_r2", "nesum", "stable_rank", "id_twonn", "id_mle"),
)
def label_free(data: LayerData, fit_start: int = 1, fit_end: Optional[int] = None, k: int = 20,
               max_samples: int = 5000, seed: int = 0, fit_weighting: str = "uniform") -> Result:
    """Label-free measures of every view (``view`` = its name).

    Returns:
        Per view: ``alpha_req``, ``alpha_req_r2``, ``alpha_req_fit_start``, ``alpha_req_fit_end`` (the ranks the
        fit used), ``nesum``, ``stable_rank``, ``id_twonn`` and ``id_mle`` (``k`` neighbours, at most n − 1).
        A collapsed view has nesum = stable_rank = 0 and no α (a note).
    """
    res = Result()
    n = data.n
    sub = None
    if n > max_samples:
        sub = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        res.notes.append(f"intrinsic dimension on a random subset of {max_samples} of {n} samples (seed {seed})")
    # the (subset of) samples of every view, read in one pass over the layer (only the subset is held)
    subset = np.concatenate(list((data if sub is None else data.take(sub)).chunks(dtype=np.float64)), axis=1)
    kk = min(k, (n if sub is None else max_samples) - 1)
    if kk < k:
        res.notes.append(f"k={k} exceeds the samples; id_mle uses k={kk}")
    for vi, (name, (sv, sv_unc)) in enumerate(zip(data.views, spectra_of_views(data))):
        lam = sv ** 2 / max(1, n - 1)
        res.add("nesum", nesum_of(sv), view=name)
        if sv.size == 0 or sv[0] == 0:
            res.notes.append(f"collapsed: all samples identical in view {name}; nesum 0, alpha_req undefined")
        else:
            fit = power_law_fit(lam, fit_start, fit_end, fit_weighting)
            if fit is None:
                res.notes.append(f"alpha_req of view {name}: fewer than two positive eigenvalues in ranks "
                                 f"{fit_start}…{fit_end or 'end'}")
            else:
                res.add("alpha_req", fit.alpha, view=name)
                res.add("alpha_req_r2", fit.r2, view=name)
                res.add("alpha_req_fit_start", float(fit.start), view=name)
                res.add("alpha_req_fit_end", float(fit.end), view=name)
        res.add("stable_rank", stable_rank_of(sv_unc), view=name)
        x = subset[vi]
        r = nearest_distances(x, max(2, kk))
        for metric, value in (("id_twonn", twonn_dimension(r)), ("id_mle", levina_bickel_dimension(r, kk))):
            if value is None:
                res.notes.append(f"{metric} of view {name} is undefined (duplicate points at distance 0)")
            else:
                res.add(metric, value, view=name)
    return res
