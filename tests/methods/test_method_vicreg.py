"""VICReg against a literal numpy transcription of Bardes et al. 2022, arXiv:2105.04906 Algorithm 1, with any of λ, μ, ν set to 0
(Table 4a) and the normalisation variants of Table 4b."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from method_helpers import make_config, make_model, views_for
from reprscope.errors import ReprscopeError
from reprscope.methods.base import encode
from reprscope.methods.vicreg import vicreg_loss, vicreg_terms


def algorithm1(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """Paper 003 Algorithm 1, line by line in numpy (float64); ``gamma`` replaces the literal 1 of the hinge."""
    z_a = np.asarray(z_a, dtype=np.float64)
    z_b = np.asarray(z_b, dtype=np.float64)
    N, D = z_a.shape
    sim_loss = np.mean((z_a - z_b) ** 2)  # mse_loss
    std_z_a = np.sqrt(z_a.var(axis=0, ddof=1) + eps)
    std_z_b = np.sqrt(z_b.var(axis=0, ddof=1) + eps)
    std_loss = np.mean(np.maximum(0, gamma - std_z_a))
    std_loss = std_loss + np.mean(np.maximum(0, gamma - std_z_b))
    z_a = z_a - z_a.mean(axis=0)
    z_b = z_b - z_b.mean(axis=0)
    cov_z_a = (z_a.T @ z_a) / (N - 1)
    cov_z_b = (z_b.T @ z_b) / (N - 1)
    off = ~np.eye(D, dtype=bool)
    cov_loss = (cov_z_a[off] ** 2).sum() / D
    cov_loss = cov_loss + (cov_z_b[off] ** 2).sum() / D
    loss = lam * sim_loss + mu * std_loss + nu * cov_loss
    return loss, sim_loss, std_loss, cov_loss


def _views(n=9, d=5, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.4 * torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return z1, z2


COEFFS = [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (25.0, 0.0, 1.0), (0.0, 25.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0)]


@pytest.mark.parametrize("lam,mu,nu", COEFFS)
def test_loss_equals_algorithm1(lam, mu, nu):
    z1, z2 = _views()
    want = algorithm1(z1.numpy(), z2.numpy(), lam, mu, nu)
    assert float(vicreg_loss(z1, z2, lam, mu, nu)) == pytest.approx(want[0], rel=1e-12, abs=1e-14)
    assert [float(t) for t in vicreg_terms(z1, z2)] == pytest.approx(list(want[1:]), rel=1e-12)


def test_float32_and_other_gamma_eps():
    z1, z2 = _views(seed=5, scale=2.0)
    want = algorithm1(z1.numpy(), z2.numpy(), 3.0, 2.0, 0.5, gamma=1.5, eps=1e-3)[0]
    got = vicreg_loss(z1.float(), z2.float(), 3.0, 2.0, 0.5, gamma=1.5, eps=1e-3)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_mu_nu_zero_is_lambda_times_mse():
    z1, z2 = _views(seed=1)
    assert float(vicreg_loss(z1, z2, 7.0, 0.0, 0.0)) == pytest.approx(7.0 * float(((z1 - z2) ** 2).mean()), rel=1e-12)


def test_standardize_variant():
    """Table 4b "VICReg + Standardization": Algorithm 1 on each view standardised over the batch."""
    z1, z2 = _views(seed=2, scale=3.0)

    def standardised(z):
        z = z.numpy()
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

    want = algorithm1(standardised(z1), standardised(z2))
    got = vicreg_terms(z1, z2, normalization="standardize")
    assert float(vicreg_loss(z1, z2, normalization="standardize")) == pytest.approx(want[0], rel=1e-10)
    assert [float(t) for t in got] == pytest.approx(list(want[1:]), rel=1e-10, abs=1e-12)


def test_l2_variant():
    """Table 4b "VICReg + ℓ2-normalization": unit rows, invariance −(1/n) Σ ẑᵢ·ẑ'ᵢ (eq. 9), γ = 1/√d."""
    z1, z2 = _views(seed=3)
    a, b = z1.numpy(), z2.numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    _, _, std, cov = algorithm1(a, b, gamma=1 / np.sqrt(a.shape[1]))
    inv = -np.mean(np.sum(a * b, axis=1))
    got = vicreg_terms(z1, z2, normalization="l2")
    assert [float(t) for t in got] == pytest.approx([inv, std, cov], rel=1e-10)
    assert float(vicreg_loss(z1, z2, normalization="l2")) == pytest.approx(25 * inv + 25 * std + cov, rel=1e-10)


def test_normalization_parameter():
    assert make_config("vicreg")["method"]["normalization"] is None
    assert make_config("vicreg", method__normalization="none")["method"]["normalization"] is None
    assert make_config("vicreg", method__normalization="l2")["method"]["normalization"] == "l2"
    with pytest.raises(ReprscopeError, match="normalization"):
        make_config("vicreg", method__normalization="whiten")
    with pytest.raises(ValueError, match="unknown normalization"):
        vicreg_terms(*_views(), normalization="whiten")


@pytest.mark.parametrize("sets", [{}, {"method__mu": 0.0, "method__nu": 0.0}, {"method__lambd": 0.0},
                                  {"method__normalization": "standardize"}, {"method__normalization": "l2"}])
def test_training_step_equals_the_loss_on_the_projections(sets):
    cfg = make_config("vicreg", **sets)
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    c = cfg["method"]
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    want = vicreg_loss(e1["z"].double(), e2["z"].double(), c["lambd"], c["mu"], c["nu"], c["gamma"], c["eps"],
                       c["normalization"])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert {"invariance", "variance", "covariance"} <= set(logs)
