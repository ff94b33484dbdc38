"""Spectral contrastive loss (Tan et al. 2024 (ICML) eq. 2) against explicit double loops over the pairs, HaoChen et al.'s
radius-√μ projection, and the relation to eq. 2's sum form for unit-norm rows."""
from __future__ import annotations

import math

import pytest
import torch

from method_helpers import make_config, make_model, views_for
from reprscope.methods.base import encode
from reprscope.methods.spectral import radius_projection, spectral_contrastive_loss, spectral_terms


def _views(n=6, d=4, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return z1, z2


def loop_project(rows, mu, norm):
    r = math.sqrt(mu)
    out = []
    for row in rows:
        length = math.sqrt(sum(x * x for x in row))
        if norm == "sphere" or (norm == "clip" and length >= r):
            row = [x / length * r for x in row]
        out.append(row)
    return out


def loop_loss(z1, z2, mu=1.0, lambd=1.0, norm="clip"):
    """(−(2/n) Σ_i z¹_i·z²_i + λ/(n(n−1)) Σ_{i≠j} (z¹_i·z²_j)²) / μ with explicit loops."""
    a, b = loop_project(z1.tolist(), mu, norm), loop_project(z2.tolist(), mu, norm)
    n = len(a)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    attraction = -2 * sum(dot(a[i], b[i]) for i in range(n)) / n
    repulsion = sum(dot(a[i], b[j]) ** 2 for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return (attraction + lambd * repulsion) / mu


@pytest.mark.parametrize("mu,lambd,norm,scale", [(1.0, 1.0, "clip", 0.5), (1.0, 1.0, "clip", 2.0), (4.0, 0.5, "clip", 1.5),
                                                 (1.0, 1.0, "sphere", 1.0), (2.0, 3.0, "none", 1.0)])
def test_loss_by_double_loops(mu, lambd, norm, scale):
    z1, z2 = _views(scale=scale)
    want = loop_loss(z1, z2, mu, lambd, norm)
    assert float(spectral_contrastive_loss(z1, z2, mu, lambd, norm)) == pytest.approx(want, rel=1e-12)


def test_clip_keeps_short_rows_and_rescales_long_ones():
    z = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    got = radius_projection(z, mu=4.0, norm="clip")  # radius 2
    assert torch.allclose(got, torch.tensor([[0.3, 0.4], [1.2, 1.6], [0.0, 2.0]], dtype=torch.float64))
    assert torch.equal(radius_projection(z, norm=None), z)


def test_matches_paper_004_eq2_for_unit_rows():
    """For ‖z‖ = 1: Σ_i ‖z¹_i − z²_i‖² + λ Σ_{i≠j} (z¹_iᵀz²_j)² = n (2 + attraction) + λ n (n − 1) repulsion."""
    z1, z2 = _views(seed=4)
    a, b = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    n, lambd = a.shape[0], 0.7
    eq2 = sum(float(((a[i] - b[i]) ** 2).sum()) for i in range(n)) \
        + lambd * sum(float(a[i] @ b[j]) ** 2 for i in range(n) for j in range(n) if i != j)
    attraction, repulsion = spectral_terms(a, b)
    assert eq2 == pytest.approx(n * (2 + float(attraction)) + lambd * n * (n - 1) * float(repulsion), rel=1e-12)


def test_lambda_zero_is_pure_attraction_and_changes_the_gradient():
    z1, z2 = _views(seed=5)
    projected = radius_projection(z1), radius_projection(z2)
    assert float(spectral_contrastive_loss(z1, z2, lambd=0.0)) == pytest.approx(float(spectral_terms(*projected)[0]))
    grads = []
    for lambd in (1.0, 0.0):
        w = z1.clone().requires_grad_()
        spectral_contrastive_loss(w, z2, lambd=lambd).backward()
        grads.append(w.grad)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("sets", [{}, {"method__mu": 2.0, "method__lambd": 0.5}, {"method__norm": "none"}])
def test_training_step_equals_the_loss_on_the_projections(sets):
    cfg = make_config("spectral", **sets)
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    c = cfg["method"]
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    want = spectral_contrastive_loss(e1["z"].double(), e2["z"].double(), c["mu"], c["lambd"], c["norm"])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(logs["attraction"]) + c["lambd"] * float(logs["repulsion"]) == pytest.approx(float(want), rel=1e-5)
