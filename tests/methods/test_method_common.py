"""Properties every new method shares (BYOL, SimSiam, Barlow Twins, VICReg, spectral, simple): the VICReg
variance / covariance regularisers add exactly their weighted terms (Bardes et al. 2022, arXiv:2105.04906 Table 3), the loss decreases on
an easy problem through the real trainer, and the logged values are floats or detached 0-d tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from method_helpers import make_config, make_model, run_training, views_for
from reprscope.methods.base import encode

NAMES = ["byol", "simsiam", "barlowtwins", "vicreg", "spectral", "simple"]


def np_variance(z: np.ndarray, gamma: float, eps: float = 1e-4) -> float:
    """Paper 003 eq. 1 with the unbiased variance of eq. 2."""
    std = np.sqrt(z.var(axis=0, ddof=1) + eps)
    return float(np.maximum(0.0, gamma - std).mean())


def np_covariance(z: np.ndarray) -> float:
    """Paper 003 eq. 3–4: (1/d) Σ_{i≠j} C_ij² with the unbiased covariance."""
    n, d = z.shape
    zc = z - z.mean(axis=0)
    c = zc.T @ zc / (n - 1)
    return float(((c ** 2).sum() - (np.diag(c) ** 2).sum()) / d)


@pytest.mark.parametrize("name", NAMES)
def test_var_cov_regularisers_add_exactly_their_weighted_terms(name):
    base_cfg = make_config(name)
    views = views_for(base_cfg)
    bundle, plain = make_model(base_cfg)
    reg_cfg = make_config(name, method__var_reg=2.5, method__cov_reg=0.7, method__reg_gamma=0.8)
    _, regularised = make_model(reg_cfg)
    regularised.setup(bundle)  # same online weights (and a fresh target copied from them)
    loss0, _ = plain.training_step(bundle, views, 0, 10)
    loss1, logs = regularised.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    zs = [e["z"].double().numpy() for e in (e1, e2)]  # the projector outputs: Bardes et al. 2022 Table 3
    var = sum(np_variance(z, 0.8) for z in zs) / 2
    cov = sum(np_covariance(z) for z in zs) / 2
    assert float(logs["var_reg"]) == pytest.approx(var, rel=1e-5, abs=1e-6)
    assert float(logs["cov_reg"]) == pytest.approx(cov, rel=1e-5, abs=1e-6)
    assert float((loss1 - loss0).detach()) == pytest.approx(2.5 * var + 0.7 * cov, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_logs_are_floats_or_detached_scalars(name):
    cfg = make_config(name, method__var_reg=1.0, method__cov_reg=1.0)
    bundle, method = make_model(cfg)
    loss, logs = method.training_step(bundle, views_for(cfg), 0, 10)
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)
    assert logs
    for key, value in logs.items():
        if isinstance(value, torch.Tensor):
            assert value.dim() == 0 and not value.requires_grad, key
        else:
            assert isinstance(value, float), key


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_blobs(name, tmp_path):
    """30 steps on the center-vector paper's blobs (one class = augmentations of one sample): the mean of the last five
    logged losses is below the mean of the first five."""
    logged, _ = run_training(make_config(name, data="blobs"), tmp_path)
    losses = np.array([m["loss"] for m in logged])
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
