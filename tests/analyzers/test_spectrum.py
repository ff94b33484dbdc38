"""Tests of the ``spectrum`` analyzer against eigenvalues of the explicit covariance / Gram matrix."""
import math

import numpy as np
import pytest
import torch

import reprscope.metrics.spectrum  # noqa: F401  (registers the analyzer)
from reprscope.analyzers.base import LayerData, run_analyzer
from reprscope.errors import ReprscopeError


def _data(emb, views=None):
    emb = np.asarray(emb)
    if emb.ndim == 2:
        emb = emb[None]
    return LayerData(layer="enc", space="encoder", views=views or [f"aug{i + 1}" for i in range(emb.shape[0])], embeddings=emb)


def _rows(res, view=None):
    """{metric: value} for scalars and {metric: {index: value}} for vectors of one view."""
    out = {}
    for r in res.rows:
        if view is not None and r["view"] != view:
            continue
        if r["metric"] in ("sv", "log_sv"):
            out.setdefault(r["metric"], {})[int(r["index"])] = r["value"]
        else:
            out[r["metric"]] = r["value"]
    return out


def naive_sv(z):
    """sqrt of the eigenvalues of the explicit d×d covariance ZᵀZ or n×n Gram ZZᵀ (the smaller), descending."""
    z = np.asarray(z, dtype=np.float64)
    m = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T
    ev = np.linalg.eigvalsh(m)[::-1]
    return np.sqrt(np.clip(ev, 0, None))


def naive_entropy_rank(p):
    h = 0.0
    for x in p:
        if x > 0:
            h -= x * math.log(x)
    return math.exp(h)


def naive(z, tau=0.01, tau_abs=0.01, eps=1e-7):
    z = np.asarray(z, dtype=np.float64)
    zc = z - z.mean(axis=0)
    sv = naive_sv(zc)
    unc = naive_sv(z)
    return {
        "sv": sv,
        "effective_rank": naive_entropy_rank(sv / sv.sum()),
        "rankme": naive_entropy_rank(unc / unc.sum() + eps),
        "rank_tau": float(sum(1 for s in sv if s >= tau * sv[0])),
        "rank_abs": float(sum(1 for s in sv if s >= tau_abs)),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (12, 12)])
@pytest.mark.parametrize("params", [{}, {"tau": 0.3, "tau_abs": 2.0, "eps": 0.0}])
def test_matches_naive(dtype, shape, params):
    rng = np.random.default_rng(0)
    n, d = shape
    z = (rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d) + 1.5).astype(dtype)
    got = _rows(run_analyzer("spectrum", _data(z), params))
    want = naive(z, **{"tau": 0.01, "tau_abs": 0.01, "eps": 1e-7, **params})
    k = min(n, d)
    assert sorted(got["sv"]) == list(range(k))
    sv = np.array([got["sv"][i] for i in range(k)])
    np.testing.assert_allclose(sv, want["sv"], rtol=0, atol=1e-7 * want["sv"][0])
    assert np.all(np.diff(sv) <= 0)
    for key in ("effective_rank", "rankme", "rank_tau", "rank_abs"):
        assert got[key] == pytest.approx(want[key], rel=1e-7), key
    for i, v in got["log_sv"].items():
        assert v == pytest.approx(math.log(got["sv"][i]), rel=1e-12)


def test_each_view_separately():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(3, 10, 4))
    emb[2] *= 5.0
    res = run_analyzer("spectrum", _data(emb, ["clean", "aug1", "aug2"]))
    assert {r["view"] for r in res.rows} == {"clean", "aug1", "aug2"}
    for i, v in enumerate(["clean", "aug1", "aug2"]):
        sv = _rows(res, v)["sv"]
        np.testing.assert_allclose([sv[j] for j in range(4)], naive_sv(emb[i] - emb[i].mean(0)), rtol=1e-9)


def test_diagonal_known_spectrum():
    diag = np.array([4.0, 2.0, 1.0, 0.5, 0.01])
    z = np.vstack([np.diag(diag), -np.diag(diag)])  # column means 0: centred = uncentred, σ = √2·diag
    sv_true = math.sqrt(2) * diag
    got = _rows(run_analyzer("spectrum", _data(z), {"tau": 0.1, "tau_abs": 1.0}))
    np.testing.assert_allclose([got["sv"][i] for i in range(5)], sv_true, rtol=1e-13)
    assert got["rank_tau"] == 4.0  # σ_k ≥ 0.1·σ_1 ⇔ diag ≥ 0.4
    assert got["rank_abs"] == 3.0  # √2·(4, 2, 1) ≥ 1 > √2·0.5
    p = diag / diag.sum()
    assert got["effective_rank"] == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-13)
    q = p + 1e-7
    assert got["rankme"] == pytest.approx(math.exp(-sum(x * math.log(x) for x in q)), rel=1e-13)
    assert _rows(run_analyzer("spectrum", _data(z), {"tau": 0.2}))["rank_tau"] == 3.0


def test_closed_forms():
    z = np.vstack([np.eye(4), -np.eye(4)])  # four equal singular values
    got = _rows(run_analyzer("spectrum", _data(z), {"eps": 0.0}))
    assert got["effective_rank"] == pytest.approx(4.0, rel=1e-14)
    assert got["rankme"] == pytest.approx(4.0, rel=1e-14)
    z = np.vstack([np.diag([3.0, 1.0]), -np.diag([3.0, 1.0])])
    got = _rows(run_analyzer("spectrum", _data(z)))
    assert got["effective_rank"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", [[0.1, 0.2, 0.3], [1e3 + 0.1, -7.7, 1e-3, 0.3]])
def test_collapsed_identical_rows(dtype, row):
    z = np.tile(np.array(row, dtype=dtype), (11, 1))
    res = run_analyzer("spectrum", _data(z))
    got = _rows(res)
    assert all(v == 0.0 for v in got["sv"].values())  # exact zeros, not rounding noise
    assert "log_sv" not in got
    assert got["effective_rank"] == 0.0 and got["rank_tau"] == 0.0 and got["rank_abs"] == 0.0
    assert got["rankme"] == pytest.approx(1.0, abs=1e-4)  # one non-zero uncentred singular value
    assert any("collapsed: all samples identical" in n for n in res.notes)


def test_nearly_collapsed_by_rounding():
    # rows equal up to the last bit: the centred spectrum is rounding noise and must read as collapsed
    base = np.array([0.1, 0.7, 3.3])
    z = np.tile(base, (50, 1)) * (1 + np.finfo(np.float64).eps * np.random.default_rng(2).integers(-1, 2, size=(50, 1)))
    got = _rows(run_analyzer("spectrum", _data(z)))
    assert got["rank_tau"] == 0.0 and got["effective_rank"] == 0.0
    assert all(v == 0.0 for v in got["sv"].values())


@pytest.mark.parametrize("n, d", [(2000, 16), (12, 40)])
def test_small_centred_values_under_a_large_offset_are_kept(n, d):
    """A layer with mean 10 and stds from 1e-5 to 1: every centred σ is resolved (float64), none is zeroed by a
    threshold scaled to the uncentred σ_1 (dominated by the offset); the values match an SVD of Z − mean."""
    rng = np.random.default_rng(0)
    z = 10.0 + rng.normal(size=(n, d)) * np.geomspace(1e-5, 1.0, d)
    got = _rows(run_analyzer("spectrum", _data(z), {"tau_abs": 0.0}))
    want = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
    k = min(n, d) - (1 if n <= d else 0)  # centring removes one dimension when n ≤ d
    sv = np.array([got["sv"][i] for i in range(k)])
    np.testing.assert_allclose(sv, want[:k], rtol=1e-6)
    assert got["rank_abs"] == float(k)


def test_float32_store_spectrum_tail_is_resolved(monkeypatch):
    """Products of a large float32 store are float32 for some analyzers (stats.product_dtype); the moments the
    spectrum reads stay float64, so σ_k/σ_1 down to ~1e-5 keep their value (float32 products: noise there)."""
    import reprscope.metrics.stats as stats

    monkeypatch.setattr(stats, "FLOAT32_PRODUCTS_ABOVE", 0)  # every float32 store counts as large
    rng = np.random.default_rng(1)
    n, d = 4000, 64
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    z = ((rng.normal(size=(n, d)) * np.geomspace(1.0, 1e-5, d)) @ q.T + 0.5).astype(np.float32)
    data = _data(z)
    assert stats.product_dtype(data) == np.float32
    got = _rows(run_analyzer("spectrum", data, {"tau_abs": 0.0}))
    z64 = z.astype(np.float64)
    want = np.linalg.svd(z64 - z64.mean(axis=0), compute_uv=False)
    sv = np.array([got["sv"][i] for i in range(d)])
    np.testing.assert_allclose(sv, want, rtol=1e-6)


def test_zero_matrix_rankme_zero_note():
    res = run_analyzer("spectrum", _data(np.zeros((6, 4), dtype=np.float32)))
    got = _rows(res)
    assert got["rankme"] == 0.0 and got["effective_rank"] == 0.0
    assert any("rankme is 0" in n for n in res.notes)
    assert any("collapsed" in n for n in res.notes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_deficient_exact_zeros(dtype):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 3)).astype(dtype)
    z = base[:, [0, 1, 2, 0, 1, 2, 2]]  # exactly rank 3 in any dtype
    got = _rows(run_analyzer("spectrum", _data(z), {"tau": 1e-6, "tau_abs": 0.0}))
    sv = [got["sv"][i] for i in range(7)]
    assert all(s > 0 for s in sv[:3]) and sv[3:] == [0.0] * 4
    assert got["rank_tau"] == 3.0 and got["rank_abs"] == 3.0
    assert sorted(got["log_sv"]) == [0, 1, 2]  # index kept, only σ > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_n_less_than_d(dtype):
    z = np.random.default_rng(4).normal(size=(5, 20)).astype(dtype)
    got = _rows(run_analyzer("spectrum", _data(z), {"tau": 1e-9, "tau_abs": 0.0}))
    assert len(got["sv"]) == 5
    assert got["sv"][4] == 0.0  # centring removes one dimension
    assert got["rank_tau"] == 4.0 and got["rank_abs"] == 4.0
    assert got["effective_rank"] < 4.0 + 1e-9


def test_zero_rows_finite():
    z = np.random.default_rng(5).normal(size=(12, 4))
    z[[1, 7]] = 0
    res = run_analyzer("spectrum", _data(z))
    assert all(np.isfinite(r["value"]) for r in res.rows)
    want = naive(z)
    assert _rows(res)["effective_rank"] == pytest.approx(want["effective_rank"], rel=1e-8)


def test_nan_sample_left_out_with_note():
    z = np.random.default_rng(6).normal(size=(2, 9, 3))
    bad = z.copy()
    bad[0, 2, 1] = np.inf
    res = run_analyzer("spectrum", _data(bad))
    ref = run_analyzer("spectrum", _data(np.delete(z, 2, axis=1)))
    assert any("NaN/Inf" in n for n in res.notes)
    assert [r["value"] for r in res.rows] == pytest.approx([r["value"] for r in ref.rows])


@pytest.mark.parametrize("params, name", [({"tau": -1}, "tau"), ({"tau": 0}, "tau"), ({"tau_abs": -0.5}, "tau_abs"),
                                          ({"eps": -1e-3}, "eps"), ({"tau": "abc"}, "tau")])
def test_bad_parameter_raises(params, name):
    with pytest.raises(ReprscopeError, match=f"'{name}' parameter"):
        run_analyzer("spectrum", _data(np.ones((3, 2))), params)


def test_parameters_stamped_and_deterministic():
    z = np.random.default_rng(7).normal(size=(8, 3)).astype(np.float32)
    a = run_analyzer("spectrum", _data(z), {"tau": "0.2"})
    b = run_analyzer("spectrum", _data(z), {"tau": 0.2})
    assert a.rows == b.rows
    assert all(r["tau"] == 0.2 and r["tau_abs"] == 0.01 and r["eps"] == 1e-7 for r in a.rows)


def test_side_by_side_helper_keeps_order_and_threads(monkeypatch):
    """map_side_by_side: the results of the sequential loop in item order, with several workers on the CPU;
    torch on one intra-op thread inside (restored after)."""
    import threading
    import time

    import torch

    import reprscope.metrics.stats as stats

    monkeypatch.setattr(stats, "cores", lambda: 4)
    seen = []

    def work(i):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.02)  # long enough that the pool hands the next items to other workers (not one fast worker)
        m = torch.from_numpy(np.random.default_rng(i).normal(size=(30, 30)))
        return float(torch.linalg.eigvalsh(m @ m.T).sum())

    before = torch.get_num_threads()
    got = stats.map_side_by_side(work, list(range(12)))
    assert {t for _, t in seen} == {1} and torch.get_num_threads() == before
    assert len({tid for tid, _ in seen}) > 1  # ran on worker threads
    seen.clear()
    assert stats.map_side_by_side(work, list(range(12)), max_workers=1) == got  # one after another, same order
    assert {tid for tid, _ in seen} == {threading.get_ident()}


def _blas_threads():
    import reprscope.metrics.stats as stats

    return {lib["num_threads"] for lib in stats._numpy_blas().info()}


def test_blas_held_to_one_thread_side_by_side_and_restored(monkeypatch):
    """numpy's BLAS on one thread in every worker of a side-by-side section, also while eigvalsh/eigh enter and
    leave their own one-thread blocks inside the workers; the number before the section comes back after it."""
    import reprscope.metrics.stats as stats

    assert stats._numpy_blas() is not None  # numpy's wheels bring OpenBLAS; threadpoolctl is a dependency
    monkeypatch.setattr(stats, "cores", lambda: 4)
    with stats._numpy_blas().limit(limits=3):
        def work(i):
            m = torch.from_numpy(np.random.default_rng(i).normal(size=(40, 40)))
            before = _blas_threads()
            stats.eigvalsh(m @ m.T)
            stats.eigh(m @ m.T)
            return before, _blas_threads()

        got = stats.map_side_by_side(work, list(range(16)))
        assert all(b == {1} and a == {1} for b, a in got)
        assert _blas_threads() == {3}
        with stats.single_blas_thread():
            with stats.single_blas_thread():
                assert _blas_threads() == {1}
            assert _blas_threads() == {1}  # the outer block still holds it
        assert _blas_threads() == {3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_decompositions_equal_torch_with_and_without_numpy_lapack(monkeypatch, dtype):
    import reprscope.metrics.stats as stats

    x = torch.from_numpy(np.random.default_rng(3).normal(size=(60, 25))).to(dtype)
    m = x.T @ x
    want = torch.linalg.eigvalsh(m.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    for blas in (stats._numpy_blas(), None):  # numpy's LAPACK, then the torch fallback
        monkeypatch.setattr(stats, "_numpy_blas", lambda: blas)
        vals = stats.eigvalsh(m)
        assert vals.dtype == dtype
        torch.testing.assert_close(vals.double(), want, rtol=0, atol=tol * float(want[-1]))
        w, v = stats.eigh(m)
        assert w.dtype == v.dtype == dtype
        torch.testing.assert_close((v * w) @ v.T, m, rtol=0, atol=tol * float(want[-1]))
        torch.testing.assert_close(v.T @ v, torch.eye(25, dtype=dtype), rtol=0, atol=10 * tol)


def test_shift_far_from_the_mean_still_zeroes_rounding_noise():
    """Two distinct points: the centred spectrum has rank 1 exactly. The streaming moments are formed about
    the first chunk's mean — here the rare point — so the products' rounding is of the size of
    n‖µ − shift‖², far above λ_max(scatter); the threshold must account for it (Moments.shifted_scale2)."""
    rng = np.random.default_rng(0)
    c0 = rng.normal(size=8) * 3 + 5
    c1 = c0 + rng.normal(size=8) * 0.7
    z = np.vstack([c0[None], np.tile(c1, (2000, 1)), np.tile(c0, (3, 1))])
    data = LayerData(layer="enc", space="encoder", views=["v"], embeddings=z[None], chunk_size=1)
    got = _rows(run_analyzer("spectrum", data, {"tau_abs": 0.0}))
    sv = [got["sv"][i] for i in range(8)]
    want = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)[0]
    assert sv[0] == pytest.approx(want, rel=1e-9) and sv[1:] == [0.0] * 7
    assert got["rank_abs"] == 1.0
