"""Bootstrap intervals (``--bootstrap B``): equal to a hand-written percentile bootstrap, seeded, refused where
resampling with replacement would bias the estimate, bounded in memory, and carried through the table."""
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import reprscope
import reprscope.analyzers.base as base_mod
import reprscope.metrics as M
from reprscope.check import check
from reprscope.errors import ReprscopeError
from reprscope.table import INTERVAL_COLUMNS, read_table, write_table
from reprscope_cli.main import app


def _arrays(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) * np.linspace(2, 0.3, d) + 1.0
    return np.stack([base + 0.3 * rng.normal(size=(n, d)) for _ in range(2)])


def test_intervals_equal_a_hand_written_percentile_bootstrap():
    z = _arrays()
    table = reprscope.analyze({"enc": z}, analyzers=["center", "spectrum"], bootstrap=40, ci=0.9, seed=3)
    rng = np.random.default_rng(3)
    norms, ranks = [], []
    for _ in range(40):
        idx = rng.integers(0, z.shape[1], size=z.shape[1])
        norms.append(M.center_norm(z[:, idx]))
        ranks.append(M.rankme(z[0, idx]))
    row = table[(table["metric"] == "center_norm")].iloc[0]
    assert (row["value_lo"], row["value_hi"]) == pytest.approx(tuple(np.quantile(norms, [0.05, 0.95])), rel=1e-12)
    assert row["bootstrap"] == 40 and row["value_lo"] <= row["value"] <= row["value_hi"]
    row = table[(table["metric"] == "rankme") & (table["view"] == "view0")].iloc[0]
    assert (row["value_lo"], row["value_hi"]) == pytest.approx(tuple(np.quantile(ranks, [0.05, 0.95])), rel=1e-12)
    # the spectrum's vectors get no interval; the run is reproducible
    assert table.loc[table["metric"] == "sv", "value_lo"].isna().all()
    again = reprscope.analyze({"enc": z}, analyzers=["center", "spectrum"], bootstrap=40, ci=0.9, seed=3)
    pd.testing.assert_frame_equal(table, again)


def test_analyzers_that_resampling_would_bias_say_why_and_get_none():
    z = _arrays()
    labels = np.arange(z.shape[1]) % 3
    with pytest.warns(reprscope.ReprscopeWarning, match="train/test split"):
        table = reprscope.analyze({"enc": z}, analyzers=["knn", "vicreg"], labels=labels, bootstrap=10)
    assert table.loc[table["analyzer"] == "knn", "value_lo"].isna().all()
    assert table.loc[table["analyzer"] == "vicreg", "value_lo"].notna().any()


def test_a_resample_that_does_not_fit_is_a_note(monkeypatch):
    monkeypatch.setattr(base_mod, "BOOTSTRAP_MEMORY", 1000)
    with pytest.warns(reprscope.ReprscopeWarning, match="needs .* GiB"):
        table = reprscope.analyze({"enc": _arrays()}, analyzers=["center"], bootstrap=5)
    assert "value_lo" not in table.columns or table["value_lo"].isna().all()


def test_the_table_round_trips_and_check_ignores_the_intervals(tiny_h5, tmp_path):
    table = reprscope.analyze(tiny_h5, analyzers=["center"], bootstrap=8)
    assert list(table.columns[11:14]) == INTERVAL_COLUMNS
    path = write_table(table, tmp_path / "b.csv")
    back = read_table(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert check(tiny_h5, path).ok  # recomputed without a bootstrap: the intervals are not keys


@pytest.mark.parametrize("args, flag", [(["--bootstrap", "-1"], "--bootstrap"), (["--bootstrap", "5", "--ci", "1.5"], "--ci")])
def test_bad_settings_are_one_line_errors(tiny_h5, args, flag):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(app, ["analyze", str(tiny_h5), "--analyzers", "center", *args, "--quiet"])
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and f"({flag})" in err[0]
    with pytest.raises(ReprscopeError):
        reprscope.analyze({"enc": _arrays()}, analyzers=["center"], bootstrap=True)
