"""The pieces the tangent analysis is made of, each against an independent computation."""
import numpy as np
import torch

from reprscope.metrics._core import HeadModule
from reprscope.metrics.tangent import jacobian_subset, linear_fvu_terms, projector_map


def _linear(w):
    return HeadModule(spec=[{"type": "linear", "in": w.shape[1], "out": w.shape[0], "bias": False}],
                      params={"0.weight": w.astype(np.float32)})


def test_linear_fvu_terms_equal_least_squares_residuals():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 8))  # rank 3 in 8 dimensions
    pm = projector_map(_linear(w), 8, torch.device("cpu"))
    dh = rng.normal(size=(20, 8))
    num, den = linear_fvu_terms(dh, pm.basis)
    coef, *_ = np.linalg.lstsq(w.astype(np.float32).astype(np.float64).T, dh.T, rcond=None)
    resid = dh.T - w.astype(np.float32).astype(np.float64).T @ coef
    assert den == np.sum(dh ** 2)
    assert np.isclose(num, np.sum(resid ** 2), rtol=1e-10)
    # δh inside the row space: the explicit residual path keeps it at rounding level
    inside = rng.normal(size=(5, 3)) @ w
    n2, d2 = linear_fvu_terms(inside, projector_map(_linear(w), 8, torch.device("cpu")).basis)
    assert n2 < 1e-6 * d2


def test_projector_map_reasons_and_affine_map():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 6))
    bad = _linear(w)
    bad.params["0.weight"][0, 0] = np.nan
    assert "non-finite" in projector_map(bad, 6, torch.device("cpu"))
    assert "cannot take this layer's 5-dimensional" in projector_map(_linear(w), 5, torch.device("cpu"))
    pm = projector_map(_linear(w), 6, torch.device("cpu"))
    assert pm.linear and pm.use_numpy and pm.d_proj == 4
    assert np.allclose(pm.m_np, w.astype(np.float32)) and np.allclose(pm.g0, 0)


def test_jacobian_subset():
    mask, note = jacobian_subset(10, 20, 0)
    assert mask.all() and note is None
    mask, note = jacobian_subset(100, 7, 3)
    assert mask.sum() == 7 and "7 of 100" in note
    assert np.array_equal(mask, jacobian_subset(100, 7, 3)[0])
