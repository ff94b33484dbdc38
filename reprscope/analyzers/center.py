"""Center vector and residuals of ℓ2-normalised embeddings (paper 000, §2.1, Eq. 1 and 4).

With ẑ = z/‖z‖ and µ_i the mean of ẑ over the augmented views of sample i, the center vector is
s = mean_i µ_i and the residual of sample i is r_i = µ_i − s. A collapsing two-stream method drives ‖s‖
towards 1 and the residuals towards 0; a healthy one keeps ‖s‖ small (paper 000 Eq. 3: s = 0).
"""
from __future__ import annotations

from typing import List

import numpy as np

from .base import LayerData, Result, register_analyzer
from .stats import product_dtype

#: Samples per chunk: bounds the float64 working copy of one chunk of every used view.
_CHUNK_ELEMS = 1 << 24


def _normalise(z: np.ndarray) -> "tuple[np.ndarray, int]":
    """Row-normalise (m, d) ``z`` (float64, or float32 for large float32 stores); a zero row stays zero.
    Returns (ẑ, number of zero rows)."""
    norms = np.linalg.norm(z, axis=1)
    zero = norms == 0
    return z / np.where(zero, 1.0, norms)[:, None], int(zero.sum())


@register_analyzer(
    "center",
    summary="center vector norm ‖s‖, residual norms ‖µ_i − s‖ and view alignment of ℓ2-normalised embeddings",
    paper="000 §2.1",
)
def center(data: LayerData) -> Result:
    """Center vector s = E_x[E_ω[ẑ]] and residual norms (paper 000 §2.1, Eq. 1 and 4).

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
    res = Result()
    ids: List[int] = data.aug_view_ids() or list(range(len(data.views)))
    view = "|".join(data.views[i] for i in ids)
    n, d, v = data.n, data.dim, len(ids)
    step = max(1, _CHUNK_ELEMS // max(1, v * d))

    def means():
        """Yield (µ for a chunk of samples, zero rows in it, Σ_pairs ẑ^a·ẑ^b in it)."""
        for chunk in data.chunks(views=ids, dtype=product_dtype(data), size=step):
            acc = np.zeros(chunk.shape[1:], dtype=np.float64)
            zeros, pairs = 0, 0.0
            hats = []
            for j in range(v):
                zh, nz = _normalise(chunk[j])
                zeros += nz
                acc += zh
                hats.append(zh)
            # Σ_{a<b} ẑ^a·ẑ^b = (‖Σ_a ẑ^a‖² − Σ_a ‖ẑ^a‖²)/2 would be cheaper but cancels badly near perfect
            # alignment; keep the explicit pairs (V is small).
            for a in range(v):
                for c in range(a + 1, v):
                    pairs += float(np.einsum("ij,ij->", hats[a], hats[c]))
            yield acc / v, zeros, pairs

    # Two streaming passes, memory O(n) scalars: s first, then the residual norms ‖µ_i − s‖ directly (no
    # expansion of the square, which would cancel exactly where collapse makes the residuals small).
    total = np.zeros(d, dtype=np.float64)
    zeros, pair_sum = 0, 0.0
    for mu, nz, pairs in means():
        total += mu.sum(axis=0)
        zeros += nz
        pair_sum += pairs
    s = total / n
    resid = np.concatenate([np.linalg.norm(mu - s, axis=1) for mu, _, _ in means()])
    res.add("center_norm", float(np.linalg.norm(s)), view=view)
    res.add("residual_norm_mean", float(resid.mean()), view=view)
    res.add("residual_norm_std", float(resid.std()), view=view)
    if v >= 2:
        res.add("alignment", pair_sum / (n * v * (v - 1) / 2), view=view)
    else:
        res.notes.append(f"alignment skipped: only one view ({view}) to compare")
    if not data.aug_view_ids():
        res.notes.append(f"no augmented views stored; used all views ({view})")
    if zeros:
        res.notes.append(f"{zeros} zero embedding row(s) over {v} view(s) × {n} samples were kept as zero "
                         "vectors (ẑ = 0) instead of being normalised")
    return res
