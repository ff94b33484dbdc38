"""Tests of the ``identifiability`` analyzer (Rusak et al. 2022) against explicit least-squares / ridge solves."""
import math

import numpy as np
import pytest

import reprscope.metrics.identifiability  # noqa: F401  (registers the analyzer)
from reprscope.analyzers.base import LayerData, run_analyzer
from reprscope.errors import ReprscopeError


def _data(x, lat, views=("clean",), names=None, mask=None, dtype=None):
    x = np.asarray(x)
    emb = np.stack([x + 0.5 * i for i in range(len(views))]) if x.ndim == 2 else x
    if dtype is not None:
        emb = emb.astype(dtype)
    lat = np.asarray(lat, dtype=np.float64).reshape(emb.shape[1], -1)
    return LayerData(layer="enc", space="encoder", views=list(views), embeddings=emb, latents=lat,
                     latent_names=list(names) if names else [f"z{j}" for j in range(lat.shape[1])],
                     content_mask=None if mask is None else np.asarray(mask, dtype=bool))


def _rows(res):
    out = {}
    for r in res.rows:
        if r["index"] == "":
            out[r["metric"]] = r["value"]
        else:
            out.setdefault(r["metric"], {})[r["index"]] = r["value"]
    return out


def _split(n, test_fraction, seed):
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * (1 - test_fraction)))
    return perm[:n_train], perm[n_train:]


def naive_r2(x, y, ridge, test_fraction=0.2, seed=0):
    """R² per latent: design [1, standardised X]; lstsq (ridge = 0) or solve with an unpenalised intercept."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    tr, te = _split(len(x), test_fraction, seed)
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std[std == 0] = 1.0
    a_tr = np.hstack([np.ones((len(tr), 1)), (x[tr] - mean) / std])
    a_te = np.hstack([np.ones((len(te), 1)), (x[te] - mean) / std])
    if ridge == 0:
        w = np.linalg.lstsq(a_tr, y[tr], rcond=None)[0]
    else:
        pen = ridge * len(tr) * np.eye(a_tr.shape[1])
        pen[0, 0] = 0.0  # the intercept is not penalised
        w = np.linalg.solve(a_tr.T @ a_tr + pen, a_tr.T @ y[tr])
    pred = a_te @ w
    out = []
    for j in range(y.shape[1]):
        yt = y[te, j]
        ss_res = sum((yt[i] - pred[i, j]) ** 2 for i in range(len(te)))
        ss_tot = sum((v - yt.mean()) ** 2 for v in yt)
        out.append(1 - ss_res / ss_tot)
    return np.array(out), len(te)


def _problem(n, d, k, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    y = x @ rng.normal(size=(d, k)) + noise * rng.normal(size=(n, k)) + 2.0
    return x, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d", [(120, 6), (60, 80)])  # primal and dual (d > n_train) forms
@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
def test_matches_naive(dtype, n, d, ridge):
    x, y = _problem(n, d, 3)
    x = x.astype(dtype)
    res = run_analyzer("identifiability", _data(x, y), {"ridge": ridge})
    got = _rows(res)
    want, n_test = naive_r2(x, y, ridge)
    np.testing.assert_allclose([got["r2"][f"z{j}"] for j in range(3)], want, rtol=1e-7, atol=1e-7)
    assert got["r2_mean"] == pytest.approx(want.mean(), rel=1e-7, abs=1e-7)
    if n_test - d - 1 > 0:
        adj = 1 - (1 - want) * (n_test - 1) / (n_test - d - 1)
        np.testing.assert_allclose([got["r2_adjusted"][f"z{j}"] for j in range(3)], adj, rtol=1e-7, atol=1e-7)
        assert got["r2_adjusted_mean"] == pytest.approx(adj.mean(), rel=1e-7, abs=1e-7)
    else:
        assert "r2_adjusted" not in got
        assert any("r2_adjusted skipped" in m for m in res.notes)
    assert {r["view"] for r in res.rows} == {"clean"}


def test_float32_products_of_a_large_store(monkeypatch):
    """A large float32 store forms the ridge's chunk products in float32 (stats.product_dtype); R² still
    matches the float64 reference to float32 accuracy, and a constant feature stays exactly out."""
    import reprscope.metrics.stats as stats

    x, y = _problem(400, 12, 3, seed=4)
    x[:, 5] = 3.25
    x = x.astype(np.float32)
    monkeypatch.setattr(stats, "FLOAT32_PRODUCTS_ABOVE", 100)
    data = _data(x, y)
    data.chunk_size = 64  # several chunks, one shift
    assert stats.product_dtype(data) is np.float32
    got = _rows(run_analyzer("identifiability", data, {"ridge": 1e-3}))
    want, _ = naive_r2(x, y, 1e-3)
    np.testing.assert_allclose([got["r2"][f"z{j}"] for j in range(3)], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed, test_fraction", [(3, 0.25), (11, 0.5)])
def test_split_follows_seed_and_fraction(seed, test_fraction):
    x, y = _problem(50, 4, 2, seed=1, noise=1.0)
    got = _rows(run_analyzer("identifiability", _data(x, y), {"seed": seed, "test_fraction": test_fraction, "ridge": 0}))
    want, _ = naive_r2(x, y, 0.0, test_fraction, seed)
    np.testing.assert_allclose([got["r2"]["z0"], got["r2"]["z1"]], want, rtol=1e-9)


def test_perfectly_linear_latent():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 7.0
    assert _rows(run_analyzer("identifiability", _data(x, y), {"ridge": 0}))["r2"]["z0"] == pytest.approx(1.0, abs=1e-10)
    assert _rows(run_analyzer("identifiability", _data(x, y)))["r2"]["z0"] > 0.999


def test_pure_noise_features():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 5))
    y = rng.normal(size=(500, 2))
    r2 = _rows(run_analyzer("identifiability", _data(x, y)))["r2"]
    assert all(v < 0.05 for v in r2.values())


def test_adjusted_uses_number_of_features_not_targets():
    x, y = _problem(200, 10, 2, seed=4, noise=2.0)
    got = _rows(run_analyzer("identifiability", _data(x, y)))
    n_test, d, k = 40, 10, 2
    for j in range(k):
        r2 = got["r2"][f"z{j}"]
        assert got["r2_adjusted"][f"z{j}"] == pytest.approx(1 - (1 - r2) * (n_test - 1) / (n_test - d - 1), rel=1e-12)
        assert got["r2_adjusted"][f"z{j}"] != pytest.approx(1 - (1 - r2) * (n_test - 1) / (n_test - k - 1), rel=1e-6)


def test_adjusted_skipped_when_too_few_test_samples():
    x, y = _problem(50, 20, 2)  # n_test = 10 ≤ d + 1
    res = run_analyzer("identifiability", _data(x, y))
    got = _rows(res)
    assert set(got["r2"]) == {"z0", "z1"}
    assert "r2_adjusted" not in got and "r2_adjusted_mean" not in got
    assert any("r2_adjusted skipped" in m for m in res.notes)


def test_content_style_means():
    x, y = _problem(100, 4, 4, seed=5)
    mask = [True, False, True, False]
    got = _rows(run_analyzer("identifiability", _data(x, y, names=["a", "b", "c", "d"], mask=mask)))
    r2 = got["r2"]
    assert got["r2_content_mean"] == pytest.approx((r2["a"] + r2["c"]) / 2)
    assert got["r2_style_mean"] == pytest.approx((r2["b"] + r2["d"]) / 2)
    adj = got["r2_adjusted"]
    assert got["r2_adjusted_content_mean"] == pytest.approx((adj["a"] + adj["c"]) / 2)
    assert got["r2_adjusted_style_mean"] == pytest.approx((adj["b"] + adj["d"]) / 2)
    assert "r2_mean" not in got

    only_style = _rows(run_analyzer("identifiability", _data(x, y, mask=[False] * 4)))
    assert "r2_content_mean" not in only_style and "r2_adjusted_content_mean" not in only_style
    assert only_style["r2_style_mean"] == pytest.approx(np.mean(list(only_style["r2"].values())))

    no_mask = _rows(run_analyzer("identifiability", _data(x, y)))
    assert "r2_content_mean" not in no_mask and "r2_style_mean" not in no_mask
    assert no_mask["r2_mean"] == pytest.approx(np.mean(list(no_mask["r2"].values())))


def test_per_latent_rows_carry_their_group():
    """With a content mask every per-latent row says content or style (the names need not tell); without one
    no row has the column."""
    x, y = _problem(100, 4, 4, seed=5)
    res = run_analyzer("identifiability", _data(x, y, names=["scale", "hue", "pos_x", "noise"],
                                                mask=[True, True, False, False]))
    groups = {(r["metric"], r["index"]): r.get("latent_group") for r in res.rows if r["index"] != ""}
    assert groups == {(m, n): g for m in ("r2", "r2_adjusted", "mcc_dim")
                      for n, g in (("scale", "content"), ("hue", "content"), ("pos_x", "style"), ("noise", "style"))}
    assert all("latent_group" not in r for r in res.rows if r["index"] == "")
    assert all("latent_group" not in r for r in run_analyzer("identifiability", _data(x, y)).rows)


def test_constant_latent_on_test_split_skipped():
    x, y = _problem(60, 3, 2, seed=6)
    y[:, 1] = 4.0
    res = run_analyzer("identifiability", _data(x, y, names=["pos", "const"], mask=[False, True]))
    got = _rows(res)
    assert set(got["r2"]) == {"pos"} and set(got["r2_adjusted"]) == {"pos"}
    assert "r2_content_mean" not in got and "r2_style_mean" in got
    assert any("const" in m and "constant on the test split" in m for m in res.notes)


def test_reference_view_and_latent_names():
    rng = np.random.default_rng(7)
    y = rng.normal(size=(80, 2))
    emb = rng.normal(size=(3, 80, 4))
    emb[1] = np.hstack([y, rng.normal(size=(80, 2))])  # only the clean view carries the latents
    data = _data(emb, y, views=("aug1", "clean", "aug2"), names=["size", "hue"])
    got = _rows(run_analyzer("identifiability", data))
    assert set(got["r2"]) == {"size", "hue"} and min(got["r2"].values()) > 0.99
    assert {r["view"] for r in run_analyzer("identifiability", data).rows} == {"clean"}
    no_clean = _data(emb, y, views=("aug1", "aug2", "aug3"))
    assert {r["view"] for r in run_analyzer("identifiability", no_clean).rows} == {"aug1"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["identical_rows", "n_less_than_d", "zero_rows", "rank_deficient", "constant_feature"])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_degenerate_inputs_finite(dtype, case, ridge):
    rng = np.random.default_rng(8)
    n, d = 40, 6
    x = rng.normal(size=(n, d))
    if case == "identical_rows":
        x = np.tile(x[:1], (n, 1))
    elif case == "n_less_than_d":
        x = rng.normal(size=(n, 100))
    elif case == "zero_rows":
        x[::3] = 0
    elif case == "rank_deficient":
        x = x[:, [0, 1, 0, 1, 2, 2]]
    elif case == "constant_feature":
        x[:, 2] = 0.1
    y = np.c_[x[:, 0] + rng.normal(size=n) * 0.1, rng.normal(size=n)]
    res = run_analyzer("identifiability", _data(x.astype(dtype), y), {"ridge": ridge})
    assert res.rows and all(np.isfinite(r["value"]) for r in res.rows)
    assert not any("undefined" in m for m in res.notes)
    got = _rows(res)
    assert set(got["r2"]) == {"z0", "z1"}
    if case == "identical_rows":  # the readout can only predict the train mean
        assert all(v <= 0.0 for v in got["r2"].values())
    if case in ("rank_deficient", "constant_feature"):
        want, _ = naive_r2(x.astype(dtype), y, ridge)
        np.testing.assert_allclose([got["r2"]["z0"], got["r2"]["z1"]], want, rtol=1e-6, atol=1e-6)


def test_too_few_samples_skipped_with_note():
    x, y = _problem(4, 2, 1)  # 3 train / 1 test
    res = run_analyzer("identifiability", _data(x, y))
    assert res.rows == [] and any("need at least 2 of each" in m for m in res.notes)


def test_needs_latents():
    data = LayerData(layer="enc", space="encoder", views=["clean"], embeddings=np.ones((1, 5, 2)))
    res = run_analyzer("identifiability", data)
    assert res.rows == [] and any("latents" in m for m in res.notes)


def test_nan_sample_left_out_with_note():
    x, y = _problem(60, 3, 2, seed=9)
    bad = x.copy()
    bad[5, 1] = np.nan
    res = run_analyzer("identifiability", _data(bad, y))
    ref = run_analyzer("identifiability", _data(np.delete(x, 5, 0), np.delete(y, 5, 0)))
    assert any("NaN/Inf" in m for m in res.notes)
    assert [r["value"] for r in res.rows] == pytest.approx([r["value"] for r in ref.rows])


def test_nan_latent_left_out_with_note():
    x, y = _problem(60, 3, 2, seed=9)
    y[7, 0] = np.nan
    res = run_analyzer("identifiability", _data(x, y))
    assert any("NaN/Inf latents" in m for m in res.notes)
    assert res.rows and all(np.isfinite(r["value"]) for r in res.rows)
    keep = np.arange(60) != 7  # the same as the data without that sample (not, e.g., its latent set to 0)
    assert res.rows == run_analyzer("identifiability", _data(x[keep], y[keep])).rows


def naive_kernel_r2(x, y, ridge, gamma, test_fraction=0.2, seed=0, max_fit=None):
    """Kernel ridge by explicit kernel entries. ``max_fit``: fit on the documented subset of the train split
    (``default_rng(seed)``'s next draw after the split permutation), standardised with the whole train split;
    ``gamma`` None: 1/(d·mean variance of the fitted standardised features)."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_train = int(round(len(x) * (1 - test_fraction)))
    tr, te = perm[:n_train], perm[n_train:]
    mean, std = x[tr].mean(0), x[tr].std(0)
    xs_tr, xs_te = (x[tr] - mean) / std, (x[te] - mean) / std
    ytr = y[tr]
    if max_fit is not None and n_train > max_fit:
        fit = np.sort(rng.choice(n_train, size=max_fit, replace=False))
        xs_tr, ytr = xs_tr[fit], ytr[fit]
    if gamma is None:
        gamma = 1.0 / (x.shape[1] * float(xs_tr.var(axis=0).mean()))
    kern = lambda a, b: math.exp(-gamma * float(np.sum((a - b) ** 2)))  # noqa: E731
    k_tr = np.array([[kern(a, b) for b in xs_tr] for a in xs_tr])
    k_te = np.array([[kern(a, b) for b in xs_tr] for a in xs_te])
    ybar = ytr.mean(0)
    coef = np.linalg.solve(k_tr + ridge * len(xs_tr) * np.eye(len(xs_tr)), ytr - ybar)
    pred = k_te @ coef + ybar
    yt = y[te]
    return 1 - ((yt - pred) ** 2).sum(0) / ((yt - yt.mean(0)) ** 2).sum(0)


@pytest.mark.parametrize("gamma", [None, 0.7])
def test_kernel_readout_matches_naive(gamma):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 3))
    y = np.c_[np.sin(2 * x[:, 0]), x[:, 1] ** 2]
    got = _rows(run_analyzer("identifiability", _data(x, y), {"readout": "kernel", "ridge": 1e-2, "kernel_gamma": gamma}))
    want = naive_kernel_r2(x, y, 1e-2, 1 / 3 if gamma is None else gamma)
    np.testing.assert_allclose([got["r2"]["z0"], got["r2"]["z1"]], want, rtol=1e-8, atol=1e-10)


def test_kernel_beats_linear_on_nonlinear_latent_and_subsamples():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 2))
    y = np.sin(2 * x[:, 0]) + x[:, 1] ** 2
    lin = _rows(run_analyzer("identifiability", _data(x, y)))["r2"]["z0"]
    ker = _rows(run_analyzer("identifiability", _data(x, y), {"readout": "kernel"}))["r2"]["z0"]
    assert ker > 0.9 > lin
    params = {"readout": "kernel", "max_kernel_samples": 50}
    a = run_analyzer("identifiability", _data(x, y), params)
    b = run_analyzer("identifiability", _data(x, y), params)
    assert a.rows == b.rows and any("50 of 240" in m for m in a.notes)


def test_kernel_readout_on_a_subset_over_several_test_blocks():
    """More test samples than one prediction block (2048), the fit on a seeded subset of the train split, the
    default γ from that subset's variance: against explicit kernel entries."""
    from reprscope.analyzers import identifiability as ident

    rng = np.random.default_rng(13)
    x = rng.normal(size=(10600, 2))
    y = np.c_[np.sin(2 * x[:, 0]) + x[:, 1] ** 2]
    params = {"readout": "kernel", "max_kernel_samples": 40, "ridge": 1e-2}
    assert 10600 - int(round(10600 * 0.8)) > ident._KERNEL_BLOCK
    got = _rows(run_analyzer("identifiability", _data(x, y), params))["r2"]["z0"]
    want = naive_kernel_r2(x, y, 1e-2, None, max_fit=40)
    assert got == pytest.approx(float(want[0]), rel=1e-8)


def test_deterministic_and_seed_dependent():
    x, y = _problem(80, 4, 2, seed=12, noise=1.0)
    a = run_analyzer("identifiability", _data(x, y, dtype=np.float32), {"seed": 5})
    b = run_analyzer("identifiability", _data(x, y, dtype=np.float32), {"seed": 5})
    c = run_analyzer("identifiability", _data(x, y, dtype=np.float32), {"seed": 6})
    assert a.rows == b.rows and a.notes == b.notes
    assert [r["value"] for r in a.rows] != [r["value"] for r in c.rows]


@pytest.mark.parametrize("params, name", [({"test_fraction": 1.5}, "test_fraction"), ({"test_fraction": 0}, "test_fraction"),
                                          ({"test_fraction": 1.0}, "test_fraction"), ({"ridge": -1}, "ridge"),
                                          ({"seed": -2}, "seed"), ({"readout": "mlp"}, "readout"),
                                          ({"kernel_gamma": 0}, "kernel_gamma"), ({"max_kernel_samples": 1}, "max_kernel_samples")])
def test_bad_parameter_raises(params, name):
    x, y = _problem(20, 2, 1)
    with pytest.raises(ReprscopeError, match=f"'{name}' parameter"):
        run_analyzer("identifiability", _data(x, y), params)


# -- MCC: the mean correlation after the best one-to-one matching of latents to dimensions ----------------------


def _mcc_data(n=400, k=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-1, 1, size=(n, k))
    x = rng.normal(size=(n, d)) * 0.5
    perm = rng.permutation(d)[:k]
    x[:, perm] += lat * np.array([2.0, -3.0, 0.5, 1.5]) + 10.0  # permuted, scaled, one sign flipped, offset
    return x, lat, perm


def _mcc_rows(x, lat, params=None, chunk=8192):
    data = LayerData(layer="l", space="encoder", views=["clean"], embeddings=x[None], latents=lat,
                     latent_names=[f"z{j}" for j in range(lat.shape[1])], chunk_size=chunk)
    return run_analyzer("identifiability", data, params)


def test_mcc_equals_brute_force_matching_and_finds_the_permutation():
    import itertools

    from scipy import stats

    from reprscope.metrics.identifiability import correlation_matrix, mcc_of

    x, lat, perm = _mcc_data()
    data = LayerData(layer="l", space="encoder", views=["clean"], embeddings=x[None], chunk_size=37)
    corr = correlation_matrix(data, 0, lat)
    ref = np.corrcoef(np.hstack([lat, x]).T)[:4, 4:]
    assert np.allclose(corr, ref, atol=1e-12)
    rho = stats.spearmanr(np.hstack([lat, x])).statistic[:4, 4:]
    assert np.allclose(correlation_matrix(data, 0, lat, "spearman"), rho, atol=1e-12)
    best = max(np.mean([abs(ref[i, p[i]]) for i in range(4)]) for p in itertools.permutations(range(6), 4))
    value, match = mcc_of(corr)
    assert value == pytest.approx(best, rel=1e-12)
    assert list(match) == list(perm)
    res = _mcc_rows(x, lat, chunk=50)
    rows = {(r["metric"], r["index"]): r["value"] for r in res.rows}
    assert rows[("mcc", "")] == pytest.approx(best, rel=1e-12)
    assert [rows[("mcc_dim", f"z{j}")] for j in range(4)] == list(perm)
    assert not any(r["metric"] == "mcc" for r in _mcc_rows(x, lat, {"mcc": "off"}).rows)


def test_mcc_is_one_for_a_monotone_copy_with_spearman():
    x, lat, _ = _mcc_data()
    copy = np.hstack([np.exp(lat[:, ::-1]), np.zeros((len(lat), 1))])  # monotone, permuted, a constant column
    rows = {r["metric"]: r["value"] for r in _mcc_rows(copy, lat, {"mcc": "spearman"}).rows if r["index"] == ""}
    assert rows["mcc"] == pytest.approx(1.0, abs=1e-12)


def test_mcc_function_equals_the_row():
    import reprscope.metrics as M

    x, lat, perm = _mcc_data(seed=3)
    rows = {(r["metric"], r["index"]): r["value"] for r in _mcc_rows(x, lat).rows}
    got = M.mcc(x, lat)
    assert got["mcc"] == rows[("mcc", "")] and list(got["match"]) == list(perm)


def test_kernel_cv_equals_a_brute_force_grid_and_refits_with_the_choice():
    from reprscope.metrics.identifiability import CV_GAMMA_FACTORS, CV_RIDGES, kernel_cv_fn, rbf_kernel

    rng = np.random.default_rng(11)
    lat = rng.uniform(-1, 1, size=(300, 2))
    x = np.hstack([np.tanh(2 * lat @ rng.normal(size=(2, 4))), np.sin(3 * lat)]) + 0.05 * rng.normal(size=(300, 6))
    xtr, ytr = x[:240], lat[:240]
    g, r, score = kernel_cv_fn(xtr, ytr, 0.2, 3, seed=0)
    # brute force: every grid point, every fold, a direct solve
    parts = np.array_split(np.random.default_rng(7).permutation(240), 3)
    best = None
    for gf in CV_GAMMA_FACTORS:
        for rr in CV_RIDGES:
            tot = 0.0
            for f in range(3):
                fit = np.concatenate([parts[j] for j in range(3) if j != f])
                val = parts[f]
                ybar = ytr[fit].mean(axis=0)
                coef = np.linalg.solve(rbf_kernel(xtr[fit], xtr[fit], 0.2 * gf) + rr * fit.size * np.eye(fit.size),
                                       ytr[fit] - ybar)
                pred = rbf_kernel(xtr[val], xtr[fit], 0.2 * gf) @ coef + ybar
                yv = ytr[val]
                tot += np.mean(1 - ((yv - pred) ** 2).sum(0) / ((yv - yv.mean(0)) ** 2).sum(0)) / 3
            if best is None or tot > best[2] + 1e-12:
                best = (0.2 * gf, rr, tot)
    assert (g, r) == pytest.approx(best[:2]) and score == pytest.approx(best[2], rel=1e-7)
    # the analyzer refits with the chosen γ and ridge: the same rows as a fixed readout with them
    data = LayerData(layer="l", space="encoder", views=["clean"], embeddings=x[None], latents=lat, latent_names=["a", "b"])
    cv = {(q["metric"], q["index"]): q["value"] for q in
          run_analyzer("identifiability", data, {"readout": "kernel", "kernel_cv": 3, "mcc": "off"}).rows}
    fixed = {(q["metric"], q["index"]): q["value"] for q in
             run_analyzer("identifiability", data, {"readout": "kernel", "mcc": "off", "kernel_gamma": cv[("kernel_gamma", "")],
                                                    "ridge": cv[("kernel_ridge", "")]}).rows}
    assert cv[("r2", "a")] == pytest.approx(fixed[("r2", "a")], rel=1e-9)
