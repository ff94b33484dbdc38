"""`reprscope reproduce`: every recipe runs at the tiny scale, writes its table, figures and summary, and its
summary is computed from its table (not written by hand); finished runs are reused; bad input is refused."""
from __future__ import annotations

import json

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


def test_reevaluate_rewrites_the_summary_from_the_table(tiny, tmp_path):
    """`reproduce --from-table`: the findings, figures and summary recomputed from table.csv alone (a recipe's
    findings changed after a long run) equal the original, wall time included; a folder without a finished run of
    that scale is refused."""
    from reprscope.reproduce import reevaluate

    name, res = tiny
    before = res.summary.read_text()
    again = reevaluate(name, "tiny", res.out)
    assert again.summary.read_text() == before
    with pytest.raises(ReprscopeError, match="scale-cpu"):
        reevaluate(name, "cpu", res.out)
    with pytest.raises(ReprscopeError, match="no finished run"):
        reevaluate(name, "tiny", tmp_path)


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
    res = runner.invoke(app, ["reproduce", "center-vector", "--from-table"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == ["error: --from-table needs --out, the folder of the finished run"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "table.csv").write_text("x\n1\n")
    (bad / "summary.md").write_text("# t — scale `cpu`\n\nThis invocation: 5 s wall time, 1 of 1 runs trained now\n")
    res = runner.invoke(app, ["reproduce", "center-vector", "--from-table", "--out", str(bad)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and res.output.startswith("error:")
    assert sorted(p.name for p in bad.iterdir()) == ["summary.md", "table.csv"]  # nothing written


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


@pytest.mark.parametrize("scale", ["cpu", "long", "gpu"])
def test_vicreg_ablation_runs_share_one_augmentation(scale):
    """Table 4a and 4b compare against the same VICReg baseline: every ablation run must see the augmentation
    the baseline sees (the 4b runs once fell back to the data set's default at the gpu scale)."""
    from reprscope.reproduce.runner import run_config

    recipe = RECIPES.get("vicreg-ablations")()
    augs = {s.name: s.sets.get("data.augment") for s in recipe.runs(scale) if s.tags.get("table") in ("4a", "4b")}
    assert len(augs) == 6 and len(set(augs.values())) == 1 and None not in augs.values()
    if scale != "gpu":  # the gpu runs read CIFAR from disk; their configs resolve on the cluster
        for s in recipe.runs(scale):
            run_config(s, s.seeds[0], "cpu")


def test_rusak_box_and_linear_runs_use_the_un_normalised_lp_infonce():
    """Rusak et al. 2022 §4.1: cosine InfoNCE on the sphere, the ℓp (here squared ℓ2) InfoNCE for
    non-normalised representations on the box and for the linear model."""
    recipe = RECIPES.get("rusak-content-style")()
    for spec in recipe.runs("cpu"):
        sim = spec.sets.get("method.similarity", "cosine")
        if spec.name.startswith(("box", "linear")):
            assert sim == "neg_lp" and spec.sets.get("method.p") == 2.0, spec.name
        elif spec.name.endswith("nonorm"):
            assert sim == "dot"
        else:
            assert spec.name.startswith("sphere") and sim == "cosine"


def test_per_output_temperatures_are_absorbed_by_a_linear_map():
    """Why τ_c < τ_s cannot act on the linear model through the output coordinates: with the un-normalised
    InfoNCE, per-coordinate temperatures τ on f(x) = Wx give the loss of the rescaled map diag(τ)^(-1/2) W
    at τ = 1 — the map absorbs them (no output coordinate is a content latent of a map trained from a random
    initialisation), so the trained spectrum moved by a rescaling, not by a content/style split."""
    import torch

    from reprscope.methods.losses import info_nce

    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 10, generator=g, dtype=torch.float64)
    x1, x2 = torch.randn(64, 10, generator=g, dtype=torch.float64), torch.randn(64, 10, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.2] * 5 + [0.5] * 5, dtype=torch.float64)
    a = info_nce(x1 @ w.T, x2 @ w.T, tau, "neg_lp", 2.0)
    ws = w / tau.sqrt()[:, None]
    b = info_nce(x1 @ ws.T, x2 @ ws.T, 1.0, "neg_lp", 2.0)
    assert torch.allclose(a, b, rtol=1e-12)
    c = info_nce(x1 @ w.T, x2 @ w.T, 1.0, "neg_lp", 2.0)
    assert not torch.allclose(a, c)  # the temperatures do change the loss of a given map


@pytest.mark.parametrize("scale", ["tiny", "cpu", "long"])
def test_center_vector_toy_projectors_do_not_centre_their_outputs(scale):
    """An output BatchNorm subtracts the batch mean of the projections — the center vector's numerator — so the
    toy comparison of SimSiam with and without predictor / stop-gradient could not show a large ‖s‖ with it."""
    from reprscope.reproduce.runner import run_config

    recipe = RECIPES.get("center-vector")()
    toys = [s for s in recipe.runs(scale) if s.data["name"] in ("blobs", "moons")]
    assert toys
    for spec in toys:
        from reprscope.models.heads import head_spec_from_config

        spec_layers = head_spec_from_config(run_config(spec, 0, "cpu")["model"]["projector"], 64, "projector")
        assert spec_layers[-1]["type"] == "linear", spec.name


def test_rusak_linear_restoration_needs_more_than_rounding():
    """The linear-model finding once held on a difference in the fifth digit (τ_c < τ_s left the spectrum as it
    was); it now needs a tenth of the way back to the d_c = 0 spectrum."""
    import numpy as np
    import pandas as pd

    recipe = RECIPES.get("rusak-content-style")()

    def table(tau_tail):
        rows = []
        for run, tail in (("linear-dc5", 0.1), ("linear-dc0", 0.7), ("linear-dc5-tau", tau_tail)):
            sv = np.r_[np.ones(5), np.full(5, tail)]
            rows += [{"analyzer": "spectrum", "metric": "sv", "run": run, "layer": "encoder", "seed": 0,
                      "view": "clean", "index": str(i), "value": v} for i, v in enumerate(sv)]
        return pd.DataFrame(rows)

    def verdict(tau_tail):
        return [f for f in recipe.findings(table(tau_tail), "cpu") if f.claim.startswith("Linear model")][0].held

    assert verdict(0.1 + 1e-9) is False
    assert verdict(0.3) is True
