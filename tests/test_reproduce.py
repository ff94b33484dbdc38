"""`reprscope reproduce`: every recipe runs at the tiny scale, writes its table, figures and summary, and its
summary is computed from its table (not written by hand); finished runs are reused; bad input is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reprscope.errors import ReprscopeError
from reprscope.reproduce import RECIPES, reproduce
from reprscope.table import read_table

EXPECTED = {"rusak-content-style", "center-vector", "projector-geometry", "vicreg-ablations", "matrix-information"}


def test_the_five_recipes_are_registered():
    assert set(RECIPES.names()) == EXPECTED


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def tiny(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, reproduce(request.param, scale="tiny", out=out, progress=False, echo=lambda _m: None)


def test_outputs(tiny):
    name, res = tiny
    assert res.table.is_file() and res.summary.is_file()
    table = read_table(res.table)
    assert {"run", "seed"} <= set(table.columns)
    assert {spec.name for spec in RECIPES.get(name)().runs("tiny")} <= set(table["run"].astype(str))
    assert res.findings and all(f.claim and f.source for f in res.findings)
    assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in res.figures)
    text = res.summary.read_text()
    for f in res.findings:
        assert f.claim in text
    data = json.loads((res.out / "findings.json").read_text())
    assert [d["claim"] for d in data] == [f.claim for f in res.findings]


def test_summary_is_computed_from_the_table(tiny):
    """Recomputing the findings from table.csv gives the summary's numbers; changing the table changes them."""
    name, res = tiny
    recipe = RECIPES.get(name)()
    table = read_table(res.table)
    again = recipe.findings(table, "tiny")
    assert [(f.claim, f.numbers, f.held) for f in again] == [(f.claim, f.numbers, f.held) for f in res.findings]
    changed = table.copy()
    changed["value"] = changed["value"] * 0.5 + 0.123
    moved = recipe.findings(changed, "tiny")
    assert [f.numbers for f in moved] != [f.numbers for f in res.findings]


def test_finished_runs_are_reused(tmp_path):
    calls = []
    out = tmp_path / "r"
    reproduce("rusak-content-style", scale="tiny", out=out, progress=False, echo=calls.append)
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.pt")}
    reproduce("rusak-content-style", scale="tiny", out=out, progress=False, echo=calls.append)
    assert stamp and stamp == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.pt")}


def test_bad_input():
    with pytest.raises(ReprscopeError, match="rusak-content-style"):
        reproduce("no-such-recipe", scale="tiny", out="unused", progress=False)
    with pytest.raises(ReprscopeError, match="scale"):
        reproduce("center-vector", scale="huge", out="unused", progress=False)


def test_cli_list_and_errors(tmp_path):
    from typer.testing import CliRunner

    from reprscope_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["reproduce", "--list"])
    assert res.exit_code == 0 and {l.split()[0] for l in res.stdout.splitlines() if l.strip()} == EXPECTED
    res = runner.invoke(app, ["reproduce", "nope", "--scale", "tiny", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(app, ["reproduce"])
    assert res.exit_code == 2 and "--list" in res.output


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_cpu_run_resolves_and_gpu_runs_are_declared(name):
    """The cpu, long and gpu scales are not trained in the tests; their settings must still resolve (a typo in a recipe
    fails here, not after an hour of training). gpu runs on data sets on disk are checked for their method only."""
    from reprscope.methods import METHODS
    from reprscope.reproduce.runner import run_config

    recipe = RECIPES.get(name)()
    for scale in ("cpu", "long"):
        for spec in recipe.runs(scale):
            run_config(spec, spec.seeds[0], "cpu")
    gpu = recipe.runs("gpu")
    assert gpu and all(spec.method in METHODS for spec in gpu)
    for spec in gpu:
        if not spec.data.get("path"):
            run_config(spec, spec.seeds[0], "cpu")
