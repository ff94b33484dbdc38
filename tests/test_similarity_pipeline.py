"""Similarity as a user runs it: every layer pair of a store, a run directory's checkpoints against the last one,
``--compare`` against another source, the table round trip, ``check`` and the report's heat maps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import reprscope
import reprscope.metrics as M
from reprscope.check import check
from reprscope.errors import ReprscopeError
from reprscope.extract import Store
from reprscope.table import PAIR_COLUMNS, read_table, write_table
from reprscope_cli.main import app

CKA = {"similarity": {"measures": "cka_linear,procrustes"}}


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def test_every_layer_pair_of_a_store_equals_the_functions_on_its_arrays(tiny_h5):
    table = reprscope.analyze(tiny_h5, analyzers="similarity", params=CKA)
    with Store(tiny_h5) as st:
        names = [l["name"] for l in st.layers()]
        ref = st.views.index("clean")
        arrays = {n: np.asarray(st.embeddings(n)[ref], dtype=np.float64) for n in names}
    pairs = {(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    cka = table[table["metric"] == "cka_linear"]
    assert set(zip(cka["layer"], cka["layer_b"])) == pairs
    assert (cka["source_b"] == "").all() and (cka["view"] == "clean").all()
    for a, b, v in zip(cka["layer"], cka["layer_b"], cka["value"]):
        assert v == pytest.approx(M.linear_cka(arrays[a], arrays[b]), rel=1e-12)
    # the pair columns follow the context columns, before the parameters
    cols = list(table.columns)
    assert cols.index("n") < cols.index("source_b") < cols.index("layer_b") < cols.index("measures")


def test_the_table_round_trips_and_check_keys_on_the_other_layer(tiny_h5, tmp_path):
    table = reprscope.analyze(tiny_h5, analyzers=["similarity", "center"], params=CKA)
    path = write_table(table, tmp_path / "t.csv")
    back = read_table(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert (back.loc[back["analyzer"] == "center", PAIR_COLUMNS] == "").all().all()
    assert check(tiny_h5, path).ok
    # one pair's value moved: exactly that pair fails (the layer_b key tells the pairs of a layer apart)
    bad = table.copy()
    first = bad.index[(bad["metric"] == "cka_linear")][0]
    bad.loc[first, "value"] += 0.05
    res = check(tiny_h5, bad)
    assert not res.ok and len(res.failures) == 1
    assert res.failures.iloc[0]["layer_b"] == table.loc[first, "layer_b"]


def test_a_run_directory_compares_each_checkpoint_with_its_last(tiny_run, tmp_path):
    out = tmp_path / "run.csv"
    r = _runner().invoke(app, ["analyze", str(tiny_run.run_dir), "--analyzers", "similarity", "--limit", "150",
                               "--param", "similarity.measures=cka_linear", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    t = read_table(out)
    ckpts = sorted(tiny_run.run_dir.glob("ckpt-*.pt"))
    across = t[t["source_b"] != ""]
    assert set(across["source_b"]) == {str(ckpts[-1])}
    assert set(across["source"]) == {str(c) for c in ckpts[:-1]}
    assert (across["layer"] == across["layer_b"]).all()
    # the last checkpoint has its within-source pairs but is not compared with itself
    assert str(ckpts[-1]) in set(t.loc[t["source_b"] == "", "source"])
    r = _runner().invoke(app, ["report", str(out), "--out", str(tmp_path / "fig"), "--formats", "png"])
    assert r.exit_code == 0, r.output
    names = {p.name for p in (tmp_path / "fig").glob("*.png")}
    assert {"similarity_cka_linear.png", "settling_cka_linear.png"} <= names
    assert not any(n.startswith("profile_similarity") or n.startswith("trajectory_similarity") for n in names)


def test_compare_with_another_source_of_the_same_inputs(tiny_run, tiny_h5, tmp_path):
    first = sorted(tiny_run.run_dir.glob("ckpt-*.pt"))[0]
    out = tmp_path / "cmp.csv"
    r = _runner().invoke(app, ["analyze", str(first), "--compare", str(tiny_h5), "--limit", "300", "--analyzers",
                               "similarity", "--param", "similarity.measures=cka_linear", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "~" in r.stdout  # the summary names the pairs
    t = read_table(out)
    with Store(tiny_h5) as st:
        names = [l["name"] for l in st.layers()]
    cross = t[t["source_b"] == str(tiny_h5)]
    assert len(cross) == len(names) ** 2
    assert set(zip(cross["layer"], cross["layer_b"])) == {(a, b) for a in names for b in names}
    r = _runner().invoke(app, ["report", str(out), "--out", str(tmp_path / "fig"), "--formats", "png"])
    assert r.exit_code == 0 and (tmp_path / "fig" / "similarity_cka_linear.png").stat().st_size > 5000


@pytest.mark.parametrize("args, message", [
    (["--limit", "200"], "different numbers of samples"),
    (["--analyzers", "center"], "compare needs a pairwise analyzer"),
])
def test_compare_refuses_what_it_cannot_compare(tiny_run, tiny_h5, tmp_path, args, message):
    first = sorted(tiny_run.run_dir.glob("ckpt-*.pt"))[0]
    out = tmp_path / "no.csv"
    extra = [] if "--analyzers" in args else ["--analyzers", "similarity"]
    r = _runner().invoke(app, ["analyze", str(first), "--compare", str(tiny_h5), *args, *extra, "--out", str(out),
                               "--quiet"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0] and "(--compare)" in err[0]
    assert not out.exists()


def test_compare_from_python_refuses_a_folder_and_a_source_twice(tiny_run, tiny_h5):
    with pytest.raises(ReprscopeError, match="folder"):
        reprscope.analyze(tiny_h5, analyzers="similarity", compare=tiny_run.run_dir)
    with pytest.raises(ReprscopeError, match="also a source"):
        reprscope.analyze(tiny_h5, analyzers="similarity", compare=tiny_h5)


def test_arrays_and_modules_get_their_layer_pairs_too():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 6))
    table = reprscope.analyze({"a": a, "b": np.tanh(a @ rng.normal(size=(6, 4))), "c": rng.normal(size=(80, 3))},
                              analyzers="similarity", params=CKA)
    assert set(zip(table["layer"], table["layer_b"])) == {("a", "b"), ("a", "c"), ("b", "c")}


def test_check_leaves_out_the_rows_that_compare_with_another_source(tiny_run, tiny_h5, tmp_path):
    first = sorted(tiny_run.run_dir.glob("ckpt-*.pt"))[0]
    table = reprscope.analyze(first, analyzers="similarity", params=CKA, compare=tiny_h5, limit=300)
    assert (table["source_b"] != "").any()
    res = check(first, table, limit=300)
    assert res.ok and res.compared == int((table["source_b"] == "").sum())
    assert any("compare with another source" in n for n in res.notes)


def test_compare_with_a_missing_file_names_the_option(tiny_h5, tmp_path):
    with pytest.raises(ReprscopeError, match="compare '.*nope.h5' does not exist") as ei:
        reprscope.analyze(tiny_h5, analyzers="similarity", compare=tmp_path / "nope.h5")
    assert ei.value.arg == "compare"
