"""The method contract, run over every registered method (registering a method is enough to get it tested):
parameters declared and validated, a few CPU training steps through the real trainer without NaN, optimiser
groups that hold every trainable parameter exactly once, the checkpoint loads back through the native
format, and resume continues bit for bit (EMA targets, queues, centers included)."""
from __future__ import annotations

from typing import Any, Dict

import pytest
import torch

from reprscope.errors import ReprscopeError
from reprscope.formats import load_checkpoint
from reprscope.methods import METHODS, build_method
from reprscope.models.bundle import build_bundle
from reprscope.models.heads import HEADS
from reprscope.train import apply_sets, default_config, resolve_config, train
from resume_helpers import assert_same_state, interrupt_and_resume

BASE_SETS: Dict[str, Any] = {
    "backbone.width": 16,
    "backbone.depth": 2,
    "train.steps": 6,
    "train.batch_size": 32,
    "train.save_every_steps": 3,
    "train.log_every": 1,
    "train.device": "cpu",
    "train.knn_every": 0,
    "optim.name": "adamw",
    "optim.lr": 1e-3,
    "optim.warmup_steps": 0,
    "optim.warmup_epochs": None,
}


def smoke_config(name: str, **extra: Any) -> Dict[str, Any]:
    cls = METHODS.get(name)
    sets = dict(BASE_SETS)
    for part, head in cls.default_heads.items():  # shrink the default heads to test size
        names = {p.name for p in HEADS.meta(head.get("kind", "linear"))["params"]} if head else set()
        if "hidden_dim" in names:
            sets[f"{part}.hidden_dim"] = 32
        if "out_dim" in names:
            sets[f"{part}.out_dim"] = 16
    sets.update(cls.smoke_sets)
    sets.update(extra)
    data = {"name": "dgp", "eval_size": 200}
    if "data" in sets:
        data = {"name": sets.pop("data")}
    if sets.get("backbone") and sets["backbone"] != "mlp":
        for k in ("backbone.width", "backbone.depth"):
            sets.pop(k, None)
    cfg = default_config(name, data)
    ordered = sorted(sets.items(), key=lambda kv: not (kv[0] == "backbone" or kv[0].endswith(".kind")))
    return resolve_config(apply_sets(cfg, [(k.split("."), v) for k, v in ordered]))


NAMES = METHODS.names()


@pytest.mark.parametrize("name", NAMES)
def test_declared_params(name):
    method = build_method(name)
    assert method.name == name and method.summary
    assert set(method.cfg) == {p.name for p in method.all_params()}
    with pytest.raises(ReprscopeError, match="no_such_knob"):
        build_method(name, {"no_such_knob": 1})


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_partition_trainable_parameters(name):
    cfg = smoke_config(name)
    bundle = build_bundle(cfg["model"], cfg["model"]["in_shape"])
    method = build_method(name, {k: v for k, v in cfg["method"].items() if k != "name"})
    method.setup(bundle)
    grouped = [p for g in method.param_groups(bundle) for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped), "a parameter is in two groups"
    trainable = {id(p) for p in list(bundle.parameters()) + list(method.parameters()) if p.requires_grad}
    assert {id(p) for p in grouped} == trainable


@pytest.mark.parametrize("name", NAMES)
def test_trains_saves_loads_and_resumes_exactly(name, tmp_path):
    cfg = smoke_config(name)
    logged = []
    straight = train(cfg, tmp_path / "a", progress=False, on_log=lambda s, m: logged.append(m))
    assert len(logged) == 6 and all(torch.isfinite(torch.tensor(m["loss"])) for m in logged)
    assert all(isinstance(v, float) for v in logged[-1].values())

    loaded = load_checkpoint(straight.last)
    x = torch.randn(4, *cfg["model"]["in_shape"])
    with torch.no_grad():
        loaded.bundle.eval()(x)

    resumed = interrupt_and_resume(cfg, tmp_path / "b", stop_at=4)
    a, b = assert_same_state(straight.last, resumed.last)
    assert a["metrics"]["loss"] == b["metrics"]["loss"]
