"""Empirical spectral densities of every weight matrix, as WeightWatcher reads them (Martin & Mahoney 2021,
"Implicit self-regularization in deep neural networks", JMLR 22(165), arXiv:1810.01075; Martin, Peng & Mahoney
2021, "Predicting trends in the quality of state-of-the-art neural networks without access to training or
testing data", Nat. Commun. 12:4122, arXiv:2002.06947).

For a weight W (out × in; a convolution's (out, in, k_h, k_w) kernel is read as k_h·k_w matrices W[:, :, a, b]
whose eigenvalues are pooled into one ESD, a Conv2d's halved as WeightWatcher's default ``conv2d_norm`` does)
the eigenvalues λ_i = σ_i² of WᵀW (not divided by N: α does not
depend on the scale, the norms below are WeightWatcher's logs of these λ):

* ``alpha`` — the exponent of a power law p(λ) ∝ λ^(−α) fitted to the tail λ ≥ λ_min by maximum likelihood,
  α = 1 + n_tail / Σ log(λ_i / λ_min), with λ_min (``xmin``) the eigenvalue that minimises the
  Kolmogorov–Smirnov distance ``ks_distance`` between the tail and the fit (Clauset, Shalizi & Newman 2009,
  arXiv:0706.1062), written as WeightWatcher's own default fit: every eigenvalue but the largest a candidate,
  D against the empirical CDF i/n; no fit below ``min_evals`` = 20 eigenvalues (where WeightWatcher uses a
  bias-corrected small-sample variant instead);
* ``alpha_weighted`` — α · log10 λ_max; ``log_spectral_norm`` — log10 λ_max; ``log_norm`` — log10 Σλ
  (= log10 ‖W‖_F²); ``stable_rank`` — Σλ / λ_max;
* ``mp_softrank`` — λ₊ / λ_max and ``num_spikes`` — #{λ > λ₊}, λ₊ = N σ² (1 + 1/√Q)² the Marchenko–Pastur
  bulk edge of an N × M (N ≥ M, Q = N/M) matrix of i.i.d. entries of variance σ², σ² = ‖W‖_F² / (N M) (the
  variance of the entries; WeightWatcher fits σ to the bulk instead, which moves λ₊ when spikes carry much of
  the norm).

Which weights: for a checkpoint (or an ``nn.Module``), every linear and convolution weight of the analysed
network, encoder and heads (a teacher copy left out), by module path; for an ``.h5`` store, its stored heads
(``/modules``: the encoder's weights are not in a store). Rows once per source, on the encoder layer, with
``index`` = the module path, like ``weights``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..params import Param
from ._core import HeadModule, LayerData, Result, declare
from .weights import layer_weight

#: Factor of a Conv2d's eigenvalues: WeightWatcher's default ``conv2d_norm`` multiplies the pooled kernel slices
#: by √(conv2d_count / 2) with conv2d_count = 1 (its pooled mode), i.e. the eigenvalues by 1/2.
CONV2D_SCALE = 0.5

#: Metrics per weight, in table order.
METRICS = ("alpha", "alpha_weighted", "xmin", "ks_distance", "log_spectral_norm", "log_norm", "stable_rank",
           "mp_softrank", "num_spikes")


def module_weights(module, skip: Tuple[str, ...] = ("teacher",)) -> Dict[str, np.ndarray]:
    """{module path: weight} of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of ``module`` (paths starting with
    a ``skip`` prefix left out), float64 numpy."""
    from torch import nn

    out: Dict[str, np.ndarray] = {}
    for name, m in module.named_modules():
        if name.split(".")[0] in skip:
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and getattr(m, "weight", None) is not None:
            out[name] = m.weight.detach().cpu().double().numpy()
    return out


def head_weights(modules: Dict[str, HeadModule]) -> Dict[str, np.ndarray]:
    """{``<part>.<i>``: weight} of the linear layers of stored heads."""
    out: Dict[str, np.ndarray] = {}
    for part, head in modules.items():
        for i in range(len(head.spec)):
            w = layer_weight(head.params, i)
            if w is not None:
                out[f"{part}.{i}"] = w
    return out


def eigenvalues(w: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """Pooled eigenvalues σ² of the weight's matrices (descending) and the matrix shape N ≥ M."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2:
        mats = [w]
    elif w.ndim > 2:  # (out, in, *kernel): one (out, in) matrix per kernel position
        mats = [w[(slice(None), slice(None)) + idx] for idx in np.ndindex(*w.shape[2:])]
    else:
        raise ValueError(f"a weight of shape {w.shape} has no matrix")
    lam = np.concatenate([np.linalg.svd(m, compute_uv=False) ** 2 for m in mats])
    n, m = max(mats[0].shape), min(mats[0].shape)
    return np.sort(lam)[::-1], n, m


def fit_power_law(lam: np.ndarray, min_evals: int = 20) -> Optional[Tuple[float, float, float, int]]:
    """(α, λ_min, KS distance, tail size) of the continuous power-law fit with the KS-optimal λ_min, as
    WeightWatcher's own fit (``WW_powerlaw.fit_power_law_standard``): every sorted eigenvalue but the largest is a
    candidate λ_min, α = 1 + n / Σ_{tail} log(λ/λ_min), D = max |1 − (λ/λ_min)^(1−α) − i/n| over the tail
    (i = 0 … n − 1), the first candidate of smallest D wins. None with fewer than ``min_evals`` positive
    eigenvalues (WeightWatcher switches to a bias-corrected small-sample fit below 20)."""
    x = np.sort(np.asarray(lam, dtype=np.float64)[np.asarray(lam) > 0])
    if x.size < max(2, min_evals):
        return None
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # Σ_{j ≥ i} log x_j
    best = None
    for i in range(x.size - 1):
        n = x.size - i
        s = float(suffix[i] - n * logs[i])
        if s <= 0:
            continue
        alpha = 1.0 + n / s
        d = float(np.max(np.abs(1.0 - (x[i:] / x[i]) ** (1.0 - alpha) - np.arange(n) / n)))
        if best is None or d < best[2]:
            best = (alpha, float(x[i]), d, n)
    return best


def esd_metrics(w: np.ndarray, min_evals: int = 20) -> Dict[str, float]:
    """The metrics of one weight (see the module docstring); α, xmin and the KS distance only when a fit exists."""
    lam, n, m = eigenvalues(w)
    if np.ndim(w) == 4:  # WeightWatcher's conv2d_norm: a pooled Conv2d's W scaled by √(1/2)
        lam = lam * CONV2D_SCALE
    top = float(lam[0])
    out: Dict[str, float] = {}
    if top <= 0:
        return out
    total = float(lam.sum())
    fit = fit_power_law(lam, min_evals)
    if fit is not None:
        alpha, xmin, d, _ = fit
        out.update(alpha=alpha, alpha_weighted=alpha * np.log10(top), xmin=xmin, ks_distance=d)
    slices = lam.size // m
    sigma2 = total / (n * m * slices)
    edge = n * sigma2 * (1.0 + 1.0 / np.sqrt(n / m)) ** 2
    out.update(log_spectral_norm=np.log10(top), log_norm=np.log10(total), stable_rank=total / top,
               mp_softrank=edge / top, num_spikes=float(np.count_nonzero(lam > edge)))
    return out


@declare(
    "esd",
    params=[Param("min_evals", 20, "int", "fewest eigenvalues for a power-law fit", low=2)],
    needs=("encoder_layer",),
    summary="WeightWatcher-style spectra of every weight matrix: power-law α with its fitted xmin, α-weighted, "
            "log norms, stable rank, Marchenko–Pastur soft rank and spikes",
    paper="Martin & Mahoney 2021, arXiv:1810.01075; Martin, Peng & Mahoney 2021, arXiv:2002.06947",
    reads_embeddings=False,
    no_bootstrap="the weights do not depend on the samples",
    headline=("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "num_spikes"),
)
def esd(data: LayerData, min_evals: int = 20) -> Result:
    """ESD metrics of every weight of the source (``data.weights``, else its stored heads), index = module path."""
    res = Result()
    weights = data.weights or head_weights(data.modules)
    if not weights:
        res.notes.append("no weights: a store without /modules and no checkpoint (analyze the checkpoint itself)")
        return res
    small: List[str] = []
    for name, w in weights.items():
        got = esd_metrics(w, min_evals)
        if "alpha" not in got:
            small.append(name)
        for metric in METRICS:
            if metric in got:
                res.add(metric, got[metric], index=name)
    if small:
        res.notes.append(f"no power-law fit for {len(small)} weights with fewer than {min_evals} eigenvalues "
                         f"({', '.join(small[:3])}{', …' if len(small) > 3 else ''})")
    return res
