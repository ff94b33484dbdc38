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


#: Elements (n·d) up to which the per-sample view means are kept in memory between the two steps (256 MiB).
_KEEP_ELEMS = 1 << 25


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float64 row-wise dot products a_i·b_i of two (m, d) arrays, without an (m, d) temporary."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def _centred(accs, shift: np.ndarray):
    """Yield each (m, d) array of ``accs`` minus ``shift`` (in place: the arrays are this module's own)."""
    for acc in accs:
        acc -= shift
        yield acc


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
        """Yield (Σ_a ẑ^a = v·µ for a chunk of samples, zero rows in it, Σ_pairs ẑ^a·ẑ^b in it)."""
        for chunk in data.chunks(views=ids, dtype=product_dtype(data), size=step):
            inv = []
            zeros = 0
            for j in range(v):
                norms = np.sqrt(_row_dots(chunk[j], chunk[j]))
                zero = norms == 0
                zeros += int(zero.sum())
                inv.append(1.0 / np.where(zero, 1.0, norms) * ~zero)  # 1/‖z‖, 0 for a zero row (ẑ = 0)
            acc = np.multiply(chunk[0], inv[0][:, None], dtype=np.float64)
            for j in range(1, v):
                acc += chunk[j] * inv[j][:, None]
            # ẑ^a·ẑ^b = (z^a·z^b)/(‖z^a‖‖z^b‖) per sample: no normalised copy of the views is formed. (Σ_{a<b} =
            # (‖Σ_a ẑ^a‖² − Σ_a ‖ẑ^a‖²)/2 would be cheaper still but cancels badly near perfect alignment.)
            pairs = 0.0
            for a in range(v):
                for c in range(a + 1, v):
                    pairs += float(_row_dots(chunk[a], chunk[c]) @ (inv[a] * inv[c]))
            yield acc, zeros, pairs

    # s first, then the residual norms ‖µ_i − s‖ directly (no expansion of the square, which would cancel
    # exactly where collapse makes the residuals small). The chunks' Σ_a ẑ^a are kept for the second step
    # while they fit in _KEEP_ELEMS; beyond that a second streaming pass recomputes them (memory O(n) scalars).
    total = np.zeros(d, dtype=np.float64)
    zeros, pair_sum = 0, 0.0
    kept: List[np.ndarray] = []
    keep = n * d <= _KEEP_ELEMS
    for acc, nz, pairs in means():
        total += acc.sum(axis=0)
        zeros += nz
        pair_sum += pairs
        if keep:
            kept.append(acc)
    s_v = total / n  # v·s
    again = kept if keep else (acc for acc, _, _ in means())
    resid = np.concatenate([np.sqrt(_row_dots(acc, acc)) / v for acc in _centred(again, s_v)])
    s = s_v / v
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
