"""The ``similarity`` analyzer (linear and RBF CKA, SVCCA, PWCCA, CCA, Procrustes, mutual k-NN) against independent
references written from the papers' definitions (n×n Gram matrices, QR-based CCA in sample space, brute-force
neighbours), the measures' invariances, and the streamed path against the whole arrays."""
import warnings

import h5py
import numpy as np
import pytest
import torch

import reprscope.metrics as M
from reprscope.analyzers.base import LayerData, run_pair
from reprscope.errors import ReprscopeError
from reprscope.metrics import similarity as S


def _layers(n=240, dx=14, dy=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) @ rng.normal(size=(dx, dx)) + 4.0
    y = np.tanh(x[:, :dy] @ rng.normal(size=(dy, dy)) / 3) + 0.3 * rng.normal(size=(n, dy)) - 2.0
    return x, y


def _data(arr, name="l", chunk=8192):
    return LayerData(layer=name, space="encoder", views=["clean"], embeddings=np.asarray(arr)[None], chunk_size=chunk)


def _pair_rows(x, y, params=None, chunk=8192):
    res = run_pair("similarity", _data(x, "x", chunk), _data(y, "y", chunk), params)
    return {r["metric"]: r["value"] for r in res.rows}, res.notes


# -- independent references ---------------------------------------------------------------------------------


def _hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - 1.0 / n
    return np.trace(k @ h @ l @ h)


def _hsic_unbiased(k, l):
    """Song et al. 2012, Eq. 5, written out on zero-diagonal Gram matrices."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _cka(k, l, hsic):
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _linear_gram(a):
    ac = a - a.mean(axis=0)
    return ac @ ac.T


def _cca_sample_space(x, y):
    """Canonical correlations and the x/y canonical variates from orthonormal bases of the centred columns."""
    qx, _ = np.linalg.qr(x - x.mean(axis=0))
    qy, _ = np.linalg.qr(y - y.mean(axis=0))
    u, s, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return s, qx @ u, qy @ vt.T


def _svd_reduce(a, variance):
    ac = a - a.mean(axis=0)
    u, s, _ = np.linalg.svd(ac, full_matrices=False)
    keep = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), variance - 1e-12) + 1)
    return u[:, :keep] * s[:keep]


def _pwcca_reference(x, y):
    """Morcos et al.'s recipe in sample space: canonical variates of the side with fewer neurons, orthonormalised
    by QR, weights Σ_j |⟨p_i, x_j⟩| over its centred neurons."""
    rho, hx, hy = _cca_sample_space(x, y)
    side, h = (x, hx) if x.shape[1] <= y.shape[1] else (y, hy)
    p, _ = np.linalg.qr(h[:, :len(rho)])
    w = np.abs(p.T @ (side - side.mean(axis=0))).sum(axis=1)
    return float(np.sum(w / w.sum() * rho))


def _rbf_reference(a, sigma=1.0):
    d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))


def _knn_reference(a, k):
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    sims = an @ an.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_linear_cka_equals_the_gram_form_biased_and_debiased():
    x, y = _layers()
    rows, _ = _pair_rows(x, y)
    k, l = _linear_gram(x), _linear_gram(y)
    assert rows["cka_linear"] == pytest.approx(_cka(k, l, _hsic_biased), rel=1e-12)
    assert rows["cka_linear_debiased"] == pytest.approx(_cka(k, l, _hsic_unbiased), rel=1e-10)


def test_cca_svcca_pwcca_equal_sample_space_references():
    x, y = _layers()
    rows, _ = _pair_rows(x, y)
    rho, _, _ = _cca_sample_space(x, y)
    assert rows["cca_mean"] == pytest.approx(rho.mean(), rel=1e-10)
    rx, ry = _svd_reduce(x, 0.99), _svd_reduce(y, 0.99)
    assert rx.shape[1] < x.shape[1]  # the reduction really drops directions here
    assert rows["svcca"] == pytest.approx(_cca_sample_space(rx, ry)[0].mean(), rel=1e-10)
    assert rows["pwcca"] == pytest.approx(_pwcca_reference(x, y), rel=1e-10)
    # the weights come from the side with fewer neurons, whichever argument it is
    assert _pair_rows(y, x)[0]["pwcca"] == pytest.approx(_pwcca_reference(y, x), rel=1e-10)


def test_procrustes_equals_the_nuclear_norm_of_normalised_layers():
    x, y = _layers()
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    xn, yn = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    ref = 2 - 2 * np.linalg.svd(xn.T @ yn, compute_uv=False).sum()
    assert _pair_rows(x, y)[0]["procrustes"] == pytest.approx(ref, rel=1e-12)


def test_rbf_cka_in_one_batch_equals_the_full_gram_reference():
    x, y = _layers(n=120)
    rows, _ = _pair_rows(x, y, {"measures": "cka_rbf", "batch_size": 120, "sigma": 0.8})
    assert list(rows) == ["cka_rbf"]
    assert rows["cka_rbf"] == pytest.approx(_cka(_rbf_reference(x, 0.8), _rbf_reference(y, 0.8), _hsic_unbiased),
                                            rel=1e-10)


def test_rbf_cka_averages_the_hsic_of_the_batches_of_a_seeded_permutation():
    x, y = _layers(n=130)
    order = S.subset_order(130, 4096, seed=0)
    xs, ys = x[order], y[order]
    kl = kk = ll = 0.0
    for s in range(0, 130, 50):  # batches of 50, 50, 30
        k, l = _rbf_reference(xs[s:s + 50]), _rbf_reference(ys[s:s + 50])
        kl, kk, ll = kl + _hsic_unbiased(k, l), kk + _hsic_unbiased(k, k), ll + _hsic_unbiased(l, l)
    rows, _ = _pair_rows(x, y, {"measures": "cka_rbf", "batch_size": 50})
    assert rows["cka_rbf"] == pytest.approx(kl / np.sqrt(kk * ll), rel=1e-10)


def test_mutual_knn_equals_brute_force_neighbours():
    x, y = _layers(n=200)
    a, b = _knn_reference(x, 7), _knn_reference(y, 7)
    ref = np.mean([len(set(a[i]) & set(b[i])) / 7 for i in range(200)])
    assert _pair_rows(x, y, {"measures": "mutual_knn", "k": 7})[0]["mutual_knn"] == pytest.approx(ref, abs=1e-15)
    # blocks of rows beyond the first (n > the block size) give the same neighbours
    big = np.random.default_rng(3).normal(size=(S._KNN_BLOCK + 300, 5))
    assert np.array_equal(S.knn_sets(big, 4)[-300:], _knn_reference(big, 4)[-300:])


def test_hsic_unbiased_helper_matches_the_written_out_estimator():
    rng = np.random.default_rng(1)
    k, l = _rbf_reference(rng.normal(size=(30, 3))), _linear_gram(rng.normal(size=(30, 4)))
    assert S.hsic_unbiased(torch.from_numpy(k), torch.from_numpy(l)) == pytest.approx(_hsic_unbiased(k, l), rel=1e-12)


# -- the measures' invariances and known values ------------------------------------------------------------------


def test_invariances_orthogonal_transform_scale_and_translation():
    x, _ = _layers()
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(x.shape[1], x.shape[1])))
    rows, _ = _pair_rows(x, 2.5 * x @ q - 7.0)
    for m in ("cka_linear", "cka_linear_debiased", "svcca", "pwcca", "cca_mean", "cka_rbf"):
        assert rows[m] == pytest.approx(1.0, abs=1e-9), m
    assert rows["procrustes"] == pytest.approx(0.0, abs=1e-9)
    # cosine neighbours (Huh et al.'s convention) see rotation and scale, not translation
    assert _pair_rows(x, 2.5 * x @ q)[0]["mutual_knn"] == 1.0
    assert rows["mutual_knn"] < 1.0


def test_cca_is_invariant_to_any_invertible_linear_map_and_cka_is_not():
    x, _ = _layers()
    a = np.random.default_rng(4).normal(size=(x.shape[1], x.shape[1]))
    rows, _ = _pair_rows(x, x @ a)
    assert rows["cca_mean"] == pytest.approx(1.0, abs=1e-8) and rows["pwcca"] == pytest.approx(1.0, abs=1e-8)
    assert rows["cka_linear"] < 0.99


def test_debiased_cka_removes_the_bias_of_independent_layers():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 100)), rng.normal(size=(200, 100))
    rows, _ = _pair_rows(x, y, {"measures": "cka_linear,cka_linear_debiased"})
    assert rows["cka_linear"] > 0.3  # d comparable to n: the biased estimate is far from 0
    assert abs(rows["cka_linear_debiased"]) < 0.05


def test_a_large_common_offset_costs_no_precision():
    x, y = _layers()
    rows, _ = _pair_rows(x, y, {"measures": "cka_linear,cka_linear_debiased,procrustes,pwcca"})
    far, _ = _pair_rows(x + 1e6, y - 3e5, {"measures": "cka_linear,cka_linear_debiased,procrustes,pwcca"})
    for m in rows:
        assert far[m] == pytest.approx(rows[m], rel=1e-8), m


def test_rank_deficient_and_constant_layers():
    x, _ = _layers()
    low = np.hstack([x[:, :3], x[:, :3] @ np.ones((3, 4))])  # 7 neurons of rank 3
    rows, _ = _pair_rows(x, low)
    assert rows["cca_mean"] == pytest.approx(1.0, abs=1e-8)  # 3 canonical directions, all exact
    c = S.cca_of(S.moments_of_arrays(x, low))
    assert c.rho.size == 3
    rows, notes = _pair_rows(x, np.ones((x.shape[0], 3)))
    assert "cka_linear" not in rows and any("undefined" in n for n in notes)


# -- streaming, the pipeline, the functions ----------------------------------------------------------------------


def test_streamed_chunks_and_a_store_on_disk_equal_the_whole_arrays(tmp_path):
    x, y = _layers(n=300)
    whole, _ = _pair_rows(x, y)
    chunked, _ = _pair_rows(x, y, chunk=37)
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x[None].astype(np.float64), y[None].astype(np.float64)
    with h5py.File(path, "r") as f:
        res = run_pair("similarity", LayerData("x", "encoder", ["clean"], f["x"], chunk_size=50),
                       LayerData("y", "encoder", ["clean"], f["y"], chunk_size=50))
        disk = {r["metric"]: r["value"] for r in res.rows}
    for m in whole:
        assert chunked[m] == pytest.approx(whole[m], rel=1e-11, abs=1e-13), m
        assert disk[m] == pytest.approx(whole[m], rel=1e-11, abs=1e-13), m


def test_non_finite_samples_are_left_out_of_both_layers():
    x, y = _layers()
    bad = x.copy()
    bad[5, 2] = np.nan
    rows, notes = _pair_rows(bad, y)
    keep = np.ones(len(x), bool)
    keep[5] = False
    ref, _ = _pair_rows(x[keep], y[keep])
    assert rows["cka_linear"] == pytest.approx(ref["cka_linear"], rel=1e-12)
    assert any("1 of 240 samples" in n for n in notes)


def test_functions_equal_the_analyzer_rows_and_validate_inputs():
    x, y = _layers()
    rows, _ = _pair_rows(x, y)
    assert M.similarity_metrics(x, torch.from_numpy(y)) == pytest.approx(rows, rel=1e-12)
    assert M.linear_cka(x, y) == rows["cka_linear"]
    assert M.linear_cka(x, y, debiased=True) == rows["cka_linear_debiased"]
    assert M.svcca(x, y) == rows["svcca"] and M.pwcca(x, y) == rows["pwcca"]
    assert M.procrustes_distance(x, y) == rows["procrustes"]
    assert M.cka_rbf(x, y) == rows["cka_rbf"] and M.mutual_knn_alignment(x, y) == rows["mutual_knn"]
    with pytest.raises(ReprscopeError, match="same samples"):
        M.linear_cka(x, y[:10])
    with pytest.raises(ReprscopeError, match=r"expected x of shape \(n, d\)"):
        M.linear_cka(np.stack([x, x]), y)
    with pytest.raises(ReprscopeError, match="measures"):
        M.similarity_metrics(x, y, measures="cka")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ReprscopeError, match="undefined"):
            M.linear_cka(x, np.ones((len(x), 2)))


def test_float64_arrays_are_read_not_modified():
    """In-memory float64 chunks are views of the caller's arrays: centring must never happen in place."""
    x, y = _layers()
    x0, y0 = x.copy(), y.copy()
    _pair_rows(x, y)
    M.similarity_metrics(x, y)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)
