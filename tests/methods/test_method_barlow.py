"""Barlow Twins: the loss against explicit loops over the dimensions i, j (standardisation included), the
standardisation against BatchNorm without affine, and the the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") §3.3 ablation without the off-diagonal term."""
from __future__ import annotations

import math

import pytest
import torch

from method_helpers import make_config, make_model, views_for
from reprscope.methods.barlow import barlow_twins_loss, barlow_twins_terms, cross_correlation, standardize
from reprscope.methods.base import encode


def _views(n=7, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0
    return z1, z2


def loop_correlation(z1, z2, eps=1e-5):
    """C_ij = Σ_b ẑ¹_bi ẑ²_bj / n with ẑ standardised per column (biased variance + ε), by loops."""
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])

    def standardised(rows, j):
        col = [r[j] for r in rows]
        m = sum(col) / n
        v = sum((x - m) ** 2 for x in col) / n
        return [(x - m) / math.sqrt(v + eps) for x in col]

    sa = [standardised(a, j) for j in range(d)]
    sb = [standardised(b, j) for j in range(d)]
    return [[sum(sa[i][k] * sb[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]


def loop_loss(z1, z2, lambd, off_diagonal=True, scale=1.0):
    c = loop_correlation(z1, z2)
    d = len(c)
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return scale * (on + lambd * off if off_diagonal else on), on, off


def test_standardize_is_batchnorm_without_affine():
    z1, _ = _views()
    bn = torch.nn.BatchNorm1d(4, affine=False, dtype=torch.float64).train()
    assert torch.allclose(standardize(z1), bn(z1), atol=1e-12)


def test_cross_correlation_by_loops():
    z1, z2 = _views()
    assert cross_correlation(z1, z2).tolist() == [pytest.approx(r, abs=1e-12) for r in loop_correlation(z1, z2)]


@pytest.mark.parametrize("lambd,scale", [(5e-3, 1.0), (0.0051, 0.1), (0.5, 2.0)])
def test_loss_by_loops(lambd, scale):
    z1, z2 = _views(seed=1)
    want, on, off = loop_loss(z1, z2, lambd, scale=scale)
    assert float(barlow_twins_loss(z1, z2, lambd, scale=scale)) == pytest.approx(want, rel=1e-10)
    got_on, got_off = barlow_twins_terms(z1, z2)
    assert (float(got_on), float(got_off)) == pytest.approx((on, off), rel=1e-10)


def test_without_off_diagonal_only_the_diagonal_term_remains():
    z1, z2 = _views(seed=2)
    want, on, off = loop_loss(z1, z2, 5e-3, off_diagonal=False)
    assert want == on and off > 0
    assert float(barlow_twins_loss(z1, z2, 5e-3, off_diagonal=False)) == pytest.approx(on, rel=1e-10)
    assert float(barlow_twins_loss(z1, z2, 5e-3, off_diagonal=False)) == pytest.approx(
        float(barlow_twins_loss(z1, z2, 0.0)), rel=1e-12)


@pytest.mark.parametrize("off_diagonal", [True, False])
def test_training_step_uses_each_views_projections(off_diagonal):
    cfg = make_config("barlowtwins", method__off_diagonal=off_diagonal, method__lambd=0.02, method__scale_loss=0.5)
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    want = barlow_twins_loss(e1["z"].double(), e2["z"].double(), 0.02, off_diagonal, 0.5)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(logs["redundancy"]) > 0  # logged either way, weighted only with the off-diagonal term


def test_off_diagonal_switch_changes_the_gradient():
    cfg_on = make_config("barlowtwins")
    views = views_for(cfg_on)
    grads = []
    for cfg in (cfg_on, make_config("barlowtwins", method__off_diagonal=False)):
        bundle, method = make_model(cfg)
        method.training_step(bundle, views, 0, 10)[0].backward()
        grads.append(next(bundle.encoder.parameters()).grad.clone())
    assert not torch.allclose(grads[0], grads[1])
