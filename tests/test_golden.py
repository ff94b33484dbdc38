"""Golden fixtures: the analyzers' numbers on a committed store, and a committed checkpoint that still loads.

Regenerate with ``python fixtures/make_fixtures.py`` only when a change of the numbers is intended.
"""
from pathlib import Path

import numpy as np

from reprscope.data import build_dataset
from reprscope.extract import Store, extract
from reprscope.formats import load_checkpoint
from reprscope.pipeline import analyze_store
from reprscope.table import COLUMNS, make_table, read_table

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def test_analyzers_reproduce_the_golden_table():
    golden = read_table(FIX / "tiny_dgp_table.csv")
    with Store(FIX / "tiny_dgp.h5") as st:
        rows, _ = analyze_store(st, ["center", "spectrum", "identifiability"], source="fixtures/tiny_dgp.h5")
    now = make_table(rows)
    key = ["layer", "view", "analyzer", "metric", "index"]
    merged = golden.merge(now, on=key, how="outer", suffixes=("_golden", "_now"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"][key + ["_merge"]]
    np.testing.assert_allclose(merged["value_now"], merged["value_golden"], rtol=1e-6, atol=1e-9)
    assert list(now.columns[: len(COLUMNS)]) == COLUMNS


def test_committed_checkpoint_loads_and_reproduces_its_store(tmp_path):
    model = load_checkpoint(FIX / "tiny_simclr.pt")
    assert model.format == "reprscope" and model.method == "simclr"
    with Store(FIX / "tiny_dgp.h5") as st:
        ds = build_dataset(st.attrs["dataset"])
        out = extract(model, ds, tmp_path / "again.h5", views=2, progress=False)
        with Store(out) as again:
            assert [l["name"] for l in again.layers()] == [l["name"] for l in st.layers()]
            for layer in st.layers():
                a = st.embeddings(layer["name"])[()]
                b = again.embeddings(layer["name"])[()]
                np.testing.assert_allclose(b[0], a[0], atol=1e-5)  # the clean view is deterministic
            np.testing.assert_array_equal(again.latents, st.latents)
