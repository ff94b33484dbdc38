"""The public metric functions: the analyzer's row on the same data, on numpy and torch inputs, and one clear
ValueError for bad inputs."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import reprscope
import reprscope.metrics as M
from reprscope.analyzers.base import LayerData, run_analyzer


def _rows(name, arr, params=None, **extra):
    data = LayerData(layer="l", space="encoder", views=[f"view{i}" for i in range(arr.shape[0])],
                     embeddings=np.asarray(arr), **extra)
    return run_analyzer(name, data, params).rows


def _row(rows, metric, view=None, index="", form=None):
    got = [r["value"] for r in rows if r["metric"] == metric and r["index"] == index
           and (view is None or r["view"] == view) and (form is None or r.get("form") == form)]
    assert len(got) == 1, (metric, view, index, form, got)
    return got[0]


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 12)) @ np.diag(np.linspace(2, 0.05, 12))
    z2 = z + 0.2 * rng.normal(size=z.shape)
    y = rng.integers(0, 3, size=120)
    y[:3] = [0, 1, 2]
    return np.stack([z, z2]), y


KINDS = ["float64", "float32", "torch"]


def _as(kind, a):
    if kind == "float64":
        return np.asarray(a, dtype=np.float64)
    if kind == "float32":
        return np.asarray(a, dtype=np.float32)
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def _ref(kind, a):
    """What the analyzer sees for that input: the same values in the same dtype."""
    return np.asarray(a, dtype=np.float64 if kind == "float64" else np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_spectrum_functions_equal_the_analyzer_row(views, kind):
    arr, _ = views
    z = _as(kind, arr[0])
    rows = _rows("spectrum", _ref(kind, arr[:1]), {"tau": 0.05, "tau_abs": 0.5, "eps": 1e-7})
    assert M.rankme(z) == _row(rows, "rankme")
    assert M.effective_rank(z) == _row(rows, "effective_rank")
    assert M.rank_tau(z, tau=0.05) == _row(rows, "rank_tau")
    assert M.rank_abs(z, tau_abs=0.5) == _row(rows, "rank_abs")
    sv = M.singular_values(z)
    assert np.array_equal(sv, [_row(rows, "sv", index=str(k)) for k in range(12)])
    # several views at once: one value per view
    both = M.rankme(_as(kind, arr))
    assert both.shape == (2,) and both[0] == M.rankme(z)
    # an independent check of the definitions
    ref = np.linalg.svd(np.asarray(arr[0], np.float64), compute_uv=False)
    p = ref / ref.sum() + 1e-7
    assert M.rankme(arr[0]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    c = np.linalg.svd(arr[0] - arr[0].mean(0), compute_uv=False)
    assert np.allclose(M.singular_values(arr[0]), c, rtol=1e-10)
    assert M.rank_tau(arr[0], tau=0.05) == np.sum(c >= 0.05 * c[0])


@pytest.mark.parametrize("kind", KINDS)
def test_center_alignment_uniformity_vicreg_equal_the_analyzer_rows(views, kind):
    arr, _ = views
    z = _as(kind, arr)
    ref = _ref(kind, arr)
    rows = _rows("center", ref)
    got = M.center_metrics(z)
    for k in ("center_norm", "residual_norm_mean", "residual_norm_std", "alignment"):
        assert got[k] == _row(rows, k)
    assert M.center_norm(z) == got["center_norm"]
    r = M.residual_norms(z)
    assert r.shape == (120,) and r.mean() == pytest.approx(got["residual_norm_mean"], rel=1e-12)
    # independent: the definition, sample by sample
    u = ref.astype(np.float64) / np.linalg.norm(ref.astype(np.float64), axis=2, keepdims=True)
    mu = u.mean(axis=0)
    assert np.allclose(M.center_vector(z), mu.mean(axis=0), atol=1e-6)
    assert np.allclose(r, np.linalg.norm(mu - mu.mean(axis=0), axis=1), atol=1e-6)

    rows = _rows("uniformity", ref)
    au = M.alignment_uniformity(z)
    assert au["align"] == _row(rows, "align") == M.alignment(z[0], z[1])
    assert au["uniform_1"] == _row(rows, "uniform", view="view0")
    assert M.uniformity(z[0]) == pytest.approx(au["uniform_1"], rel=1e-12, abs=1e-12)
    d2 = ((u[0][:, None] - u[0][None]) ** 2).sum(-1)
    off = ~np.eye(120, dtype=bool)
    assert M.uniformity(z[0]) == pytest.approx(np.log(np.exp(-2 * d2[off]).mean()), rel=1e-6)

    rows = _rows("vicreg", ref)
    st = M.vicreg_statistics(z[0], z[1])
    for k in ("invariance", "variance", "covariance", "loss", "avg_corr"):
        assert st[k] == _row(rows, k, view="view0|view1")
    assert st["std_mean"][1] == _row(rows, "std_mean", view="view1")
    assert st["invariance"] == pytest.approx(np.mean((ref[0].astype(np.float64) - ref[1]) ** 2), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_information_functions_equal_the_analyzer_rows(views, kind):
    arr, _ = views
    z = _as(kind, arr)
    ref = _ref(kind, arr)
    params = {"batch_size": 40, "alpha": 2.0}
    rows = _rows("matrix_information", ref, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.ReprscopeWarning)
        mi = M.matrix_mutual_information(z[0], z[1], batch_size=40, alpha=2.0)
        assert mi == _row(rows, "mutual_information", form="gram")
        assert M.joint_entropy(z, batch_size=40, alpha=2.0, form="cov") == _row(rows, "joint_entropy", form="cov")
        assert M.matrix_kl(z[0], z[1], batch_size=40) == _row(rows, "kl", form="gram")
        assert M.matrix_js(z[0], z[1], batch_size=40) == _row(rows, "js", form="gram")
        assert M.total_coding_rate(z[0], batch_size=40) == _row(rows, "tcr", form="gram")
        everything = M.matrix_information_metrics(z[0], z[1], batch_size=40, alpha=2.0)
        assert everything["cov"]["n_batches"] == 3.0
        # H_α of one view, against the eigenvalues of its Gram matrix computed here
        h = M.matrix_entropy(z[0], alpha=2.0, batch_size="all")
    x = ref[0].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T) / 120
    assert h == pytest.approx(-np.log(np.sum(lam ** 2)), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_readouts_equal_the_analyzer_rows(views, kind):
    arr, y = views
    z = _as(kind, arr[0])
    ref = _ref(kind, arr[:1])
    rows = _rows("knn", ref, {"ks": "5,20"}, labels=y)
    assert M.knn_accuracy(z, y, k=5) == _row(rows, "top1", index="5")
    assert M.knn_accuracy(z, torch.from_numpy(y), k=[5, 20]) == {5: _row(rows, "top1", index="5"),
                                                                  20: _row(rows, "top1", index="20")}
    rows = _rows("linear_probe", ref, None, labels=y)
    lp = M.linear_probe_accuracy(z, y)
    assert lp["top1"] == _row(rows, "top1") and lp["loss"] == _row(rows, "loss")
    lat = arr[0][:, :2] @ np.array([[1.0, 0.5], [0.2, -1.0]])
    rows = _rows("identifiability", ref, None, latents=lat, latent_names=["a", "b"])
    r2 = M.r2_latents(z, lat, latent_names=["a", "b"])
    assert r2["r2"]["a"] == _row(rows, "r2", index="a")
    assert r2["r2_adjusted"]["b"] == _row(rows, "r2_adjusted", index="b")
    assert r2["r2"]["a"] > 0.99


def test_head_functions_equal_the_analyzer_rows(views):
    arr, y = views
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 6)).eval()
    hm = M.head_module(head)
    assert [s["type"] for s in hm.spec] == ["linear", "batchnorm", "relu", "linear"]
    rows = _rows("weights", arr[:1], None, modules={"projector": hm})
    wr = M.weight_ranks(head)
    assert wr["0"]["rank_tau"] == _row(rows, "rank_tau", index="projector.0")
    assert np.allclose(wr["3"]["sv"], np.linalg.svd(head[3].weight.detach().double().numpy(), compute_uv=False),
                       rtol=1e-6)
    rows = _rows("tangent", arr, {"batch_size": 60}, modules={"projector": hm}, labels=y)
    tm = M.tangent_metrics(arr, head, labels=y, batch_size=60)
    assert tm["fvu"] == _row(rows, "fvu") == M.tangent_fvu(arr, head, batch_size=60)
    assert tm["upper_bound"] == _row(rows, "upper_bound")
    with pytest.raises(ValueError, match="expected head as an nn.Sequential"):
        M.weight_ranks(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("bad, match", [
    (np.zeros(3), r"expected embeddings of shape \(n, d\) or \(V, n, d\), got \(3,\)"),
    (np.zeros((2, 2, 3, 4)), r"got \(2, 2, 3, 4\)"),
    (np.zeros((1, 4)), "at least 2 samples, got 1"),
    (torch.zeros(5, 4, dtype=torch.bool), "real floating or integer dtype"),
    (np.array([["a", "b"], ["c", "d"]]), "real floating or integer dtype"),
    (np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 3.0]]), "NaN or Inf in 1 of 3 samples"),
    ("embeddings.npy", "numpy array or a torch tensor, got str"),
    (torch.zeros(4, 3, dtype=torch.complex64), "complex"),
])
def test_bad_embeddings_are_one_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        M.rankme(bad)


def test_bad_pairs_labels_and_parameters(views):
    arr, y = views
    with pytest.raises(ValueError, match=r"labels of shape \(n,\) = \(120,\), one per sample, got \(119,\)"):
        M.knn_accuracy(arr[0], y[:-1])
    with pytest.raises(ValueError, match="views of the same shape"):
        M.alignment(arr[0], arr[1][:, :5])
    with pytest.raises(ValueError, match="expected two views"):
        M.matrix_mutual_information(arr[0])
    with pytest.raises(ValueError, match="The 'tau' parameter of rank_tau"):
        M.rank_tau(arr[0], tau=2.0)
    with pytest.raises(ValueError, match="The 'k' parameter of knn_accuracy"):
        M.knn_accuracy(arr[0], y, k=0)
    with pytest.raises(ValueError, match="class ids"):
        M.knn_accuracy(arr[0], y + 0.5)
    with pytest.raises(ValueError, match="latents of shape"):
        M.r2_latents(arr[0], np.zeros((3, 2)))
    assert issubclass(reprscope.ReprscopeError, ValueError)


def test_notes_are_warnings(views):
    arr, _ = views
    with pytest.warns(M.ReprscopeWarning, match="fewer than batch_size = 512"):
        M.matrix_mutual_information(arr[0], arr[1])


def test_public_names_do_not_shadow_submodules():
    import pkgutil

    subs = {m.name for m in pkgutil.iter_modules(M.__path__)}
    assert not subs & set(M.__all__)
    for name in M.__all__:
        assert callable(getattr(M, name)) and getattr(M, name).__doc__
