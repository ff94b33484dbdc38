"""Representation similarity between two layers (of one model, two checkpoints or two models) on the same samples.

Every measure compares the reference view (``clean`` when stored, else view 0) of two layers ``X`` (n, d_x) and
``Y`` (n, d_y), row i of both the embedding of the same input:

* ``cka_linear`` — linear centred kernel alignment (Kornblith et al. 2019, arXiv:1905.00414):
  ‖X̃ᵀỸ‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F), X̃, Ỹ column-centred. Computed from the d×d cross-products streamed in
  chunks (never an n×n matrix).
* ``cka_linear_debiased`` — the same with the unbiased HSIC estimator (Song et al. 2012; as in Kornblith's
  code and Nguyen et al. 2021, arXiv:2010.15327) in its feature-space form on the centred features:
  HSIC₁ ∝ ‖X̃ᵀỸ‖_F² − n/(n−2)·Σ_i a_i b_i + (Σa)(Σb)/((n−1)(n−2)), a_i = ‖x̃_i‖², b_i = ‖ỹ_i‖². It corrects
  the upward bias of CKA at n not ≫ d (two random layers: ≈ 0 where the biased value is ≈ d/(n+d)); it can be
  slightly negative.
* ``svcca`` — SVCCA (Raghu et al. 2017, arXiv:1706.05806): the top principal directions of each layer that
  keep ``variance`` (default 99 %) of its variance, then the mean of the canonical correlations between them.
* ``pwcca`` — projection-weighted CCA (Morcos et al. 2018, arXiv:1806.05759): Σ_i α_i ρ_i / Σ_i α_i over the
  canonical correlations ρ_i, α_i = Σ_j |⟨h_i, x̃_j⟩| the projection of the (unit) canonical variate h_i on
  every centred neuron x̃_j of the side with fewer neurons. Convention: Google's ``pwcca.py`` adds the neuron
  means back to the canonical variates and projects on *uncentred* neurons, which makes the weights (and the
  similarity) change when a constant is added to a layer; we project on centred neurons, so PWCCA is
  invariant to translation like CCA itself (equal to Google's when the layers are centred).
* ``cca_mean`` — the mean of all canonical correlations (CCA on the whole layers; SVCCA at variance 1).
* ``procrustes`` — orthogonal Procrustes distance (Ding et al. 2021, arXiv:2108.01661):
  2 − 2‖X̃ᵀỸ‖_* with X̃, Ỹ centred and scaled to unit Frobenius norm (0 for layers equal up to rotation and
  scale, at most 2).
* ``cka_rbf`` — CKA with Gaussian kernels, k(x, x') = exp(−‖x − x'‖² / (2σ²)), σ² = ``sigma``² × the median
  squared distance of the batch (Kornblith et al.'s ``gram_rbf`` convention: the median over every entry of the
  distance matrix, zero diagonal included). The n×n Gram is unavoidable here, so it is the minibatch estimator
  of Nguyen et al. 2021 (arXiv:2010.15327): the unbiased HSIC of every batch of ``batch_size`` samples of a
  seeded permutation, averaged over the batches, CKA = mean HSIC(K, L) / √(mean HSIC(K, K) · mean HSIC(L, L)).
* ``mutual_knn`` — mutual k-nearest-neighbour alignment (Huh et al. 2024, arXiv:2405.07987, the "platonic
  representation" metric): the mean over samples of |N_k^X(i) ∩ N_k^Y(i)| / k, neighbours by cosine similarity
  of the L2-normalised rows, the sample itself excluded, as their reference code.

CCA (svcca, pwcca, cca_mean) whitens each side by its covariance restricted to eigenvalues above
``1e-10 × the largest`` (a pseudo-inverse: a rank-deficient layer has fewer canonical directions, not a
singular matrix). The kernel measures (cka_rbf, mutual_knn) use a seeded subset of at most ``max_samples``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare
from ._ranks import mine, share, sum_over_ranks

#: The measures, in table order.
MEASURES = ("cka_linear", "cka_linear_debiased", "svcca", "pwcca", "cca_mean", "procrustes", "cka_rbf", "mutual_knn")
_MOMENT_MEASURES = {"cka_linear", "cka_linear_debiased", "svcca", "pwcca", "cca_mean", "procrustes"}

#: Eigenvalues of a covariance below this fraction of its largest are left out of the CCA whitening.
EIG_REL_TOL = 1e-10

#: Rows of one block of the (rows × n) cosine similarities of mutual k-NN.
_KNN_BLOCK = 1024


@dataclass
class CrossMoments:
    """Sufficient statistics of two layers on the same n samples, about their means (float64).

    ``xx``, ``yy``, ``xy`` are the centred cross-products X̃ᵀX̃, ỸᵀỸ, X̃ᵀỸ (not divided by n); ``a``, ``b`` the
    sums Σ‖x̃_i‖², Σ‖ỹ_i‖²; ``aa``, ``bb``, ``ab`` the sums Σa_i², Σb_i², Σa_i b_i (for the unbiased HSIC).
    """

    n: int
    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    a: float
    b: float
    aa: float
    bb: float
    ab: float


def paired_batches(x: LayerData, y: LayerData, size: int, dtype: Any = np.float64
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(b, d_x), (b, d_y) batches of the reference views of ``x`` and ``y``, the same samples in each
    (``dtype=None``: as stored)."""
    bx = x.batches([x.reference_view_id()], size, dtype=dtype or x.dtype)
    by = y.batches([y.reference_view_id()], size, dtype=dtype or y.dtype)
    for cx, cy in zip(bx, by):
        yield cx[0], cy[0]


def shared_paired_batches(x: LayerData, y: LayerData, size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """:func:`paired_batches` (as stored) of this process: in a torchrun job batch j when j mod world = rank,
    read on its own (the other ranks' batches are not read); every batch in a single process."""
    rank, world = share()
    if world == 1:
        yield from paired_batches(x, y, size, dtype=None)
        return
    for start in range(rank * size, x.n, world * size):
        stop = min(x.n, start + size)
        yield (x.sample_range([x.reference_view_id()], start, stop, dtype=x.dtype)[0],
               y.sample_range([y.reference_view_id()], start, stop, dtype=y.dtype)[0])


def cross_moments(x: LayerData, y: LayerData, device: str = "cpu") -> CrossMoments:
    """Two streamed passes over both layers: their means, then the centred products (exact centring, so a
    large common offset costs no precision). Chunks are read as stored and widened to float64 once, on the
    device. In a torchrun job each rank reads its share of the batches and the float64 sums are added."""
    size = max(1, min(x.chunk_size, y.chunk_size))
    sx, sy = np.zeros(x.dim), np.zeros(y.dim)
    for cx, cy in shared_paired_batches(x, y, size):
        sx += cx.sum(axis=0, dtype=np.float64)
        sy += cy.sum(axis=0, dtype=np.float64)
    sx, sy, n = sum_over_ranks(sx), sum_over_ranks(sy), x.n
    mx = torch.from_numpy(sx / max(n, 1)).to(device)
    my = torch.from_numpy(sy / max(n, 1)).to(device)
    dt = torch.float64
    xx = torch.zeros(x.dim, x.dim, dtype=dt, device=device)
    yy = torch.zeros(y.dim, y.dim, dtype=dt, device=device)
    xy = torch.zeros(x.dim, y.dim, dtype=dt, device=device)
    a = b = aa = bb = ab = 0.0
    for cx, cy in shared_paired_batches(x, y, size):
        tx = torch.from_numpy(np.ascontiguousarray(cx)).to(device=device, dtype=dt, copy=True).sub_(mx)
        ty = torch.from_numpy(np.ascontiguousarray(cy)).to(device=device, dtype=dt, copy=True).sub_(my)
        xx.addmm_(tx.T, tx)
        yy.addmm_(ty.T, ty)
        xy.addmm_(tx.T, ty)
        ra, rb = torch.einsum("ij,ij->i", tx, tx), torch.einsum("ij,ij->i", ty, ty)
        a += float(ra.sum())
        b += float(rb.sum())
        aa += float(ra @ ra)
        bb += float(rb @ rb)
        ab += float(ra @ rb)
    xx, yy, xy = (sum_over_ranks(t.cpu().numpy()) for t in (xx, yy, xy))
    a, b, aa, bb, ab = (float(v) for v in sum_over_ranks(np.array([a, b, aa, bb, ab])))
    return CrossMoments(n, xx, yy, xy, a, b, aa, bb, ab)


def moments_of_arrays(x: np.ndarray, y: np.ndarray) -> CrossMoments:
    """:class:`CrossMoments` of two in-memory (n, d) arrays (the same computation as the streamed one)."""
    from ._input import layer_data

    return cross_moments(layer_data(np.asarray(x, dtype=np.float64)[None]),
                         layer_data(np.asarray(y, dtype=np.float64)[None]))


def _hsic_unbiased_features(xty: float, ab: float, a: float, b: float, n: int) -> float:
    """The unbiased HSIC of two linear kernels in feature space, up to the factor 1/(n(n−3)) that cancels in
    CKA (Kornblith's ``_debiased_dot_product_similarity_helper``)."""
    return xty - n / (n - 2.0) * ab + a * b / ((n - 1.0) * (n - 2.0))


def linear_cka_of(m: CrossMoments, debiased: bool = False) -> float:
    """Linear CKA from :class:`CrossMoments` (NaN when a layer is constant, or n < 4 for the debiased form)."""
    xty = float(np.sum(m.xy * m.xy))
    xtx = float(np.sum(m.xx * m.xx))
    yty = float(np.sum(m.yy * m.yy))
    if debiased:
        if m.n < 4:
            return float("nan")
        xty = _hsic_unbiased_features(xty, m.ab, m.a, m.b, m.n)
        xtx = _hsic_unbiased_features(xtx, m.aa, m.a, m.a, m.n)
        yty = _hsic_unbiased_features(yty, m.bb, m.b, m.b, m.n)
    if xtx <= 0 or yty <= 0:
        return float("nan")
    return xty / np.sqrt(xtx * yty)


def procrustes_of(m: CrossMoments) -> float:
    """Orthogonal Procrustes distance 2 − 2‖X̃ᵀỸ‖_* / (‖X̃‖_F ‖Ỹ‖_F) (NaN for a constant layer)."""
    if m.a <= 0 or m.b <= 0:
        return float("nan")
    nuc = float(torch.linalg.svdvals(torch.from_numpy(m.xy)).sum())
    return max(0.0, 2.0 - 2.0 * nuc / np.sqrt(m.a * m.b))


def _eig_desc(c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    w, v = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(c)))
    return w.numpy()[::-1].copy(), v.numpy()[:, ::-1].copy()


def _kept(w: np.ndarray, variance: float) -> int:
    """Leading eigenvalues above the pseudo-inverse tolerance that reach ``variance`` of the total."""
    top = float(w[0]) if w.size else 0.0
    if top <= 0:
        return 0
    rank = int(np.count_nonzero(w > EIG_REL_TOL * top))
    if variance >= 1.0:
        return rank
    cum = np.cumsum(w[:rank]) / np.sum(w[:rank])
    return int(min(rank, np.searchsorted(cum, variance - 1e-12) + 1))


@dataclass
class CCA:
    """Canonical correlations ``rho`` (descending) of two whitened subspaces, with what PWCCA's weights need."""

    rho: np.ndarray
    weights_x: np.ndarray  # α_i on the x side
    weights_y: np.ndarray  # α_i on the y side
    kept_x: int
    kept_y: int


def cca_of(m: CrossMoments, variance: float = 1.0) -> Optional[CCA]:
    """CCA between the principal subspaces of both layers that keep ``variance`` of their variance (1: the
    whole layers, up to the pseudo-inverse tolerance); None when a layer is constant.

    With C_xx = U_x Λ_x U_xᵀ (kept part), M = Λ_x^{-1/2} U_xᵀ C_xy U_y Λ_y^{-1/2} = P S Qᵀ: the canonical
    correlations are S, the canonical weights U_x Λ_x^{-1/2} P, and the canonical variate h_i = X̃ w_i has unit
    norm, so its projections on the centred neurons are C_xx w_i = U_x Λ_x^{1/2} p_i (PWCCA's α, no n×k matrix).
    """
    wx, ux = _eig_desc(m.xx)
    wy, uy = _eig_desc(m.yy)
    kx, ky = _kept(wx, variance), _kept(wy, variance)
    if kx == 0 or ky == 0:
        return None
    ux, uy, lx, ly = ux[:, :kx], uy[:, :ky], wx[:kx], wy[:ky]
    mat = (ux.T @ m.xy @ uy) / np.sqrt(lx)[:, None] / np.sqrt(ly)[None, :]
    p, s, qt = np.linalg.svd(mat, full_matrices=False)
    r = min(kx, ky)
    rho = np.clip(s[:r], 0.0, 1.0)
    alpha_x = np.abs((ux * np.sqrt(lx)) @ p[:, :r]).sum(axis=0)
    alpha_y = np.abs((uy * np.sqrt(ly)) @ qt[:r].T).sum(axis=0)
    return CCA(rho, alpha_x, alpha_y, kx, ky)


def pwcca_of(c: CCA, dim_x: int, dim_y: int) -> float:
    """Σα_iρ_i/Σα_i with the weights of the side with fewer neurons (x on a tie, as Google's ``pwcca.py``)."""
    alpha = c.weights_x if dim_x <= dim_y else c.weights_y
    return float(np.sum(alpha * c.rho) / np.sum(alpha)) if np.sum(alpha) > 0 else float("nan")


def _median(t: torch.Tensor) -> float:
    """The median of all entries (the mean of the two middle ones for an even count, as ``np.median``)."""
    if t.device.type == "cpu":
        return float(np.median(t.numpy()))  # a partition, not a sort
    return float(torch.quantile(t.flatten(), 0.5)) if t.numel() <= 16_000_000 else float(np.median(t.cpu().numpy()))


def rbf_gram(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(−‖x_i − x_j‖² / (2 σ² med)), med the median of the squared distances (zero diagonal included)."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    med = _median(d2)
    if med <= 0:
        return torch.ones_like(d2)
    return d2.mul_(-1.0 / (2.0 * sigma ** 2 * med)).exp_()


def _hsic_terms(kt: torch.Tensor, lt: torch.Tensor, ks: torch.Tensor, ls: torch.Tensor) -> float:
    """Unbiased HSIC of zero-diagonal Gram matrices ``kt``, ``lt`` with row sums ``ks``, ``ls``."""
    m = kt.shape[0]
    trace = float(torch.sum(kt * lt))
    return (trace + float(ks.sum()) * float(ls.sum()) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * float(ks @ ls)) / (m * (m - 3))


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:
    """Unbiased HSIC (Song et al. 2012) of two m×m Gram matrices (m ≥ 4):
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((m−1)(m−2)) − 2/(m−2)·1ᵀK̃L̃1] / (m(m−3)), K̃, L̃ with zero diagonal."""
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    return _hsic_terms(kt, lt, kt.sum(dim=1), lt.sum(dim=1))


def cka_rbf_of(x: np.ndarray, y: np.ndarray, sigma: float = 1.0, batch_size: int = 1024,
               device: str = "cpu") -> Tuple[float, int]:
    """Minibatch RBF CKA of in-memory (n, d) arrays in their given order; returns (CKA, batches used).

    Batches of ``batch_size`` consecutive samples; a last batch shorter than 4 samples (too small for the
    unbiased estimator) is left out.
    """
    n = x.shape[0]
    kl = kk = ll = 0.0
    used = 0
    starts = [s for s in range(0, n, batch_size) if min(n, s + batch_size) - s >= 4]
    for s in mine(starts):  # a torchrun job: its share of the batches, the sums added below
        e = min(n, s + batch_size)
        tx = torch.from_numpy(np.ascontiguousarray(x[s:e], dtype=np.float64)).to(device)
        ty = torch.from_numpy(np.ascontiguousarray(y[s:e], dtype=np.float64)).to(device)
        gk, gl = rbf_gram(tx, sigma), rbf_gram(ty, sigma)
        gk.fill_diagonal_(0.0)
        gl.fill_diagonal_(0.0)
        ks, ls = gk.sum(dim=1), gl.sum(dim=1)
        kl += _hsic_terms(gk, gl, ks, ls)
        kk += _hsic_terms(gk, gk, ks, ks)
        ll += _hsic_terms(gl, gl, ls, ls)
        used += 1
    kl, kk, ll, used = (float(v) for v in sum_over_ranks(np.array([kl, kk, ll, used])))
    used = int(used)
    if used == 0 or kk <= 0 or ll <= 0:
        return float("nan"), used
    return kl / np.sqrt(kk * ll), used


def knn_sets(x: np.ndarray, k: int, device: str = "cpu", starts: Optional[Sequence[int]] = None) -> np.ndarray:
    """(n, k) indices of the k most cosine-similar other samples of each row (blocks of _KNN_BLOCK rows,
    exact); with ``starts``, only the blocks starting there (the rows of the others stay -1)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(device)
    norms = t.norm(dim=1, keepdim=True)
    t = t / torch.where(norms > 0, norms, torch.ones_like(norms))
    n = t.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    for s in (range(0, n, _KNN_BLOCK) if starts is None else starts):
        e = min(n, s + _KNN_BLOCK)
        sims = t[s:e] @ t.T
        sims[torch.arange(e - s), torch.arange(s, e)] = -float("inf")
        out[s:e] = torch.topk(sims, k, dim=1).indices.cpu().numpy()
    return out


def mutual_knn_of(x: np.ndarray, y: np.ndarray, k: int = 10, device: str = "cpu") -> float:
    """Mean over samples of the fraction of the k cosine neighbours in ``x`` that are also neighbours in ``y``.
    In a torchrun job each rank searches its share of the row blocks and the hit counts are added."""
    starts = mine(range(0, x.shape[0], _KNN_BLOCK))
    a, b = knn_sets(x, k, device, starts), knn_sets(y, k, device, starts)
    hits = 0
    for s in starts:
        for i in range(s, min(x.shape[0], s + _KNN_BLOCK)):
            hits += np.intersect1d(a[i], b[i], assume_unique=True).size
    return float(sum_over_ranks(hits)) / (x.shape[0] * k)


def _parse_measures(value: str) -> List[str]:
    """The measures of a validated ``measures`` parameter ('all' or a comma list)."""
    return list(MEASURES) if value == "all" else [m for m in MEASURES if m in value.split(",")]


def subset_order(n: int, max_samples: int, seed: int) -> np.ndarray:
    """A seeded random order of min(n, max_samples) of the n samples (the kernel measures' subset)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n)[: min(n, max_samples)]


def _rows_of(data: LayerData, idx: np.ndarray) -> np.ndarray:
    """The reference view of the kept samples ``idx`` (in that order), (len(idx), d) float64."""
    order = np.argsort(idx)
    srt = idx[order]
    sub = data.take(srt)
    got = sub.view(sub.reference_view_id())
    out = np.empty_like(got)
    out[order] = got
    return out


@declare(
    "similarity",
    params=[
        Param("measures", "all", "choices", "the measures to compute ('all' or a comma list)", choices=MEASURES),
        Param("variance", 0.99, "float", "SVCCA: fraction of each layer's variance its kept directions explain",
              low=0.0, high=1.0, low_open=True),
        Param("sigma", 1.0, "float", "RBF CKA: kernel width as a multiple of √(median squared distance)", low=0.0,
              low_open=True),
        Param("batch_size", 1024, "int", "RBF CKA: samples per minibatch of the unbiased HSIC", low=4),
        Param("k", 10, "int", "mutual k-NN: neighbours per sample", low=1),
        Param("max_samples", 4096, "int", "RBF CKA and mutual k-NN: seeded subset of at most this many samples",
              low=5),
    ],
    summary="similarity of two layers on the same samples: linear CKA (biased, debiased), SVCCA, PWCCA, CCA, "
            "Procrustes, RBF CKA, mutual k-NN",
    paper="Kornblith et al. 2019, arXiv:1905.00414; Raghu et al. 2017, arXiv:1706.05806; Morcos et al. 2018, "
          "arXiv:1806.05759; Ding et al. 2021, arXiv:2108.01661; Nguyen et al. 2021, arXiv:2010.15327; "
          "Huh et al. 2024, arXiv:2405.07987",
    min_samples=5,
    pairwise=True,
    no_bootstrap="not available for comparisons of two layers yet",
    split=True,
    headline=("cka_linear", "cka_linear_debiased", "svcca", "pwcca", "procrustes", "mutual_knn"),
)
def similarity(x: LayerData, y: LayerData, measures: str = "all", variance: float = 0.99, sigma: float = 1.0,
               batch_size: int = 1024, k: int = 10, max_samples: int = 4096) -> Result:
    """Similarity of layer ``x`` and layer ``y`` (their reference views, the same n samples in both)."""
    res = Result()
    chosen = _parse_measures(measures)
    if x.n != y.n:
        res.notes.append(f"the layers hold different samples ({x.n} and {y.n}); similarity needs the same inputs")
        return res
    view = x.views[x.reference_view_id()]
    dev = x.device
    if _MOMENT_MEASURES & set(chosen):
        m = cross_moments(x, y, dev)
        values: Dict[str, float] = {}
        if "cka_linear" in chosen:
            values["cka_linear"] = linear_cka_of(m)
        if "cka_linear_debiased" in chosen:
            values["cka_linear_debiased"] = linear_cka_of(m, debiased=True)
        if "svcca" in chosen:
            c = cca_of(m, variance)
            values["svcca"] = float(np.mean(c.rho)) if c is not None else float("nan")
        if {"pwcca", "cca_mean"} & set(chosen):
            c = cca_of(m, 1.0)
            if "pwcca" in chosen:
                values["pwcca"] = pwcca_of(c, x.dim, y.dim) if c is not None else float("nan")
            if "cca_mean" in chosen:
                values["cca_mean"] = float(np.mean(c.rho)) if c is not None else float("nan")
        if "procrustes" in chosen:
            values["procrustes"] = procrustes_of(m)
        for name in MEASURES:
            if name in values:
                res.add(name, values[name], view=view)
    if {"cka_rbf", "mutual_knn"} & set(chosen):
        idx = subset_order(x.n, max_samples, x.seed)
        if idx.size < x.n:
            res.notes.append(f"cka_rbf/mutual_knn on a seeded subset of {idx.size} of {x.n} samples (max_samples)")
        xs, ys = _rows_of(x, idx), _rows_of(y, idx)
        if "cka_rbf" in chosen:
            value, used = cka_rbf_of(xs, ys, sigma, batch_size, dev)
            res.add("cka_rbf", value, view=view)
        if "mutual_knn" in chosen:
            if k >= idx.size:
                res.notes.append(f"mutual_knn needs more than k={k} samples, has {idx.size}")
            else:
                res.add("mutual_knn", mutual_knn_of(xs, ys, k, dev), view=view)
    return res
