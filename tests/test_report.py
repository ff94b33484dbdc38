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
