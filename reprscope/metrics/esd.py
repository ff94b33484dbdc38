"""Empirical spectral densities of every weight matrix, as WeightWatcher reads them (Martin & Mahoney 2021,
"Implicit self-regularization in deep neural networks", JMLR 22(165), arXiv:1810.01075; Martin, Peng & Mahoney
2021, "Predicting trends in the quality of state-of-the-art neural networks without access to training or
testing data", Nat. Commun. 12:4122, arXiv:2002.06947).

For a weight W (out × in; a convolution's (out, in, k_h, k_w) kernel is read as k_h·k_w matrices W[:, :, a, b]
whose eigenvalues are pooled into one ESD) the eigenvalues λ_i = σ_i² of WᵀW (not divided by N: α does not
depend on the scale, the norms below are WeightWatcher's logs of these λ):

* ``alpha`` — the exponent of a power law p(λ) ∝ λ^(−α) fitted to the tail λ ≥ λ_min by maximum likelihood,
  α = 1 + n_tail / Σ log(λ_i / λ_min), with λ_min (``xmin``) the candidate eigenvalue that minimises the
  Kolmogorov–Smirnov distance ``ks_distance`` between the tail and the fit (Clauset, Shalizi & Newman 2009,
  arXiv:0706.1062 — the ``powerlaw`` package's procedure that WeightWatcher calls); candidates leave at least
  ``min_tail`` eigenvalues in the tail;
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


def fit_power_law(lam: np.ndarray, min_tail: int = 10) -> Optional[Tuple[float, float, float, int]]:
    """(α, λ_min, KS distance, tail size) of the continuous power-law fit with the KS-optimal λ_min; None when
    fewer than ``min_tail`` positive eigenvalues (or all equal)."""
    x = np.sort(np.asarray(lam, dtype=np.float64)[np.asarray(lam) > 0])
    if x.size < max(2, min_tail):
        return None
    logs = np.log(x)
    best = None
    # candidates: every distinct value that leaves at least min_tail points at or above it
    for i in np.flatnonzero(np.r_[True, np.diff(x) > 0])[: x.size - min_tail + 1]:
        tail = x[i:]
        s = float(np.sum(logs[i:] - logs[i]))
        if s <= 0:
            continue
        n = tail.size
        alpha = 1.0 + n / s
        fit = 1.0 - (tail / x[i]) ** (1.0 - alpha)  # the fitted CDF at each tail point
        emp_hi = np.arange(1, n + 1) / n
        emp_lo = np.arange(0, n) / n
        d = float(max(np.max(np.abs(emp_hi - fit)), np.max(np.abs(fit - emp_lo))))
        if best is None or d < best[2]:
            best = (alpha, float(x[i]), d, n)
    return best


def esd_metrics(w: np.ndarray, min_tail: int = 10) -> Dict[str, float]:
    """The metrics of one weight (see the module docstring); α, xmin and the KS distance only when a fit exists."""
    lam, n, m = eigenvalues(w)
    top = float(lam[0])
    out: Dict[str, float] = {}
    if top <= 0:
        return out
    total = float(lam.sum())
    fit = fit_power_law(lam, min_tail)
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
    params=[Param("min_tail", 10, "int", "fewest eigenvalues in the fitted power-law tail", low=2)],
    needs=("encoder_layer",),
    summary="WeightWatcher-style spectra of every weight matrix: power-law α with its fitted xmin, α-weighted, "
            "log norms, stable rank, Marchenko–Pastur soft rank and spikes",
    paper="Martin & Mahoney 2021, arXiv:1810.01075; Martin, Peng & Mahoney 2021, arXiv:2002.06947",
    reads_embeddings=False,
    no_bootstrap="the weights do not depend on the samples",
)
def esd(data: LayerData, min_tail: int = 10) -> Result:
    """ESD metrics of every weight of the source (``data.weights``, else its stored heads), index = module path."""
    res = Result()
    weights = data.weights or head_weights(data.modules)
    if not weights:
        res.notes.append("no weights: a store without /modules and no checkpoint (analyze the checkpoint itself)")
        return res
    small: List[str] = []
    for name, w in weights.items():
        got = esd_metrics(w, min_tail)
        if "alpha" not in got:
            small.append(name)
        for metric in METRICS:
            if metric in got:
                res.add(metric, got[metric], index=name)
    if small:
        res.notes.append(f"no power-law fit for {len(small)} weights with fewer than {min_tail} eigenvalues "
                         f"({', '.join(small[:3])}{', …' if len(small) > 3 else ''})")
    return res
