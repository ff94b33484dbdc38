"""Alignment and uniformity on the hypersphere (Wang & Isola, ICML 2020, "Understanding contrastive
representation learning through alignment and uniformity on the hypersphere", Eq. 4 and 5 / Def. of
L_align and L_uniform).

With ẑ = z/‖z‖ (a zero row stays zero):

* ``align``   L_align = E_i ‖ẑ_i⁽¹⁾ − ẑ_i⁽²⁾‖^α (α = 2), over all samples, streamed;
* ``uniform`` L_uniform = log E_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²) (t = 2), per view, over all ordered pairs of
  distinct samples, computed blockwise with a running log-sum-exp so no n×n matrix is ever held.

On the unit sphere align ∈ [0, 2^α] and, by Jensen and E_{i≠j} ẑ_i·ẑ_j ≥ −1/(n−1),
uniform ∈ [−2t·n/(n−1), 0]: ≥ −4 for t = 2 up to the factor n/(n−1) (n = 2 antipodal points give −8).
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare
from .stats import product_dtype, single_torch_thread

#: Rows of one block of the pairwise computation; a block holds (_BLOCK, _BLOCK) kernel values (32 MiB in
#: float64). Large blocks keep the number of multi-threaded BLAS calls small: on a shared machine every call
#: waits for the slowest thread, and 512-row blocks ran 2.5× slower than these on two loaded cores.
_BLOCK = 2048

#: Samples per block of the streaming alignment pass (both views' block stays in the CPU cache).
_ALIGN_BLOCK = 512

#: An alignment distance whose expanded square is below _ALIGN_GUARD · d · eps₆₄ is recomputed from ẑ⁽¹⁾ − ẑ⁽²⁾.
_ALIGN_GUARD = 1e8

#: Largest t·max‖x_i‖² of the factored kernel sum: every factor and term then lies in [e⁻⁷⁰⁰, e³⁵⁰].
_FACTORED_MAX_T = 175.0


def _log_sum_exp_shifted(x: torch.Tensor, sq: torch.Tensor, t: float, block: int, product_dtype: torch.dtype) -> float:
    """log Σ_{i≠j} exp(−t‖x_i − x_j‖²) with a running log-sum-exp per block: exact for any t (no overflow,
    nothing underflows to a zero total)."""
    m = x.shape[0]
    xp = x.to(product_dtype)
    parts: List[torch.Tensor] = []
    for s0 in range(0, m, block):
        e0 = min(m, s0 + block)
        si = sq[s0:e0]
        for s1 in range(s0, m, block):
            e1 = min(m, s1 + block)
            d2 = (si[:, None] + sq[None, s1:e1] - 2.0 * (xp[s0:e0] @ xp[s1:e1].T).to(x.dtype)).clamp_min_(0.0)
            logits = -t * d2
            if s1 == s0:
                logits.fill_diagonal_(-math.inf)
                parts.append(torch.logsumexp(logits.reshape(-1), dim=0))
            else:
                parts.append(torch.logsumexp(logits.reshape(-1), dim=0) + math.log(2.0))
    return float(torch.logsumexp(torch.stack(parts), dim=0))


def _log_sum_exp_factored(x: torch.Tensor, sq: torch.Tensor, t: float, block: int, product_dtype: torch.dtype,
                          use_numpy: Optional[bool] = None) -> float:
    """log Σ_{i≠j} exp(−t‖x_i − x_j‖²) = log Σ_{i≠j} a_i exp(2t x_i·x_j) a_j, a_i = exp(−t‖x_i‖²).

    The factorisation leaves two elementwise passes per block (scale, exp in place) and one matrix-vector
    product, instead of forming distances and shifting by a maximum; it needs t·max‖x_i‖² ≤ _FACTORED_MAX_T so
    that neither factor nor any term over- or underflows. On the CPU the blocks go through numpy (its exp is
    several times faster than torch's in float64, and a diagonal block x_I x_Iᵀ is one BLAS ``syrk``);
    ``use_numpy`` overrides that choice.
    """
    m = x.shape[0]
    a = torch.exp(-t * sq)
    total = 0.0
    if use_numpy is None:
        use_numpy = x.device.type == "cpu"
    if use_numpy:
        xn = np.ascontiguousarray(x.to(product_dtype).cpu().numpy())
        an = a.cpu().numpy()
        for s0 in range(0, m, block):
            e0 = min(m, s0 + block)
            xi = xn[s0:e0]
            for s1 in range(s0, m, block):
                e1 = min(m, s1 + block)
                g = (xi @ xi.T if s1 == s0 else xi @ xn[s1:e1].T).astype(np.float64, copy=False)
                g *= 2.0 * t
                np.exp(g, out=g)
                if s1 == s0:
                    np.fill_diagonal(g, 0.0)
                total += (1.0 if s1 == s0 else 2.0) * float(an[s0:e0] @ (g @ an[s1:e1]))
        return math.log(total) if total > 0 else -math.inf
    xp = x.to(product_dtype)
    for s0 in range(0, m, block):
        e0 = min(m, s0 + block)
        for s1 in range(s0, m, block):
            e1 = min(m, s1 + block)
            g = (xp[s0:e0] @ xp[s1:e1].T).to(torch.float64).mul_(2.0 * t).exp_()
            if s1 == s0:
                g.fill_diagonal_(0.0)
            total += (1.0 if s1 == s0 else 2.0) * float(a[s0:e0] @ (g @ a[s1:e1]))
    return math.log(total) if total > 0 else -math.inf


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float64 a_i·b_i of two (m, d) arrays of any float dtype, without an (m, d) temporary."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def align_terms(z1: np.ndarray, z2: np.ndarray, alpha: float) -> "tuple[float, int, np.ndarray, np.ndarray]":
    """Σ_i ‖ẑ_i⁽¹⁾ − ẑ_i⁽²⁾‖^α over a chunk of two views (m, d), in float64 from the chunk's own dtype.

    ‖ẑ⁽¹⁾ − ẑ⁽²⁾‖² = ‖ẑ⁽¹⁾‖² + ‖ẑ⁽²⁾‖² − 2 ẑ⁽¹⁾·ẑ⁽²⁾ (each ‖ẑ‖² 1, or 0 for a zero row) from three row-wise
    products, no normalised copy; a distance so small that the expansion would cancel (views nearly
    identical) is recomputed from the explicit difference, so every term keeps ~1/_ALIGN_GUARD relative accuracy.

    Returns:
        (the sum, zero rows over both views, (m,) 1/‖z⁽¹⁾‖, (m,) 1/‖z⁽²⁾‖ with 0 for a zero row).
    """
    d = z1.shape[1]
    guard = _ALIGN_GUARD * d * np.finfo(np.float64).eps
    total, zeros = 0.0, 0
    inv = [np.empty(len(z1)), np.empty(len(z1))]
    for s0 in range(0, len(z1), _ALIGN_BLOCK):
        a, b = z1[s0:s0 + _ALIGN_BLOCK], z2[s0:s0 + _ALIGN_BLOCK]
        unit = np.zeros(len(a))
        for k, z in enumerate((a, b)):
            q = _row_dots(z, z)
            zero = q == 0
            zeros += int(zero.sum())
            inv[k][s0:s0 + len(a)] = np.where(zero, 0.0, 1.0 / np.sqrt(np.where(zero, 1.0, q)))
            unit += ~zero
        i1, i2 = inv[0][s0:s0 + len(a)], inv[1][s0:s0 + len(a)]
        d2 = unit - 2.0 * _row_dots(a, b) * i1 * i2
        close = np.flatnonzero(d2 < guard)
        if close.size:
            diff = a[close] * i1[close, None] - b[close] * i2[close, None]
            d2[close] = _row_dots(diff, diff)
        total += float(np.sum(np.maximum(d2, 0.0) ** (alpha / 2)))
    return total, zeros, inv[0], inv[1]


def log_mean_exp_pairs(x: torch.Tensor, t: float, block: int = _BLOCK, product_dtype: torch.dtype = torch.float64) -> float:
    """log mean_{i≠j} exp(−t‖x_i − x_j‖²) of (m, d) float64 ``x`` (m ≥ 2), exactly over all ordered pairs.

    Only blocks (I, J) with J ≥ I are computed (the kernel is symmetric; off-diagonal blocks count twice), so
    memory is O(block²). For ℓ2-normalised rows and moderate t (t·max‖x_i‖² ≤ _FACTORED_MAX_T) the kernel is
    summed in the factored form of :func:`_log_sum_exp_factored`; otherwise each block is reduced to its
    log-sum-exp at once and merged into a running one, so large t cannot overflow. The inner products may be
    formed in ``product_dtype`` (float32 for large float32 stores); exponentials and sums stay in float64.
    """
    m = x.shape[0]
    sq = (x * x).sum(dim=1)
    if t * float(sq.max()) <= _FACTORED_MAX_T:
        total = _log_sum_exp_factored(x, sq, t, block, product_dtype)
    else:
        total = _log_sum_exp_shifted(x, sq, t, block, product_dtype)
    return total - math.log(m * (m - 1))


@declare(
    "uniformity",
    params=[
        Param("t", 2.0, "float", "t of L_uniform = log E exp(−t‖ẑ_i − ẑ_j‖²) (Wang & Isola 2020)", low=0, low_open=True),
        Param("alpha", 2.0, "float", "α of L_align = E‖ẑ⁽¹⁾ − ẑ⁽²⁾‖^α (Wang & Isola 2020)", low=0, low_open=True),
        Param("max_samples", 8192, "int", "uniform is exact over all pairs up to this many samples, "
              "else on a seeded random subset of this size", low=2),
    ],
    needs=("two_views",),
    summary="alignment and uniformity of ℓ2-normalised embeddings on the hypersphere (Wang & Isola 2020)",
    paper="Wang & Isola 2020, arXiv:2005.10242 (L_align, L_uniform)",
    no_bootstrap="copies of a sample add pairs at distance 0 to the uniformity average",
)
def uniformity(data: LayerData, t: float = 2.0, alpha: float = 2.0, max_samples: int = 8192) -> Result:
    """Alignment of the first two augmented views and uniformity of each (Wang & Isola 2020).

    Args:
        data: (V, n, d) embeddings; the first two augmented views are used, each row ℓ2-normalised (a zero
            row stays zero, noted: it lies off the sphere); alignment streamed in numpy with float64 sums, the
            pairwise kernel on ``data.device``.
        t: uniformity temperature (t = 2 in the paper).
        alpha: alignment exponent (α = 2 in the paper).
        max_samples: uniform is exact over all n(n−1) ordered pairs when n ≤ max_samples, else computed on a
            random subset of ``max_samples`` samples (the same for both views; ``np.random.default_rng
            (data.seed)``), with a note.

    Returns:
        ``align`` (``view`` = ``aug1|aug2``), ``uniform`` per view (view name) and their mean (``aug1|aug2``).
    """
    res = Result()
    dev = torch.device(data.device)
    ids = data.aug_view_ids()[:2]
    names = [data.views[i] for i in ids]
    pair = "|".join(names)
    n = data.n

    sub = None
    if n > max_samples:
        sub = np.sort(np.random.default_rng(data.seed).choice(n, size=max_samples, replace=False))
        res.notes.append(f"uniform computed on a random subset of {max_samples} of {n} samples (seed {data.seed})")
    keep = np.zeros(n, dtype=bool) if sub is not None else None
    if keep is not None:
        keep[sub] = True

    with single_torch_thread(dev):  # the pairwise kernel goes through numpy on the CPU
        # One streaming pass in the store's own dtype (float64 sums, no float64 copy of the views): the
        # alignment terms, and the ℓ2-normalised rows of the uniformity subset (float64).
        align_sum = 0.0
        zero_rows = 0
        kept: List[List[np.ndarray]] = [[], []]
        pos = 0
        for chunk in data.chunks(ids, dtype=data.dtype):
            got, zeros, inv1, inv2 = align_terms(chunk[0], chunk[1], alpha)
            align_sum += got
            zero_rows += zeros
            b = chunk.shape[1]
            sel = slice(None) if keep is None else np.flatnonzero(keep[pos:pos + b])
            for k, inv in enumerate((inv1, inv2)):
                kept[k].append(chunk[k][sel].astype(np.float64) * inv[sel, None])
            pos += b

        if zero_rows:
            res.notes.append(f"{zero_rows} zero rows (over both views) stay zero after normalising, off the unit sphere")
        res.add("align", align_sum / n, view=pair)
        unif = []
        for k in range(2):
            x = torch.from_numpy(np.concatenate(kept[k])).to(dev)
            u = log_mean_exp_pairs(x, t, product_dtype=torch.float32 if product_dtype(data) == np.float32 else torch.float64)
            res.add("uniform", u, view=names[k])
            unif.append(u)
        res.add("uniform", float(np.mean(unif)), view=pair)
    return res
