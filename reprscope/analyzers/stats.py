"""Sufficient statistics shared by several analyzers, computed in one streaming pass per layer.

After torchmetrics' ``_update``/``_compute`` split: :func:`moments` streams the chunks of a layer once and
accumulates, for every view, the sample count, the mean, the centred scatter Σ(z−µ)(z−µ)ᵀ and the uncentred
Gram ZᵀZ (d×d, float64), on ``data.device``. Memory is bounded by the d×d statistics, not by n. The spectrum,
VICReg statistics and the covariance form of the matrix information all read these.

Accumulation is shifted by the first chunk's mean, so features with a large common offset (post-ReLU layers)
do not lose their variance to cancellation. Precision: float64 throughout, except for large float32 stores
(n·d ≥ FLOAT32_PRODUCTS_ABOVE, e.g. 100 000 × 2048), where each chunk's products are formed in float32 — twice
as fast on a CPU, with relative errors of order 1e-6, below what float32 embeddings resolve — and accumulated
in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from .base import LayerData

#: n·d from which a float32 store's chunk products are formed in float32 (accumulated in float64).
FLOAT32_PRODUCTS_ABOVE = 1 << 26


def product_dtype(data: LayerData) -> type:
    """The dtype of the per-chunk products: float32 for large float32 stores, else float64."""
    big = data.n * data.dim >= FLOAT32_PRODUCTS_ABOVE
    return np.float32 if big and data.dtype == np.float32 else np.float64


@dataclass
class Moments:
    """Per-view second-order statistics of n samples in d dimensions (float64 numpy arrays)."""

    n: int
    mean: np.ndarray  # (d,)
    scatter: np.ndarray  # (d, d) Σ (z − µ)(z − µ)ᵀ
    gram: np.ndarray  # (d, d) Σ z zᵀ

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance (unbiased by default)."""
        return self.scatter / max(1, self.n - ddof)


def torch_device(data: LayerData) -> torch.device:
    return torch.device(data.device)


def moments(data: LayerData) -> List[Moments]:
    """Moments of every view of ``data`` (cached on the layer)."""
    if "moments" in data.cache:
        return data.cache["moments"]
    dev = torch_device(data)
    v, d = len(data.views), data.dim
    shift = s1 = s2 = None
    n = 0
    for chunk in data.chunks(dtype=product_dtype(data)):
        c = torch.from_numpy(chunk).to(dev)
        if shift is None:
            shift = c.double().mean(dim=1, keepdim=True).to(c.dtype).double()  # (V, 1, d), exact in c's dtype
            s1 = torch.zeros(v, d, dtype=torch.float64, device=dev)
            s2 = torch.zeros(v, d, d, dtype=torch.float64, device=dev)
        c = c - shift.to(c.dtype)
        s1 += c.sum(dim=1, dtype=torch.float64)
        s2 += (c.transpose(1, 2) @ c).double()
        n += c.shape[1]
    out: List[Moments] = []
    for i in range(v):
        if n == 0:
            z = np.zeros(d)
            out.append(Moments(0, z, np.zeros((d, d)), np.zeros((d, d))))
            continue
        sh, a, b = shift[i, 0].to(s1.dtype), s1[i], s2[i]
        delta = a / n  # mean − shift
        scatter = b - torch.outer(a, a) / n
        gram = b + torch.outer(sh, a) + torch.outer(a, sh) + n * torch.outer(sh, sh)
        scatter = (scatter + scatter.T) / 2
        out.append(Moments(n, (sh + delta).cpu().numpy(), scatter.cpu().numpy(), gram.cpu().numpy()))
    data.cache["moments"] = out
    return out
