"""The ``label_free`` analyzer (α-ReQ, NESum, stable rank, intrinsic dimension) against closed forms and naive
references, and its public functions against its rows."""
import warnings

import numpy as np
import pytest

import reprscope.metrics as M
from reprscope.analyzers.base import LayerData, run_analyzer
from reprscope.metrics.label_free import levina_bickel_dimension, nearest_distances, power_law_fit, twonn_dimension


def _rows(arr, params=None):
    data = LayerData(layer="l", space="encoder", views=[f"view{i}" for i in range(arr.shape[0])], embeddings=arr)
    res = run_analyzer("label_free", data, params)
    return {(r["metric"], r["view"]): r["value"] for r in res.rows}, res.notes


def _with_spectrum(n, eigenvalues, seed=0):
    """Samples whose sample covariance has exactly the given eigenvalues (orthogonal design, rotated)."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    q -= q.mean(axis=0)
    q, _ = np.linalg.qr(q)  # centred orthonormal columns
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.sqrt(np.asarray(eigenvalues) * (n - 1))) @ rot + 3.0


def test_alpha_req_recovers_an_exact_power_law():
    lam = np.arange(1, 41, dtype=float) ** -1.7
    z = _with_spectrum(500, lam)
    rows, _ = _rows(z[None])
    assert rows[("alpha_req", "view0")] == pytest.approx(1.7, rel=1e-6)
    assert rows[("alpha_req_r2", "view0")] == pytest.approx(1.0, abs=1e-9)
    assert rows[("alpha_req_fit_end", "view0")] == 40
    assert rows[("nesum", "view0")] == pytest.approx(lam.sum() / lam[0], rel=1e-8)
    fit = M.alpha_req(z, fit_start=3, fit_end=20)
    assert fit["alpha"] == pytest.approx(1.7, rel=1e-6) and (fit["fit_start"], fit["fit_end"]) == (3, 20)


def test_power_law_fit_equals_a_hand_regression():
    lam = np.array([8.0, 3.0, 2.5, 1.0, 0.4, 0.0])
    fit = power_law_fit(lam)
    x, y = np.log(np.arange(1, 6)), np.log(lam[:5])
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    assert fit.alpha == pytest.approx(-slope) and fit.end == 5
    assert power_law_fit(np.array([1.0, 0.0])) is None


def test_stable_rank_and_nesum_against_numpy():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 12)) @ np.diag(np.linspace(3, 0.1, 12)) + 1.0
    s = np.linalg.svd(z, compute_uv=False)
    c = np.linalg.svd(z - z.mean(0), compute_uv=False)
    rows, _ = _rows(z[None])
    assert rows[("stable_rank", "view0")] == pytest.approx(np.sum(s ** 2) / s[0] ** 2, rel=1e-9)
    assert rows[("nesum", "view0")] == pytest.approx(np.sum(c ** 2) / c[0] ** 2, rel=1e-9)
    assert M.stable_rank(z) == rows[("stable_rank", "view0")] and M.nesum(z) == rows[("nesum", "view0")]


def test_nearest_distances_equal_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 5))
    full = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    assert np.allclose(nearest_distances(x, 4), np.sort(full, axis=1)[:, :4])


@pytest.mark.parametrize("dim", [2, 5])
def test_intrinsic_dimension_of_a_flat_manifold(dim):
    rng = np.random.default_rng(dim)
    lat = rng.uniform(size=(3000, dim))
    emb, _ = np.linalg.qr(rng.normal(size=(20, dim)))
    z = lat @ emb.T  # a dim-dimensional cube inside 20 dimensions
    rows, _ = _rows(z[None], {"k": 10})
    assert rows[("id_twonn", "view0")] == pytest.approx(dim, rel=0.15)
    assert rows[("id_mle", "view0")] == pytest.approx(dim, rel=0.15)
    # the estimators by hand from the same neighbour distances
    r = nearest_distances(z, 10)
    assert twonn_dimension(r) == pytest.approx(len(r) / np.sum(np.log(r[:, 1] / r[:, 0])))
    inv = np.mean([np.mean(np.log(r[i, 9] / r[i, :9])) for i in range(len(r))])
    assert levina_bickel_dimension(r, 10) == pytest.approx(1 / inv)
    assert M.intrinsic_dimension(z, k=10) == rows[("id_twonn", "view0")]
    assert M.intrinsic_dimension(z, method="mle", k=10) == rows[("id_mle", "view0")]


def test_subset_duplicates_and_collapse():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(2, 400, 6))
    rows, notes = _rows(z, {"max_samples": 100})
    assert any("subset of 100 of 400" in n for n in notes) and ("id_twonn", "view1") in rows
    dup = np.repeat(rng.normal(size=(50, 4)), 2, axis=0)  # every point twice: r1 = 0
    rows, notes = _rows(dup[None])
    assert ("id_twonn", "view0") not in rows and any("id_twonn" in n for n in notes)
    rows, notes = _rows(np.ones((1, 30, 4)))
    assert rows[("nesum", "view0")] == 0 and ("alpha_req", "view0") not in rows
    with pytest.raises(ValueError, match="'method' parameter"):
        M.intrinsic_dimension(z[0], method="pca")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.alpha_req(z[0])  # no note, no warning


def test_inverse_rank_weighting_is_the_weighted_normal_equations():
    lam = np.array([9.0, 4.1, 2.0, 1.3, 0.7, 0.52, 0.3, 0.2])
    fit = power_law_fit(lam, 2, 7, weighting="inverse_rank")
    k = np.arange(2, 8, dtype=float)
    x, y, w = np.log(k), np.log(lam[1:7]), 1 / k
    # minimise Σ w (y − b − s x)² by hand: weighted means and covariances
    xm, ym = np.sum(w * x) / w.sum(), np.sum(w * y) / w.sum()
    slope = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
    assert fit.alpha == pytest.approx(-slope, rel=1e-12)
    assert power_law_fit(lam, 2, 7).alpha != pytest.approx(fit.alpha, rel=1e-6)
    # an exact power law gives the same α under both weightings
    exact = np.arange(1, 30, dtype=float) ** -1.3
    assert power_law_fit(exact, weighting="inverse_rank").alpha == pytest.approx(1.3, rel=1e-10)
