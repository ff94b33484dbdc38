"""Distributed training helpers (torchrun): process group set-up, collectives with gradient, synchronised
BatchNorm on every device.

Every helper is a no-op on one process, so methods call them unconditionally. Methods compute their loss on
the *global* batch: :func:`gather` concatenates the embeddings of all ranks with gradient flowing back to
each rank's own part, every rank evaluates the same loss, and DDP's gradient averaging then yields exactly
the gradient of the one-process step on the global batch (tests/test_ddp.py checks this with gloo).
"""
from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    if not is_distributed():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


#: Set while every rank of the job runs the same library call (``reprscope extract`` / ``analyze`` under torchrun):
#: only then do extraction and analysis split their work with collectives. A call made by one rank of someone's
#: DDP training (a monitor on rank 0) stays a single-process call and never waits for the other ranks.
_SHARED_CALL: contextvars.ContextVar = contextvars.ContextVar("reprscope_shared_call", default=False)


@contextmanager
def shared_call(shared: bool = True) -> Iterator[None]:
    """Mark the calls inside as run by every rank of the process group together (``shared=False``: by this
    process alone, e.g. rank 0's part of a shared call)."""
    token = _SHARED_CALL.set(shared)
    try:
        yield
    finally:
        _SHARED_CALL.reset(token)


def work_info() -> DistInfo:
    """:func:`info` inside :func:`shared_call` (every rank runs the same call: the work may be split), else a
    single process."""
    return info() if _SHARED_CALL.get() else DistInfo()


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); nccl on CUDA, gloo on
    CPU. Without torchrun (or WORLD_SIZE=1) nothing happens."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return info()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return info()


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, …) of every rank along dim 0 in rank order, with gradient (each rank's part of
    the gradient flows back to that rank)."""
    if not is_distributed():
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd all-gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 without gradient (targets, queues, monitors)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the ranks, without gradient (DINO's center, logging)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across ranks, on any device
    (``torch.nn.SyncBatchNorm`` runs on CUDA only; this one also runs on CPU/gloo).

    Mean and biased variance come from all-reduced sums with gradient, so the result and its gradient equal
    BatchNorm on the concatenated batch. Running statistics use the unbiased global variance, like BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = all_reduce(count)
        mean = all_reduce(x.sum(dim=dims)) / n
        # two passes (mean, then squared deviations) as accurate as BatchNorm's own variance
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dim=dims)) / n
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(1.0, float(n) - 1))
                self.num_batches_tracked.add_(1)
        return y


def sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm by a synchronised one: ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm`
    elsewhere. Weights and running statistics are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        like = next(iter(list(module.parameters()) + list(module.buffers())), None)
        kw = {} if like is None else {"device": like.device, "dtype": like.dtype if like.is_floating_point() else None}
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, **kw)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup(was_initialised_here: bool, wait_for_peers: bool = True) -> None:
    """Leave the process group. After a normal run every rank first waits at a barrier: a gloo rank that tears
    its connections down while a peer is still working (rank 0 writing its results) can make that peer abort
    at exit ("terminate called without an active exception", about 1 run in 20 on CPU). After an exception
    (``wait_for_peers=False``) nobody waits: the peers may never reach the barrier, and torchrun stops them."""
    if was_initialised_here and is_distributed():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Optional[object]) -> object:
    """rank 0's ``obj`` on every rank (e.g. the resume decision)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
