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
from typing import List

import numpy as np
import torch

from ..params import Param
from .base import LayerData, Result, register_analyzer
from .stats import product_dtype

#: Rows of one block of the pairwise computation; a block holds (_BLOCK, _BLOCK) distances.
_BLOCK = 2048


def normalise_rows(z: torch.Tensor) -> torch.Tensor:
    """ẑ = z/‖z‖ row-wise for (m, d) ``z``; a zero row stays zero."""
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return z / torch.where(norms == 0, torch.ones_like(norms), norms)


def log_mean_exp_pairs(x: torch.Tensor, t: float, block: int = _BLOCK, product_dtype: torch.dtype = torch.float64) -> float:
    """log mean_{i≠j} exp(−t‖x_i − x_j‖²) of (m, d) ``x`` (m ≥ 2), exactly over all ordered pairs.

    Only blocks (I, J) with J ≥ I are computed (the kernel is symmetric; off-diagonal blocks count twice);
    each is reduced to its log-sum-exp at once and merged into a running one, so memory is O(block²) and
    large t cannot overflow. The inner products may be formed in ``product_dtype`` (float32 for large float32
    stores); distances, exponentials and sums stay in float64.
    """
    m = x.shape[0]
    sq = (x * x).sum(dim=1)
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
    total = torch.logsumexp(torch.stack(parts), dim=0)
    return float(total) - math.log(m * (m - 1))


@register_analyzer(
    "uniformity",
    params=[
        Param("t", 2.0, "float", "t of L_uniform = log E exp(−t‖ẑ_i − ẑ_j‖²) (Wang & Isola 2020)", low=0, low_open=True),
        Param("alpha", 2.0, "float", "α of L_align = E‖ẑ⁽¹⁾ − ẑ⁽²⁾‖^α (Wang & Isola 2020)", low=0, low_open=True),
        Param("max_samples", 8192, "int", "uniform is exact over all pairs up to this many samples, "
              "else on a seeded random subset of this size", low=2),
    ],
    needs=("two_views",),
    summary="alignment and uniformity of ℓ2-normalised embeddings on the hypersphere (Wang & Isola 2020)",
    paper="Wang & Isola 2020, L_align and L_uniform",
)
def uniformity(data: LayerData, t: float = 2.0, alpha: float = 2.0, max_samples: int = 8192) -> Result:
    """Alignment of the first two augmented views and uniformity of each (Wang & Isola 2020).

    Args:
        data: (V, n, d) embeddings; the first two augmented views are used, each row ℓ2-normalised (a zero
            row stays zero, noted: it lies off the sphere); float64 torch on ``data.device``.
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

    align_sum = 0.0
    zero_rows = 0
    kept: List[List[torch.Tensor]] = [[], []]
    pos = 0
    for chunk in data.chunks(ids, dtype=np.float64):
        c = torch.from_numpy(chunk).to(dev)
        zh = [normalise_rows(c[0]), normalise_rows(c[1])]
        zero_rows += int((torch.linalg.vector_norm(c, dim=2) == 0).sum())
        diff = torch.linalg.vector_norm(zh[0] - zh[1], dim=1)
        align_sum += float((diff ** alpha).sum())
        b = c.shape[1]
        sel = None if keep is None else torch.from_numpy(np.flatnonzero(keep[pos:pos + b])).to(dev)
        for k in range(2):
            kept[k].append(zh[k] if sel is None else zh[k][sel])
        pos += b

    if zero_rows:
        res.notes.append(f"{zero_rows} zero rows (over both views) stay zero after normalising, off the unit sphere")
    res.add("align", align_sum / n, view=pair)
    unif = []
    for k in range(2):
        x = torch.cat(kept[k])
        u = log_mean_exp_pairs(x, t, product_dtype=torch.float32 if product_dtype(data) == np.float32 else torch.float64)
        res.add("uniform", u, view=names[k])
        unif.append(u)
    res.add("uniform", float(np.mean(unif)), view=pair)
    return res
