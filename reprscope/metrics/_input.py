"""Validation of what a Python caller hands to the metric functions: numpy arrays or torch tensors.

Everything is checked before any work, and a problem is one :class:`~reprscope.errors.ReprscopeError` (a
``ValueError``) that says what was expected and what arrived. Accepted arrays become the in-memory
:class:`~reprscope.metrics._core.LayerData` the analyzers read, so a metric function and the analyzer row it
corresponds to run the same code.

A torch tensor is read once into host memory (float16/bfloat16 as float32) and its device is kept: the heavy
linear algebra of the metric (Gram matrices, eigendecompositions, pairwise kernels, the k-NN search) then
runs on that device, e.g. a CUDA GPU.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ReprscopeError
from ._core import HeadModule, LayerData


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def to_numpy(x: Any, what: str) -> Tuple[np.ndarray, str]:
    """(array, device) of a numpy array, a torch tensor (any device; detached) or a nested sequence."""
    device = "cpu"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        device = str(x.device)
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_complex():
            raise ReprscopeError(f"expected real-valued {what}, got a complex tensor of dtype {x.dtype}")
        return t.cpu().numpy(), device
    if isinstance(x, (str, bytes, dict)) or x is None:
        raise ReprscopeError(f"expected {what} as a numpy array or a torch tensor, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ReprscopeError(f"expected {what} as a numpy array or a torch tensor, got {type(x).__name__} ({exc})")
    return arr, device


def _real(arr: np.ndarray, what: str, original: Any) -> np.ndarray:
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ReprscopeError(f"expected {what} of a real floating or integer dtype, got {_describe(original)}")
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def embeddings(x: Any, what: str = "embeddings", min_samples: int = 2) -> Tuple[np.ndarray, str]:
    """(V, n, d) float array and device of (n, d) or (V, n, d) embeddings, all finite, n ≥ ``min_samples``."""
    arr, device = to_numpy(x, what)
    if arr.ndim not in (2, 3):
        raise ReprscopeError(f"expected {what} of shape (n, d) or (V, n, d), got {tuple(arr.shape)}")
    arr = _real(arr, what, x)
    if arr.ndim == 2:
        arr = arr[None]
    v, n, d = arr.shape
    if v == 0 or d == 0:
        raise ReprscopeError(f"expected {what} of shape (n, d) or (V, n, d) with V, d ≥ 1, got {tuple(arr.shape)}")
    if n < min_samples:
        raise ReprscopeError(f"expected {what} of at least {min_samples} samples, got {n} (shape {tuple(arr.shape)})")
    bad = ~np.isfinite(arr).all(axis=(0, 2))
    if bad.any():
        raise ReprscopeError(f"{what} contain NaN or Inf in {int(bad.sum())} of {n} samples (first: sample "
                             f"{int(np.flatnonzero(bad)[0])}); drop those samples first")
    return arr, device


def stack_views(views: Sequence[Any], what: str = "embeddings", min_samples: int = 2) -> Tuple[np.ndarray, str]:
    """One (V, n, d) array from several (n, d) views given as separate arguments (same shape each)."""
    arrs: List[np.ndarray] = []
    device = "cpu"
    for i, v in enumerate(views):
        a, dev = embeddings(v, f"{what} (argument {i + 1})", min_samples)
        if a.shape[0] != 1:
            raise ReprscopeError(f"expected each view as (n, d), got {tuple(a.shape)} for argument {i + 1}")
        if arrs and a.shape[1:] != arrs[0].shape:
            raise ReprscopeError(f"expected views of the same shape (n, d), got {tuple(arrs[0].shape)} and "
                                 f"{tuple(a.shape[1:])}")
        device = dev if dev != "cpu" else device
        arrs.append(a[0])
    dtype = np.result_type(*arrs)
    return np.stack([a.astype(dtype, copy=False) for a in arrs]), device


def two_views(z1: Any, z2: Any = None, what: str = "embeddings") -> Tuple[np.ndarray, str]:
    """(2, n, d) from ``z1, z2`` as (n, d) each, or from ``z1`` as (V ≥ 2, n, d) (its first two views)."""
    if z2 is None:
        arr, device = embeddings(z1, what)
        if arr.shape[0] < 2:
            raise ReprscopeError(f"expected two views: z1 and z2 of shape (n, d), or z1 of shape (V, n, d) with "
                                 f"V ≥ 2, got z1 of shape {tuple(np.shape(z1))} and no z2")
        return arr[:2], device
    return stack_views([z1, z2], what)


def labels(y: Any, n: int, what: str = "labels") -> np.ndarray:
    """(n,) class labels (ints, or any values ``np.unique`` can order)."""
    arr, _ = to_numpy(y, what)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise ReprscopeError(f"expected {what} of shape (n,) = ({n},), one per sample, got {tuple(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ReprscopeError(f"expected {what} as class ids (integers), got floating values that are not "
                                 "whole numbers")
        arr = arr.astype(np.int64)
    return arr


def latents(y: Any, n: int, what: str = "latents") -> np.ndarray:
    """(n, k) float64 ground-truth latents ((n,) is one latent)."""
    arr, _ = to_numpy(y, what)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise ReprscopeError(f"expected {what} of shape (n, k) = ({n}, k) or (n,), got {tuple(arr.shape)}")
    return _real(arr, what, y).astype(np.float64, copy=False)


def view_names(count: int) -> List[str]:
    """Names of V views given to a metric function: ``view0``, ``view1`` …"""
    return [f"view{i}" for i in range(count)]


def layer_data(arr: np.ndarray, device: str = "cpu", *, labels_: Optional[np.ndarray] = None,
               latents_: Optional[np.ndarray] = None, latent_names: Optional[Sequence[str]] = None,
               content_mask: Optional[np.ndarray] = None, views: Optional[Sequence[str]] = None,
               modules: Optional[dict] = None, seed: int = 0, layer: str = "embeddings",
               space: str = "encoder") -> LayerData:
    """The in-memory LayerData of validated (V, n, d) embeddings."""
    names = list(views) if views is not None else view_names(arr.shape[0])
    return LayerData(layer=layer, space=space, views=names, embeddings=arr, latents=latents_,
                     latent_names=list(latent_names or []), content_mask=content_mask, labels=labels_,
                     modules=dict(modules or {}), seed=seed, device=device)


__all__ = ["HeadModule", "embeddings", "labels", "latents", "layer_data", "stack_views", "to_numpy", "two_views",
           "view_names"]
