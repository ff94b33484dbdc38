"""Run by ``torchrun`` from tests/test_ddp.py: two training steps of every registered method on one fixed
global batch, on however many processes torchrun starts; rank 0 saves the losses and the gradients of the
second step so the test can compare a 2-process run with a 1-process run.

usage: torchrun --standalone --nproc-per-node N tests/ddp/worker.py OUT_DIR METHOD[,METHOD…]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for smoke_config

from reprscope import distributed  # noqa: E402
from reprscope.data import build_dataset  # noqa: E402
from reprscope.methods import build_method  # noqa: E402
from reprscope.models.bundle import build_bundle  # noqa: E402
from reprscope.train.trainer import TrainModule  # noqa: E402
from test_methods import smoke_config  # noqa: E402

GLOBAL_BATCH = 16


def run(name: str, out: Path) -> None:
    info = distributed.info()
    cfg = smoke_config(name, **{"train.batch_size": GLOBAL_BATCH})
    torch.manual_seed(0)
    bundle = build_bundle(cfg["model"], cfg["model"]["in_shape"]).double()  # float64: differences are bugs, not rounding
    if info.enabled:
        bundle = distributed.sync_batchnorm(bundle, "cpu")
    method = build_method(name, {k: v for k, v in cfg["method"].items() if k != "name"})
    method.setup(bundle)
    method.double()
    module: torch.nn.Module = TrainModule(bundle, method)
    if info.enabled:
        module = torch.nn.parallel.DistributedDataParallel(module, broadcast_buffers=False,
                                                           find_unused_parameters=bool(getattr(method, "ddp_find_unused", False)))
    params = [p for g in method.param_groups(bundle) for p in g["params"]]
    opt = torch.optim.SGD(params, lr=0.05)
    dataset = build_dataset(cfg["data"])
    rng = np.random.default_rng(0)
    per = GLOBAL_BATCH // info.world_size
    losses, grads = [], {}
    bundle.train()
    for step in range(2):
        views = dataset.train_views(GLOBAL_BATCH, rng)  # the same global batch on every rank
        local = [v[info.rank * per:(info.rank + 1) * per].double() for v in views]
        torch.manual_seed(100 + step)
        loss, _ = module(local, step, 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(float(loss.detach()))
        if step == 1:
            named = list(bundle.named_parameters()) + [("method." + n, p) for n, p in method.named_parameters()]
            grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        opt.step()
        method.after_step(bundle, step, 10)
    if info.is_main:
        torch.save({"losses": losses, "grads": grads}, out / f"{name}-{info.world_size}.pt")


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2].split(",")
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    started = dist.is_initialized()
    try:
        for name in names:
            run(name, out)
    except BaseException:
        distributed.cleanup(started, wait_for_peers=False)
        raise
    distributed.cleanup(started)


if __name__ == "__main__":
    main()
