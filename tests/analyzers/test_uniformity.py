"""Tests of the ``uniformity`` analyzer (Wang & Isola 2020) against a naive double loop over pairs."""
import math

import numpy as np
import pytest

import reprscope.metrics.align_uniform as uni_mod
from reprscope.analyzers.base import LayerData, run_analyzer

VIEWS = ["clean", "aug1", "aug2"]


def _data(emb, views=VIEWS, chunk_size=8192, seed=0):
    return LayerData(layer="enc", space="encoder", views=list(views), embeddings=np.asarray(emb),
                     chunk_size=chunk_size, seed=seed)


def _rows(res):
    return {(r["metric"], r["view"]): r["value"] for r in res.rows}


def _hat(z):
    n = math.sqrt(sum(float(x) ** 2 for x in z))
    return np.asarray(z, dtype=np.float64) / n if n > 0 else np.zeros(len(z))


def naive_uniform(z, t=2.0):
    """log mean_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²), explicit double loop with a max shift."""
    h = [_hat(r) for r in z]
    vals = [-t * float(np.sum((h[i] - h[j]) ** 2)) for i in range(len(h)) for j in range(len(h)) if i != j]
    top = max(vals)
    return top + math.log(sum(math.exp(v - top) for v in vals) / len(vals))


def naive_align(a, b, alpha=2.0):
    return sum(float(np.linalg.norm(_hat(x) - _hat(y))) ** alpha for x, y in zip(a, b)) / len(a)


def _unit_rows(z):
    """A torch tensor of the ℓ2-normalised rows of ``z`` (for the kernel functions' direct tests)."""
    import torch

    z = np.asarray(z, dtype=np.float64)
    return torch.from_numpy(z / np.linalg.norm(z, axis=1, keepdims=True))


def _emb(n, d, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) + 0.3
    return np.stack([base + 0.5 * rng.normal(size=(n, d)) for _ in range(3)]).astype(dtype)


@pytest.mark.parametrize("shape", [(12, 5), (4, 9), (2, 3)])
@pytest.mark.parametrize("params", [{}, {"t": 0.5, "alpha": 1.0}, {"t": 400.0}])
def test_matches_naive(shape, params):
    emb = _emb(*shape)
    t, alpha = params.get("t", 2.0), params.get("alpha", 2.0)
    got = _rows(run_analyzer("uniformity", _data(emb), params))
    u1, u2 = naive_uniform(emb[1], t), naive_uniform(emb[2], t)
    assert got[("uniform", "aug1")] == pytest.approx(u1, rel=1e-10, abs=1e-12)
    assert got[("uniform", "aug2")] == pytest.approx(u2, rel=1e-10, abs=1e-12)
    assert got[("uniform", "aug1|aug2")] == pytest.approx((u1 + u2) / 2, rel=1e-10, abs=1e-12)
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(emb[1], emb[2], alpha), rel=1e-10, abs=1e-14)


def test_float32_and_zero_rows():
    emb = _emb(15, 4, dtype=np.float32)
    emb[:, 3] = 0.0
    emb[1, 7] = 0.0
    res = run_analyzer("uniformity", _data(emb))
    got = _rows(res)
    e64 = emb.astype(np.float64)
    assert got[("uniform", "aug1")] == pytest.approx(naive_uniform(e64[1]), rel=1e-10)
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(e64[1], e64[2]), rel=1e-10)
    assert any("zero rows" in n for n in res.notes)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_on_the_sphere(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 400)), int(rng.integers(1, 6))
    emb = rng.normal(size=(3, n, d)) * rng.uniform(0.1, 10.0)
    got = _rows(run_analyzer("uniformity", _data(emb)))
    assert 0.0 <= got[("align", "aug1|aug2")] <= 4.0
    for v in ("aug1", "aug2", "aug1|aug2"):
        # Jensen: uniform ≥ −t·E‖ẑ_i − ẑ_j‖² ≥ −2t·n/(n−1); → −4 for t = 2
        assert -4.0 * n / (n - 1) - 1e-12 <= got[("uniform", v)] <= 1e-12


def test_uniform_at_least_minus_four_for_many_points():
    emb = np.random.default_rng(5).normal(size=(3, 3000, 3))
    got = _rows(run_analyzer("uniformity", _data(emb)))
    assert got[("uniform", "aug1")] >= -4.0
    # uniform on S²: ẑ_i·ẑ_j ~ U[−1, 1], so E exp(−2‖ẑ_i − ẑ_j‖²) = E exp(−4 + 4c) = (1 − e⁻⁸)/8
    assert got[("uniform", "aug1")] == pytest.approx(math.log((1 - math.exp(-8)) / 8), abs=0.02)


def test_extremes():
    # identical views: perfectly aligned; antipodal views: align = 4
    z = np.random.default_rng(6).normal(size=(20, 5))
    got = _rows(run_analyzer("uniformity", _data(np.stack([z, z, z]))))
    assert got[("align", "aug1|aug2")] == pytest.approx(0.0, abs=1e-14)
    got = _rows(run_analyzer("uniformity", _data(np.stack([z, z, -z]))))
    assert got[("align", "aug1|aug2")] == pytest.approx(4.0, rel=1e-12)
    # collapse: every pair at distance 0 → uniform = 0; two antipodal points → −2t·2 = −8
    got = _rows(run_analyzer("uniformity", _data(np.ones((3, 10, 4)))))
    assert got[("uniform", "aug1")] == pytest.approx(0.0, abs=1e-12)
    pair = np.array([[1.0, 0.0], [-1.0, 0.0]])
    got = _rows(run_analyzer("uniformity", _data(np.stack([pair] * 3))))
    assert got[("uniform", "aug1")] == pytest.approx(-8.0, rel=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 1.0])
@pytest.mark.parametrize("spread", [1e-4, 1e-7, 1e-10])
def test_nearly_identical_views_align_exact(spread, alpha):
    """align of views that differ by tiny amounts: the expanded square would cancel to rounding noise; the
    explicit difference keeps it exact to 1e-8 (float64 and float32 stores)."""
    rng = np.random.default_rng(9)
    z = rng.normal(size=(30, 7)) + 1.0
    emb = np.stack([z, z, z + spread * rng.normal(size=z.shape)])
    emb[2, :10] = rng.normal(size=(10, 7))  # a third of the pairs far apart: the expansion is used there
    got = _rows(run_analyzer("uniformity", _data(emb), {"alpha": alpha}))
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(emb[1], emb[2], alpha), rel=1e-8)
    close = np.stack([z, z, z + spread * rng.normal(size=z.shape)])
    got = _rows(run_analyzer("uniformity", _data(close), {"alpha": alpha}))
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(close[1], close[2], alpha), rel=1e-8)
    e32 = close.astype(np.float32)
    got = _rows(run_analyzer("uniformity", _data(e32), {"alpha": alpha}))
    e64 = e32.astype(np.float64)
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(e64[1], e64[2], alpha), rel=1e-8, abs=1e-300)


def test_blocks_and_chunks_equal_whole(monkeypatch):
    emb = _emb(53, 6)
    whole = _rows(run_analyzer("uniformity", _data(emb)))
    monkeypatch.setattr(uni_mod, "_BLOCK", 5)
    monkeypatch.setattr(uni_mod, "_ALIGN_BLOCK", 3)
    blocked = _rows(run_analyzer("uniformity", _data(emb, chunk_size=8)))
    assert blocked.keys() == whole.keys()
    for k in whole:
        assert blocked[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-14), k


def test_log_mean_exp_pairs_direct():
    import torch

    x = _unit_rows(np.random.default_rng(7).normal(size=(37, 4)))
    for block in (1, 4, 37, 100):
        assert uni_mod.log_mean_exp_pairs(x, 2.0, block=block) == pytest.approx(naive_uniform(x.numpy()), rel=1e-12)


def test_subsample_above_max_samples():
    emb = _emb(40, 3)
    res = run_analyzer("uniformity", _data(emb, seed=3), {"max_samples": 10})
    got = _rows(res)
    sub = np.sort(np.random.default_rng(3).choice(40, size=10, replace=False))
    assert got[("uniform", "aug1")] == pytest.approx(naive_uniform(emb[1][sub]), rel=1e-10)
    assert got[("align", "aug1|aug2")] == pytest.approx(naive_align(emb[1], emb[2]), rel=1e-10)  # all samples
    assert any("10 of 40" in n for n in res.notes)
    # the subset also survives chunking
    chunked = _rows(run_analyzer("uniformity", _data(emb, chunk_size=6, seed=3), {"max_samples": 10}))
    assert chunked[("uniform", "aug1")] == pytest.approx(got[("uniform", "aug1")], rel=1e-12)
    exact = _rows(run_analyzer("uniformity", _data(emb, seed=3), {"max_samples": 40}))
    assert exact[("uniform", "aug1")] == pytest.approx(naive_uniform(emb[1]), rel=1e-10)


@pytest.mark.parametrize("product_dtype", ["float64", "float32"])
def test_factored_numpy_and_torch_paths_agree(product_dtype):
    """The factored kernel sum runs through numpy on the CPU and through torch elsewhere: same value."""
    import torch

    x = _unit_rows(np.random.default_rng(8).normal(size=(61, 5)))
    sq = (x * x).sum(dim=1)
    dt = getattr(torch, product_dtype)
    a = uni_mod._log_sum_exp_factored(x, sq, 2.0, 16, dt, use_numpy=True)
    b = uni_mod._log_sum_exp_factored(x, sq, 2.0, 16, dt, use_numpy=False)
    c = uni_mod._log_sum_exp_shifted(x, sq, 2.0, 16, dt)
    assert a == pytest.approx(b, rel=1e-12)
    assert a == pytest.approx(c, rel=1e-12 if product_dtype == "float64" else 1e-6)
