"""A pass over the samples shared by the processes of a torchrun job (``reprscope analyze`` under torchrun).

Every rank runs the same analyzer on the same layer. A streaming pass reads only the rank's share — chunk i
(of the layer's fixed chunking) when i mod world = rank, or batch j of a list when j mod world = rank — and the
partial sums are then added with one float64 ``all_reduce`` (:func:`sum_over_ranks`), or the per-batch results
gathered in batch order (:func:`gather_over_ranks`). Float64 sums in another order change a result by a few
ulps (relative 1e-15 · the number of chunks), so the table of a job equals the one-process table to 1e-9.

Outside such a job (one process; or a call from one rank of someone else's process group, which never waits for
the others) the share is everything: ``share() == (0, 1)`` and the reductions return their input.
"""
from __future__ import annotations

from typing import Any, ContextManager, List, Sequence, Tuple, TypeVar

import numpy as np
import torch

_T = TypeVar("_T")


def share() -> Tuple[int, int]:
    """(rank, world size) of the job splitting this call's work; (0, 1) in a single process."""
    from ..distributed import work_info

    di = work_info()
    return (di.rank, di.world_size) if di.enabled else (0, 1)


def mine(items: Sequence[_T]) -> List[_T]:
    """The items j of ``items`` with j mod world = rank (all of them in a single process)."""
    rank, world = share()
    return list(items[rank::world])


def _device() -> torch.device:
    import torch.distributed as tdist

    if tdist.get_backend() == "nccl":  # nccl reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(a: np.ndarray | float) -> np.ndarray:
    """The float64 sum of ``a`` (an array or a number, the same shape on every rank) over the ranks."""
    arr = np.asarray(a, dtype=np.float64)
    if share()[1] == 1:
        return arr
    import torch.distributed as tdist

    t = torch.tensor(arr, device=_device())  # a copy: the caller's array is left as it was
    tdist.all_reduce(t)
    return t.cpu().numpy().reshape(arr.shape)


def gather_over_ranks(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process). For small picklable results
    exchanged between the processes of one job."""
    world = share()[1]
    if world == 1:
        return [obj]
    import torch.distributed as tdist

    out: List[Any] = [None] * world
    tdist.all_gather_object(out, obj)
    return out


def interleave(parts: Sequence[Sequence[_T]]) -> List[_T]:
    """Undo :func:`mine`: ``parts[r]`` holds items r, r + world, …; the items in their original order."""
    world = len(parts)
    out: List[_T] = []
    for j in range(sum(len(p) for p in parts)):
        out.append(parts[j % world][j // world])
    return out


def alone() -> ContextManager[None]:
    """Inside, this process computes everything itself (rank 0's solo analyzers and bootstrap resamples in a
    torchrun job)."""
    from ..distributed import shared_call

    return shared_call(False)
