"""The ``lidar`` analyzer (Thilak et al. 2023) against a per-sample loop with a general (non-symmetric)
eigensolver, a constructed case with known eigenvalues, and its affine invariance."""
import numpy as np
import pytest

import reprscope.metrics as M
from reprscope.analyzers.base import LayerData, run_analyzer


def _data(z, views=None, chunk=8192):
    views = views or [f"aug{i + 1}" for i in range(z.shape[0])]
    return LayerData(layer="l", space="encoder", views=views, embeddings=z, chunk_size=chunk)


def _row(z, params=None, **kw):
    res = run_analyzer("lidar", _data(z, **kw), params)
    return {r["metric"]: r["value"] for r in res.rows}, res


def _smoothed_erank(lam, eps):
    p = lam / lam.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def naive_lidar(z, delta=1e-4, eps=1e-7):
    """Per-sample loops for Σ_b and Σ_w; the eigenvalues of Σ_w⁻¹Σ_b (the same as those of the symmetric
    Σ_w^{-1/2}Σ_bΣ_w^{-1/2}) from numpy's general eigensolver."""
    v, n, d = z.shape
    mus = z.mean(axis=0)
    mu = mus.mean(axis=0)
    sb = sum(np.outer(m - mu, m - mu) for m in mus) / n
    sw = sum(np.outer(z[j, i] - mus[i], z[j, i] - mus[i]) for i in range(n) for j in range(v)) / (n * v)
    lam = np.sort(np.clip(np.linalg.eigvals(np.linalg.solve(sw + delta * np.eye(d), sb)).real, 0, None))[::-1]
    return _smoothed_erank(lam, eps)


def _views(n=150, d=6, v=3, noise=0.4, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) * np.linspace(3, 0.2, d) + 5.0
    return np.stack([base + noise * rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / 2 for _ in range(v)])


def test_lidar_equals_the_naive_loop():
    z = _views()
    for delta, eps in ((1e-4, 1e-7), (0.3, 1e-8)):
        got, _ = _row(z, {"delta": delta, "eps": eps})
        assert got["lidar"] == pytest.approx(naive_lidar(z, delta, eps), rel=1e-10)


def test_a_constructed_case_with_known_eigenvalues():
    """Two views μ_i ± w_i: Σ_w = (1/n)Σ w_i w_iᵀ = c·I by construction, Σ_b with chosen eigenvalues, so the
    eigenvalues of Σ_lidar are those of Σ_b divided by c + δ."""
    n, d, c, delta = 400, 5, 0.25, 1e-3
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)) - 0)
    q -= q.mean(axis=0)
    q, _ = np.linalg.qr(q)  # centred orthonormal columns
    lam_b = np.array([4.0, 2.0, 1.0, 0.5, 0.1])
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu = (q * np.sqrt(lam_b * n)) @ rot + 2.0
    w, _ = np.linalg.qr(rng.normal(size=(n, d)))
    w *= np.sqrt(c * n)
    z = np.stack([mu + w, mu - w])
    got, _ = _row(z, {"delta": delta})
    assert got["lidar"] == pytest.approx(_smoothed_erank(lam_b / (c + delta), 1e-7), rel=1e-10)


def test_affine_invariance_without_regularisation():
    z = _views(d=5)
    a = np.random.default_rng(2).normal(size=(5, 5))
    plain, _ = _row(z, {"delta": 0})
    moved, _ = _row(z @ a + 3.0, {"delta": 0})
    assert moved["lidar"] == pytest.approx(plain["lidar"], rel=1e-8)


def test_only_augmented_views_count_and_streaming_equals_whole():
    z = _views(n=97)
    clean = z.mean(axis=0, keepdims=True) + 10.0
    with_clean, res = _row(np.concatenate([clean, z]), views=["clean", "aug1", "aug2", "aug3"])
    alone, _ = _row(z)
    assert with_clean["lidar"] == pytest.approx(alone["lidar"], rel=1e-12)
    assert res.rows[0]["view"] == "aug1|aug2|aug3"
    chunked, _ = _row(z, chunk=10)
    assert chunked["lidar"] == pytest.approx(alone["lidar"], rel=1e-11)


def test_function_equals_the_row_and_collapse_gives_one():
    z = _views()
    got, _ = _row(z)
    assert M.lidar(z) == got["lidar"]
    assert M.lidar(z[0], z[1], z[2]) == got["lidar"]
    # every sample on one line: one discriminant direction
    t = np.random.default_rng(3).normal(size=(200, 1))
    line = np.stack([t @ np.ones((1, 4)) + 0.01 * np.random.default_rng(s).normal(size=(200, 4)) for s in range(2)])
    assert M.lidar(line) == pytest.approx(1.0, abs=0.05)
