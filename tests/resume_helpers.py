"""Shared by the resume tests (trainer, every method, SwAV's queue): interrupt a training run and resume it,
then compare its last checkpoint with that of a run straight through."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch

from reprscope.train import TrainResult, train


class _Stop(Exception):
    pass


def interrupt_and_resume(cfg: Dict[str, Any], out: Path, stop_at: int) -> TrainResult:
    """Train ``cfg`` into ``out``, stopped by an exception when step ``stop_at`` is logged, then resume it to the
    end with ``resume=True``."""

    def stop(done, _m):
        if done == stop_at:
            raise _Stop()

    with pytest.raises(_Stop):
        train(cfg, out, progress=False, on_log=stop)
    return train(cfg, out, resume=True, progress=False)


def assert_same_state(a_path: Path, b_path: Path) -> Tuple[dict, dict]:
    """Both checkpoints hold the same model and method state, key for key and bit for bit; returns them loaded."""
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    for part in ("state_dict", "method_state"):
        assert set(a[part]) == set(b[part]), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}/{k} differs after resume"
    return a, b
