"""Tests of the ``knn`` analyzer against a naive per-query loop that sorts all similarities."""
import math

import numpy as np
import pytest
import torch

import reprscope.metrics.knn as knn_mod
from reprscope.analyzers.base import LayerData, run_analyzer
from reprscope.errors import ReprscopeError

VIEWS = ["clean", "aug1", "aug2"]


def _data(emb, labels, views=VIEWS):
    emb = np.asarray(emb)
    if emb.ndim == 2:
        emb = np.stack([emb] * len(views))
    return LayerData(layer="enc", space="encoder", views=list(views), embeddings=emb, labels=np.asarray(labels))


def _top1(res):
    return {r["k"]: r["value"] for r in res.rows if r["metric"] == "top1"}


def naive_knn(x, labels, ks, temperature=0.07, test_fraction=0.2, seed=0, max_queries=None):
    """Per query: cosine similarity to every train sample, sorted (stable: ties to the lowest index), the first k
    vote with exp(sim/T); the largest class score wins (ties to the smallest label). With ``max_queries``, the
    documented subset of the test split: ``default_rng(seed + 1).choice`` of that many, in index order."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(round(n * (1 - test_fraction))), 1), n - 1)
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    if max_queries is not None and len(te) > max_queries:
        te = np.sort(np.random.default_rng(seed + 1).choice(te, size=max_queries, replace=False))
    hat = np.array([r / np.linalg.norm(r) if np.linalg.norm(r) > 0 else r for r in x])
    classes = sorted(set(labels.tolist()))
    out = {}
    for k in ks:
        correct = 0
        for q in te:
            sims = np.array([float(hat[q] @ hat[j]) for j in tr])
            order = np.argsort(-sims, kind="stable")[: min(k, len(tr))]
            scores = {c: 0.0 for c in classes}
            for j in order:
                scores[labels[tr[j]]] += math.exp(sims[j] / temperature)
            pred = max(classes, key=lambda c: (scores[c], -c))
            correct += pred == labels[q]
        out[k] = correct / len(te)
    return out


def _clusters(n, d, n_classes, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d))
    y = rng.integers(0, n_classes, size=n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


@pytest.mark.parametrize("ks", ["1,3,20", "5,200"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive(ks, temperature, seed):
    x, y = _clusters(150, 6, 4, spread=1.2, seed=seed)
    params = {"ks": ks, "temperature": temperature, "seed": seed}
    got = _top1(run_analyzer("knn", _data(x, y), params))
    want = naive_knn(x, y, [int(k) for k in ks.split(",")], temperature, seed=seed)
    assert got == pytest.approx(want, abs=1e-12)


def test_rows_record_k_temperature_and_similarity():
    x, y = _clusters(80, 4, 3, 0.5)
    res = run_analyzer("knn", _data(x, y), {"ks": "3, 10"})
    assert [(r["metric"], r["index"], r["k"], r["ks"], r["temperature"], r["similarity"], r["view"]) for r in res.rows] == [
        ("top1", "3", 3, "3,10", 0.07, "cosine", "clean"), ("top1", "10", 10, "3,10", 0.07, "cosine", "clean")]  # ks normalised


def test_separated_clusters_are_perfect():
    x, y = _clusters(300, 8, 5, spread=0.01, seed=2)
    got = _top1(run_analyzer("knn", _data(x * 100.0, y)))
    assert got == {20: 1.0, 200: 1.0}


def test_random_labels_near_chance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 16))
    y = rng.integers(0, 4, size=3000)
    got = _top1(run_analyzer("knn", _data(x, y)))
    for acc in got.values():
        assert abs(acc - 0.25) < 0.05


def test_k_larger_than_bank():
    x, y = _clusters(20, 3, 2, 1.0)
    res = run_analyzer("knn", _data(x, y), {"ks": "16,500"})
    got = _top1(res)
    assert got[500] == pytest.approx(naive_knn(x, y, [16])[16])  # 16 train samples: the whole bank
    assert any("k=500 exceeds the 16 train samples" in n for n in res.notes)
    assert not any("k=16" in n for n in res.notes)


def test_ties_broken_by_lowest_index():
    # integer-valued similarities with many exact ties
    rng = np.random.default_rng(4)
    sims = torch.from_numpy(rng.integers(0, 3, size=(50, 40)).astype(np.float32))
    for k in (1, 5, 17, 40):
        idx = knn_mod.topk_lowest_index(sims, k)
        idx_np = knn_mod.topk_lowest_index_np(sims.numpy(), k)
        for r in range(sims.shape[0]):
            want = np.argsort(-sims[r].numpy(), kind="stable")[:k]
            assert sorted(idx[r].tolist()) == sorted(want.tolist())
            assert idx_np[r].tolist() == sorted(want.tolist())  # ascending bank index


@pytest.mark.parametrize("block_elems", [None, 300])
def test_numpy_and_torch_paths_agree(block_elems):
    """The CPU path (numpy argpartition, bincount votes) predicts exactly what the torch path (topk,
    scatter_add, used on accelerators) predicts, ties included."""
    rng = np.random.default_rng(8)
    for feats in (rng.normal(size=(300, 6)), rng.integers(0, 2, size=(300, 6)).astype(float)):  # the second: ties
        x = torch.from_numpy(feats.astype(np.float32))
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        labels = torch.from_numpy(rng.integers(0, 4, size=240))
        args = (x[:240], labels, x[240:], [1, 5, 20, 200], 0.07, 4, block_elems)
        a = knn_mod.knn_predict(*args, use_numpy=True)
        b = knn_mod.knn_predict(*args, use_numpy=False)
        for k in (1, 5, 20, 200):
            assert torch.equal(a[k], b[k]), k


def test_duplicate_points_deterministic_and_naive():
    base, yb = _clusters(12, 3, 3, 1.0, seed=5)
    x = np.repeat(base, 10, axis=0)  # every point ten times: ties everywhere
    y = np.repeat(yb, 10)
    y[::7] = (y[::7] + 1) % 3  # duplicates with different labels, so the tie-break matters
    a = run_analyzer("knn", _data(x, y), {"ks": "1,4,15"})
    b = run_analyzer("knn", _data(x, y), {"ks": "1,4,15"})
    assert a.rows == b.rows
    assert _top1(a) == pytest.approx(naive_knn(x, y, [1, 4, 15]), abs=1e-12)


def test_blocks_equal_whole(monkeypatch):
    x, y = _clusters(120, 5, 3, 1.0, seed=6)
    whole = _top1(run_analyzer("knn", _data(x, y)))
    monkeypatch.setattr(knn_mod, "_BLOCK_ELEMS", 200)  # two queries per block
    assert _top1(run_analyzer("knn", _data(x, y))) == whole


def test_reference_view_and_zero_rows():
    x, y = _clusters(100, 4, 2, 0.3, seed=7)
    x[::9] = 0.0
    noise = np.random.default_rng(0).normal(size=x.shape)
    emb = np.stack([noise, x, noise])  # clean view is view 1
    got = _top1(run_analyzer("knn", _data(emb, y, views=["aug1", "clean", "aug2"]), {"ks": "7"}))
    assert got[7] == pytest.approx(naive_knn(x, y, [7])[7])


def test_max_queries_subset():
    x, y = _clusters(200, 4, 3, 1.0, seed=8)
    res = run_analyzer("knn", _data(x, y), {"max_queries": 10, "ks": "5"})
    assert any("10 of the 40 test samples" in n for n in res.notes)
    assert _top1(res)[5] == pytest.approx(naive_knn(x, y, [5], max_queries=10)[5], abs=1e-12)
    other_seed = _top1(run_analyzer("knn", _data(x, y), {"max_queries": 10, "ks": "5", "seed": 1}))[5]
    assert other_seed == pytest.approx(naive_knn(x, y, [5], seed=1, max_queries=10)[5], abs=1e-12)


@pytest.mark.parametrize("bad", ["0", "20,abc", "", "1.5", "-3"])
def test_bad_ks_names_parameter(bad):
    x, y = _clusters(30, 3, 2, 1.0)
    with pytest.raises(ReprscopeError, match="'ks' parameter of analyzer knn"):
        run_analyzer("knn", _data(x, y), {"ks": bad})


def test_parse_ks():
    assert knn_mod.parse_ks("20,200") == [20, 200]
    assert knn_mod.parse_ks("[5, 5, 1]") == [5, 1]
    assert knn_mod.parse_ks("7") == [7]
