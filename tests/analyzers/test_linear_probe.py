"""Tests of the ``linear_probe`` analyzer against scipy.optimize.minimize on the same objective."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

import reprscope.metrics.linear_probe as lp_mod
from reprscope.analyzers.base import LayerData, run_analyzer

VIEWS = ["clean", "aug1", "aug2"]


def _data(x, labels, views=VIEWS):
    x = np.asarray(x)
    return LayerData(layer="enc", space="encoder", views=list(views), embeddings=np.stack([x] * len(views)),
                     labels=np.asarray(labels))


def _rows(res):
    return {r["metric"]: r["value"] for r in res.rows}


def reference(x, labels, l2=1e-4, test_fraction=0.2, seed=0):
    """Same split and standardisation written out; min_W,b mean CE + (l2/2)‖W‖² by scipy L-BFGS-B."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * (1 - test_fraction)))
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    xtr, xte = x[tr], x[te]
    const = xtr.max(0) == xtr.min(0)
    mean = np.where(const, xtr[0], xtr.mean(0))
    std = np.where(const, 1.0, xtr.std(0))
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    classes = np.unique(labels[tr])
    c = len(classes)
    ytr = np.searchsorted(classes, labels[tr])
    onehot = np.eye(c)[ytr]

    def f(theta):
        w, b = theta[: d * c].reshape(d, c), theta[d * c:]
        logits = xtr @ w + b
        lse = logsumexp(logits, axis=1)
        loss = np.mean(lse - logits[np.arange(len(ytr)), ytr]) + 0.5 * l2 * np.sum(w * w)
        p = np.exp(logits - lse[:, None])
        g = (p - onehot) / len(ytr)
        return loss, np.concatenate([(xtr.T @ g + l2 * w).ravel(), g.sum(0)])

    opt = minimize(f, np.zeros(d * c + c), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
    w, b = opt.x[: d * c].reshape(d, c), opt.x[d * c:]
    pred_tr = classes[np.argmax(xtr @ w + b, 1)]
    pred_te = classes[np.argmax(xte @ w + b, 1)]
    return {"loss": opt.fun, "train_top1": np.mean(pred_tr == labels[tr]), "top1": np.mean(pred_te == labels[te]),
            "pred_te": pred_te, "xtr": xtr, "xte": xte, "ytr": ytr}


def _overlapping(n=300, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    x = rng.normal(size=(c, d))[y] * 0.8 + rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + 2.0
    return x, y


@pytest.mark.parametrize("seed, l2", [(0, 1e-4), (1, 1e-2)])
def test_matches_scipy(seed, l2):
    x, y = _overlapping(seed=seed)
    y = y * 3 + 5  # arbitrary label values
    got = _rows(run_analyzer("linear_probe", _data(x, y), {"l2": l2, "seed": seed}))
    want = reference(x, y, l2=l2, seed=seed)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["top1"] == want["top1"]
    assert got["train_top1"] == want["train_top1"]
    # predictions, not only their accuracy
    classes = np.unique(y[np.sort(np.random.default_rng(seed).permutation(len(y))[:240])])
    xtr = torch.from_numpy(want["xtr"])
    w, b, loss, _ = lp_mod.fit_logistic(xtr, torch.from_numpy(want["ytr"]), len(classes), l2, 200)
    pred = classes[(torch.from_numpy(want["xte"]) @ w + b).argmax(1).numpy()]
    np.testing.assert_array_equal(pred, want["pred_te"])
    assert loss == pytest.approx(want["loss"], rel=1e-6)  # the torch path (accelerators) solves the same problem
    w, b, loss, _, converged = lp_mod.fit_logistic_np(want["xtr"], want["ytr"], len(classes), l2, 200)
    assert converged and loss == pytest.approx(want["loss"], rel=1e-9)
    np.testing.assert_array_equal(classes[(want["xte"] @ w + b).argmax(1)], want["pred_te"])


def test_objective_gradient_matches_finite_differences():
    x, y = _overlapping(n=50, d=4)
    x = (x - x.mean(0)) / x.std(0)
    fun = lp_mod.LogisticObjective(x, y, 3, 1e-2)
    fun.block = 7  # several blocks, a short last one
    theta = np.random.default_rng(1).normal(size=4 * 3 + 3)
    f, g = fun(theta)
    whole = lp_mod.objective(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(theta[:12].reshape(4, 3)),
                             torch.from_numpy(theta[12:]), 1e-2)
    assert f == pytest.approx(float(whole), rel=1e-13)
    h = 1e-6
    fd = [(fun(theta + h * e)[0] - fun(theta - h * e)[0]) / (2 * h) for e in np.eye(theta.size)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_separable_is_perfect():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=400)
    x = rng.normal(size=(4, 10))[y] * 10 + 0.1 * rng.normal(size=(400, 10))
    got = _rows(run_analyzer("linear_probe", _data(x, y)))
    assert got["top1"] == 1.0 and got["train_top1"] == 1.0
    assert got["loss"] < 0.05


def test_deterministic():
    x, y = _overlapping(seed=3)
    a = run_analyzer("linear_probe", _data(x, y))
    b = run_analyzer("linear_probe", _data(x, y))
    assert a.rows == b.rows and a.notes == b.notes


def test_same_split_as_knn():
    from reprscope.metrics.knn import split_indices

    tr, te = split_indices(300, 0.2, 4)
    assert len(tr) == 240 and len(te) == 60 and not set(tr) & set(te)
    x, y = _overlapping(seed=4)
    got = _rows(run_analyzer("linear_probe", _data(x, y), {"seed": 4}))
    assert got["top1"] == reference(x, y, seed=4)["top1"]


def test_single_class_is_skipped():
    x, _ = _overlapping()
    res = run_analyzer("linear_probe", _data(x, np.zeros(len(x), dtype=int)))
    assert res.rows == [] and any("single class" in n for n in res.notes)


def test_class_only_in_test_split():
    x, y = _overlapping(n=100)
    tr, te = lp_mod.split_indices(100, 0.2, 0)
    y = y.copy()
    y[te[:3]] = 99  # a class the train split never sees
    res = run_analyzer("linear_probe", _data(x, y))
    got = _rows(res)
    assert any("3 test samples have a class absent" in n for n in res.notes)
    assert got["top1"] <= 17 / 20


def test_degenerate_features_give_finite_rows():
    x, y = _overlapping(n=60)
    for z in (np.zeros_like(x), np.full_like(x, 3.0), np.broadcast_to(x[:1], x.shape).copy()):
        got = _rows(run_analyzer("linear_probe", _data(z, y)))
        assert set(got) == {"top1", "train_top1", "loss"}
        assert all(np.isfinite(v) for v in got.values())
        # features carry nothing: only the bias is learned, the prediction is the train majority class
        counts = np.bincount(y[lp_mod.split_indices(60, 0.2, 0)[0]])
        assert got["train_top1"] == pytest.approx(counts.max() / counts.sum())


def test_float32_path(monkeypatch):
    x, y = _overlapping(seed=5)
    f64 = _rows(run_analyzer("linear_probe", _data(x, y)))
    monkeypatch.setattr(lp_mod, "FLOAT32_ABOVE", 0)
    f32 = _rows(run_analyzer("linear_probe", _data(x, y)))
    assert f32["loss"] == pytest.approx(f64["loss"], rel=1e-4)
    assert abs(f32["top1"] - f64["top1"]) <= 1 / 60


def test_n_less_than_d():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 50))
    y = np.arange(20) % 2
    got = _rows(run_analyzer("linear_probe", _data(x, y)))
    assert got["train_top1"] == 1.0
    assert got["loss"] == pytest.approx(reference(x, y)["loss"], rel=1e-6)


def test_reads_the_reference_view_only():
    """The probe is fitted on the clean view: augmented views that differ leave it unchanged."""
    x, y = _overlapping(seed=3)
    noise = np.random.default_rng(3).normal(size=x.shape) * 5.0
    data = LayerData(layer="enc", space="encoder", views=list(VIEWS), embeddings=np.stack([x, x + noise, x - noise]),
                     labels=np.asarray(y))
    assert _rows(run_analyzer("linear_probe", data)) == _rows(run_analyzer("linear_probe", _data(x, y)))
    want = reference(x, y)
    assert _rows(run_analyzer("linear_probe", data))["top1"] == want["top1"]


def test_unseen_test_class_counts_as_an_error_and_max_iter_is_noted():
    x, y = _overlapping(n=100)
    tr, te = lp_mod.split_indices(100, 0.2, 0)
    base = _rows(run_analyzer("linear_probe", _data(x, y)))
    y2 = y.copy()
    ref = reference(x, y)  # its pred_te follows the sorted test indices
    correct = [i for i, p in zip(np.sort(te), ref["pred_te"]) if p == y[i]][:3]
    assert len(correct) == 3
    y2[correct] = 99  # each was right; as an unseen class each must now count as an error
    got = _rows(run_analyzer("linear_probe", _data(x, y2)))
    assert got["top1"] == pytest.approx(base["top1"] - 3 / 20)
    res = run_analyzer("linear_probe", _data(x, y), {"max_iter": 2})
    assert any("stopped at max_iter=2" in n for n in res.notes), res.notes
