"""Paper 000's simple objective (eq. 32) against explicit loops: invariance between ℓ2-normalised views plus
the center-vector penalty with λ_L = −1, its limiting cases, and the method unit."""
from __future__ import annotations

import math

import pytest
import torch

from method_helpers import make_config, make_model, run_training, views_for
from reprscope.methods.base import encode
from reprscope.methods.simple import center_magnitude, simple_loss, simple_terms


def _views(n=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    z2 = z1 + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


def loop_loss(z1, z2, lagrange=-1.0, penalty="squared"):
    """0.5 (mean_i ‖ẑ¹_i − ẑ²_i‖² − λ_L L_s), ŝ the mean of all 2n unit rows, by loops."""
    unit = lambda r: [x / math.sqrt(sum(y * y for y in r)) for x in r]  # noqa: E731
    a, b = [unit(r) for r in z1.tolist()], [unit(r) for r in z2.tolist()]
    n, d = len(a), len(a[0])
    invariance = sum(sum((a[i][k] - b[i][k]) ** 2 for k in range(d)) for i in range(n)) / n
    s = [sum(a[i][k] + b[i][k] for i in range(n)) / (2 * n) for k in range(d)]
    sq = sum(x * x for x in s)
    ls = sq if penalty == "squared" else math.sqrt(sq)
    return 0.5 * (invariance - lagrange * ls)


@pytest.mark.parametrize("lagrange,penalty", [(-1.0, "squared"), (-3.0, "squared"), (0.0, "squared"), (-1.0, "norm")])
def test_loss_by_loops(lagrange, penalty):
    z1, z2 = _views()
    assert float(simple_loss(z1, z2, lagrange, penalty)) == pytest.approx(loop_loss(z1, z2, lagrange, penalty), rel=1e-12)


def test_limiting_cases():
    """A collapsed batch (every row the same direction) pays 0.5‖s‖² = 0.5; a batch centred at the origin pays
    only the invariance."""
    same = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    assert float(simple_loss(same, same)) == pytest.approx(0.5)
    pm = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    rot = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    inv, center = simple_terms(pm, rot)
    assert float(center.norm()) == pytest.approx(0.0, abs=1e-15)
    assert float(simple_loss(pm, rot)) == pytest.approx(0.5 * float(inv)) and float(inv) == pytest.approx(2 - math.sqrt(2))
    with pytest.raises(ValueError, match="center penalty"):
        center_magnitude(center, "cubic")


def test_center_penalty_changes_the_gradient():
    z1, z2 = _views(seed=1)
    grads = []
    for lagrange in (-1.0, 0.0):
        w = z1.clone().requires_grad_()
        simple_loss(w, z2, lagrange).backward()
        grads.append(w.grad)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("sets", [{}, {"method__lagrange": -2.0, "method__center_penalty": "norm"}])
def test_training_step_equals_the_loss(sets):
    cfg = make_config("simple", **sets)
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    c = cfg["method"]
    want = simple_loss(e1["z"].double(), e2["z"].double(), c["lagrange"], c["center_penalty"])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(logs["center_norm"]) == pytest.approx(float(simple_terms(e1["z"], e2["z"])[1].norm()), rel=1e-5)


def test_without_projector_on_the_encoder_output(tmp_path):
    cfg = make_config("simple", projector="none", train__steps=5)
    assert cfg["model"]["heads"] == {}
    logged, _ = run_training(cfg, tmp_path)
    assert len(logged) == 5 and all(math.isfinite(m["loss"]) for m in logged)
