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


def naive_knn_full(x, labels, k, similarity="cosine", temperature=0.07, eps=1e-5, test_fraction=0.2, seed=0):
    """Per query: every train sample's cosine similarity or Euclidean distance (from differences), sorted
    stably (ties to the lowest index); votes exp(sim/T) or 1/(distance + ε) (solo-learn's two distance_fx);
    returns (top-1, top-5) with the classes ranked by score, ties to the smaller label."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(round(n * (1 - test_fraction))), 1), n - 1)
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    classes = sorted(set(labels.tolist()))
    top1 = top5 = 0
    for q in te:
        if similarity == "cosine":
            hat = x / np.linalg.norm(x, axis=1, keepdims=True)
            key = np.array([-(hat[q] @ hat[j]) for j in tr])
            w = lambda j: math.exp(-key[j] / temperature)  # noqa: E731
        else:
            key = np.array([np.linalg.norm(x[q] - x[j]) for j in tr])
            w = lambda j: 1.0 / (key[j] + eps)  # noqa: E731
        scores = {c: 0.0 for c in classes}
        for j in np.argsort(key, kind="stable")[:k]:
            scores[labels[tr[j]]] += w(j)
        ranked = sorted(classes, key=lambda c: (-scores[c], c))
        top1 += ranked[0] == labels[q]
        top5 += labels[q] in ranked[:5]
    return top1 / len(te), top5 / len(te)


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_top5_and_euclidean_equal_the_naive_loop(similarity):
    x, y = _clusters(300, 6, 9, spread=1.6, seed=4)
    x = x + 2.0  # not centred: the Euclidean and cosine neighbours differ
    res = run_analyzer("knn", _data(x.astype(np.float32), y), {"ks": "10,40", "similarity": similarity})
    got = {(r["metric"], r["k"]): r["value"] for r in res.rows}
    for k in (10, 40):
        t1, t5 = naive_knn_full(x.astype(np.float32), y, k, similarity)
        assert got[("top1", k)] == pytest.approx(t1, abs=1e-12)
        assert got[("top5", k)] == pytest.approx(t5, abs=1e-12)
        assert got[("top5", k)] >= got[("top1", k)]
    assert {r["similarity"] for r in res.rows} == {similarity}


def test_euclidean_and_ranked_predictions_agree_between_numpy_and_torch():
    x, y = _clusters(400, 5, 8, spread=2.0, seed=5)
    t = torch.from_numpy((x + 1.0).astype(np.float32))
    args = (t[:300], torch.from_numpy(y[:300]), t[300:], [7, 30], 0.07, 8)
    for similarity in ("cosine", "euclidean"):
        for ranks in (1, 5):
            a = knn_mod.knn_predict(*args, use_numpy=True, similarity=similarity, ranks=ranks, block_elems=3000)
            b = knn_mod.knn_predict(*args, use_numpy=False, similarity=similarity, ranks=ranks, block_elems=3000)
            for k in (7, 30):
                assert torch.equal(a[k], b[k]), (similarity, ranks, k)


def test_top5_needs_more_than_five_classes():
    x, y = _clusters(200, 4, 5, spread=1.0)
    res = run_analyzer("knn", _data(x, y), {"ks": "10"})
    assert {r["metric"] for r in res.rows} == {"top1"}
    import reprscope.metrics as M
    with pytest.raises(ReprscopeError, match="more than five classes"):
        M.knn_accuracy(x, y, k=10, top=5)
    x9, y9 = _clusters(200, 4, 9, spread=1.0)
    rows = run_analyzer("knn", _data(x9, y9), {"ks": "10", "similarity": "euclidean"}).rows
    assert M.knn_accuracy(x9, y9, k=10, top=5, similarity="euclidean") == next(
        r["value"] for r in rows if r["metric"] == "top5")


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_merged_bank_share_candidates_are_the_whole_bank_candidates(similarity):
    """torchrun k-NN: each rank's top-k over a contiguous share of the bank, merged in bank order, gives exactly
    the candidates of the whole bank — with a share shorter than k (padded) and ties across the share boundary
    (duplicate bank rows), which go to the lowest bank index as in one process."""
    g = np.random.default_rng(0)
    bank = g.normal(size=(40, 6)).astype(np.float32)
    bank[3] = bank[30]  # ties across shares
    bank[12] = bank[2]
    queries = np.concatenate([g.normal(size=(9, 6)), bank[[2, 30]]]).astype(np.float32)
    kmax = 7
    want = [(c, i) for _q, c, i in knn_mod._candidates_np(bank, queries, kmax, similarity, 1 << 20)]
    want_c, want_i = np.concatenate([w[0] for w in want]), np.concatenate([w[1] for w in want])
    cuts = [0, 4, 25, 40]  # the first share (4 rows) is shorter than k
    parts = [knn_mod._share_candidates(bank[a:b], a, queries, kmax, similarity) for a, b in zip(cuts, cuts[1:])]
    got_c, got_i = knn_mod._merge_candidates(parts, kmax)
    assert np.array_equal(got_i, want_i)
    assert np.array_equal(got_c, want_c)
