"""Sufficient statistics shared by several analyzers, computed in one streaming pass per layer.

After torchmetrics' ``_update``/``_compute`` split: :func:`moments` streams the chunks of a layer once and
accumulates, for every view, the sample count, the mean, the centred scatter Σ(z−µ)(z−µ)ᵀ and the uncentred
Gram ZᵀZ (d×d, float64), with numpy BLAS on the CPU and torch on any other ``data.device``. Memory is
bounded by the d×d statistics, not by n. The spectrum and VICReg statistics read these.

Accumulation is shifted by the first chunk's mean, so features with a large common offset (post-ReLU layers)
do not lose their variance to cancellation. The moments are float64 throughout, products included: the
spectrum's small singular values are square roots of the scatter's small eigenvalues, and float32 products
(absolute error ~1e-7·λ_max) would turn every σ_k below ~1e-3·σ_1 into noise, while float32 embeddings
resolve them down to ~1e-7·σ_1. Other analyzers form their products in float32 for large float32 stores
(:func:`product_dtype`: twice as fast on a CPU, relative errors of order 1e-6 where those products enter).
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, TypeVar

import numpy as np
import torch

from ._core import LayerData
from ._ranks import share, sum_over_ranks

#: n·d from which a float32 store's chunk products are formed in float32 (accumulated in float64).
FLOAT32_PRODUCTS_ABOVE = 1 << 26


def product_dtype(data: LayerData) -> type:
    """The dtype of the per-chunk products: float32 for large float32 stores, else float64."""
    big = data.n * data.dim >= FLOAT32_PRODUCTS_ABOVE
    return np.float32 if big and data.dtype == np.float32 else np.float64


@dataclass
class Moments:
    """Per-view second-order statistics of n samples in d dimensions (float64 numpy arrays).

    ``shift`` is the point c the products were accumulated about: the rounding error of ``scatter`` is of the
    order of eps·λ_max(Σ (z − c)(z − c)ᵀ) = eps·(λ_max(scatter) + n‖µ − c‖²) at most, not of eps·‖Z‖².
    """

    n: int
    mean: np.ndarray  # (d,)
    scatter: np.ndarray  # (d, d) Σ (z − µ)(z − µ)ᵀ
    gram: np.ndarray  # (d, d) Σ z zᵀ
    shift: Optional[np.ndarray] = None  # (d,) c; None: the mean

    def shifted_scale2(self, scatter_top: float) -> float:
        """λ_max(scatter) + n‖µ − c‖² ≥ λ_max(Σ (z − c)(z − c)ᵀ), given ``scatter_top`` = λ_max(scatter)."""
        off = 0.0 if self.shift is None else float(np.sum((self.mean - self.shift) ** 2))
        return max(scatter_top, 0.0) + self.n * off

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance (unbiased by default)."""
        return self.scatter / max(1, self.n - ddof)


def torch_device(data: LayerData) -> torch.device:
    return torch.device(data.device)


#: Rows per block of :func:`_moments_numpy`: the shifted block (rows × (d + 1)) stays in the CPU's cache.
MOMENT_BLOCK_ROWS = 1024


def _first_chunk_mean(data: LayerData) -> Optional[np.ndarray]:
    """(V, d) mean of the layer's first chunk, the point the moments are accumulated about (every rank of a
    torchrun job computes the same one); None for a layer without samples."""
    for chunk in data.chunks(dtype=np.float64):
        return chunk.mean(axis=1)
    return None


def _accumulate(data: LayerData):
    """``(s2, shift)``: per view, [z − c, 1]ᵀ[z − c, 1] summed over this process's chunks (all of them, or its
    share in a torchrun job) about c = the first chunk's mean."""
    v, d = len(data.views), data.dim
    s2 = np.zeros((v, d + 1, d + 1))
    shift = _first_chunk_mean(data)
    if shift is None:
        return s2, None
    buf = np.ones((min(MOMENT_BLOCK_ROWS, data.n), d + 1))
    for _start, chunk in data.shared_chunks(dtype=np.float64):
        for j in range(v):
            for s in range(0, chunk.shape[1], buf.shape[0]):
                c = buf[:min(buf.shape[0], chunk.shape[1] - s)]
                np.subtract(chunk[j, s:s + c.shape[0]], shift[j], out=c[:, :d])
                s2[j] += c.T @ c
    return s2, shift


def _finalize(s2: np.ndarray, shift: Optional[np.ndarray], d: int) -> List[Moments]:
    out: List[Moments] = []
    for i in range(s2.shape[0]):
        n = int(round(s2[i, d, d]))  # the ones column counts the samples
        if n == 0 or shift is None:
            out.append(Moments(0, np.zeros(d), np.zeros((d, d)), np.zeros((d, d))))
            continue
        sh, a, b = shift[i], s2[i, :d, d], s2[i, :d, :d]
        b = (b + b.T) / 2  # syrk fills one triangle; numpy mirrors it, this only guards exact symmetry
        scatter = b - np.outer(a, a) / n
        gram = b + np.outer(sh, a) + np.outer(a, sh) + n * np.outer(sh, sh)
        out.append(Moments(n, sh + a / n, (scatter + scatter.T) / 2, gram, sh))
    return out


def _moments_numpy(data: LayerData) -> List[Moments]:
    """:func:`moments` on the CPU with numpy, one BLAS ``syrk`` per block of rows.

    Each block is shifted into a reused buffer whose last column is ones, so that its one product
    [c, 1]ᵀ[c, 1] holds cᵀc, the column sums of c and the count: the shifted copy is written once, stays in the
    cache for the product, and no second pass sums it. ``syrk`` (``cᵀc`` of a C-contiguous array) does half the
    flops of the general product torch would use."""
    s2, shift = _accumulate(data)
    return _finalize(sum_over_ranks(s2), shift, data.dim)


def moments(data: LayerData) -> List[Moments]:
    """Moments of every view of ``data`` (cached on the layer): numpy on the CPU, torch on ``data.device``
    otherwise.

    In a torchrun job that splits the work, rank r accumulates its share of the chunks about the point one
    process uses (the first chunk's mean) and the float64 sums are added with ``all_reduce``: equal to the
    one-process moments up to the order of the additions (relative 1e-15 · the number of chunks). Every rank
    then calls it for the same layers in the same order (the analyzers declared ``split``)."""
    if "moments" not in data.cache:
        dev = torch_device(data)
        data.cache["moments"] = _moments_numpy(data) if dev.type == "cpu" else _moments_torch(data, dev)
    return data.cache["moments"]


def _moments_torch(data: LayerData, dev: torch.device) -> List[Moments]:
    """:func:`moments` with torch on ``dev`` (an accelerator; the tests run it on the CPU against numpy)."""
    v, d = len(data.views), data.dim
    first = _first_chunk_mean(data)
    if first is None:
        return [Moments(0, np.zeros(d), np.zeros((d, d)), np.zeros((d, d))) for _ in range(v)]
    shift = torch.from_numpy(first).to(dev)[:, None, :]  # (V, 1, d)
    s1 = torch.zeros(v, d, dtype=torch.float64, device=dev)
    s2 = torch.zeros(v, d, d, dtype=torch.float64, device=dev)
    for _start, chunk in data.shared_chunks(dtype=np.float64):
        c = torch.from_numpy(chunk).to(dev) - shift
        s1 += c.sum(dim=1)
        s2 += c.transpose(1, 2) @ c
    n = data.n
    if share()[1] > 1:  # a torchrun job: add the ranks' sums
        s1 = torch.from_numpy(sum_over_ranks(s1.cpu().numpy())).to(dev)
        s2 = torch.from_numpy(sum_over_ranks(s2.cpu().numpy())).to(dev)
    out: List[Moments] = []
    for i in range(v):
        sh, a, b = shift[i, 0].to(s1.dtype), s1[i], s2[i]
        delta = a / n  # mean − shift
        scatter = b - torch.outer(a, a) / n
        gram = b + torch.outer(sh, a) + torch.outer(a, sh) + n * torch.outer(sh, sh)
        scatter = (scatter + scatter.T) / 2
        out.append(Moments(n, (sh + delta).cpu().numpy(), scatter.cpu().numpy(), gram.cpu().numpy(), sh.cpu().numpy()))
    return out


@contextmanager
def single_torch_thread(device: Any = "cpu") -> Iterator[None]:
    """Hold torch to one intra-op thread inside the block when ``device`` is the CPU (restored afterwards).

    Two reasons, both about a CPU with few cores shared with other work:

    * numpy's BLAS (OpenBLAS, its own pthreads) and torch's intra-op pool (OpenMP) each keep their worker
      threads spinning for a while after a call; a section alternating between them makes each pool's threads
      starve the other's. Sections whose heavy products go through numpy run with torch on one thread.
    * a symmetric eigendecomposition or SVD of a d×d matrix (d up to a few thousand), like a loop of products
      of a few hundred rows, is a long chain of small steps; split across two threads, every step waits for
      both, and when another process holds a core that wait is a scheduler time slice. On two loaded cores
      the eigendecompositions of the matrix information took 15× longer with numpy's two OpenBLAS threads
      (whose number cannot be set from Python) than with torch on one, and torch's own two-thread LAPACK
      stalled alike (one 512 × 512 ``eigh`` from 0.05 s to several seconds). They run in torch on one thread.

    On any other device nothing changes.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=1)
def _numpy_blas() -> Any:
    """threadpoolctl's controller of the BLAS that numpy's own linear algebra calls (OpenBLAS in the wheels),
    or None where there is none to control (then the symmetric decompositions run in torch)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency; only an unusual environment lacks it
        return None
    ctl = ThreadpoolController().select(user_api="blas")
    return ctl if ctl.lib_controllers else None


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None


@contextmanager
def single_blas_thread(device: Any = "cpu") -> Iterator[None]:
    """Hold numpy's BLAS/LAPACK to one thread inside the block on the CPU, for the same reasons as
    :func:`single_torch_thread`. The limit is process-wide, so it is counted: the first block entered sets it,
    the last one left restores the previous number (blocks entered from worker threads inside a
    :func:`map_side_by_side` section leave the section's limit alone)."""
    global _blas_users, _blas_limiter
    ctl = _numpy_blas()
    if ctl is None or torch.device(device).type != "cpu":
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = ctl.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


#: Most independent pieces of work (batches, matrices) computed side by side on the CPU.
MAX_WORKERS = 4

_T = TypeVar("_T")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_side_by_side(fn: Callable[[Any], _T], items: Sequence[Any], device: Any = "cpu",
                     max_workers: int | None = None) -> List[_T]:
    """``[fn(x) for x in items]``, on the CPU with up to ``max_workers`` (default MAX_WORKERS) worker threads.

    The cores of a CPU are used by independent pieces of work side by side, each with one torch intra-op
    thread and one BLAS thread (:func:`single_torch_thread`, :func:`single_blas_thread`: its
    eigendecompositions never wait for another core) rather than by splitting one decomposition across
    threads. torch and numpy release the GIL in their kernels. Results come back in the order of ``items``, so
    nothing depends on the number of workers.
    On any other device, one after another.
    """
    workers = min(MAX_WORKERS if max_workers is None else max_workers, len(items), cores())
    with single_torch_thread(device), single_blas_thread(device):
        if torch.device(device).type != "cpu" or workers <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))


def _lapack_on_cpu(m: torch.Tensor) -> bool:
    return m.device.type == "cpu" and not m.requires_grad and _numpy_blas() is not None


def eigvalsh(m: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of a symmetric matrix (lower triangle read), on one thread on the CPU.

    On the CPU numpy's LAPACK (``syevd`` of the OpenBLAS that numpy ships) computes them: on the AMD EPYC of
    the benchmark four 512 × 512 decompositions side by side took 26 ms against 62 ms with torch's (MKL)
    ``syevd``, 2048 × 2048 ones 1.4 s against 2.4 s. Elsewhere torch."""
    if _lapack_on_cpu(m):
        with single_blas_thread():
            return torch.from_numpy(np.linalg.eigvalsh(m.numpy()))
    with single_torch_thread(m.device):
        return torch.linalg.eigvalsh(m)


def eigh(m: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Ascending eigenvalues and eigenvectors (columns) of a symmetric matrix (lower triangle read), on one
    thread on the CPU; numpy's LAPACK there, as in :func:`eigvalsh`."""
    if _lapack_on_cpu(m):
        with single_blas_thread():
            vals, vecs = np.linalg.eigh(m.numpy())
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    with single_torch_thread(m.device):
        return torch.linalg.eigh(m)


def svdvals(m: torch.Tensor) -> torch.Tensor:
    """Descending singular values of a matrix (one thread on the CPU, see :func:`single_torch_thread`)."""
    with single_torch_thread(m.device):
        return torch.linalg.svdvals(m)
