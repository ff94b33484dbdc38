"""Shared fixtures: one tiny training run and its embedding store, built once per test session.

The run is deliberately small (a 3-layer width-16 MLP encoder, a linear projector to 8 dimensions, 20 steps of
batch 64 on a 400-sample held-out set) so every test file that needs a real checkpoint stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from reprscope.train import apply_sets, default_config, resolve_config, train

#: The tiny run's settings as ``--set`` assignments (also used by the CLI tests).
TINY_SETS: Dict[str, Any] = {
    "backbone.width": 16,
    "backbone.depth": 3,
    "projector.kind": "linear",
    "projector.out_dim": 8,
    "train.steps": 20,
    "train.batch_size": 64,
    "train.save_every_steps": 10,
    "train.device": "cpu",
}
TINY_DATA: Dict[str, Any] = {"name": "dgp", "eval_size": 400}


def build_tiny_config(data: Dict[str, Any] | None = None, **sets: Any) -> Dict[str, Any]:
    """A resolved config for the tiny run; ``sets`` are extra ``section__key=value`` overrides."""
    assignments = dict(TINY_SETS)
    assignments.update({k.replace("__", "."): v for k, v in sets.items()})
    # The projector kind must be applied before its fields (another kind resets the head's settings).
    ordered = sorted(assignments.items(), key=lambda kv: kv[0] != "projector.kind")
    cfg = default_config("simclr", dict(data or TINY_DATA))
    cfg = apply_sets(cfg, [(k.split("."), v) for k, v in ordered])
    return resolve_config(cfg)


@pytest.fixture(scope="session")
def tiny_config_factory():
    """``factory(data=None, **section__key)`` → a resolved tiny config."""
    return build_tiny_config


@pytest.fixture(scope="session")
def tiny_config() -> Dict[str, Any]:
    return build_tiny_config()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config):
    """The trained tiny run: a ``TrainResult`` (run_dir with ckpt-0000000/10/20.pt and last.pt)."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return train(tiny_config, out, progress=False)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    return Path(tiny_run.last)


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory, tiny_ckpt) -> Path:
    """The tiny run's last checkpoint extracted (clean + 2 views, every layer, the first 300 samples)."""
    from reprscope.data import build_dataset
    from reprscope.extract import extract
    from reprscope.formats import load_checkpoint

    model = load_checkpoint(tiny_ckpt)
    out = tmp_path_factory.mktemp("tiny_h5") / "tiny.h5"
    return extract(model, build_dataset(model.dataset), out, limit=300, progress=False)


@pytest.fixture(scope="session", autouse=True)
def _no_home_cache_in_fixtures(tmp_path_factory):
    """Session- and module-scoped fixtures (the recipes' tiny runs, the CLI's extractions) are set up before
    any function-scoped fixture: they get a session-wide cache, never the one under the home directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPRSCOPE_CACHE", str(tmp_path_factory.mktemp("session_cache")))
        yield


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    """Nothing a test does may write the extraction cache under the home directory."""
    monkeypatch.setenv("REPRSCOPE_CACHE", str(tmp_path / "cache"))
