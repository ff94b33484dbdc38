"""Sufficient statistics shared by several analyzers, computed in one streaming pass per layer.

After torchmetrics' ``_update``/``_compute`` split: :func:`moments` streams the chunks of a layer once and
accumulates, for every view, the sample count, the mean, the centred scatter Σ(z−µ)(z−µ)ᵀ and the uncentred
Gram ZᵀZ (d×d, float64), on ``data.device``. Memory is bounded by the d×d statistics, not by n. The spectrum,
VICReg statistics and the covariance form of the matrix information all read these.

Accumulation is shifted by the first chunk's mean, so features with a large common offset (post-ReLU layers)
do not lose their variance to cancellation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from .base import LayerData


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
    for chunk in data.chunks(dtype=np.float64):
        c = torch.from_numpy(chunk).to(dev)
        if shift is None:
            shift = c.mean(dim=1, keepdim=True)  # (V, 1, d)
            s1 = torch.zeros(v, d, dtype=torch.float64, device=dev)
            s2 = torch.zeros(v, d, d, dtype=torch.float64, device=dev)
        c = c - shift
        s1 += c.sum(dim=1)
        s2 += c.transpose(1, 2) @ c
        n += c.shape[1]
    out: List[Moments] = []
    for i in range(v):
        if n == 0:
            z = np.zeros(d)
            out.append(Moments(0, z, np.zeros((d, d)), np.zeros((d, d))))
            continue
        sh, a, b = shift[i, 0], s1[i], s2[i]
        delta = a / n  # mean − shift
        scatter = b - torch.outer(a, a) / n
        gram = b + torch.outer(sh, a) + torch.outer(a, sh) + n * torch.outer(sh, sh)
        scatter = (scatter + scatter.T) / 2
        out.append(Moments(n, (sh + delta).cpu().numpy(), scatter.cpu().numpy(), gram.cpu().numpy()))
    data.cache["moments"] = out
    return out
