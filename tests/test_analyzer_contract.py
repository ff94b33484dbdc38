"""The analyzer contract, run over every registered analyzer (registering one is enough to get it tested).

For each analyzer in ``ANALYZERS``: the rows have the tidy-table keys and finite float values, runs are
deterministic, degenerate input (collapse, low rank, n < d, zero rows, constants, NaN/Inf samples, no samples)
never raises and never yields a non-finite value, a missing need is a stated skip, and the declared
parameters validate their defaults and refuse bad values with a message naming the parameter.
"""
from __future__ import annotations

import json
import math
from typing import Dict

import numpy as np
import pytest

from reprscope.analyzers import ANALYZERS, HeadModule, LayerData, run_analyzer as _run_single, run_pair
from reprscope.analyzers.base import NEEDS
from reprscope.errors import ReprscopeError
from reprscope.params import resolve_params
from reprscope.table import COLUMNS, make_table

NAMES = ANALYZERS.names()


def run_analyzer(name, data, params=None):
    """A one-layer analyzer on ``data``; a pairwise one on ``data`` and a second layer of the same samples."""
    if ANALYZERS.get(name).pairwise:
        emb = np.asarray(data.embeddings)
        other = LayerData(layer="other", space="projector", views=list(data.views),
                          embeddings=np.tanh(emb[..., ::-1] * 0.5 + 0.1), seed=data.seed, mask=data.mask)
        return run_pair(name, data, other, params)
    return _run_single(name, data, params)
ROW_KEYS = {"view", "metric", "index", "value", "analyzer"}
VIEWS = ["clean", "aug1", "aug2"]
LATENT_NAMES = ["c0", "c1", "s0", "s1"]
CONTENT = np.array([True, True, False, False])
NUMERIC_KINDS = ("int", "float", "floats", "int_or_all")


def make_data(emb: np.ndarray, views=None, *, latents: bool = True, labels: bool = True, coarse: bool = True,
              projector: bool = True, proj_dim: int = 4, seed: int = 0, rng_seed: int = 1) -> LayerData:
    """A LayerData around (V, n, d) ``emb`` with latents, labels and a stored linear projector d → proj_dim."""
    views = list(views or VIEWS)
    rng = np.random.default_rng(rng_seed)
    n, d = emb.shape[1], emb.shape[2]
    lat = rng.normal(size=(n, len(LATENT_NAMES))).astype(np.float32)
    mods: Dict[str, HeadModule] = {}
    if projector:
        w = rng.normal(size=(proj_dim, d)).astype(np.float32) / math.sqrt(d)
        mods["projector"] = HeadModule(spec=[{"type": "linear", "in": d, "out": proj_dim, "bias": False}],
                                       params={"0.weight": w})
    return LayerData(
        layer="encoder", space="encoder", views=views, embeddings=emb,
        latents=lat if latents else None, latent_names=list(LATENT_NAMES) if latents else [],
        content_mask=CONTENT.copy() if latents else None,
        labels=(np.arange(n) % 4).astype(np.int64) if labels else None,
        labels_coarse=(np.arange(n) % 2).astype(np.int64) if coarse else None,
        modules=mods, seed=seed,
    )


def synthetic(n: int = 64, d: int = 8, v: int = 3, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Views of the same samples: a shared signal plus per-view noise, so every analyzer has something to measure."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    return np.stack([base + 0.3 * rng.normal(size=(n, d)) for _ in range(v)]).astype(dtype)


def check_rows(name: str, res, data: LayerData) -> None:
    """Rows have the table keys, finite float values, valid views; make_table accepts them."""
    spec = ANALYZERS.get(name)
    required = ROW_KEYS | {p.name for p in spec.params}
    for r in res.rows:
        keys = set(r)
        assert required <= keys, f"{name}: row lacks {required - keys}: {r}"
        extra = keys - required
        assert not (extra & set(COLUMNS)), f"{name}: row overrides table columns {extra & set(COLUMNS)}"
        assert r["analyzer"] == name
        assert isinstance(r["value"], float) and math.isfinite(r["value"]), f"{name}: bad value in {r}"
        assert isinstance(r["metric"], str) and r["metric"]
        assert isinstance(r["index"], str)
        assert r["view"] == "all" or all(part in data.views for part in r["view"].split("|")), r["view"]
    for note in res.notes:
        assert isinstance(note, str) and note
    df = make_table([{"source": "s", "step": None, "method": "m", "layer": data.layer, **r} for r in res.rows])
    assert len(df) == len(res.rows)


@pytest.fixture(scope="module")
def data() -> LayerData:
    return make_data(synthetic())


# -- normal input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_rows_follow_contract(name, data):
    res = run_analyzer(name, data)
    assert res.rows, f"{name} returned no rows on ordinary data; notes: {res.notes}"
    check_rows(name, res, data)
    spec = ANALYZERS.get(name)
    defaults = resolve_params(name, spec.params, {})
    for r in res.rows:  # every row is stamped with the parameter values used
        for k, v in defaults.items():
            want = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
            assert r[k] == want or (want is None and r[k] is None), (k, r[k], want)


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    spec = ANALYZERS.get(name)
    assert spec.name == name
    assert spec.summary and isinstance(spec.summary, str)
    assert all(n in NEEDS for n in spec.needs)
    assert len({p.name for p in spec.params}) == len(spec.params)
    assert not ({p.name for p in spec.params} & (set(COLUMNS) | ROW_KEYS)), "a parameter would shadow a table column"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    a = run_analyzer(name, make_data(synthetic()))
    b = run_analyzer(name, make_data(synthetic()))
    assert a.rows == b.rows
    assert a.notes == b.notes


@pytest.mark.parametrize("name", NAMES)
def test_float64_input(name):
    res32 = run_analyzer(name, make_data(synthetic(dtype=np.float32)))
    same64 = make_data(synthetic(dtype=np.float32).astype(np.float64))  # the same numbers, stored as float64
    res64 = run_analyzer(name, same64)
    check_rows(name, res64, same64)
    assert [(r["metric"], r["view"], r["index"]) for r in res32.rows] == [(r["metric"], r["view"], r["index"]) for r in res64.rows]
    for a, b in zip(res32.rows, res64.rows):  # small inputs are computed in float64 whatever their dtype
        assert a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-9), (a["metric"], a["index"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_does_not_modify_input(name, dtype):
    """In-memory chunks of the stored dtype are views of the caller's array: nothing may work on them in place
    (float64 input is where a widening copy no longer protects it)."""
    emb = synthetic().astype(dtype)
    d = make_data(emb.copy())
    before = (d.embeddings.copy(), d.latents.copy(), d.labels.copy())
    run_analyzer(name, d)
    np.testing.assert_array_equal(d.embeddings, before[0])
    np.testing.assert_array_equal(d.latents, before[1])
    np.testing.assert_array_equal(d.labels, before[2])


# -- degenerate input --------------------------------------------------------------------------------------


def _degenerate(case: str) -> LayerData:
    rng = np.random.default_rng(5)
    if case == "collapsed":
        row = rng.normal(size=8)
        return make_data(np.broadcast_to(row, (3, 64, 8)).astype(np.float32).copy())
    if case == "rank_deficient":
        a, b = rng.normal(size=(64, 2)), rng.normal(size=(2, 8))
        return make_data(np.stack([a @ b + 0.01 * k for k in range(3)]).astype(np.float32))
    if case == "n_lt_d":
        return make_data(synthetic(n=5, d=20))
    if case == "n_eq_2":
        return make_data(synthetic(n=2, d=8))
    if case == "zero_rows":
        emb = synthetic()
        emb[:, ::3] = 0.0
        return make_data(emb)
    if case == "all_zero":
        return make_data(np.zeros((3, 64, 8), np.float32))
    if case == "all_constant":
        return make_data(np.full((3, 64, 8), 3.0, np.float32))
    if case == "constant_per_view":
        return make_data(np.stack([np.full((64, 8), float(k + 1)) for k in range(3)]).astype(np.float32))
    if case == "constant_column":
        emb = synthetic()
        emb[:, :, 0] = 7.0
        return make_data(emb)
    if case == "nan_and_inf_rows":
        emb = synthetic()
        emb[1, 3, :] = np.nan
        emb[2, 7, 2] = np.inf
        emb[0, 9, 0] = -np.inf
        return make_data(emb)
    if case == "all_nan":
        return make_data(np.full((3, 64, 8), np.nan, np.float32))
    if case == "no_samples":
        return make_data(np.zeros((3, 0, 8), np.float32))
    if case == "huge_values":
        return make_data((synthetic() * 1e30).astype(np.float32))
    if case == "tiny_values":
        return make_data((synthetic() * 1e-30).astype(np.float32))
    if case == "constant_latent":
        d = make_data(synthetic())
        d.latents[:, 1] = 2.0
        return d
    if case == "single_label":
        d = make_data(synthetic())
        d.labels[:] = 0
        d.labels_coarse[:] = 0
        return d
    raise AssertionError(case)


DEGENERATE = ["collapsed", "rank_deficient", "n_lt_d", "n_eq_2", "zero_rows", "all_zero", "all_constant",
              "constant_per_view", "constant_column", "nan_and_inf_rows", "all_nan", "no_samples", "huge_values",
              "tiny_values", "constant_latent", "single_label"]


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_input(name, case):
    data = _degenerate(case)
    with np.errstate(all="ignore"):  # warnings are not the contract; exceptions and non-finite values are
        res = run_analyzer(name, data)
    check_rows(name, res, data)
    assert res.rows or res.notes, f"{name} on {case}: neither rows nor a note"
    reads = ANALYZERS.get(name).reads_embeddings  # weights describes the stored heads, not the samples
    if case == "nan_and_inf_rows" and reads:
        assert any("NaN/Inf" in n and "3 of 64" in n for n in res.notes), res.notes
    if (case == "no_samples" or case == "all_nan") and reads:
        assert not res.rows and any("skipped" in n for n in res.notes), res.notes
    if case == "no_samples" and not reads:  # the stored heads are there whatever the samples
        d = data.embeddings.shape[2]
        with_samples = LayerData(**{**data.__dict__, "embeddings": np.ones((3, 5, d), dtype=np.float32), "cache": {}})
        assert res.rows and res.rows == run_analyzer(name, with_samples).rows


def test_analyzer_without_embeddings_ignores_nan_samples():
    """``reads_embeddings=False`` (weights): NaN samples neither change the rows nor produce a note."""
    emb = synthetic()
    emb[1, 3, :] = np.nan
    assert not ANALYZERS.get("weights").reads_embeddings
    res = run_analyzer("weights", make_data(emb))
    assert res.rows == run_analyzer("weights", make_data(synthetic())).rows
    assert not any("NaN" in n for n in res.notes), res.notes
    assert all(ANALYZERS.get(n).reads_embeddings for n in NAMES if n not in ("weights", "esd"))


@pytest.mark.parametrize("name", NAMES)
def test_nan_rows_are_left_out(name):
    """A sample with NaN/Inf embeddings is removed: the result equals that on the data without it."""
    emb = synthetic(n=65)
    emb[1, 64, :] = np.nan
    with_nan = run_analyzer(name, make_data(emb))
    clean = make_data(synthetic(n=65))
    clean = clean.take(np.arange(64))
    # identical latents/labels/projector for the kept samples
    without = run_analyzer(name, clean)
    assert with_nan.rows == without.rows


# -- needs -------------------------------------------------------------------------------------------------

NEED_CASES = [(n, need) for n in NAMES for need in ANALYZERS.get(n).needs]


def _without(need: str) -> LayerData:
    emb = synthetic()
    if need == "two_views":
        return make_data(emb[:2], views=["clean", "aug1"])
    if need == "encoder_layer":  # a layer the projector does not read (intermediate, projector, predictor)
        return LayerData(**{**make_data(emb).__dict__, "space": "projector", "layer": "projector"})
    kw = {"latents": "latents", "labels": "labels", "labels_coarse": "coarse", "projector": "projector"}
    return make_data(emb, **{kw[need]: False})


@pytest.mark.parametrize("name, need", NEED_CASES)
def test_missing_need_is_skipped_with_note(name, need):
    data = _without(need)
    res = run_analyzer(name, data)
    assert res.rows == []
    assert any("skipped" in n and NEEDS[need] in n for n in res.notes), res.notes


@pytest.mark.parametrize("name", NAMES)
def test_runs_when_needs_present_but_extras_absent(name):
    """Optional inputs an analyzer does not declare as needs may be missing without an exception."""
    spec = ANALYZERS.get(name)
    data = make_data(synthetic(), latents="latents" in spec.needs, labels="labels" in spec.needs,
                     coarse="labels_coarse" in spec.needs, projector="projector" in spec.needs)
    res = run_analyzer(name, data)
    check_rows(name, res, data)


# -- parameters --------------------------------------------------------------------------------------------

PARAMS = [(n, p.name) for n in NAMES for p in ANALYZERS.get(n).params]
NUMERIC = [(n, p.name) for n in NAMES for p in ANALYZERS.get(n).params if p.kind in NUMERIC_KINDS]


def _param(name: str, key: str):
    return next(p for p in ANALYZERS.get(name).params if p.name == key)


def _cli_string(v) -> str:
    return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)


@pytest.mark.parametrize("name, key", PARAMS)
def test_default_passes_validation(name, key):
    p = _param(name, key)
    owner = f"analyzer {name}"
    got = p.coerce(owner, p.default)
    assert got == p.default or (isinstance(p.default, tuple) and list(got) == list(p.default))
    # the default typed on the command line (a string) gives the same value back
    got_s = p.coerce(owner, _cli_string(p.default))
    assert got_s == got or (isinstance(got, (list, tuple)) and list(got_s) == list(got))
    if p.kind == "choice":
        assert p.default in p.choices
    assert p.doc, f"{name}.{key} has no doc line"


@pytest.mark.parametrize("name, key", NUMERIC)
def test_bad_numeric_value_names_parameter(name, key, data):
    p = _param(name, key)
    bad = ["not-a-number", "nan" if p.kind in ("float", "floats") else "1.5" if p.kind in ("int", "int_or_all") else None]
    if p.low is not None:
        bad.append(str(p.low if p.low_open else p.low - 1))
    if p.high is not None:
        bad.append(str(p.high + 1))
    for value in [b for b in bad if b is not None]:
        with pytest.raises(ReprscopeError, match=f"'{key}'") as ei:
            run_analyzer(name, data, {key: value})
        assert name in str(ei.value)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_lists_valid_ones(name, data):
    with pytest.raises(ReprscopeError, match="no parameter 'bogus_param'") as ei:
        run_analyzer(name, data, {"bogus_param": "1"})
    for p in ANALYZERS.get(name).params:
        assert p.name in str(ei.value)


@pytest.mark.parametrize("name, key", [(n, k) for n, k in PARAMS if _param(n, k).kind == "choice"])
def test_bad_choice_names_parameter(name, key, data):
    with pytest.raises(ReprscopeError, match=f"'{key}'"):
        run_analyzer(name, data, {key: "no-such-choice"})


def test_unknown_analyzer():
    with pytest.raises(ReprscopeError, match="unknown analyzer 'nope'"):
        run_analyzer("nope", make_data(synthetic()))


def test_huge_finite_values_are_not_taken_for_inf():
    """A row of finite float32 values near the largest float32 sums to Inf; it is still a finite sample."""
    from reprscope.analyzers.base import finite_mask

    emb = synthetic()
    emb[:, 5, :] = 3e38  # finite in float32, the row sum overflows
    emb[1, 9, 2] = np.inf
    keep = finite_mask(make_data(emb))
    assert keep[5] and not keep[9] and int(keep.sum()) == emb.shape[1] - 1
