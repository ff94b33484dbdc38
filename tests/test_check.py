"""`reprscope check`: tolerances, directions, globs, missing rows, JSON, exit codes."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reprscope.check import Rule, baseline_analyzers, compare, format_result, load_rules, select_rows
from reprscope.errors import ReprscopeError
from reprscope.table import make_table, read_table, write_table
from reprscope_cli.main import app

FIX = Path(__file__).resolve().parent.parent / "fixtures"
runner = CliRunner()


def _table(values, metric="effective_rank", analyzer="spectrum", layers=("encoder", "projector"), step=10):
    rows = [{"source": "s", "step": step, "method": "simclr", "layer": l, "view": "clean", "analyzer": analyzer,
             "metric": metric, "index": "", "value": v, "tau": 0.01} for l, v in zip(layers, values)]
    return make_table(rows)


def test_within_and_outside_tolerance():
    base = _table([10.0, 5.0])
    ok = compare(_table([10.0 + 5e-3, 5.0]), base, [Rule(rtol=1e-3, atol=0)])
    assert ok.ok and ok.compared == 2
    bad = compare(_table([10.0 + 2e-2, 5.0]), base, [Rule(rtol=1e-3, atol=0)])
    assert not bad.ok and list(bad.failures["layer"]) == ["encoder"]
    np.testing.assert_allclose(bad.failures["diff"], [2e-2])


def test_direction_higher_allows_improvement_only():
    base = _table([0.5, 0.5], metric="r2_style_mean", analyzer="identifiability")
    rules = [Rule(metric="identifiability/r2*", rtol=0, atol=0.01, direction="higher"), Rule()]
    assert compare(_table([0.9, 0.9], metric="r2_style_mean", analyzer="identifiability"), base, rules).ok
    res = compare(_table([0.9, 0.4], metric="r2_style_mean", analyzer="identifiability"), base, rules)
    assert list(res.failures["layer"]) == ["projector"]
    lower = [Rule(direction="lower", rtol=0, atol=0.01)]
    assert not compare(_table([0.9, 0.5], metric="r2_style_mean", analyzer="identifiability"), base, lower).ok


def test_globs_select_metrics_and_layers_and_missing_rows_fail():
    base = _table([10.0, 5.0])
    new = _table([10.0], layers=("encoder",))
    res = compare(new, base, [Rule()])
    assert not res.ok and list(res.missing["layer"]) == ["projector"]
    assert compare(new, base, [Rule()], layers="enc*").ok
    with pytest.raises(ReprscopeError, match="no baseline rows"):
        compare(new, base, [Rule()], metrics="nothing*")


def test_parameter_columns_are_part_of_the_key():
    base = _table([10.0, 5.0])
    other = _table([10.0, 5.0])
    other["tau"] = 0.5
    assert not compare(other, base, [Rule()]).ok  # computed with another tau: not the same quantity


def test_rules_from_toml_first_match_wins(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text('[default]\nrtol = 0.5\n\n[[rule]]\nmetric = "spectrum/*"\nlayer = "proj*"\natol = 0\nrtol = 0\n')
    rules = load_rules(f)
    assert rules[0].layer == "proj*" and rules[-1].rtol == 0.5
    base = _table([10.0, 5.0])
    res = compare(_table([12.0, 5.001]), base, rules)
    assert list(res.failures["layer"]) == ["projector"]  # encoder within the default 50%
    assert load_rules(f, rtol=0.01)[-1].rtol == 0.01  # the CLI overrides the file's default


@pytest.mark.parametrize("text, match", [("[default]\nrtol = -1\n", "rtol"), ("[default]\ndirection = 'up'\n", "direction"),
                                         ("[other]\n", "unknown table"), ("[[rule]]\nmetrik = 'x'\n", "unknown key"),
                                         ("not toml [", "cannot parse"),
                                         ("[rule]\nmetric = 'x'\n", r"\[\[rule\]\]"),  # a table, not a list of them
                                         ("[default]\natol = 'abc'\n", "atol must be"),
                                         ("[[rule]]\nmetric = 5\n", "metric must be a string"),
                                         ("default = 3\n", "must be a table")])
def test_bad_tolerance_files(tmp_path, text, match):
    f = tmp_path / "tol.toml"
    f.write_text(text)
    with pytest.raises(ReprscopeError, match=match):
        load_rules(f)


def test_cli_check_exit_codes_and_json(tmp_path):
    base = tmp_path / "base.csv"
    r = runner.invoke(app, ["analyze", str(FIX / "tiny_dgp.h5"), "--analyzers", "spectrum,center", "--out", str(base), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(base)])
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    # perturb one baseline value: a regression, exit 1, the row is printed
    t = read_table(base)
    i = t.index[(t["metric"] == "center_norm") & (t["layer"] == "encoder")][0]
    t.loc[i, "value"] += 0.5
    write_table(t, base)
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(base)])
    assert r.exit_code == 1 and "REGRESSION" in r.output and "center_norm" in r.output
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(base), "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["ok"] is False and doc["failed"][0]["metric"] == "center_norm"
    # selecting other metrics makes it pass again
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(base), "--metrics", "spectrum/*"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(base), "--atol", "1"])
    assert r.exit_code == 0, r.output


def test_cli_check_bad_input_exit_2(tmp_path):
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(tmp_path / "none.csv")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["check", str(FIX / "tiny_dgp.h5"), "--baseline", str(f)])
    assert r.exit_code == 2 and "not a reprscope table" in r.stderr


def test_rules_from_yaml(tmp_path):
    f = tmp_path / "tol.yaml"
    f.write_text("default:\n  rtol: 0.5\nrule:\n  - metric: 'spectrum/*'\n    layer: 'proj*'\n    rtol: 0\n    atol: 0\n")
    rules = load_rules(f)
    res = compare(_table([12.0, 5.001]), _table([10.0, 5.0]), rules)
    assert list(res.failures["layer"]) == ["projector"]
    f.write_text("- just a list\n")
    with pytest.raises(ReprscopeError, match="mapping"):
        load_rules(f)


def test_single_checkpoints_at_different_steps_are_compared():
    """The CI case: a new checkpoint (step 30) against the table of an older one (step 60)."""
    base = _table([10.0, 5.0], step=60)
    res = compare(_table([10.0, 5.0], step=30), base, [Rule()])
    assert res.ok and res.compared == 2 and res.steps == ["60", "30"]
    assert "step 60" in format_result(res) and "step 30" in format_result(res)
    bad = compare(_table([10.0, 6.0], step=30), base, [Rule()])
    assert not bad.ok and list(bad.failures["layer"]) == ["projector"]
    assert compare(_table([10.0, 5.0], step=60), base, [Rule()]).steps is None  # same step: nothing to say


def test_tables_of_several_steps_match_step_by_step():
    base = pd.concat([_table([10.0, 5.0], step=10), _table([12.0, 6.0], step=20)], ignore_index=True)
    same = pd.concat([_table([10.0, 5.0], step=10), _table([12.0, 6.0], step=20)], ignore_index=True)
    assert compare(same, base, [Rule()]).ok
    swapped = pd.concat([_table([12.0, 6.0], step=10), _table([10.0, 5.0], step=20)], ignore_index=True)
    res = compare(swapped, base, [Rule()])
    assert not res.ok and len(res.failures) == 4
    only_one = _table([10.0, 5.0], step=10)  # a single checkpoint against a trajectory: that step's rows
    res = compare(only_one, base, [Rule()])
    assert res.ok and res.compared == 2 and res.missing.empty
    assert not compare(_table([12.0, 5.0], step=10), base, [Rule()]).ok
    with pytest.raises(ReprscopeError, match="step 30, which it lacks"):
        compare(_table([10.0, 5.0], step=30), base, [Rule()])


def test_selection_applies_to_the_new_rows_and_to_what_is_recomputed():
    base = pd.concat([_table([10.0, 5.0]), _table([0.3, 0.2], metric="center_norm", analyzer="center")],
                     ignore_index=True)
    new = pd.concat([base, _table([1.0, 1.0], metric="rankme")], ignore_index=True)
    res = compare(new, base, [Rule()], metrics="center/*")
    assert res.ok and res.compared == 2 and res.extra == 0  # rows outside the selection are not counted
    assert compare(new, base, [Rule()]).extra == 2
    assert set(baseline_analyzers(select_rows(base, "center/*"))) == {"center"}
    assert set(baseline_analyzers(select_rows(base, None, "proj*"))) == {"spectrum", "center"}


# -- bad input and like-with-like (a user review's findings) ------------------------------------------------


def test_yaml_tolerances_written_as_1e_minus_6_are_numbers(tmp_path):
    f = tmp_path / "tol.yaml"
    f.write_text("default:\n  atol: 1e-6\nrule:\n  - metric: 'spectrum/*'\n    rtol: 2e-2\n")  # PyYAML: strings
    rules = load_rules(f)
    assert rules[0].rtol == 0.02 and rules[0].atol == 1e-6 and rules[-1].atol == 1e-6


def test_command_line_tolerances_are_the_default_of_every_rule(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text('[default]\nrtol = 0.5\n\n[[rule]]\nmetric = "spectrum/*"\ndirection = "higher"\n\n'
                 '[[rule]]\nmetric = "center/*"\nrtol = 0.2\n')
    rules = load_rules(f, rtol=0.01)
    assert [r.rtol for r in rules] == [0.01, 0.2, 0.01]  # a rule's own value wins; else the command line's
    with pytest.raises(ReprscopeError, match="is a folder"):
        load_rules(tmp_path)


def test_damaged_baselines_are_input_errors(tmp_path):
    t = _table([10.0, 5.0])
    nan = tmp_path / "nan.csv"
    t.assign(value=[np.nan, 5.0]).to_csv(nan, index=False)
    text = tmp_path / "text.csv"
    t.astype({"value": object}).assign(value=["abc", 5.0]).to_csv(text, index=False)
    for path in (nan, text):
        with pytest.raises(ReprscopeError, match="damaged.*finite number"):
            read_table(path)


def test_a_table_round_tripped_through_plain_pandas_keeps_its_indices(tmp_path):
    rows = [{"source": "s", "step": 1, "method": "m", "layer": "encoder", "view": "v", "analyzer": "spectrum",
             "metric": "sv", "index": str(i), "value": 1.0 / (i + 1)} for i in range(3)]
    rows.append({**rows[0], "metric": "rankme", "index": "", "value": 2.0})
    path = tmp_path / "t.csv"
    write_table(make_table(rows), path)
    pd.read_csv(path).to_csv(path, index=False)  # index 0 → "0.0", "" → NaN → ""
    assert "0.0" in path.read_text()
    back = read_table(path)
    assert list(back["index"]) == ["0", "1", "2", ""]
    assert compare(back, make_table(rows), [Rule()]).ok


def test_failing_rows_beyond_the_limit_are_counted():
    base = _table([float(i) for i in range(8)], layers=[f"l{i}" for i in range(8)])
    res = compare(_table([i + 1.0 for i in range(8)], layers=[f"l{i}" for i in range(8)]), base, [Rule()])
    text = format_result(res, max_rows=3)
    assert "... and 5 more" in text and text.count("effective_rank") == 3


def test_context_columns_refuse_other_data_or_sample_count():
    from reprscope.check import check_context

    base = _table([10.0, 5.0]).assign(data="dgp", n=2000)
    check_context(base, base.copy())
    with pytest.raises(ReprscopeError, match="data=dgp, n=2000.*data=blobs, n=2000.*data=.dgp. and limit=2000 .--data dgp --limit 2000 on the command line"):
        check_context(base, base.assign(data="blobs"))
    with pytest.raises(ReprscopeError, match="n=500"):
        check_context(base, base.assign(n=500))
    with pytest.raises(ReprscopeError, match="extract the store again with `reprscope extract ... --data dgp --limit 2000`"):
        check_context(base, base.assign(n=500), store=True)
    check_context(_table([10.0, 5.0]), base)  # an older baseline without the columns: nothing to compare
    assert compare(base.assign(n=500), base, [Rule()]).ok  # the columns are not parameters of the values


def test_cli_check_reuses_the_baselines_sample_count_and_refuses_other_data(tmp_path):
    """The README's CI job: a baseline made with --limit, checked again on the same checkpoint without it."""
    ckpt = FIX / "tiny_simclr.pt"
    base = tmp_path / "base.csv"
    r = runner.invoke(app, ["analyze", str(ckpt), "--analyzers", "spectrum,center", "--limit", "150", "--out", str(base), "--quiet"])
    assert r.exit_code == 0, r.output
    t = read_table(base)
    assert set(t["n"]) == {150} and set(t["data"]) == {"dgp"}
    r = runner.invoke(app, ["check", str(ckpt), "--baseline", str(base)])
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    r = runner.invoke(app, ["check", str(ckpt), "--baseline", str(base), "--limit", "120"])
    assert r.exit_code == 2 and "n=150" in r.stderr and "n=120" in r.stderr, r.output


def test_cli_check_json_numbers_no_common_rows_and_one_source(tmp_path):
    h5 = str(FIX / "tiny_dgp.h5")
    base = tmp_path / "base.csv"
    assert runner.invoke(app, ["analyze", h5, "--analyzers", "spectrum", "--out", str(base), "--quiet"]).exit_code == 0
    t = read_table(base)
    t.loc[t["metric"] == "rankme", "value"] += 1.0
    write_table(t, base)
    r = runner.invoke(app, ["check", h5, "--baseline", str(base), "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["source"] == h5 and doc["failed"]
    row = doc["failed"][0]
    assert row["tau"] == 0.01 and isinstance(row["value_base"], float) and row["index"] is None
    # a baseline of other layers: nothing in common is an input error, not a regression
    t["layer"] = "other." + t["layer"]
    write_table(t, base)
    r = runner.invoke(app, ["check", h5, "--baseline", str(base)])
    assert r.exit_code == 2 and "counterpart" in r.stderr, r.output
    r = runner.invoke(app, ["check", h5, h5, "--baseline", str(base)])
    assert r.exit_code == 2, r.output


def test_boolean_parameter_columns_and_odd_tolerance_files(tmp_path):
    """A column of numpy bools (pandas reads center=False that way) is a valid parameter; a non-UTF-8 or
    unparsable tolerance file is one line; --json gives steps as numbers and booleans as booleans."""
    from reprscope.check import result_json

    from reprscope.analyzers import ANALYZERS
    from reprscope.params import resolve_params

    base = _table([10.0, 5.0], step=60).assign(center=False)
    assert resolve_params("analyzer matrix_information", ANALYZERS.get("matrix_information").params,
                          {"center": np.bool_(False)})["center"] is False
    f = tmp_path / "tol.toml"
    f.write_bytes(b"\xff\xfe[default]\n")
    with pytest.raises(ReprscopeError, match="not UTF-8"):
        load_rules(f)
    y = tmp_path / "tol.yaml"
    y.write_text("default: {rtol: [\n")
    with pytest.raises(ReprscopeError) as err:
        load_rules(y)
    assert "\n" not in str(err.value)
    res = compare(_table([10.0, 6.0], step=30).assign(center=False), base, [Rule()])
    doc = result_json(res)
    assert doc["steps"] == [60, 30] and doc["failed"][0]["center"] is False


def test_hand_edited_step_and_n_columns_are_input_errors(tmp_path):
    from reprscope.check import baseline_context

    t = _table([10.0, 5.0]).astype({"step": object})
    t.loc[0, "step"] = 1.5
    path = tmp_path / "t.csv"
    t.to_csv(path, index=False)
    with pytest.raises(ReprscopeError, match="damaged"):
        read_table(path)
    for bad in ("abc", 12.5, 0):
        with pytest.raises(ReprscopeError, match="n column must hold the number of samples"):
            baseline_context(_table([10.0, 5.0]).assign(n=bad))
    assert baseline_context(_table([10.0, 5.0]).assign(n=300.0, data="dgp")) == {"data": "dgp", "n": 300}
