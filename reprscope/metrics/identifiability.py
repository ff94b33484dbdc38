"""How well a layer identifies the ground-truth latents: held-out R² of a readout (Rusak, Reizinger, Zimmermann et al. 2022, 'Content suppresses style', Fig. 1).

Samples are split once (fixed seed) into train and test; features are standardised with the train split's
mean and std; a ridge regression with an unpenalised intercept (or an RBF kernel ridge) is fitted per latent
on the train split and scored on the test split by R² and the adjusted R²
1 − (1 − R²)(n_test − 1)/(n_test − p − 1) with p = d the number of *features* ().
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..errors import ReprscopeError
from ..params import Param
from ._core import LayerData, Result, declare
from .stats import product_dtype

#: Test rows per block of the kernel prediction, bounding the (block, n_fit) kernel matrix.
_KERNEL_BLOCK = 2048


def standardise(train: np.ndarray, test: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """Scale (n_train, d) and (n_test, d) features by the train mean and (population) std.

    A feature that is constant on the train split keeps std 1 and is centred on its exact value, so it is
    exactly 0 on the train split.
    """
    const = np.ptp(train, axis=0) == 0 if train.shape[0] else np.ones(train.shape[1], dtype=bool)
    mean = np.where(const, train[0] if train.shape[0] else 0.0, train.mean(axis=0))
    std = np.where(const, 1.0, train.std(axis=0))
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def ridge_coef(x: np.ndarray, yc: np.ndarray, alpha: float) -> np.ndarray:
    """β of min ‖yc − xβ‖² + α‖β‖² for (m, d) ``x`` and (m, k) centred targets ``yc``; (d, k).

    Primal (xᵀx + αI)β = xᵀyc when d ≤ m, dual β = xᵀ(xxᵀ + αI)⁻¹yc when d > m; α = 0 is the
    minimum-norm least-squares solution.
    """
    m, d = x.shape
    if alpha == 0:
        return np.linalg.lstsq(x, yc, rcond=None)[0]
    if d <= m:
        return np.linalg.solve(x.T @ x + alpha * np.eye(d), x.T @ yc)
    return x.T @ np.linalg.solve(x @ x.T + alpha * np.eye(m), yc)


def rbf_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """exp(−γ‖a_i − b_j‖²) for (m, d) ``a`` and (l, d) ``b``; (m, l)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.exp(-gamma * np.maximum(sq, 0.0))


def _streaming_ridge(data: LayerData, ref: int, tr: np.ndarray, te: np.ndarray, ytr: np.ndarray,
                     alpha: float) -> np.ndarray:
    """Ridge readout with train-split standardisation from streamed sufficient statistics.

    With X the train features, µ, σ their mean and (population) std and D = diag(1/σ) (0 for a constant
    feature): XₛᵀXₛ = D S_xx D and Xₛᵀ(y − ȳ) = D S_xy, S the centred train scatter/cross-products, so the
    primal ridge system (DS_xxD + αI)β = DS_xy needs only d×d and d×k sums (accumulated around the first
    chunk's mean to avoid cancellation). A second pass predicts the test samples. As for the shared moments,
    a large float32 store forms each chunk's products in float32 (accumulated in float64), see
    :func:`~reprscope.metrics.stats.product_dtype`.

    Returns:
        (n_test, k) predictions in the order of ``te``.
    """
    n, d, k = data.n, data.dim, ytr.shape[1]
    is_train = np.zeros(n, dtype=bool)
    is_train[tr] = True
    yfull = np.zeros((n, k))
    yfull[tr] = ytr
    shift = None
    sx = np.zeros(d)
    sy = np.zeros(k)
    sxx = np.zeros((d, d))
    sxy = np.zeros((d, k))
    pos = 0
    for chunk in data.chunks(views=[ref], dtype=product_dtype(data)):
        x = chunk[0]
        sel = is_train[pos : pos + len(x)]
        if shift is None:
            shift = x.mean(axis=0, dtype=np.float64).astype(x.dtype)  # exact in x's dtype
        xc = x[sel] - shift
        yc = yfull[pos : pos + len(x)][sel]
        sx += xc.sum(axis=0, dtype=np.float64)
        sy += yc.sum(axis=0)
        sxx += xc.T @ xc  # one syrk per chunk, in float32 for a large float32 store (stats.product_dtype)
        sxy += xc.T @ yc.astype(xc.dtype)
        pos += len(x)
    shift = shift.astype(np.float64)
    m = len(tr)
    mx, ybar = sx / m, sy / m
    s_xx = sxx - np.outer(sx, sx) / m
    s_xy = sxy - np.outer(sx, sy) / m
    var = np.clip(np.diag(s_xx) / m, 0.0, None)
    const = var <= (np.finfo(np.float64).eps * 4 * (np.abs(mx + shift) + 1.0)) ** 2
    dinv = np.where(const, 0.0, 1.0 / np.sqrt(np.where(const, 1.0, var)))
    a = dinv[:, None] * s_xx * dinv[None, :]
    beta = np.linalg.solve(a + alpha * np.eye(d), dinv[:, None] * s_xy)
    # predictions: ((x − µ)/σ)·β + ȳ, in the order of te
    order = np.empty(n, dtype=np.int64)
    order[te] = np.arange(len(te))
    pred = np.zeros((len(te), k))
    pos = 0
    for chunk in data.chunks(views=[ref], dtype=np.float64):
        x = chunk[0]
        sel = ~is_train[pos : pos + len(x)]
        pred[order[pos : pos + len(x)][sel]] = ((x[sel] - shift - mx) * dinv) @ beta + ybar
        pos += len(x)
    return pred


def _add_latent(res: Result, metric: str, value: float, view: str, name: str, content: Optional[bool]) -> None:
    """A per-latent row; with a content mask it carries a ``latent_group`` column, ``content`` or ``style``
    (so that tables and figures tell the groups apart without the store)."""
    before = len(res.rows)
    res.add(metric, value, view=view, index=name)
    if content is not None and len(res.rows) > before:
        res.rows[-1]["latent_group"] = "content" if content else "style"


def _mean_rows(res: Result, metric: str, values: Dict[int, float], mask: Optional[np.ndarray], view: str) -> None:
    """Group means of per-latent ``values``: ``{metric}_mean`` without a content mask, else content / style."""
    if mask is None:
        if values:
            res.add(f"{metric}_mean", float(np.mean(list(values.values()))), view=view)
        return
    for group, flag in (("content", True), ("style", False)):
        sel = [v for j, v in values.items() if bool(mask[j]) == flag]
        if sel:
            res.add(f"{metric}_{group}_mean", float(np.mean(sel)), view=view)


#: Grids of the cross-validated kernel readout: multiples of the default γ, and ridge penalties per sample.
CV_GAMMA_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
CV_RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def kernel_cv_fn(xtr: np.ndarray, ytr: np.ndarray, gamma0: float, folds: int, seed: int,
              gammas: "tuple[float, ...]" = CV_GAMMA_FACTORS, ridges: "tuple[float, ...]" = CV_RIDGES
              ) -> "tuple[float, float, float]":
    """(γ, ridge, mean validation R²) of the grid point with the best R² averaged over latents and ``folds``
    seeded folds of the train samples (one choice for all latents, as a multi-output grid search). For each γ
    and fold the fold's kernel is eigendecomposed once, so every ridge costs a matrix product
    (K_val U (Λ + α)⁻¹ Uᵀ y)."""
    m = xtr.shape[0]
    order = np.random.default_rng(seed + 7).permutation(m)
    parts = np.array_split(order, folds)
    scores = np.zeros((len(gammas), len(ridges)))
    for gi, gf in enumerate(gammas):
        g = gamma0 * gf
        for f in range(folds):
            val = parts[f]
            fit = np.concatenate([parts[j] for j in range(folds) if j != f])
            ybar = ytr[fit].mean(axis=0)
            lam, u = np.linalg.eigh(rbf_kernel(xtr[fit], xtr[fit], g))
            proj = u.T @ (ytr[fit] - ybar)
            kv = rbf_kernel(xtr[val], xtr[fit], g) @ u
            yv = ytr[val]
            ss_tot = ((yv - yv.mean(axis=0)) ** 2).sum(axis=0)
            for ri, r in enumerate(ridges):
                pred = kv @ (proj / (lam + r * fit.size)[:, None]) + ybar
                ok = ss_tot > 0
                r2 = 1.0 - ((yv - pred) ** 2).sum(axis=0)[ok] / ss_tot[ok]
                scores[gi, ri] += float(np.mean(r2)) / folds if r2.size else -np.inf
    gi, ri = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return gamma0 * gammas[gi], ridges[ri], float(scores[gi, ri])


def correlation_matrix(data: LayerData, ref: int, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """(k, d) correlations of every latent (columns of ``y``, the kept samples) with every embedding dimension
    of view ``ref``: Pearson from moments streamed in chunks (shifted by the first chunk's mean), or Spearman
    (Pearson of the ranks, ties averaged) on the view in memory. A constant column gives 0."""
    if method == "spearman":
        from scipy.stats import rankdata

        x = rankdata(data.view(ref, dtype=np.float64), axis=0)
        return correlation_of(x, rankdata(y, axis=0))
    shift_x = shift_y = None
    sx = sxx = sxy = sy = syy = None
    pos = 0
    for c in data.chunks([ref], dtype=np.float64):
        x = c[0]
        yy = y[pos:pos + x.shape[0]]
        pos += x.shape[0]
        if shift_x is None:
            shift_x, shift_y = x.mean(axis=0), yy.mean(axis=0)
            sx, sxx = np.zeros(x.shape[1]), np.zeros(x.shape[1])
            sy, syy = np.zeros(y.shape[1]), np.zeros(y.shape[1])
            sxy = np.zeros((y.shape[1], x.shape[1]))
        xc, yc = x - shift_x, yy - shift_y
        sx += xc.sum(axis=0)
        sxx += np.einsum("ij,ij->j", xc, xc)
        sy += yc.sum(axis=0)
        syy += np.einsum("ij,ij->j", yc, yc)
        sxy += yc.T @ xc
    n = pos
    cov = sxy - np.outer(sy, sx) / n
    vx, vy = sxx - sx ** 2 / n, syy - sy ** 2 / n
    denom = np.sqrt(np.outer(np.clip(vy, 0, None), np.clip(vx, 0, None)))
    return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)


def correlation_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(k, d) Pearson correlations of the columns of ``y`` (n, k) with those of ``x`` (n, d); 0 for a constant one."""
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    denom = np.sqrt(np.outer((yc ** 2).sum(axis=0), (xc ** 2).sum(axis=0)))
    cov = yc.T @ xc
    return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)


def mcc_of(corr: np.ndarray) -> "tuple[float, np.ndarray]":
    """Mean correlation coefficient: the mean |correlation| of the one-to-one matching of latents to embedding
    dimensions that maximises it (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), and the matched
    dimension of each latent (−1 for a latent left unmatched when d < k)."""
    from scipy.optimize import linear_sum_assignment

    a = np.abs(corr)
    rows, cols = linear_sum_assignment(-a)
    match = np.full(a.shape[0], -1)
    match[rows] = cols
    return float(a[rows, cols].mean()), match


@declare(
    "identifiability",
    params=[
        Param("test_fraction", 0.2, "float", "held-out fraction of the samples, in (0, 1)", low=0, low_open=True, high=1,
              high_open=True),
        Param("ridge", 1e-3, "float", "ridge penalty per train sample: alpha = ridge·n_train (0 = least squares)", low=0),
        Param("seed", 0, "int", "seed of the train/test permutation and kernel subsampling", low=0),
        Param("readout", "linear", "choice", "linear ridge or RBF kernel ridge", choices=("linear", "kernel")),
        Param("kernel_gamma", None, "float", "RBF gamma; none = 1/(d·mean variance of standardised features)",
              low=0, low_open=True, nullable=True),
        Param("max_kernel_samples", 4000, "int", "train samples used by the kernel readout (subsampled)", low=2),
        Param("kernel_cv", 0, "int", "kernel readout: choose γ (× 0.1 … 10 of the default) and the ridge (1e-5 … "
              "0.1) by this many folds of cross-validation on the train split (0: the given ones)", low=0),
        Param("mcc", "pearson", "choice", "correlation of the MCC (mean correlation coefficient after the best "
              "one-to-one matching of latents to dimensions): pearson, spearman or off", choices=("pearson", "spearman",
                                                                                                  "off")),
    ],
    needs=("latents",),
    summary="held-out R² and adjusted R² of a ridge (or kernel) readout of each ground-truth latent",
    paper="Rusak, Reizinger, Zimmermann et al. 2022, 'Content suppresses style', §3 (Fig. 1)",
    no_bootstrap="copies of a resampled sample land on both sides of the train/test split",
    headline=("r2_content_mean", "r2_style_mean", "r2_mean", "mcc"),
)
def identifiability(data: LayerData, test_fraction: float = 0.2, ridge: float = 1e-3, seed: int = 0,
                    readout: str = "linear", kernel_gamma: Optional[float] = None,
                    max_kernel_samples: int = 4000, mcc: str = "pearson", kernel_cv: int = 0) -> Result:
    """Held-out R² of a readout of every latent from the reference view's embeddings (Rusak et al. 2022).

    Args:
        data: (V, n, d) embeddings (the reference view, ``clean`` when stored, is used) and (n, k) latents.
        test_fraction: the last n − round(n·(1 − test_fraction)) samples of a seeded permutation are test.
        ridge: α = ridge·n_train; 0 gives minimum-norm least squares.
        seed: seed of ``np.random.default_rng`` for the permutation (and the kernel subsample).
        readout: ``linear`` ridge, or ``kernel`` RBF kernel ridge on the standardised features.
        kernel_gamma: RBF γ; None = 1/(d·mean variance of the standardised train features) (= 1/d when no
            feature is constant).
        max_kernel_samples: the kernel readout fits on at most this many train samples.
        mcc: the correlation of the MCC row (``off``: no MCC).
        kernel_cv: with ``readout=kernel``, k ≥ 2 folds of cross-validation on the train split choose γ and the
            ridge from a grid (CV_GAMMA_FACTORS × the default γ, CV_RIDGES), one choice for all latents; rows
            ``kernel_gamma``, ``kernel_ridge`` and ``kernel_cv_r2`` say what was chosen. Costs
            len(grid γ) × k eigendecompositions of the fold kernels.

    Returns:
        Rows with ``view`` = the reference view: ``r2`` and ``r2_adjusted`` per latent (``index`` = latent
        name; with a content mask a ``latent_group`` column, ``content`` or ``style``), and their means ``r2_content_mean`` / ``r2_style_mean`` (``r2_mean`` when there is no content
        mask), likewise ``r2_adjusted_*``. A latent constant on the test split is skipped with a note; the
        adjusted rows are skipped with a note when n_test − d − 1 ≤ 0. ``mcc``: the mean |correlation| of the
        best one-to-one matching of latents to embedding dimensions on all samples (Hyvärinen & Morioka 2016;
        the permutation-matched MCC of Zimmermann et al. 2021's cl-ica code), with ``mcc_dim`` rows per latent
        (the matched dimension).
    """
    if not 0 < test_fraction < 1:
        raise ReprscopeError(f"The 'test_fraction' parameter of analyzer identifiability must be a float > 0, < 1. "
                             f"Got {test_fraction!r} instead.")
    res = Result()
    ref = data.reference_view_id()
    view = data.views[ref]
    y = np.asarray(data.latents, dtype=np.float64).reshape(data.n, -1)
    k = y.shape[1]
    names: List[str] = [str(s) for s in data.latent_names] if len(data.latent_names) == k else [str(j) for j in range(k)]
    mask = None if data.content_mask is None else np.asarray(data.content_mask, dtype=bool).reshape(-1)
    if mask is not None and mask.size != k:
        res.notes.append(f"content_mask has {mask.size} entries for {k} latents; content/style means not split")
        mask = None

    ok = np.isfinite(y).all(axis=1)
    if not ok.all():
        res.notes.append(f"{int((~ok).sum())} of {data.n} samples have NaN/Inf latents and were left out")
        data = data.take(ok)
        y = y[ok]
    n, d = data.n, data.dim
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_train = int(round(n * (1 - test_fraction)))
    n_test = n - n_train
    if n_train < 2 or n_test < 2:
        res.notes.append(f"skipped: {n} samples give {n_train} train / {n_test} test samples "
                         f"(test_fraction={test_fraction}); need at least 2 of each")
        return res
    tr, te = perm[:n_train], perm[n_train:]
    ytr, yte = y[tr], y[te]
    if kernel_cv == 1:
        res.notes.append("kernel_cv=1 is not a cross-validation; use 0 (off) or at least 2 folds")
    if mcc != "off":
        value, match = mcc_of(correlation_matrix(data, ref, y, mcc))
        res.add("mcc", value, view=view)
        for j, dim in enumerate(match):
            if dim >= 0:
                _add_latent(res, "mcc_dim", float(dim), view, names[j], None if mask is None else bool(mask[j]))

    if readout == "linear" and ridge > 0 and d <= n_train:
        # The streaming path: memory bounded by d×d, one pass to fit and one to predict.
        pred = _streaming_ridge(data, ref, tr, te, ytr, ridge * n_train)
    else:
        x = data.view(ref)
        xtr, xte = standardise(x[tr], x[te])
        del x
        if readout == "linear":
            ybar = ytr.mean(axis=0)
            beta = ridge_coef(xtr, ytr - ybar, ridge * n_train)
            pred = xte @ beta + ybar
        else:
            if n_train > max_kernel_samples:
                fit = np.sort(rng.choice(n_train, size=max_kernel_samples, replace=False))
                res.notes.append(f"kernel readout fitted on {max_kernel_samples} of {n_train} train samples")
                xtr, ytr = xtr[fit], ytr[fit]
            m = xtr.shape[0]
            if kernel_gamma is None:
                var = float(xtr.var(axis=0).mean()) if d else 0.0
                kernel_gamma = 1.0 / (max(d, 1) * (var if var > 0 else 1.0))
            if kernel_cv >= 2:
                if m < 2 * kernel_cv:
                    res.notes.append(f"kernel_cv={kernel_cv} needs at least {2 * kernel_cv} train samples; the given "
                                     "γ and ridge were used")
                else:
                    kernel_gamma, ridge, cv_r2 = kernel_cv_fn(xtr, ytr, kernel_gamma, kernel_cv, seed)
                    res.add("kernel_gamma", kernel_gamma, view=view)
                    res.add("kernel_ridge", ridge, view=view)
                    res.add("kernel_cv_r2", cv_r2, view=view)
            ybar = ytr.mean(axis=0)
            kmat = rbf_kernel(xtr, xtr, kernel_gamma)
            alpha = ridge * m
            if alpha == 0:
                coef = np.linalg.lstsq(kmat, ytr - ybar, rcond=None)[0]
            else:
                coef = np.linalg.solve(kmat + alpha * np.eye(m), ytr - ybar)
            pred = np.concatenate([rbf_kernel(xte[s : s + _KERNEL_BLOCK], xtr, kernel_gamma) @ coef
                                   for s in range(0, n_test, _KERNEL_BLOCK)]) + ybar

    r2: Dict[int, float] = {}
    for j in range(k):
        if np.ptp(yte[:, j]) == 0:
            res.notes.append(f"latent {names[j]} is constant on the test split; its R² is undefined and was skipped")
            continue
        ss_tot = float(np.sum((yte[:, j] - yte[:, j].mean()) ** 2))
        ss_res = float(np.sum((yte[:, j] - pred[:, j]) ** 2))
        r2[j] = 1.0 - ss_res / ss_tot
        _add_latent(res, "r2", r2[j], view, names[j], None if mask is None else bool(mask[j]))
    _mean_rows(res, "r2", r2, mask, view)

    dof = n_test - d - 1
    if dof <= 0:
        if r2:
            res.notes.append(f"r2_adjusted skipped: needs n_test − d − 1 > 0, has n_test = {n_test}, d = {d}")
        return res
    adj = {j: 1.0 - (1.0 - v) * (n_test - 1) / dof for j, v in r2.items()}
    for j, v in adj.items():
        _add_latent(res, "r2_adjusted", v, view, names[j], None if mask is None else bool(mask[j]))
    _mean_rows(res, "r2_adjusted", adj, mask, view)
    return res
