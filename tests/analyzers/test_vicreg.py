"""Tests of the ``vicreg`` analyzer (Bardes et al. 2022, arXiv:2105.04906) against a naive numpy implementation and a PyTorch
re-implementation of the loss of Bardes et al. 2022's Algorithm 1."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reprscope.metrics.vicreg  # noqa: F401  (registers the analyzer)
from reprscope.analyzers.base import LayerData, run_analyzer

VIEWS = ["clean", "aug1", "aug2"]


def _data(emb, views=VIEWS, chunk_size=8192):
    return LayerData(layer="proj", space="projector", views=list(views), embeddings=np.asarray(emb), chunk_size=chunk_size)


def _rows(res):
    return {(r["metric"], r["view"]): r["value"] for r in res.rows}


def algorithm1(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """Paper 003 Algorithm 1 (PyTorch-style pseudocode), float64; returns (loss, sim, std, cov)."""
    z_a = torch.as_tensor(z_a, dtype=torch.float64)
    z_b = torch.as_tensor(z_b, dtype=torch.float64)
    n, d = z_a.shape
    sim_loss = F.mse_loss(z_a, z_b)
    std_z_a = torch.sqrt(z_a.var(dim=0) + eps)
    std_z_b = torch.sqrt(z_b.var(dim=0) + eps)
    std_loss = torch.mean(F.relu(gamma - std_z_a)) + torch.mean(F.relu(gamma - std_z_b))
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    cov_z_a = (z_a.T @ z_a) / (n - 1)
    cov_z_b = (z_b.T @ z_b) / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    cov_loss = cov_z_a[off].pow(2).sum() / d + cov_z_b[off].pow(2).sum() / d
    loss = lam * sim_loss + mu * std_loss + nu * cov_loss
    return float(loss), float(sim_loss), float(std_loss), float(cov_loss)


def naive_view(z, gamma=1.0, eps=1e-4):
    """Per-view statistics by explicit loops over dimensions (float64)."""
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    std = np.array([math.sqrt(sum((z[i, j] - z[:, j].mean()) ** 2 for i in range(n)) / (n - 1)) for j in range(d)])
    norms = np.linalg.norm(z, axis=1)
    zh = np.array([z[i] / norms[i] if norms[i] > 0 else np.zeros(d) for i in range(n)])
    std_h = zh.std(axis=0, ddof=1)
    var = std ** 2
    cov = np.cov(z, rowvar=False, ddof=1).reshape(d, d)
    c = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    out = {
        "std_mean": std.mean(),
        "collapsed_dims": float(sum(1 for s in std if s < 1e-4 * std.max() or s == 0)),
        "std_target_ratio": std_h.mean() * math.sqrt(d),
        "variance": sum(max(0.0, gamma - math.sqrt(v + eps)) for v in var) / d,
        "covariance": c,
    }
    y = (z - z.mean(axis=0)) / std  # standardised view (Eq. 10's Y)
    cy = (y.T @ y) / (n - 1)
    out["avg_corr"] = sum(cy[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / (d * (d - 1))
    return out


def _emb(n, d, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    base = rng.normal(size=(n, d)) @ mix * np.linspace(0.3, 2.0, d) + 0.5
    return np.stack([base + 0.4 * rng.normal(size=(n, d)) for _ in range(3)]).astype(dtype)


@pytest.mark.parametrize("shape", [(50, 6), (7, 12), (30, 30)])
@pytest.mark.parametrize("params", [{}, {"gamma": 0.7, "eps": 1e-3, "lam": 3.0, "mu": 2.0, "nu": 0.5}])
def test_matches_naive_and_algorithm1(shape, params):
    n, d = shape
    emb = _emb(n, d)
    got = _rows(run_analyzer("vicreg", _data(emb), params))
    p = {"gamma": 1.0, "eps": 1e-4, "lam": 25.0, "mu": 25.0, "nu": 1.0, **params}
    loss, sim, std, cov = algorithm1(emb[1], emb[2], **p)
    pair = "aug1|aug2"
    assert got[("invariance", pair)] == pytest.approx(sim, rel=1e-10)
    assert got[("variance", pair)] == pytest.approx(std, rel=1e-10)
    assert got[("covariance", pair)] == pytest.approx(cov, rel=1e-10)
    assert got[("loss", pair)] == pytest.approx(loss, rel=1e-10)
    na = [naive_view(emb[v], p["gamma"], p["eps"]) for v in (1, 2)]
    for v, name in zip(na, ("aug1", "aug2")):
        for key, want in v.items():
            assert got[(key, name)] == pytest.approx(want, rel=1e-10, abs=1e-13), (key, name)
    # Eq. 10: (1/(2d(d−1))) Σ_{i≠j} C(Y)_ij² + C(Y')_ij²
    assert got[("avg_corr", pair)] == pytest.approx((na[0]["avg_corr"] + na[1]["avg_corr"]) / 2, rel=1e-10)
    assert got[("invariance", pair)] == pytest.approx(np.mean(np.sum((emb[1] - emb[2]) ** 2, 1)) / d, rel=1e-10)


def test_float32_input_is_computed_in_float64():
    emb = _emb(40, 5, dtype=np.float32)
    got = _rows(run_analyzer("vicreg", _data(emb)))
    loss, *_ = algorithm1(emb[1].astype(np.float64), emb[2].astype(np.float64))
    assert got[("loss", "aug1|aug2")] == pytest.approx(loss, rel=1e-10)


def test_uses_first_two_augmented_views():
    emb = _emb(30, 4)
    four = np.concatenate([emb, emb[:1] * 3.0])
    got = _rows(run_analyzer("vicreg", _data(four, ["aug1", "clean", "aug2", "aug3"])))
    loss, *_ = algorithm1(four[0], four[2])
    assert got[("loss", "aug1|aug2")] == pytest.approx(loss, rel=1e-10)
    assert not any("aug3" in v for _, v in got)


def test_streaming_equals_whole():
    emb = _emb(101, 9) + 40.0  # a large common offset: the shifted accumulation must keep the variance
    whole = _rows(run_analyzer("vicreg", _data(emb)))
    streamed = _rows(run_analyzer("vicreg", _data(emb, chunk_size=7)))
    assert whole.keys() == streamed.keys()
    for key in whole:
        assert streamed[key] == pytest.approx(whole[key], rel=1e-10, abs=1e-13), key


def test_collapsed_identical_rows():
    row = np.random.default_rng(2).normal(size=6)
    emb = np.broadcast_to(row, (3, 20, 6)).copy()
    res = run_analyzer("vicreg", _data(emb))
    got = _rows(res)
    for v in ("aug1", "aug2"):
        assert got[("std_mean", v)] == 0.0
        assert got[("collapsed_dims", v)] == 6.0
        assert got[("std_target_ratio", v)] == pytest.approx(0.0, abs=1e-12)
        assert got[("variance", v)] == pytest.approx(1.0 - math.sqrt(1e-4), rel=1e-12)
        assert ("avg_corr", v) not in got
    assert got[("variance", "aug1|aug2")] == pytest.approx(2 * (1.0 - math.sqrt(1e-4)), rel=1e-12)
    assert got[("covariance", "aug1|aug2")] == pytest.approx(0.0, abs=1e-25)
    assert got[("invariance", "aug1|aug2")] == 0.0
    assert got[("loss", "aug1|aug2")] == pytest.approx(25 * 2 * (1.0 - math.sqrt(1e-4)), rel=1e-12)
    assert any("avg_corr undefined" in n for n in res.notes)


def test_zero_rows_and_constant_dimension():
    emb = _emb(40, 6)
    emb[:, ::4] = 0.0
    emb[:, :, 2] = 3.0
    res = run_analyzer("vicreg", _data(emb))
    got = _rows(res)
    for vi, name in ((1, "aug1"), (2, "aug2")):
        want = naive_view(np.delete(emb[vi], 2, axis=1))  # the constant dimension is left out of avg_corr
        assert got[("avg_corr", name)] == pytest.approx(want["avg_corr"], rel=1e-10)
        assert got[("collapsed_dims", name)] == 1.0
    loss, *_ = algorithm1(emb[1], emb[2])
    assert got[("loss", "aug1|aug2")] == pytest.approx(loss, rel=1e-10)
    assert any("5 of 6" in n for n in res.notes)


def test_collapsed_dims_threshold():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 4)) * np.array([1.0, 1.0, 1e-5, 1e-3])
    emb = np.stack([z, z, z + 0.0])
    got = _rows(run_analyzer("vicreg", _data(emb)))
    assert got[("collapsed_dims", "aug1")] == 1.0  # 1e-5 < 1e-4·max std; 1e-3 is not


def test_normalised_std_on_sphere():
    """Points spread evenly on the sphere have per-dimension std ≈ 1/√d: std_target_ratio ≈ 1."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(20000, 16))
    emb = np.stack([z, z, z]) * 5.0
    got = _rows(run_analyzer("vicreg", _data(emb)))
    assert got[("std_target_ratio", "aug1")] == pytest.approx(1.0, abs=0.02)
