"""Tests of the ``center`` analyzer (the center-vector paper, ICLR 2024 submission, §2.1) against a naive per-sample loop."""
import math

import numpy as np
import pytest

import reprscope.metrics.center as center_mod
from reprscope.analyzers.base import LayerData, run_analyzer


def _data(views, emb):
    return LayerData(layer="enc", space="encoder", views=list(views), embeddings=emb)


def _scalars(res):
    return {r["metric"]: r["value"] for r in res.rows}


def naive_center(emb, views):
    """Explicit loops over samples and view pairs; float64; a zero row stays zero."""
    used = [i for i, v in enumerate(views) if v != "clean"] or list(range(len(views)))
    emb = np.asarray(emb, dtype=np.float64)
    n, d = emb.shape[1], emb.shape[2]
    mus = []
    cos_sum, cos_cnt = 0.0, 0
    for i in range(n):
        hats = []
        for v in used:
            z = emb[v, i]
            nz = math.sqrt(sum(float(x) * float(x) for x in z))
            hats.append(z / nz if nz > 0 else np.zeros(d))
        mus.append(sum(hats) / len(hats))
        for a in range(len(hats)):
            for b in range(a + 1, len(hats)):
                cos_sum += float(np.dot(hats[a], hats[b]))
                cos_cnt += 1
    s = sum(mus) / n
    resid = [math.sqrt(float(np.dot(m - s, m - s))) for m in mus]
    mean = sum(resid) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in resid) / n)
    out = {"center_norm": math.sqrt(float(np.dot(s, s))), "residual_norm_mean": mean, "residual_norm_std": std}
    if cos_cnt:
        out["alignment"] = cos_sum / cos_cnt
    return out, "|".join(views[i] for i in used)


VIEW_SETS = [["clean", "aug1", "aug2"], ["aug1", "aug2", "aug3"], ["clean", "aug1"], ["clean"], ["clean", "aug1", "aug2", "aug3"]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("views", VIEW_SETS)
@pytest.mark.parametrize("shape", [(17, 5), (6, 12)])
def test_matches_naive(dtype, views, shape):
    rng = np.random.default_rng(1)
    n, d = shape
    emb = (rng.normal(size=(len(views), n, d)) + 0.7).astype(dtype)
    res = run_analyzer("center", _data(views, emb))
    want, view = naive_center(emb, views)
    got = _scalars(res)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k
    assert {r["view"] for r in res.rows} == {view}
    if "alignment" not in want:
        assert any("alignment skipped" in n for n in res.notes)


def test_view_column_and_no_aug_note():
    emb = np.random.default_rng(0).normal(size=(1, 5, 3))
    res = run_analyzer("center", _data(["clean"], emb))
    assert {r["view"] for r in res.rows} == {"clean"}
    assert any("no augmented views" in n for n in res.notes)
    res = run_analyzer("center", _data(["clean", "aug1", "aug2"], np.random.default_rng(0).normal(size=(3, 5, 3))))
    assert {r["view"] for r in res.rows} == {"aug1|aug2"}


def test_antipodal_points():
    x = np.array([3.0, -1.0, 2.0])
    emb = np.stack([np.stack([x, -x]), np.stack([2 * x, -5 * x])])  # 2 views, 2 samples
    got = _scalars(run_analyzer("center", _data(["aug1", "aug2"], emb)))
    assert got["center_norm"] == pytest.approx(0.0, abs=1e-15)
    assert got["residual_norm_mean"] == pytest.approx(1.0, abs=1e-15)
    assert got["residual_norm_std"] == pytest.approx(0.0, abs=1e-15)
    assert got["alignment"] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identical_rows_collapse(dtype):
    emb = np.tile(np.array([0.1, 0.2, -0.3], dtype=dtype), (2, 9, 1))
    got = _scalars(run_analyzer("center", _data(["aug1", "aug2"], emb)))
    assert got["center_norm"] == pytest.approx(1.0, abs=1e-12)
    assert got["residual_norm_mean"] == pytest.approx(0.0, abs=1e-12)
    assert got["residual_norm_std"] == pytest.approx(0.0, abs=1e-12)
    assert got["alignment"] == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_views_alignment_zero():
    eye = np.eye(4)
    emb = np.stack([eye[:2], eye[2:]])  # sample i: e_i in view 1, e_{i+2} in view 2
    got = _scalars(run_analyzer("center", _data(["aug1", "aug2"], emb)))
    assert got["alignment"] == 0.0
    assert got["center_norm"] == pytest.approx(0.5)  # s = (e0+e1+e2+e3)/4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_rows_stay_zero_with_note(dtype):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(3, 8, 4)).astype(dtype)
    emb[1, 2] = 0
    emb[2, 5] = 0
    emb[1, 5] = 0
    views = ["clean", "aug1", "aug2"]
    res = run_analyzer("center", _data(views, emb))
    want, _ = naive_center(emb, views)
    got = _scalars(res)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12)
    assert any("3 zero embedding row" in n for n in res.notes)
    all_zero = run_analyzer("center", _data(views, np.zeros((3, 4, 2), dtype=dtype)))
    assert _scalars(all_zero) == {"center_norm": 0.0, "residual_norm_mean": 0.0, "residual_norm_std": 0.0, "alignment": 0.0}


def test_chunked_equals_whole(monkeypatch):
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(3, 23, 5))
    whole = _scalars(run_analyzer("center", _data(["clean", "aug1", "aug2"], emb)))
    monkeypatch.setattr(center_mod, "_CHUNK_ELEMS", 7)  # a handful of samples per chunk
    chunked = _scalars(run_analyzer("center", _data(["clean", "aug1", "aug2"], emb)))
    monkeypatch.setattr(center_mod, "_BLOCK", 2)  # and blocks of 2 samples inside each chunk
    streamed = _scalars(run_analyzer("center", _data(["clean", "aug1", "aug2"], emb)))
    for k in whole:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-14)
        assert streamed[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("spread", [1e-3, 1e-6, 1e-9])
def test_near_collapse_residuals_exact(spread):
    """Residuals far below the cancellation error of the expanded square are recomputed directly: they still
    match the explicit per-sample loop to 1e-9 (the expansion alone would give rounding noise here)."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=16) + 2.0
    emb = base + spread * rng.normal(size=(2, 40, 16))
    emb[:, :20] += 0.5  # half the samples far from the center: the expansion is accurate there
    got = _scalars(run_analyzer("center", _data(["aug1", "aug2"], emb)))
    want, _ = naive_center(emb, ["aug1", "aug2"])
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-15), k
    tiny = np.tile(base, (2, 30, 1)) + spread * rng.normal(size=(2, 30, 16))
    got = _scalars(run_analyzer("center", _data(["aug1", "aug2"], tiny)))
    want, _ = naive_center(tiny, ["aug1", "aug2"])
    assert got["residual_norm_mean"] == pytest.approx(want["residual_norm_mean"], rel=1e-9)
    assert got["residual_norm_std"] == pytest.approx(want["residual_norm_std"], rel=1e-7)


def test_nan_sample_left_out_with_note():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(2, 10, 3))
    bad = emb.copy()
    bad[1, 4, 0] = np.nan
    res = run_analyzer("center", _data(["aug1", "aug2"], bad))
    ref = run_analyzer("center", _data(["aug1", "aug2"], np.delete(emb, 4, axis=1)))
    assert any("NaN/Inf" in n for n in res.notes)
    assert _scalars(res) == pytest.approx(_scalars(ref))
    assert all(np.isfinite(r["value"]) for r in res.rows)


def test_deterministic():
    emb = np.random.default_rng(6).normal(size=(3, 12, 4)).astype(np.float32)
    a = run_analyzer("center", _data(["clean", "aug1", "aug2"], emb))
    b = run_analyzer("center", _data(["clean", "aug1", "aug2"], emb))
    assert a.rows == b.rows and a.notes == b.notes


def test_unknown_parameter_raises():
    from reprscope.errors import ReprscopeError

    with pytest.raises(ReprscopeError, match="no parameter 'tau'"):
        run_analyzer("center", _data(["aug1"], np.ones((1, 3, 2))), {"tau": 1})


def test_float32_products_of_a_large_store(monkeypatch):
    """A large float32 store takes the float32 einsum branches (no float64 copy): same values to float32
    rounding as the float64 computation of the same numbers."""
    import reprscope.metrics.stats as stats

    rng = np.random.default_rng(4)
    emb = (rng.normal(size=(3, 300, 16)) + 0.7).astype(np.float32)
    want = _scalars(run_analyzer("center", _data(VIEW_SETS[0], emb.astype(np.float64))))
    monkeypatch.setattr(stats, "FLOAT32_PRODUCTS_ABOVE", 0)
    data = _data(VIEW_SETS[0], emb)
    assert stats.product_dtype(data) == np.float32
    got = _scalars(run_analyzer("center", data))
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=2e-6, abs=1e-7), k
