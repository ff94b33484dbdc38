"""Center vector and residuals of ℓ2-normalised embeddings ('A unifying framework for the stability of SSL: the center vector' (ICLR 2024 submission), §2.1, Eq. 1 and 4).

With ẑ = z/‖z‖ and µ_i the mean of ẑ over the augmented views of sample i, the center vector is
s = mean_i µ_i and the residual of sample i is r_i = µ_i − s. A collapsing two-stream method drives ‖s‖
towards 1 and the residuals towards 0; a healthy one keeps ‖s‖ small (the center-vector paper, ICLR 2024 submission, Eq. 3: s = 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ._core import LayerData, Result, declare
from ._ranks import sum_over_ranks
from .stats import product_dtype

#: Elements (samples × used views × d) per chunk read from the store.
_CHUNK_ELEMS = 1 << 24

#: Samples per block inside a chunk: the block of every used view stays in the CPU cache while it is read
#: several times (norms, view-pair products, the sum).
_BLOCK = 512

#: A residual whose expanded square is below GUARD · v² · d · eps₆₄ is recomputed from µ_i − s directly.
_GUARD = 1e8


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float64 row-wise dot products a_i·b_i of two (m, d) arrays, without an (m, d) temporary."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def _weighted_sum(w: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(d,) float64 Σ_i w_i z_i: one BLAS product for float64 ``z``, a float64 einsum otherwise (no copy)."""
    return w @ z if z.dtype == np.float64 else np.einsum("i,ij->j", w, z, dtype=np.float64)


def _times(z: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(m,) float64 z_i·s for (m, d) ``z`` and (d,) float64 ``s``."""
    return z @ s if z.dtype == np.float64 else np.einsum("ij,j->i", z, s, dtype=np.float64)


@dataclass
class CenterStatistics:
    """What :func:`center_statistics` computes from the used views of one layer.

    Attributes:
        views: the used view names; ``s``: (d,) the center vector; ``residuals``: (n,) ‖µ_i − s‖;
        alignment: mean cosine over samples and view pairs (None with one view); ``zero_rows``: zero
        embedding rows met (kept as ẑ = 0).
    """

    views: List[str]
    s: np.ndarray
    residuals: np.ndarray
    alignment: Optional[float]
    zero_rows: int


def center_statistics(data: LayerData) -> CenterStatistics:
    """Center vector and residuals of the augmented views of ``data`` (all views when none is augmented), in
    two streaming passes over chunks of samples (memory: the (n,) per-sample sums, never a normalised copy)."""
    ids: List[int] = data.aug_view_ids() or list(range(len(data.views)))
    n, d, v = data.n, data.dim, len(ids)
    step = max(1, _CHUNK_ELEMS // max(1, v * d))

    # Step 1 (one read): per sample 1/‖z^a‖ of every view and g_i = ‖Σ_a ẑ^a_i‖² = Σ_{a,b} ẑ^a·ẑ^b from the
    # view-pair products, and the sum Σ_i Σ_a ẑ^a_i = n·v·s. No normalised copy of a view is formed.
    # In a torchrun job each rank reads its share of the chunks (the same share in both passes) and the sums
    # are added after each pass; inv and g are filled on the rank's own samples only.
    inv = np.zeros((v, n))
    g = np.zeros(n)
    total = np.zeros(d, dtype=np.float64)
    zeros, pair_sum = 0, 0.0
    for pos, chunk in data.shared_chunks(views=ids, dtype=product_dtype(data), size=step):
        for s0 in range(0, chunk.shape[1], _BLOCK):
            blk = chunk[:, s0:s0 + _BLOCK]
            b = blk.shape[1]
            sl = slice(pos, pos + b)
            nonzero = np.zeros(b)
            for j in range(v):
                norms = np.sqrt(_row_dots(blk[j], blk[j]))
                zero = norms == 0
                zeros += int(zero.sum())
                inv[j, sl] = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, norms))  # ẑ = 0 for a zero row
                nonzero += ~zero  # ẑ^a·ẑ^a = 1, or 0 for a zero row
                total += _weighted_sum(inv[j, sl], blk[j])
            g[sl] = nonzero
            for a in range(v):
                for c in range(a + 1, v):
                    w = _row_dots(blk[a], blk[c]) * inv[a, sl] * inv[c, sl]
                    pair_sum += float(w.sum())
                    g[sl] += 2.0 * w
            pos += b
    summed = sum_over_ranks(np.concatenate([total, [zeros, pair_sum]]))
    total, zeros, pair_sum = summed[:d], int(summed[d]), float(summed[d + 1])
    s_v = total / n  # v·s

    # Step 2 (a second read): ‖v µ_i − v s‖² = g_i − 2 Σ_a ẑ^a_i·(v s) + ‖v s‖². Each term is of order v², so
    # rounding leaves an absolute error of about v²·d·eps; a residual that small relative to the terms (a
    # collapsing representation: µ_i ≈ s) would lose its digits to cancellation, and is recomputed from the
    # explicit difference v µ_i − v s. Relative error of every residual: below about 1/GUARD.
    guard = _GUARD * v * v * d * np.finfo(np.float64).eps
    sq = float(s_v @ s_v)
    resid = np.zeros(n)
    for pos, chunk in data.shared_chunks(views=ids, dtype=product_dtype(data), size=step):
        b = chunk.shape[1]
        sl = slice(pos, pos + b)
        cross = np.zeros(b)
        for j in range(v):
            cross += inv[j, sl] * _times(chunk[j], s_v)
        r2 = g[sl] - 2.0 * cross + sq
        close = np.flatnonzero(r2 < guard)
        if close.size:
            diff = -np.broadcast_to(s_v, (close.size, d)).copy()
            for j in range(v):
                diff += chunk[j, close] * inv[j, sl][close, None]
            r2[close] = _row_dots(diff, diff)
        resid[sl] = np.sqrt(r2) / v
    resid = sum_over_ranks(resid)  # each sample's residual comes from one rank, zeros from the others
    return CenterStatistics(views=[data.views[i] for i in ids], s=s_v / v, residuals=resid,
                            alignment=pair_sum / (n * v * (v - 1) / 2) if v >= 2 else None, zero_rows=zeros)


@declare(
    "center",
    summary="center vector norm ‖s‖, residual norms ‖µ_i − s‖ and view alignment of ℓ2-normalised embeddings",
    paper="'A unifying framework for the stability of SSL: the center vector', ICLR 2024 submission, §2.1",
    headline=("center_norm", "residual_norm_mean", "alignment"),
    split=True,
)
def center(data: LayerData) -> Result:
    """Center vector s = E_x[E_ω[ẑ]] and residual norms (the center-vector paper, ICLR 2024 submission, §2.1, Eq. 1 and 4).

    Uses the augmented views (every view except ``clean``); with a single augmented view µ_i = ẑ_i and
    ``alignment`` is skipped; with no augmented view all stored views are used.

    Args:
        data: (V, n, d) embeddings; only the used views are read, in chunks of samples.

    Returns:
        Scalar rows with ``view`` = the used view names joined by ``|``:
        ``center_norm`` ‖s‖; ``residual_norm_mean`` / ``residual_norm_std`` mean and population std
        (ddof = 0) of ‖µ_i − s‖ over the n samples; ``alignment`` the mean over samples and over all view
        pairs (a < b) of cos(z_i^a, z_i^b) (a zero row has cosine 0 with everything).
    """
    st = center_statistics(data)
    view, n, v = "|".join(st.views), data.n, len(st.views)
    res = Result()
    res.add("center_norm", float(np.linalg.norm(st.s)), view=view)
    res.add("residual_norm_mean", float(st.residuals.mean()), view=view)
    res.add("residual_norm_std", float(st.residuals.std()), view=view)
    if st.alignment is not None:
        res.add("alignment", st.alignment, view=view)
    else:
        res.notes.append(f"alignment skipped: only one view ({view}) to compare")
    if not data.aug_view_ids():
        res.notes.append(f"no augmented views stored; used all views ({view})")
    if st.zero_rows:
        res.notes.append(f"{st.zero_rows} zero embedding row(s) over {v} view(s) × {n} samples were kept as zero "
                         "vectors (ẑ = 0) instead of being normalised")
    return res
