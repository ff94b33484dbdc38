"""Tests of the ``weights`` analyzer against numpy's SVD and hand-worked matrices (Cosentino et al. 2022, arXiv:2205.06926 Eq. 2)."""
import math

import numpy as np
import pytest
import torch

import reprscope.analyzers  # noqa: F401  (registers the analyzers)
from reprscope.analyzers.base import HeadModule, LayerData, run_analyzer
from reprscope.models.heads import build_head


def _data(modules, space="encoder", layer="encoder"):
    emb = np.random.default_rng(0).normal(size=(3, 10, 4))
    return LayerData(layer=layer, space=space, views=["clean", "aug1", "aug2"], embeddings=emb, modules=modules)


def _linear(*weights, bias=False):
    """A HeadModule of consecutive linear layers with the given (out, in) weights."""
    spec, params = [], {}
    for i, w in enumerate(weights):
        spec.append({"type": "linear", "in": w.shape[1], "out": w.shape[0], "bias": bias})
        params[f"{i}.weight"] = np.asarray(w)
        if bias:
            params[f"{i}.bias"] = np.zeros(w.shape[0])
    return HeadModule(spec=spec, params=params)


def _rows(res):
    """{index: {metric: value}} for scalars and {key: [sv...]} for the singular-value vectors."""
    scalars, sv = {}, {}
    for r in res.rows:
        assert r["view"] == "all"
        if r["metric"] == "sv":
            key, k = r["index"].rsplit(":", 1)
            sv.setdefault(key, {})[int(k)] = r["value"]
        else:
            scalars.setdefault(r["index"], {})[r["metric"]] = r["value"]
    return scalars, {k: np.array([v[i] for i in range(len(v))]) for k, v in sv.items()}


def naive(w, tau=0.01, tau_abs=0.01):
    w = np.asarray(w, dtype=np.float64)
    sv = np.linalg.svd(w, compute_uv=False)
    sv[sv <= max(w.shape) * np.finfo(float).eps * sv[0]] = 0.0
    p = sv[sv > 0] / sv.sum()
    return sv, {"rank_abs": float(sum(1 for s in sv if s > 0 and s >= tau_abs)),
                "rank_tau": float(sum(1 for s in sv if s >= tau * sv[0])),
                "effective_rank": math.exp(-sum(x * math.log(x) for x in p))}


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (6, 6)])
@pytest.mark.parametrize("params", [{}, {"tau": 0.4, "tau_abs": 1.0}])
def test_single_layer_matches_numpy(shape, params):
    rng = np.random.default_rng(1)
    w = (rng.normal(size=shape) * np.linspace(0.1, 2.0, shape[1])).astype(np.float32)
    res = run_analyzer("weights", _data({"projector": _linear(w)}), params)
    scalars, sv = _rows(res)
    want_sv, want = naive(w, **{"tau": 0.01, "tau_abs": 0.01, **params})
    np.testing.assert_allclose(sv["projector.0"], want_sv, rtol=1e-12, atol=1e-12 * want_sv[0])
    assert np.all(np.diff(sv["projector.0"]) <= 0)
    for k, v in want.items():
        assert scalars["projector.0"][k] == pytest.approx(v, rel=1e-12), k
    assert set(scalars) == {"projector.0"}  # one layer: no product map
    for r in res.rows:  # parameters are stamped on every row
        assert r["tau"] == params.get("tau", 0.01) and r["tau_abs"] == params.get("tau_abs", 0.01)


def test_hand_worked_diagonal():
    w = np.diag([3.0, 0.5, 0.005, 0.0])
    res = run_analyzer("weights", _data({"projector": _linear(w)}))
    scalars, sv = _rows(res)
    np.testing.assert_array_equal(sv["projector.0"], [3.0, 0.5, 0.005, 0.0])
    s = scalars["projector.0"]
    assert s["rank_abs"] == 2  # 3 and 0.5 are ≥ 0.01, 0.005 is not
    assert s["rank_tau"] == 2  # ≥ 0.03
    p = np.array([3.0, 0.5, 0.005]) / 3.505
    assert s["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-14)
    s = _rows(run_analyzer("weights", _data({"projector": _linear(w)}), {"tau": 0.2, "tau_abs": 0.001}))[0]["projector.0"]
    assert s["rank_tau"] == 1 and s["rank_abs"] == 3
    s = _rows(run_analyzer("weights", _data({"projector": _linear(w)}), {"tau_abs": 0.0}))[0]["projector.0"]
    assert s["rank_abs"] == 3  # tau_abs = 0: the numerical rank, exact zeros never count
    # equal singular values: effective rank = their number
    s = _rows(run_analyzer("weights", _data({"projector": _linear(2.0 * np.eye(5))})))[0]["projector.0"]
    assert s["effective_rank"] == pytest.approx(5.0, rel=1e-14)


def test_two_layer_linear_projector_product():
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(3, 8)), rng.normal(size=(6, 3))  # 8 → 3 → 6: the product has rank 3
    res = run_analyzer("weights", _data({"projector": _linear(w1, w2, bias=True)}))
    scalars, sv = _rows(res)
    assert set(scalars) == {"projector.0", "projector.1", "projector.product"}
    for key, w in (("projector.0", w1), ("projector.1", w2), ("projector.product", w2 @ w1)):
        want_sv, want = naive(w)
        np.testing.assert_allclose(sv[key], want_sv, rtol=1e-10, atol=1e-12 * want_sv[0])
        for k, v in want.items():
            assert scalars[key][k] == pytest.approx(v, rel=1e-10), (key, k)
    assert sv["projector.product"].shape == (6,)
    np.testing.assert_array_equal(sv["projector.product"][3:], 0.0)  # numerical zeros are exact
    assert scalars["projector.product"]["rank_abs"] == 3 and scalars["projector.product"]["rank_tau"] == 3


def test_mlp_head_has_no_product():
    spec = [{"type": "linear", "in": 6, "out": 10, "bias": False}, {"type": "batchnorm", "in": 10, "affine": True},
            {"type": "relu"}, {"type": "linear", "in": 10, "out": 4, "bias": True}]
    torch.manual_seed(0)
    head = build_head(spec)
    params = {k: v.numpy() for k, v in head.state_dict().items() if not k.endswith("num_batches_tracked")}
    res = run_analyzer("weights", _data({"projector": HeadModule(spec, params)}))
    scalars, sv = _rows(res)
    assert set(scalars) == {"projector.0", "projector.3"}
    np.testing.assert_allclose(sv["projector.3"], naive(params["3.weight"])[0], rtol=1e-12)


def test_weightnorm_reconstruction():
    spec = [{"type": "linear", "in": 7, "out": 5, "bias": True}, {"type": "gelu"},
            {"type": "weightnorm_linear", "in": 5, "out": 9, "bias": False}]
    torch.manual_seed(1)
    head = build_head(spec)
    with torch.no_grad():
        head[2].parametrizations.weight.original0.copy_(torch.rand(9, 1) + 0.5)
    params = {k: v.detach().numpy().copy() for k, v in head.state_dict().items()}
    assert "2.parametrizations.weight.original0" in params and "2.weight" not in params
    want_w = head[2].weight.detach().double().numpy()
    _, sv = _rows(run_analyzer("weights", _data({"projector": HeadModule(spec, params)})))
    np.testing.assert_allclose(sv["projector.2"], naive(want_w)[0], rtol=1e-6)
    # the legacy weight_g / weight_v keys of nn.utils.weight_norm give the same matrix
    g, v = params.pop("2.parametrizations.weight.original0"), params.pop("2.parametrizations.weight.original1")
    params["2.weight_g"], params["2.weight_v"] = g, v
    _, sv2 = _rows(run_analyzer("weights", _data({"projector": HeadModule(spec, params)})))
    np.testing.assert_array_equal(sv2["projector.2"], sv["projector.2"])
    # DINO's last layer: g fixed to 1 gives unit-norm rows
    params["2.weight_g"] = np.ones_like(g)
    _, sv3 = _rows(run_analyzer("weights", _data({"projector": HeadModule(spec, params)})))
    v = v.astype(np.float64)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(sv3["projector.2"], naive(vn)[0], rtol=1e-10)


def test_zero_weights():
    res = run_analyzer("weights", _data({"projector": _linear(np.zeros((3, 5)), np.zeros((2, 3)))}))
    scalars, sv = _rows(res)
    for key in ("projector.0", "projector.1", "projector.product"):
        assert scalars[key] == {"rank_abs": 0.0, "rank_tau": 0.0, "effective_rank": 0.0}
    np.testing.assert_array_equal(sv["projector.0"], 0.0)
    assert any("projector.0 is zero" in n for n in res.notes), res.notes


def test_every_head_part_and_index_format():
    rng = np.random.default_rng(3)
    mods = {"projector": _linear(rng.normal(size=(4, 6))), "predictor": _linear(rng.normal(size=(4, 4))),
            "teacher.projector": _linear(rng.normal(size=(4, 6)))}
    res = run_analyzer("weights", _data(mods))
    scalars, sv = _rows(res)
    assert set(scalars) == {"projector.0", "predictor.0", "teacher.projector.0"}
    assert set(sv) == set(scalars)
    idx = [r["index"] for r in res.rows if r["metric"] == "sv" and r["index"].startswith("teacher")]
    assert idx == [f"teacher.projector.0:{k}" for k in range(4)]


@pytest.mark.parametrize("space", ["intermediate", "projector", "predictor", ""])
def test_other_layers_are_skipped_with_the_reason(space):
    from reprscope.analyzers.base import ENCODER_ONLY

    res = run_analyzer("weights", _data({"projector": _linear(np.eye(3))}, space=space, layer="projector"))
    assert res.rows == [] and len(res.notes) == 1 and res.notes[0].endswith(ENCODER_ONLY)


def test_non_finite_weight_is_a_note():
    w = np.eye(3)
    w[0, 1] = np.nan
    res = run_analyzer("weights", _data({"projector": _linear(w, np.eye(3))}))
    assert not any(r["index"].startswith("projector.0") or r["index"].startswith("projector.product") for r in res.rows)
    assert any("non-finite" in n for n in res.notes)
    assert _rows(res)[0]["projector.1"]["rank_abs"] == 3


def test_deterministic():
    rng = np.random.default_rng(4)
    mods = {"projector": _linear(rng.normal(size=(4, 6)), rng.normal(size=(3, 4)))}
    assert run_analyzer("weights", _data(mods)).rows == run_analyzer("weights", _data(mods)).rows


def test_missing_projector_is_skipped():
    res = run_analyzer("weights", _data({}))
    assert res.rows == [] and any("skipped" in n for n in res.notes)


def test_missing_or_mismatched_weights_give_notes_and_no_product():
    """A linear layer without a stored weight is left out with a note, and the head then has no product map
    (it would skip that layer); weights that do not chain give a note instead of a product."""
    rng = np.random.default_rng(21)
    head = _linear(rng.normal(size=(4, 3)), rng.normal(size=(2, 4)), rng.normal(size=(2, 2)))
    del head.params["1.weight"]
    res = run_analyzer("weights", _data({"projector": head}))
    idx = {r["index"] for r in res.rows if r["metric"] == "rank_abs"}
    assert idx == {"projector.0", "projector.2"}
    assert any("layer 1 (linear) has no usable stored weight" in n for n in res.notes), res.notes
    bad = _linear(rng.normal(size=(4, 3)), rng.normal(size=(2, 5)))
    res = run_analyzer("weights", _data({"projector": bad}))
    assert "projector.product" not in {r["index"] for r in res.rows}
    assert any("layer 1 takes 5 inputs but receives 4" in n for n in res.notes), res.notes
