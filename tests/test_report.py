"""`reprscope report`: every figure the tables support is written and non-empty."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reprscope.errors import ReprscopeError
from reprscope.report import make_report
from reprscope_cli.main import app

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def _is_png(p: Path) -> bool:
    return p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_one_table(tmp_path):
    paths = make_report([str(FIX / "tiny_dgp_table.csv")], tmp_path, formats=["png", "pdf"])
    names = {p.name for p in paths}
    for stem in ("spectrum", "r2_per_latent", "profile_center", "profile_spectrum", "profile_identifiability"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for p in paths:
        assert p.stat().st_size > 5000
        if p.suffix == ".png":
            assert _is_png(p)
        else:
            assert p.read_bytes()[:4] == b"%PDF"
    assert not any(n.startswith("trajectory") for n in names)  # one step only


def test_report_trajectories_from_a_run_dir_table(tmp_path, tiny_run):
    runner = CliRunner()
    table = tmp_path / "traj.csv"
    r = runner.invoke(app, ["analyze", str(tiny_run.run_dir), "--analyzers", "center,spectrum", "--limit", "200",
                            "--out", str(table), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(table), "--out", str(tmp_path / "fig"), "--formats", "png"])
    assert r.exit_code == 0, r.output
    figs = sorted((tmp_path / "fig").glob("*.png"))
    assert {"trajectory_center.png", "trajectory_spectrum.png"} <= {f.name for f in figs}
    assert all(_is_png(f) and f.stat().st_size > 5000 for f in figs)


def test_report_errors(tmp_path):
    with pytest.raises(ReprscopeError, match="format"):
        make_report([str(FIX / "tiny_dgp_table.csv")], tmp_path, formats=["gif"])
    r = CliRunner().invoke(app, ["report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "f").exists()


def test_std_companions_become_bands_and_forms_share_a_panel(tmp_path):
    """matrix_information-like rows: M and M_std per form, plus n_batches: one panel per M (forms as lines),
    the spread as err, bookkeeping dropped; the figure is written for one step and for a trajectory."""
    import numpy as np

    from reprscope.report import scalar_rows
    from reprscope.table import make_table, write_table

    rows = []
    for step in (10, 20):
        for li, layer in enumerate(("encoder", "projector")):
            for form in ("gram", "cov"):
                for metric, value in (("entropy_1", 1.0 + li + step / 100), ("entropy_1_std", 0.1 * (li + 1)),
                                      ("n_batches", 4.0), ("residual_std", 0.5)):
                    rows.append({"source": "run/ckpt.pt", "step": step, "method": "simclr", "layer": layer,
                                 "view": "aug1|aug2", "analyzer": "matrix_information", "metric": metric, "index": "",
                                 "value": value + (0.5 if form == "cov" else 0.0), "form": form})
    table = make_table(rows)
    got = scalar_rows(table[table["step"] == 20])
    assert set(got["series"]) == {"entropy_1", "residual_std"}  # no n_batches; residual_std has no residual
    e = got[got["series"] == "entropy_1"].set_index(["layer", "form"])
    assert e.loc[("projector", "gram"), "value"] == 2.2 and e.loc[("projector", "gram"), "err"] == 0.2
    assert e.loc[("encoder", "cov"), "err"] == 0.6  # 0.1 + the form offset of this synthetic table
    assert np.isnan(got[got["series"] == "residual_std"]["err"]).all()
    path = tmp_path / "t.csv"
    write_table(table, path)
    names = {p.name for p in make_report([str(path)], tmp_path / "fig", formats=["png"])}
    assert {"profile_matrix_information.png", "trajectory_matrix_information.png"} <= names
