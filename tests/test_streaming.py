"""Streaming equals whole (STYLE.md principle 5), for every registered analyzer.

The same embeddings are analyzed (a) in memory in one chunk and (b) from an .h5 store on disk, read in small
chunks (chunk_size 7, so chunk boundaries fall inside batches), with NaN samples masked in (b) only: the rows
must agree to rounding.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reprscope.analyzers import ANALYZERS, run_analyzer
from reprscope.extract import Store, StoreWriter

from test_analyzer_contract import make_data, synthetic

NAMES = [n for n in ANALYZERS.names() if not ANALYZERS.get(n).pairwise]  # pairs: tests/analyzers/test_similarity.py


def _rows(res):
    return {(r["view"], r["metric"], r["index"], r.get("form", ""), r.get("k", "")): r["value"] for r in res.rows}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    emb = synthetic(n=150, d=6).astype(np.float64)
    mem = make_data(emb)
    path = tmp_path_factory.mktemp("stream") / "s.h5"
    padded = np.concatenate([emb, np.full((3, 5, 6), np.nan)], axis=1)  # 5 NaN samples appended on disk
    order = np.r_[np.arange(0, 70), np.arange(150, 155), np.arange(70, 150)]  # …and placed in the middle
    disk_emb = padded[:, order].astype(np.float32)
    with StoreWriter(path, disk_emb.shape[1], ["clean", "aug1", "aug2"], [("encoder", "encoder", 0, 6)],
                     {"source": "t", "method": "t", "dataset": {}, "seed": 0, "step": -1}) as w:
        w.write_meta(np.arange(disk_emb.shape[1]))
        w.write_batch(0, {"encoder": disk_emb})
    return mem, path, order


@pytest.mark.parametrize("name", NAMES)
def test_chunked_h5_equals_in_memory(name, stored):
    mem, path, order = stored
    keep_pos = order < 150  # the stored order with the NaN samples
    whole = run_analyzer(name, dataclasses.replace(mem, embeddings=mem.embeddings.astype(np.float32).astype(np.float64),
                                                   chunk_size=10_000, cache={}))
    with Store(path) as st:
        ds = st.embeddings("encoder")
        lat = np.full((len(order), mem.latents.shape[1]), 0.0, dtype=np.float32)
        lat[keep_pos] = mem.latents
        lab = np.zeros(len(order), dtype=np.int64)
        lab[keep_pos] = mem.labels
        coarse = np.zeros(len(order), dtype=np.int64)
        coarse[keep_pos] = mem.labels_coarse
        disk = dataclasses.replace(mem, embeddings=ds, latents=lat, labels=lab, labels_coarse=coarse,
                                   chunk_size=7, cache={})
        streamed = run_analyzer(name, disk)
    a, b = _rows(whole), _rows(streamed)
    assert a.keys() == b.keys()
    assert any("NaN" in n for n in streamed.notes) or not ANALYZERS.get(name).reads_embeddings
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-9), (name, k)


def test_moments_stay_float64_for_large_float32_stores(monkeypatch):
    """Large float32 stores give other analyzers float32 products (stats.product_dtype); the moments the
    spectrum reads stay float64 (its small singular values would be noise otherwise); float64 stores never
    get float32 products."""
    from reprscope.metrics import stats

    rng = np.random.default_rng(3)
    emb = (rng.normal(size=(2, 3000, 16)) * 3 + 50).astype(np.float32)  # a large offset: shifting matters
    data = make_data(emb, views=["aug1", "aug2"])
    exact = stats.moments(dataclasses.replace(data, embeddings=emb.astype(np.float64), cache={}))
    monkeypatch.setattr(stats, "FLOAT32_PRODUCTS_ABOVE", 1000)
    big = dataclasses.replace(data, chunk_size=512, cache={})
    assert stats.product_dtype(big) == np.float32
    assert stats.product_dtype(dataclasses.replace(big, embeddings=emb.astype(np.float64))) == np.float64
    for a, b in zip(exact, stats.moments(big)):
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-13)
        np.testing.assert_allclose(b.scatter, a.scatter, rtol=1e-9, atol=1e-11 * np.abs(a.scatter).max())
        np.testing.assert_allclose(b.gram, a.gram, rtol=1e-13)


def test_torch_moments_equal_numpy():
    """The accelerator path of the moments (torch), run on the CPU, against the numpy path."""
    import torch

    from reprscope.metrics import stats

    emb = np.random.default_rng(5).normal(size=(2, 777, 6)) * np.array([0.5, 2.0])[:, None, None] + 1e3
    data = dataclasses.replace(make_data(emb, views=["aug1", "aug2"]), chunk_size=200, cache={})
    for a, b in zip(stats._moments_numpy(data), stats._moments_torch(data, torch.device("cpu"))):
        assert a.n == b.n == 777
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-14)
        np.testing.assert_allclose(b.shift, a.shift, rtol=1e-14)
        np.testing.assert_allclose(b.scatter, a.scatter, rtol=1e-9, atol=1e-12 * np.abs(a.scatter).max())
        np.testing.assert_allclose(b.gram, a.gram, rtol=1e-13)


@pytest.mark.parametrize("block", [1, 100, 4096])
def test_moments_in_blocks_equal_the_direct_sums(monkeypatch, block):
    """Count, mean, scatter and Gram from the shifted blocks (their sums from the ones column of the product)
    equal the direct float64 computation, with blocks of one row, blocks that cut the chunks unevenly, and one
    block larger than n; a large common offset loses nothing to cancellation."""
    from reprscope.metrics import stats

    monkeypatch.setattr(stats, "MOMENT_BLOCK_ROWS", block)
    emb = np.random.default_rng(4).normal(size=(2, 1037, 9)) * np.array([0.5, 2.0])[:, None, None] + 1e4
    got = stats.moments(dataclasses.replace(make_data(emb, views=["aug1", "aug2"]), chunk_size=300, cache={}))
    for z, m in zip(emb, got):
        zc = z - z.mean(axis=0)
        assert m.n == 1037
        np.testing.assert_allclose(m.mean, z.mean(axis=0), rtol=1e-14)
        np.testing.assert_allclose(m.scatter, zc.T @ zc, rtol=1e-9, atol=1e-9 * np.abs(zc.T @ zc).max())
        np.testing.assert_allclose(m.gram, z.T @ z, rtol=1e-12)
        np.testing.assert_allclose(m.covariance(), np.cov(z.T), rtol=1e-9, atol=1e-9 * np.abs(np.cov(z.T)).max())


@pytest.mark.parametrize("views", [[1, 2], [2, 0], [0, 1, 2]])
def test_sample_range_reads_the_kept_samples(stored, views):
    """LayerData.sample_range (a few batches of a large store, read alone) gives the kept samples start … stop
    − 1 of the in-memory data, from a masked .h5 store and in any view order."""
    from reprscope.analyzers.base import finite_mask

    mem, path, order = stored
    with Store(path) as st:
        disk = dataclasses.replace(mem, embeddings=st.embeddings("encoder"), latents=None, labels=None,
                                   labels_coarse=None, cache={})
        disk = disk.take(finite_mask(disk))
        for start, stop in ((0, 150), (60, 80), (68, 72), (149, 150), (10, 10)):
            got = disk.sample_range(views, start, stop)
            want = mem.embeddings[views][:, start:stop].astype(np.float32).astype(np.float64)
            assert got.shape == (len(views), stop - start, 6) and got.dtype == np.float64
            np.testing.assert_array_equal(got, want)
    got = mem.sample_range(views, 5, 9, dtype=np.float32)
    np.testing.assert_array_equal(got, mem.embeddings[views][:, 5:9].astype(np.float32))
