"""The same checkpoint gives the same table on any thread count (so `check` in CI agrees with a laptop)."""
import numpy as np
import torch
from threadpoolctl import threadpool_limits

import reprscope


def test_analyze_is_the_same_on_one_and_on_several_threads(tiny_ckpt, tmp_path, monkeypatch):
    analyzers = ["center", "spectrum", "vicreg", "label_free", "lidar", "knn", "matrix_information", "uniformity"]
    tables = []
    before = torch.get_num_threads()
    try:
        for i, threads in enumerate((1, max(2, before))):
            monkeypatch.setenv("REPRSCOPE_CACHE", str(tmp_path / f"cache{i}"))  # extract again on each setting
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):
                tables.append(reprscope.analyze(tiny_ckpt, analyzers=analyzers, limit=200, progress=False))
    finally:
        torch.set_num_threads(before)
    a, b = tables
    key = ["layer", "view", "analyzer", "metric", "index"] + [c for c in ("form", "k") if c in a.columns]
    merged = a.merge(b, on=key, how="outer", suffixes=("_1", "_n"), indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_allclose(merged["value_n"], merged["value_1"], rtol=1e-6, atol=1e-9)
