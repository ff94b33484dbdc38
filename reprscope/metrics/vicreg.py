"""VICReg statistics of two augmented views (Bardes, Ponce & LeCun, ICLR 2022, arXiv:2105.04906).

With Z, Z' the (n, d) embeddings of the first two augmented views:

* per-dimension unbiased std (Bardes et al. 2022 Eq. 2) → ``std_mean``, ``collapsed_dims``, ``std_target_ratio``;
* the loss terms of Eq. 1, 3–6: v(Z) = (1/d) Σ_j max(0, γ − sqrt(Var(Z_{:,j}) + ε)),
  c(Z) = (1/d) Σ_{i≠j} C(Z)_{ij}², s(Z, Z') = (1/(n·d)) Σ_i ‖Z_i − Z'_i‖² (``F.mse_loss`` of Algorithm 1, i.e.
  Eq. 5 divided by d), and ℓ = λ·s + μ·(v(Z) + v(Z')) + ν·(c(Z) + c(Z')) (: the two hinge terms add);
* the average correlation coefficient of Eq. 10 (appendix C.3).

Every second-order quantity comes from the per-layer cached :func:`~reprscope.metrics.stats.moments`; one
extra streaming pass over the two views gives the invariance term and the std of the ℓ2-normalised embeddings.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..params import Param
from ._core import LayerData, Result, declare
from ._ranks import gather_over_ranks
from .stats import Moments, moments

_EPS64 = float(np.finfo(np.float64).eps)


def numerical_std(m: Moments) -> Tuple[np.ndarray, np.ndarray]:
    """Unbiased per-dimension variance (Bardes et al. 2022 Eq. 2) and std of one view, rounding noise set to 0.

    A dimension whose std is ≤ n·eps₆₄·|µ_j| is constant up to the rounding of the streamed moments (the
    mean of n identical values is not always exact) and gets std exactly 0.

    Returns:
        (var, std), each (d,) float64; ``var`` is the raw estimate (used by the loss terms, as in the paper).
    """
    var = np.clip(np.diag(m.covariance(ddof=1)).copy(), 0.0, None)
    std = np.sqrt(var)
    std[std <= m.n * _EPS64 * np.abs(m.mean)] = 0.0
    return var, std


def variance_term(var: np.ndarray, gamma: float = 1.0, eps: float = 1e-4) -> float:
    """v(Z) of Bardes et al. 2022 Eq. 1 from the (d,) unbiased variances: mean_j max(0, γ − sqrt(Var_j + ε))."""
    return float(np.mean(np.maximum(0.0, gamma - np.sqrt(var + eps)))) if var.size else 0.0


def covariance_term(cov: np.ndarray) -> float:
    """c(Z) of Bardes et al. 2022 Eq. 4 from the (d, d) unbiased covariance: (1/d) Σ_{i≠j} C_ij²."""
    d = cov.shape[0]
    if d == 0:
        return 0.0
    off = cov - np.diag(np.diag(cov))
    return float(np.sum(off * off) / d)


def mean_squared_correlation(m: Moments, std: np.ndarray) -> Tuple[float, int]:
    """(1/(d'(d'−1))) Σ_{i≠j} C(Y)_ij² of one view, Y the standardised embeddings (Bardes et al. 2022 Eq. 10).

    C of the standardised view is the correlation matrix (the 1/(n−1) of Eq. 3 cancels against the unbiased
    std). Constant dimensions (std 0) have no correlation and are left out, so d' ≤ d.

    Returns:
        (value, d'); value is NaN when d' < 2.
    """
    keep = std > 0
    dk = int(keep.sum())
    if dk < 2:
        return float("nan"), dk
    s = m.scatter[np.ix_(keep, keep)]
    sd = np.sqrt(np.diag(s))
    corr = s / np.outer(sd, sd)
    np.fill_diagonal(corr, 0.0)
    return float(np.sum(corr * corr) / (dk * (dk - 1))), dk


def _stream_pair(data: LayerData, a: int, b: int) -> Tuple[float, List[np.ndarray]]:
    """One pass over views ``a`` and ``b``: Σ_i ‖z_i^a − z_i^b‖² and the unbiased per-dimension variance of
    the ℓ2-normalised rows of each view (Chan et al.'s pairwise merge of chunk means and M2, so streaming
    equals whole up to rounding). A zero row stays zero after normalising."""
    sq = 0.0
    n = 0
    mean = [np.zeros(data.dim), np.zeros(data.dim)]
    m2 = [np.zeros(data.dim), np.zeros(data.dim)]
    for _start, chunk in data.shared_chunks([a, b], dtype=np.float64):
        buf = chunk[0] - chunk[1]
        sq += float(np.einsum("ij,ij->", buf, buf))
        nb = chunk.shape[1]
        for k in range(2):
            z = chunk[k]
            norms = np.sqrt(np.einsum("ij,ij->i", z, z))
            inv = np.where(norms == 0, 0.0, 1.0 / np.where(norms == 0, 1.0, norms))  # ẑ_i = inv_i·z_i, 0 for a zero row
            mb = (inv @ z) / nb  # chunk mean of ẑ (one matrix-vector product)
            np.multiply(z, inv[:, None], out=buf)  # ẑ − mean(ẑ) in the chunk's own scratch buffer
            buf -= mb
            mean[k], m2[k] = _merge_moments(n, mean[k], m2[k], nb, mb, np.einsum("ij,ij->j", buf, buf))
        n += nb
    parts = gather_over_ranks((sq, n, mean, m2))  # a torchrun job: merge the ranks' partial statistics
    sq, n, mean, m2 = parts[0]
    for sq_r, n_r, mean_r, m2_r in parts[1:]:
        sq += sq_r
        for k in range(2):
            mean[k], m2[k] = _merge_moments(n, mean[k], m2[k], n_r, mean_r[k], m2_r[k])
        n += n_r
    return sq, [x / max(1, n - 1) for x in m2]


def _merge_moments(n: int, mean: np.ndarray, m2: np.ndarray, nb: int, mb: np.ndarray, m2b: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise merge: (mean, M2) of n samples and of nb more → those of all n + nb."""
    if nb == 0:
        return mean, m2
    delta = mb - mean
    tot = n + nb
    return mean + delta * (nb / tot), m2 + m2b + delta * delta * (n * nb / tot)


@declare(
    "vicreg",
    params=[
        Param("gamma", 1.0, "float", "target std γ of the variance hinge (Bardes et al. 2022 Eq. 1)", low=0),
        Param("eps", 1e-4, "float", "ε inside sqrt(Var + ε) of the variance hinge (Bardes et al. 2022 Eq. 1)", low=0),
        Param("lam", 25.0, "float", "λ, weight of the invariance term in the loss (Bardes et al. 2022 Eq. 6)", low=0),
        Param("mu", 25.0, "float", "μ, weight of the variance terms in the loss (Bardes et al. 2022 Eq. 6)", low=0),
        Param("nu", 1.0, "float", "ν, weight of the covariance terms in the loss (Bardes et al. 2022 Eq. 6)", low=0),
    ],
    needs=("two_views",),
    summary="VICReg per-dimension std, collapsed dimensions, average correlation and loss terms of two views",
    paper="Bardes, Ponce & LeCun 2022, arXiv:2105.04906, Eq. 1–6, 10",
    headline=("std_mean", "avg_corr", "invariance", "loss"),
    split=True,
)
def vicreg(data: LayerData, gamma: float = 1.0, eps: float = 1e-4, lam: float = 25.0, mu: float = 25.0,
           nu: float = 1.0) -> Result:
    """VICReg statistics and loss terms of the first two augmented views (Bardes et al. 2022).

    Args:
        data: (V, n, d) embeddings; the first two augmented views Z, Z' (each (n, d)) are used, read through
            the layer's cached moments plus one streaming pass; computed in float64.
        gamma, eps: γ and ε of the variance hinge (Eq. 1).
        lam, mu, nu: λ, μ, ν of the loss (Eq. 6).

    Returns:
        Per view (``view`` = its name):
        ``std_mean`` mean_j of the unbiased std of dimension j (Eq. 2); ``collapsed_dims``
        #{j : std_j < 1e-4·max_k std_k or std_j = 0}; ``std_target_ratio`` = std_mean(Ẑ)·√d with Ẑ the
        ℓ2-normalised rows — 1 when the embeddings spread evenly over the unit sphere (Bardes et al. 2022 App. C.3:
        the std of normalised projections reaches 1/√d), meaningful for spaces the method normalises;
        ``variance`` v(Z) (Eq. 1), ``covariance`` c(Z) (Eq. 4), ``avg_corr`` the view's half of Eq. 10.
        For the pair (``view`` = ``aug1|aug2``): ``invariance`` mean_i ‖z_i − z'_i‖²/d (Algorithm 1's
        ``mse_loss``), ``variance`` v(Z) + v(Z'), ``covariance`` c(Z) + c(Z'), ``avg_corr`` Eq. 10
        (1/(2d(d−1))) Σ_{i≠j} C(Y)_ij² + C(Y')_ij² on the standardised views — the *squared* off-diagonal
        correlations, as the equation is written — and ``loss`` λ·invariance + μ·variance + ν·covariance.
        Constant dimensions are left out of ``avg_corr`` (their correlation is undefined) with a note; with
        fewer than two non-constant dimensions ``avg_corr`` is a note.
    """
    res = Result()
    a, b = data.aug_view_ids()[:2]
    names = [data.views[a], data.views[b]]
    pair = "|".join(names)
    mom = moments(data)
    d = data.dim
    sq, norm_var = _stream_pair(data, a, b)

    var_sum = cov_sum = 0.0
    corr_parts: List[float] = []
    for vi, name, nv in zip((a, b), names, norm_var):
        m = mom[vi]
        var, std = numerical_std(m)
        top = float(std.max()) if d else 0.0
        collapsed = int(np.count_nonzero((std == 0) | (std < 1e-4 * top)))
        res.add("std_mean", float(std.mean()) if d else 0.0, view=name)
        res.add("collapsed_dims", float(collapsed), view=name)
        res.add("std_target_ratio", float(np.sqrt(np.clip(nv, 0.0, None)).mean() * np.sqrt(d)) if d else 0.0, view=name)
        if top == 0:
            res.notes.append(f"collapsed: all {d} dimensions of view {name} are constant")
        v_term = variance_term(var, gamma, eps)
        c_term = covariance_term(m.covariance(ddof=1))
        res.add("variance", v_term, view=name)
        res.add("covariance", c_term, view=name)
        var_sum += v_term
        cov_sum += c_term
        corr, dk = mean_squared_correlation(m, std)
        if dk < 2:
            res.notes.append(f"avg_corr undefined in view {name}: {dk} of {d} dimensions are not constant (needs 2)")
        else:
            if dk < d:
                res.notes.append(f"avg_corr of view {name} over the {dk} of {d} dimensions that are not constant")
            res.add("avg_corr", corr, view=name)
            corr_parts.append(corr)

    n = mom[a].n
    invariance = sq / (n * d) if n and d else 0.0
    res.add("invariance", invariance, view=pair)
    res.add("variance", var_sum, view=pair)
    res.add("covariance", cov_sum, view=pair)
    if len(corr_parts) == 2:
        res.add("avg_corr", float(np.mean(corr_parts)), view=pair)
    res.add("loss", lam * invariance + mu * var_sum + nu * cov_sum, view=pair)
    return res
