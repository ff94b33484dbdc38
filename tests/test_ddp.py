"""DDP on CPU with gloo (issue 4): the loss and the gradients of a 2-process step equal those of a 1-process
step on the same global batch, for every registered method — BatchNorm synchronised, negatives and batch
statistics gathered across ranks, random masks (MAE) drawn for the global batch and sliced per rank. Run
through the real launcher, torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reprscope.methods import METHODS

WORKER = Path(__file__).parent / "ddp" / "worker.py"


def _torchrun(nproc: int, out: Path, names) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), str(out), ",".join(names)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    names = METHODS.names()
    _torchrun(1, out, names)
    _torchrun(2, out, names)
    return out


@pytest.mark.parametrize("name", METHODS.names())
def test_two_processes_equal_one(ddp_results, name):
    one = torch.load(ddp_results / f"{name}-1.pt", weights_only=True)
    two = torch.load(ddp_results / f"{name}-2.pt", weights_only=True)
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-9, abs=1e-12)
    assert set(one["grads"]) == set(two["grads"]) and one["grads"]
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, rtol=1e-7, atol=1e-10, msg=lambda m: f"{name} {k}: {m}")


def test_torchrun_cli_trains_with_two_processes(tmp_path):
    """`torchrun --nproc-per-node 2 -m reprscope train …`: one run dir written by rank 0, with every rank's
    random state (for exact resume) and plain BatchNorm keys, loadable like any native checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "reprscope",
            "train", "simclr", "--data", "dgp", "--batch-size", "32", "--save-every-steps", "2", "--device", "cpu",
            "--out", str(out), "--quiet", "--set", "backbone.width=16", "--set", "backbone.depth=2",
            "--set", "projector.hidden_dim=16", "--set", "projector.out_dim=8", "--set", "data.eval_size=200"]
    res = subprocess.run(base + ["--steps", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ckpt-0000000.pt", "ckpt-0000002.pt", "ckpt-0000004.pt", "last.pt", "metrics.csv"]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2 and ck["step"] == 4
    assert not any("GlobalBatchNorm" in k for k in ck["state_dict"])  # plain BatchNorm keys
    from reprscope.formats import load_checkpoint

    loaded = load_checkpoint(out / "last.pt")
    assert loaded.bundle(torch.randn(3, *ck["config"]["model"]["in_shape"]))["z"].shape == (3, 8)
