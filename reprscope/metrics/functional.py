"""The public metric functions: numpy arrays or torch tensors in, plain floats, arrays and small dicts out.

Each function validates its inputs (:mod:`reprscope.metrics._input`), wraps them in the in-memory
:class:`~reprscope.metrics._core.LayerData` and runs the computation the analyzer of the same name runs on a
store (:mod:`reprscope.metrics.spectrum`, :mod:`~reprscope.metrics.center` …): one implementation, so a
function and the analyzer's table row agree exactly (tested). Parameters are validated by the analyzer's own
declarations, with the same defaults.

Shapes: ``z`` is (n, d) for one view or (V, n, d) for several. A per-view quantity (a rank, an entropy)
returns a float for (n, d) and a (V,) array for (V, n, d). Two-view quantities take ``z1, z2`` as (n, d) each,
or ``z1`` as (V, n, d) (its first two views). A torch tensor on a GPU is computed on that GPU.

What the computation notes (a subsample, a partial batch left out, zero rows kept as zero) is issued as a
:class:`ReprscopeWarning`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ..errors import ReprscopeError
from ..params import resolve_params
from . import _input
from ._core import HeadModule, LayerData, Result
from .align_uniform import align_terms, log_mean_exp_pairs, uniformity as _align_uniform_rows
from .center import center_statistics
from .identifiability import identifiability as _identifiability_rows
from .knn import knn as _knn_rows
from .label_free import label_free as _label_free_rows, nesum_of, power_law_fit, stable_rank_of
from .linear_discriminant import lidar as _lidar_rows
from .linear_probe import linear_probe as _linear_probe_rows
from .matrix_information import matrix_information as _matrix_information_rows
from .similarity import similarity as _similarity_rows
from .spectrum import spectrum as _spectrum_rows, spectra_of_views
from .tangent import tangent as _tangent_rows
from .vicreg import vicreg as _vicreg_rows
from .weights import weights as _weights_rows

Array = Union[np.ndarray, torch.Tensor]
PerView = Union[float, np.ndarray]


class ReprscopeWarning(UserWarning):
    """A note of a metric computation: what it did that the caller may want to know."""


def _run(fn: Callable[..., Result], data: LayerData, params: Mapping[str, Any], owner: str) -> Result:
    """Validate ``params`` by ``fn``'s declaration and run it; its notes become warnings."""
    values = resolve_params(owner, fn.declaration.params, {k: v for k, v in params.items() if v is not None})
    res = fn(data, **values)
    for note in res.notes:
        warnings.warn(f"{owner}: {note}", ReprscopeWarning, stacklevel=3)
    return res


def _value(res: Result, metric: str, *, view: Optional[str] = None, index: str = "", form: Optional[str] = None,
           owner: str = "") -> float:
    for r in res.rows:
        if (r["metric"] == metric and str(r["index"]) == str(index) and (view is None or r["view"] == view)
                and (form is None or r.get("form") == form)):
            return float(r["value"])
    why = next((n for n in res.notes if metric in n), "")
    raise ReprscopeError(f"{owner or metric}: {metric} is undefined on these embeddings" + (f" ({why})" if why else ""))


def _per_view(values: List[float], arr: np.ndarray) -> PerView:
    return float(values[0]) if arr.shape[0] == 1 else np.asarray(values, dtype=np.float64)


# -- spectrum and ranks (Roy & Vetterli 2007; Garrido et al. 2023, arXiv:2210.02885; Cosentino et al. 2022,
#    arXiv:2205.06926) ------------------------------------------------------------------------------------------


def _spectrum(z: Array, owner: str, **params: Any) -> tuple:
    arr, dev = _input.embeddings(z)
    data = _input.layer_data(arr, dev)
    return arr, _run(_spectrum_rows, data, params, owner), data


def singular_values(z: Array, *, center: bool = True) -> np.ndarray:
    """Descending singular values of the column-centred (``center=True``) or raw embeddings.

    Args:
        z: (n, d) or (V, n, d) embeddings.
        center: subtract the column means first (the spectrum ``effective_rank`` and ``rank_tau`` use); the raw
            one is RankMe's.

    Returns:
        (min(n, d),) float64, or (V, min(n, d)) for several views; numerical zeros are exactly 0 (below the
        rounding of the products or the resolution of the stored dtype).
    """
    arr, dev = _input.embeddings(z)
    sv = [c if center else u for c, u in spectra_of_views(_input.layer_data(arr, dev))]
    return sv[0] if arr.shape[0] == 1 else np.stack(sv)


def effective_rank(z: Array) -> PerView:
    """Effective rank exp(H(p)), p_k = σ_k/Σσ of the centred embeddings (Roy & Vetterli 2007); 0 when collapsed."""
    arr, res, data = _spectrum(z, "effective_rank")
    return _per_view([_value(res, "effective_rank", view=v) for v in data.views], arr)


def rankme(z: Array, *, eps: float = 1e-7) -> PerView:
    """RankMe (Garrido et al. 2023, arXiv:2210.02885): exp(−Σ p_k log p_k), p_k = σ_k/‖σ‖₁ + ε, σ of the
    *uncentred* embeddings, as in the paper and stable-pretraining / reptrix (ε = 1e-7 after normalising)."""
    arr, res, data = _spectrum(z, "rankme", eps=eps)
    return _per_view([_value(res, "rankme", view=v) for v in data.views], arr)


def rank_tau(z: Array, *, tau: float = 0.01) -> PerView:
    """Rank_τ = #{σ_k ≥ τ·σ_1} of the centred embeddings (Cosentino et al. 2022, arXiv:2205.06926, Eq. 2 with a
    threshold relative to the largest singular value)."""
    arr, res, data = _spectrum(z, "rank_tau", tau=tau)
    return _per_view([_value(res, "rank_tau", view=v) for v in data.views], arr)


def rank_abs(z: Array, *, tau_abs: float = 0.01) -> PerView:
    """#{σ_k > 0 and σ_k ≥ τ} of the centred embeddings: Cosentino et al.'s Rank_τ with an absolute threshold
    (τ = 0 gives the numerical rank)."""
    arr, res, data = _spectrum(z, "rank_abs", tau_abs=tau_abs)
    return _per_view([_value(res, "rank_abs", view=v) for v in data.views], arr)


# -- label-free measures (Agrawal et al. 2022; He & Ozay 2022; Facco et al. 2017; Levina & Bickel 2004) ------


def _label_free(z: Array, owner: str, **params: Any) -> tuple:
    arr, dev = _input.embeddings(z, min_samples=3)
    data = _input.layer_data(arr, dev)
    return arr, _run(_label_free_rows, data, params, owner), data


def alpha_req(z: Array, *, fit_start: int = 1, fit_end: Optional[int] = None,
              fit_weighting: str = "uniform") -> Dict[str, float]:
    """α-ReQ (Agrawal et al. 2022): the power-law decay λ_k ∝ k^(−α) of the covariance eigenvalues, fitted on
    (log k, log λ_k) over ranks ``fit_start`` … ``fit_end`` (1-based; default every positive eigenvalue), ranks
    weighted equally or by 1/k (``fit_weighting="inverse_rank"``, reptrix's fit).

    Returns:
        ``{"alpha": α, "r2": the fit's R², "fit_start": …, "fit_end": …}`` (the first view of (V, n, d)).
    """
    resolve_params("alpha_req", [p for p in _label_free_rows.declaration.params if p.name.startswith("fit_")],
                   {k: v for k, v in {"fit_start": fit_start, "fit_end": fit_end,
                                      "fit_weighting": fit_weighting}.items() if v is not None})
    arr, dev = _input.embeddings(z, min_samples=2)
    sv = spectra_of_views(_input.layer_data(arr[:1], dev))[0][0]
    fit = power_law_fit(sv ** 2 / (arr.shape[1] - 1), fit_start, fit_end, fit_weighting)
    if fit is None:
        raise ReprscopeError(f"alpha_req: fewer than two positive eigenvalues in ranks {fit_start}…{fit_end or 'end'}")
    return {"alpha": fit.alpha, "r2": fit.r2, "fit_start": fit.start, "fit_end": fit.end}


def nesum(z: Array) -> PerView:
    """NESum Σ_k λ_k/λ_1 of the covariance eigenvalues (He & Ozay 2022)."""
    arr, dev = _input.embeddings(z, min_samples=2)
    return _per_view([nesum_of(sv) for sv, _ in spectra_of_views(_input.layer_data(arr, dev))], arr)


def stable_rank(z: Array) -> PerView:
    """Stable rank ‖Z‖_F²/‖Z‖₂² = Σσ_k²/σ_1² of the uncentred embeddings."""
    arr, dev = _input.embeddings(z, min_samples=2)
    return _per_view([stable_rank_of(su) for _, su in spectra_of_views(_input.layer_data(arr, dev))], arr)


def intrinsic_dimension(z: Array, *, method: str = "twonn", k: int = 20, max_samples: int = 5000,
                        seed: int = 0) -> PerView:
    """Intrinsic dimension from exact nearest neighbours: ``twonn`` (Facco et al. 2017, maximum-likelihood form)
    or ``mle`` (Levina & Bickel 2004 with ``k`` neighbours, MacKay–Ghahramani average), on a seeded subset of
    at most ``max_samples`` samples."""
    if method not in ("twonn", "mle"):
        raise ReprscopeError(f"The 'method' parameter of intrinsic_dimension must be 'twonn' or 'mle'. Got {method!r} instead.")
    arr, res, data = _label_free(z, "intrinsic_dimension", k=k, max_samples=max_samples, seed=seed)
    metric = "id_twonn" if method == "twonn" else "id_mle"
    return _per_view([_value(res, metric, view=v) for v in data.views], arr)


# -- center vector ------------------------------------------------------------------------------------------


def _center(z: Array):
    arr, dev = _input.embeddings(z)
    data = _input.layer_data(arr, dev)
    return center_statistics(data)


def center_vector(z: Array) -> np.ndarray:
    """The center vector s = mean_i µ_i, µ_i the mean of the ℓ2-normalised views of sample i ("A unifying
    framework for the stability of SSL: the center vector", ICLR 2024 submission, Eq. 1).

    Args:
        z: (n, d) embeddings of one view or (V, n, d) of V augmented views of the same samples.

    Returns:
        (d,) float64.
    """
    return _center(z).s


def center_norm(z: Array) -> float:
    """‖s‖ of :func:`center_vector`: near 1 when every sample maps to the same direction (collapse), 0 for a
    representation centred on the sphere."""
    return float(np.linalg.norm(_center(z).s))


def residual_norms(z: Array) -> np.ndarray:
    """(n,) residual norms ‖µ_i − s‖ of every sample (the center-vector paper's Eq. 4)."""
    return _center(z).residuals


def center_metrics(z: Array) -> Dict[str, float]:
    """The ``center`` analyzer's values: ``center_norm``, ``residual_norm_mean``, ``residual_norm_std``
    (population std) and, with V ≥ 2 views, ``alignment`` (mean cosine over samples and view pairs)."""
    st = _center(z)
    out = {"center_norm": float(np.linalg.norm(st.s)), "residual_norm_mean": float(st.residuals.mean()),
           "residual_norm_std": float(st.residuals.std())}
    if st.alignment is not None:
        out["alignment"] = float(st.alignment)
    return out


# -- alignment and uniformity (Wang & Isola 2020, arXiv:2005.10242) -----------------------------------------


def alignment(z1: Array, z2: Optional[Array] = None, *, alpha: float = 2.0) -> float:
    """L_align = E_i ‖ẑ_i⁽¹⁾ − ẑ_i⁽²⁾‖^α of the ℓ2-normalised views (Wang & Isola 2020, arXiv:2005.10242, α = 2).

    Args:
        z1, z2: (n, d) each, or ``z1`` alone as (V ≥ 2, n, d).
    """
    if not alpha > 0:
        raise ReprscopeError(f"The 'alpha' parameter of alignment must be a float > 0. Got {alpha!r} instead.")
    arr, _ = _input.two_views(z1, z2)
    total, zeros, _, _ = align_terms(arr[0], arr[1], float(alpha))
    if zeros:
        warnings.warn(f"alignment: {zeros} zero rows stay zero after normalising, off the unit sphere",
                      ReprscopeWarning, stacklevel=2)
    return total / arr.shape[1]


def uniformity(z: Array, *, t: float = 2.0) -> PerView:
    """L_uniform = log E_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²) over all ordered pairs of distinct samples (Wang & Isola 2020,
    arXiv:2005.10242, t = 2), exact, blockwise (no n×n matrix). The ``uniformity`` analyzer uses the same
    kernel sum, on a seeded subset of its ``max_samples`` when a layer has more samples."""
    if not t > 0:
        raise ReprscopeError(f"The 't' parameter of uniformity must be a float > 0. Got {t!r} instead.")
    arr, dev = _input.embeddings(z)
    out = []
    for v in range(arr.shape[0]):
        _, _, inv, _ = align_terms(arr[v], arr[v], 2.0)
        x = torch.from_numpy(arr[v].astype(np.float64) * inv[:, None]).to(dev)
        out.append(log_mean_exp_pairs(x, float(t)))
    return _per_view(out, arr)


def alignment_uniformity(z1: Array, z2: Optional[Array] = None, *, t: float = 2.0, alpha: float = 2.0,
                  max_samples: int = 8192) -> Dict[str, float]:
    """The ``uniformity`` analyzer's values for two views: ``align``, ``uniform_1``, ``uniform_2`` and their
    mean ``uniform`` (uniformity on a seeded subset of ``max_samples`` when n is larger)."""
    arr, dev = _input.two_views(z1, z2)
    data = _input.layer_data(arr, dev)
    res = _run(_align_uniform_rows, data, {"t": t, "alpha": alpha, "max_samples": max_samples}, "alignment_uniformity")
    a, b = data.views
    return {"align": _value(res, "align"), "uniform_1": _value(res, "uniform", view=a),
            "uniform_2": _value(res, "uniform", view=b), "uniform": _value(res, "uniform", view=f"{a}|{b}")}


# -- VICReg (Bardes, Ponce & LeCun 2022, arXiv:2105.04906) --------------------------------------------------


def vicreg_statistics(z1: Array, z2: Optional[Array] = None, *, gamma: float = 1.0, eps: float = 1e-4,
                      lam: float = 25.0, mu: float = 25.0, nu: float = 1.0) -> Dict[str, Any]:
    """VICReg's loss terms and statistics of two views (Bardes, Ponce & LeCun 2022, arXiv:2105.04906).

    Returns:
        ``invariance`` (mean squared difference per dimension, the paper's ``F.mse_loss``), ``variance``
        v(Z) + v(Z'), ``covariance`` c(Z) + c(Z'), ``loss`` λ·inv + μ·var + ν·cov, ``avg_corr`` (Eq. 10, when
        defined) and, as (2,) arrays one entry per view: ``std_mean``, ``collapsed_dims``,
        ``std_target_ratio``, ``variance_per_view``, ``covariance_per_view``.
    """
    arr, dev = _input.two_views(z1, z2)
    data = _input.layer_data(arr, dev)
    res = _run(_vicreg_rows, data, {"gamma": gamma, "eps": eps, "lam": lam, "mu": mu, "nu": nu}, "vicreg_statistics")
    a, b = data.views
    pair = f"{a}|{b}"
    out: Dict[str, Any] = {k: _value(res, k, view=pair) for k in ("invariance", "variance", "covariance", "loss")}
    if any(r["metric"] == "avg_corr" and r["view"] == pair for r in res.rows):
        out["avg_corr"] = _value(res, "avg_corr", view=pair)
    for k, name in (("std_mean", "std_mean"), ("collapsed_dims", "collapsed_dims"),
                    ("std_target_ratio", "std_target_ratio"), ("variance", "variance_per_view"),
                    ("covariance", "covariance_per_view")):
        out[name] = np.array([_value(res, k, view=v) for v in (a, b)])
    return out


# -- matrix information (Tan et al. 2024, arXiv:2309.17281) -------------------------------------------------


def matrix_information_metrics(z1: Array, z2: Optional[Array] = None, *, alpha: float = 1.0, mu: float = 1.0,
                               batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16,
                               center: bool = False, seed: int = 0, kl_eps: float = 1e-6,
                               dime_permutations: int = 4, quantities: str = "all") -> Dict[str, Dict[str, float]]:
    """Every value of the ``matrix_information`` analyzer, by form: ``{"gram": {...}, "cov": {...}}``.

    Two PSD matrices per batch of m samples: the Gram form K = ẐẐᵀ of the ℓ2-normalised rows, and the covariance
    form of the unit-norm columns (Tan et al. 2024, arXiv:2309.17281, §3–4). Values are means over batches of
    ``batch_size`` samples ("all": one batch; at most ``max_batches`` batches, a seeded subset), the keys
    ending in ``_std`` their population std over batches.
    """
    arr, dev = _input.two_views(z1, z2)
    data = _input.layer_data(arr, dev)
    res = _run(_matrix_information_rows, data, {"alpha": alpha, "mu": mu, "batch_size": batch_size,
                                                 "max_batches": max_batches, "center": center, "seed": seed,
                                                 "kl_eps": kl_eps, "dime_permutations": dime_permutations,
                                                 "quantities": quantities}, "matrix_information")
    out: Dict[str, Dict[str, float]] = {}
    for r in res.rows:
        out.setdefault(r["form"], {})[r["metric"]] = float(r["value"])
    return out


def _mi_value(metric: str, owner: str, z1: Array, z2: Optional[Array], form: str, **params: Any) -> float:
    if form not in ("gram", "cov"):
        raise ReprscopeError(f"The 'form' parameter of {owner} must be 'gram' or 'cov'. Got {form!r} instead.")
    if metric in ("entropy_alpha", "mutual_information", "joint_entropy", "conditional_entropy"):
        params = {**params, "quantities": "alpha"}  # only what is asked (at α = 2: no eigendecomposition)
    vals = matrix_information_metrics(z1, z2, **params)
    if metric not in vals.get(form, {}):
        raise ReprscopeError(f"{owner}: {metric} ({form} form) is undefined on these embeddings")
    return vals[form][metric]


def matrix_entropy(z: Array, *, alpha: float = 1.0, form: str = "gram", batch_size: Union[int, str] = 512,
                   max_batches: Optional[int] = 16, center: bool = False, seed: int = 0) -> float:
    """Matrix Rényi entropy H_α(K) = log(Σ λ_i^α)/(1 − α) of λ = eig(K)/tr K (α = 1: von Neumann), for one view
    (Tan et al. 2024, arXiv:2309.17281, Def. 3.1), mean over batches."""
    arr, _ = _input.embeddings(z)
    return _mi_value("entropy_alpha", "matrix_entropy", arr[0], arr[0], form, alpha=alpha, batch_size=batch_size,
                     max_batches=max_batches, center=center, seed=seed)


def matrix_mutual_information(z1: Array, z2: Optional[Array] = None, *, alpha: float = 1.0, form: str = "gram",
                              batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16,
                              center: bool = False, seed: int = 0) -> float:
    """Matrix mutual information I_α = H_α(K₁) + H_α(K₂) − H_α(K₁ ⊙ K₂) of two views (Tan et al. 2024,
    arXiv:2309.17281, Def. 3.2), mean over batches."""
    return _mi_value("mutual_information", "matrix_mutual_information", z1, z2, form, alpha=alpha,
                     batch_size=batch_size, max_batches=max_batches, center=center, seed=seed)


def joint_entropy(z1: Array, z2: Optional[Array] = None, *, alpha: float = 1.0, form: str = "gram",
                  batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16, center: bool = False,
                  seed: int = 0) -> float:
    """Matrix joint entropy H_α(K₁ ⊙ K₂) of two views (Tan et al. 2024, arXiv:2309.17281, Def. 3.3)."""
    return _mi_value("joint_entropy", "joint_entropy", z1, z2, form, alpha=alpha, batch_size=batch_size,
                     max_batches=max_batches, center=center, seed=seed)


def matrix_conditional_entropy(z1: Array, z2: Optional[Array] = None, *, alpha: float = 1.0, form: str = "gram",
                               batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16,
                               center: bool = False, seed: int = 0) -> float:
    """Matrix conditional entropy H_α(K₁|K₂) = H_α(K₁ ⊙ K₂) − H_α(K₂) of view 1 given view 2 (Sanchez Giraldo,
    Rao & Principe 2014, arXiv:1211.2459)."""
    return _mi_value("conditional_entropy", "matrix_conditional_entropy", z1, z2, form, alpha=alpha,
                     batch_size=batch_size, max_batches=max_batches, center=center, seed=seed)


def dime(z1: Array, z2: Optional[Array] = None, *, alpha: float = 1.0, permutations: int = 4,
         batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16, seed: int = 0) -> float:
    """DiME (Skean et al. 2023, arXiv:2301.08164): mean over ``permutations`` seeded shuffles π of view 2 of
    H_α(K₁ ⊙ K₂^π) − H_α(K₁ ⊙ K₂), Gram matrices of the ℓ2-normalised rows, per batch, averaged."""
    if not isinstance(permutations, (int, np.integer)) or isinstance(permutations, bool) or permutations < 1:
        raise ReprscopeError(f"The 'permutations' parameter of dime must be an int >= 1. Got {permutations!r} instead.")
    return _mi_value("dime", "dime", z1, z2, "gram", alpha=alpha, batch_size=batch_size, max_batches=max_batches,
                     seed=seed, dime_permutations=permutations)


def matrix_kl(z1: Array, z2: Optional[Array] = None, *, form: str = "gram", kl_eps: float = 1e-6,
              batch_size: Union[int, str] = 512, max_batches: Optional[int] = 16, center: bool = False,
              seed: int = 0) -> float:
    """Matrix KL divergence tr[K₁(log K₁ − log K₂)] (Tan et al. 2024, arXiv:2309.17281, Def. 4.9), eigenvalues
    floored at ``kl_eps``·tr K."""
    return _mi_value("kl", "matrix_kl", z1, z2, form, kl_eps=kl_eps, batch_size=batch_size,
                     max_batches=max_batches, center=center, seed=seed)


def matrix_js(z1: Array, z2: Optional[Array] = None, *, form: str = "gram", batch_size: Union[int, str] = 512,
              max_batches: Optional[int] = 16, center: bool = False, seed: int = 0) -> float:
    """Matrix Jensen–Shannon divergence H₁((ρ₁+ρ₂)/2) − (H₁(ρ₁) + H₁(ρ₂))/2 of the trace-normalised matrices
    (Tan et al. 2024, arXiv:2309.17281, §4)."""
    return _mi_value("js", "matrix_js", z1, z2, form, batch_size=batch_size, max_batches=max_batches,
                     center=center, seed=seed)


def total_coding_rate(z: Array, *, mu: float = 1.0, batch_size: Union[int, str] = 512,
                      max_batches: Optional[int] = 16, seed: int = 0) -> float:
    """Total coding rate log det(μI_d + ẐᵀẐ) of the ℓ2-normalised rows (Tan et al. 2024, arXiv:2309.17281,
    Def. 4.8), mean over batches."""
    arr, _ = _input.embeddings(z)
    return _mi_value("tcr", "total_coding_rate", arr[0], arr[0], "gram", mu=mu, batch_size=batch_size,
                     max_batches=max_batches, seed=seed)


# -- readouts: R² against latents, k-NN, linear probe -------------------------------------------------------


def r2_latents(z: Array, latents: Array, *, readout: str = "linear", latent_names: Optional[List[str]] = None,
               test_fraction: float = 0.2, ridge: float = 1e-3, seed: int = 0, kernel_gamma: Optional[float] = None,
               max_kernel_samples: int = 4000, kernel_cv: int = 0) -> Dict[str, Dict[str, float]]:
    """Held-out R² and adjusted R² of a ridge (``linear``) or RBF kernel ridge (``kernel``) readout of every
    ground-truth latent from the embeddings (the protocol of Rusak et al. 2022, "Content suppresses style").

    Args:
        z: (n, d) embeddings (for (V, n, d) the first view is read); latents: (n, k) or (n,).
        test_fraction, seed: the seeded split; ridge: α = ridge·n_train.
        kernel_cv: with ``readout="kernel"``, folds of cross-validation on the train split that choose γ and the
            ridge from a grid (0: the given ones).

    Returns:
        ``{"r2": {name: value}, "r2_adjusted": {name: value}}`` (adjusted with p = d, the embedding width).
    """
    arr, dev = _input.embeddings(z)
    lat = _input.latents(latents, arr.shape[1])
    names = [str(s) for s in latent_names] if latent_names is not None else [str(j) for j in range(lat.shape[1])]
    if len(names) != lat.shape[1]:
        raise ReprscopeError(f"expected {lat.shape[1]} latent_names, one per latent column, got {len(names)}")
    data = _input.layer_data(arr, dev, latents_=lat, latent_names=names)
    res = _run(_identifiability_rows, data, {"readout": readout, "test_fraction": test_fraction, "ridge": ridge,
                                             "seed": seed, "kernel_gamma": kernel_gamma,
                                             "max_kernel_samples": max_kernel_samples, "mcc": "off",
                                             "kernel_cv": kernel_cv}, "r2_latents")
    out: Dict[str, Dict[str, float]] = {"r2": {}, "r2_adjusted": {}}
    for r in res.rows:
        if r["metric"] in out:
            out[r["metric"]][r["index"]] = float(r["value"])
    return out


def knn_accuracy(z: Array, labels: Array, *, k: Union[int, List[int]] = 20, temperature: float = 0.07,
                 test_fraction: float = 0.2, seed: int = 0, max_queries: int = 5000, similarity: str = "cosine",
                 top: int = 1) -> Union[float, Dict[int, float]]:
    """Top-1 (or top-5) accuracy of the weighted k-NN classifier (Wu et al. 2018, arXiv:1805.01978, §3.4; DINO's
    ``eval_knn``) on a seeded train/test split of the samples.

    Args:
        z: (n, d) embeddings (for (V, n, d) the first view); labels: (n,) class ids.
        k: one k, or a list (one accuracy each).
        similarity: ``cosine`` (votes exp(sim/T)) or ``euclidean`` (raw features, votes 1/(distance + 1e-5), as
            solo-learn).
        top: 1, or 5 (the true class among the five best class scores; needs more than five classes).

    Returns:
        A float for one k, else ``{k: accuracy}``.
    """
    if top not in (1, 5):
        raise ReprscopeError(f"The 'top' parameter of knn_accuracy must be 1 or 5. Got {top!r} instead.")
    arr, dev = _input.embeddings(z)
    y = _input.labels(labels, arr.shape[1])
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or not all(isinstance(x, (int, np.integer)) and x >= 1 for x in ks):
        raise ReprscopeError(f"The 'k' parameter of knn_accuracy must be an int >= 1 or a list of them. Got {k!r} instead.")
    data = _input.layer_data(arr, dev, labels_=y)
    res = _run(_knn_rows, data, {"ks": ",".join(map(str, ks)), "temperature": temperature,
                                 "test_fraction": test_fraction, "seed": seed, "max_queries": max_queries,
                                 "similarity": similarity}, "knn_accuracy")
    if top == 5 and not any(r["metric"] == "top5" for r in res.rows):
        raise ReprscopeError("knn_accuracy: top=5 needs more than five classes (with five or fewer it is 1 by "
                             "definition)")
    got = {int(kk): _value(res, f"top{top}", index=str(kk)) for kk in dict.fromkeys(int(x) for x in ks)}
    return got[int(ks[0])] if isinstance(k, (int, np.integer)) else got


def linear_probe_accuracy(z: Array, labels: Array, *, l2: float = 1e-4, test_fraction: float = 0.2, seed: int = 0,
                          max_iter: int = 100) -> Dict[str, float]:
    """A multinomial logistic regression (L-BFGS, L2 penalty) on standardised features, the split of
    :func:`knn_accuracy`: ``{"top1": test accuracy, "train_top1": ..., "loss": train objective}``."""
    arr, dev = _input.embeddings(z)
    y = _input.labels(labels, arr.shape[1])
    data = _input.layer_data(arr, dev, labels_=y)
    res = _run(_linear_probe_rows, data, {"l2": l2, "test_fraction": test_fraction, "seed": seed,
                                          "max_iter": max_iter}, "linear_probe_accuracy")
    return {k: _value(res, k) for k in ("top1", "train_top1", "loss")}


# -- heads: weight spectra and the tangent-space analysis (Cosentino et al. 2022, arXiv:2205.06926) ---------


def head_module(head: Union[nn.Module, HeadModule], what: str = "head") -> HeadModule:
    """A user's head module as the stored layer-spec form the ``weights`` and ``tangent`` analyzers read."""
    if isinstance(head, HeadModule):
        return head
    from ..models.heads import spec_of_module

    got = spec_of_module(head) if isinstance(head, nn.Module) else None
    if got is None:
        raise ReprscopeError(f"expected {what} as an nn.Sequential of Linear, BatchNorm1d (eps 1e-5), ReLU, GELU, "
                             f"LeakyReLU or Identity layers, got {type(head).__name__}")
    return HeadModule(spec=got[0], params=got[1])


def weight_ranks(head: Union[nn.Module, HeadModule], *, tau: float = 0.01, tau_abs: float = 0.01
                 ) -> Dict[str, Dict[str, Any]]:
    """Singular values and ranks of every weight of a head (and, for a purely linear head of ≥ 2 layers, of
    the product map): ``{"0": {"sv": array, "rank_tau": ..., "rank_abs": ..., "effective_rank": ...}, ...}``
    keyed by layer index in the flattened head (Cosentino et al. 2022, arXiv:2205.06926, Eq. 2)."""
    mod = head_module(head)
    data = _input.layer_data(np.zeros((1, 2, 1)), modules={"projector": mod})
    res = _run(_weights_rows, data, {"tau": tau, "tau_abs": tau_abs}, "weight_ranks")
    out: Dict[str, Dict[str, Any]] = {}
    svs: Dict[str, List[float]] = {}
    for r in res.rows:
        idx = r["index"].split(".", 1)[1]
        if r["metric"] == "sv":
            key, _ = idx.split(":")
            svs.setdefault(key, []).append(float(r["value"]))
        else:
            out.setdefault(idx, {})[r["metric"]] = float(r["value"])
    for key, vals in svs.items():
        out.setdefault(key, {})["sv"] = np.asarray(vals)
    return out


def tangent_metrics(h: Array, projector: Union[nn.Module, HeadModule], labels: Optional[Array] = None, *,
                    batch_size: int = 512, temperature: float = 0.5, max_jacobian_samples: int = 1024,
                    seed: int = 0) -> Dict[str, float]:
    """Hardest-negative geometry of encoder outputs under a projector (Cosentino et al. 2022,
    arXiv:2205.06926, §3–5): ``fvu`` (the fraction of the variance of δh = h⁽²⁾ − h̃* unexplained by the
    projector's row space, Jacobians for a non-linear projector), ``infonce``, ``invariance``, ``repulsion``,
    ``upper_bound`` (Prop. 3.1), ``hardest_negative_distance`` and, with labels,
    ``hardest_negative_label_agreement``.

    Args:
        h: (2, n, d) or (V ≥ 2, n, d) encoder outputs of two augmented views (or pass them stacked).
        projector: the head mapping h to z, as an ``nn.Sequential`` of supported layers.
        labels: optional (n,) class ids.
    """
    arr, dev = _input.embeddings(h)
    if arr.shape[0] < 2:
        raise ReprscopeError(f"expected h of shape (V, n, d) with V ≥ 2 augmented views, got {tuple(np.shape(h))}")
    y = None if labels is None else _input.labels(labels, arr.shape[1])
    mod = head_module(projector, "projector")
    first = next((s for s in mod.spec if "in" in s), None)
    if first is not None and int(first["in"]) != arr.shape[2]:
        raise ReprscopeError(f"expected h of width {first['in']} (the projector's input), got {arr.shape[2]}")
    data = _input.layer_data(arr, dev, labels_=y, modules={"projector": mod})
    res = _run(_tangent_rows, data, {"batch_size": batch_size, "temperature": temperature,
                                     "max_jacobian_samples": max_jacobian_samples, "seed": seed}, "tangent_metrics")
    out = {r["metric"]: float(r["value"]) for r in res.rows if r["index"] == ""}
    for r in res.rows:
        if r["metric"] == "hardest_negative_label_agreement" and r["index"] == "fine":
            out["hardest_negative_label_agreement"] = float(r["value"])
    return out


def tangent_fvu(h: Array, projector: Union[nn.Module, HeadModule], **kwargs: Any) -> float:
    """``fvu`` of :func:`tangent_metrics`."""
    got = tangent_metrics(h, projector, **kwargs)
    if "fvu" not in got:
        raise ReprscopeError("tangent_fvu: every δh is zero (collapsed or identical views); fvu is undefined")
    return got["fvu"]


# -- representation similarity (Kornblith et al. 2019, arXiv:1905.00414; Raghu et al. 2017, arXiv:1706.05806;
#    Morcos et al. 2018, arXiv:1806.05759; Ding et al. 2021, arXiv:2108.01661; Nguyen et al. 2021,
#    arXiv:2010.15327; Huh et al. 2024, arXiv:2405.07987) ----------------------------------------------------


def _pair(x: Array, y: Array, owner: str) -> "tuple[LayerData, LayerData]":
    """In-memory LayerData of two (n, d_x), (n, d_y) layers of the same samples."""
    ax, dx = _input.embeddings(x, "x", min_samples=5)
    ay, dy = _input.embeddings(y, "y", min_samples=5)
    for name, a, given in (("x", ax, x), ("y", ay, y)):
        if a.shape[0] != 1:
            raise ReprscopeError(f"{owner}: expected {name} of shape (n, d), got {tuple(np.shape(given))}")
    if ax.shape[1] != ay.shape[1]:
        raise ReprscopeError(f"{owner}: expected x and y with the same samples in their rows, got {ax.shape[1]} "
                             f"and {ay.shape[1]} rows")
    dev = dx if dx != "cpu" else dy
    return _input.layer_data(ax, dev, layer="x"), _input.layer_data(ay, dev, layer="y")


def similarity_metrics(x: Array, y: Array, *, measures: Union[str, List[str]] = "all", variance: float = 0.99,
                       sigma: float = 1.0, batch_size: int = 1024, k: int = 10, max_samples: int = 4096,
                       seed: int = 0) -> Dict[str, float]:
    """Similarity of two representations of the same n inputs, x (n, d_x) and y (n, d_y): the measures of the
    ``similarity`` analyzer (:mod:`reprscope.metrics.similarity` gives every formula and convention).

    Args:
        measures: ``"all"`` or names among ``cka_linear``, ``cka_linear_debiased``, ``svcca``, ``pwcca``,
            ``cca_mean``, ``procrustes``, ``cka_rbf``, ``mutual_knn``.
        variance: SVCCA's kept fraction of variance; sigma, batch_size: RBF CKA's kernel width (× √median squared
            distance) and minibatch; k: mutual k-NN's neighbours; max_samples, seed: the kernel measures' subset.

    Returns:
        ``{measure: value}`` (a measure undefined on these inputs, e.g. CKA of a constant layer, is left out
        with a :class:`ReprscopeWarning`).
    """
    a, b = _pair(x, y, "similarity_metrics")
    a.seed = b.seed = int(seed)
    chosen = ",".join(measures) if isinstance(measures, (list, tuple)) else measures
    values = resolve_params("similarity_metrics", _similarity_rows.declaration.params,
                            {"measures": chosen, "variance": variance, "sigma": sigma, "batch_size": batch_size,
                             "k": k, "max_samples": max_samples})
    res = _similarity_rows(a, b, **values)
    for note in res.notes:
        warnings.warn(f"similarity_metrics: {note}", ReprscopeWarning, stacklevel=2)
    return {r["metric"]: float(r["value"]) for r in res.rows}


def _one_similarity(measure: str, x: Array, y: Array, **params: Any) -> float:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReprscopeWarning)
        got = similarity_metrics(x, y, measures=measure, **params)
    if measure not in got:  # undefined: the reason is the error, not a warning
        why = "; ".join(str(w.message).removeprefix("similarity_metrics: ") for w in caught)
        raise ReprscopeError(f"{measure}: undefined on these inputs ({why or 'a constant representation'})")
    for w in caught:
        warnings.warn(str(w.message), ReprscopeWarning, stacklevel=3)
    return got[measure]


def linear_cka(x: Array, y: Array, *, debiased: bool = False) -> float:
    """Linear CKA of x (n, d_x) and y (n, d_y) (Kornblith et al. 2019, arXiv:1905.00414), from d×d cross-products;
    ``debiased`` uses the unbiased HSIC estimator (Song et al. 2012), as Kornblith's code."""
    return _one_similarity("cka_linear_debiased" if debiased else "cka_linear", x, y)


def cka_rbf(x: Array, y: Array, *, sigma: float = 1.0, batch_size: int = 1024, max_samples: int = 4096,
            seed: int = 0) -> float:
    """Minibatch RBF CKA (Nguyen et al. 2021, arXiv:2010.15327): unbiased HSIC averaged over batches of a seeded
    permutation, kernel width σ = ``sigma`` × √(median squared distance) of each batch."""
    return _one_similarity("cka_rbf", x, y, sigma=sigma, batch_size=batch_size, max_samples=max_samples, seed=seed)


def svcca(x: Array, y: Array, *, variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017, arXiv:1706.05806): mean canonical correlation of the principal subspaces
    keeping ``variance`` of each representation's variance."""
    return _one_similarity("svcca", x, y, variance=variance)


def pwcca(x: Array, y: Array) -> float:
    """Projection-weighted CCA (Morcos et al. 2018, arXiv:1806.05759), weights from the centred neurons of the
    side with fewer neurons."""
    return _one_similarity("pwcca", x, y)


def procrustes_distance(x: Array, y: Array) -> float:
    """Orthogonal Procrustes distance 2 − 2‖X̃ᵀỸ‖_* of the centred, unit-Frobenius representations (Ding et al.
    2021, arXiv:2108.01661): 0 when equal up to rotation, translation and scale."""
    return _one_similarity("procrustes", x, y)


def mutual_knn_alignment(x: Array, y: Array, *, k: int = 10, max_samples: int = 4096, seed: int = 0) -> float:
    """Mutual k-NN alignment (Huh et al. 2024, arXiv:2405.07987): mean fraction of shared cosine k-nearest
    neighbours (self excluded), on a seeded subset of at most ``max_samples``."""
    return _one_similarity("mutual_knn", x, y, k=k, max_samples=max_samples, seed=seed)


def lidar(z1: Array, *more: Array, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2023, arXiv:2312.04000): effective rank of Σ_w^{-1/2} Σ_b Σ_w^{-1/2}, every sample a
    class of its augmented views; ``z1`` (V ≥ 2, n, d), or V arrays (n, d) of the same samples."""
    if more:
        arr, dev = _input.stack_views([z1, *more])
    else:
        arr, dev = _input.embeddings(z1)
        if arr.shape[0] < 2:
            raise ReprscopeError(f"lidar: expected at least two views: z1 of shape (V, n, d) with V ≥ 2 or several "
                                 f"(n, d) arrays, got {tuple(np.shape(z1))}")
    res = _run(_lidar_rows, _input.layer_data(arr, dev), {"delta": delta, "eps": eps}, "lidar")
    return _value(res, "lidar", owner="lidar")


def mcc(z: Array, latents: Array, *, method: str = "pearson") -> Dict[str, Any]:
    """Mean correlation coefficient (Hyvärinen & Morioka 2016; permutation-matched as Zimmermann et al. 2021's
    cl-ica code): the mean |correlation| (``pearson`` or ``spearman``) of the one-to-one matching of latents to
    embedding dimensions that maximises it (Hungarian algorithm), on all samples.

    Returns:
        ``{"mcc": value, "match": (k,) matched dimension of each latent (−1 when d < k left it out)}``.
    """
    from .identifiability import correlation_matrix, mcc_of

    if method not in ("pearson", "spearman"):
        raise ReprscopeError(f"The 'method' parameter of mcc must be 'pearson' or 'spearman'. Got {method!r} instead.")
    arr, dev = _input.embeddings(z)
    lat = _input.latents(latents, arr.shape[1])
    value, match = mcc_of(correlation_matrix(_input.layer_data(arr[:1], dev), 0, lat, method))
    return {"mcc": value, "match": match}


__all__ = [
    "ReprscopeWarning", "alignment", "alignment_uniformity", "center_metrics", "center_norm", "center_vector",
    "alpha_req", "cka_rbf", "dime", "effective_rank", "head_module", "intrinsic_dimension", "joint_entropy", "knn_accuracy", "linear_probe_accuracy", "matrix_conditional_entropy", "matrix_entropy",
    "matrix_information_metrics", "matrix_js", "matrix_kl", "matrix_mutual_information", "nesum", "r2_latents",
    "lidar", "linear_cka", "mcc", "mutual_knn_alignment", "procrustes_distance", "pwcca", "rank_abs", "similarity_metrics",
    "stable_rank", "svcca",
    "rank_tau", "rankme", "residual_norms", "singular_values", "tangent_fvu", "tangent_metrics", "total_coding_rate",
    "uniformity", "vicreg_statistics", "weight_ranks",
]
