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


# ---------------------------------------------------------------------------------------------------------------
# Small synthetic tables, and a look inside the figures before they are saved.

import warnings  # noqa: E402

import pandas as pd  # noqa: E402

import importlib  # noqa: E402

report = importlib.import_module("reprscope.report")  # the module (reprscope.report is the function)
from reprscope.report import assign_runs, short_labels  # noqa: E402
from reprscope.table import make_table, write_table  # noqa: E402

LAYERS = ("encoder.layer1", "encoder", "projector")


def _row(source, step, layer, analyzer, metric, value, index="", view="aug1|aug2", **extra):
    return {"source": source, "step": step, "method": "simclr", "layer": layer, "view": view, "analyzer": analyzer,
            "metric": metric, "index": index, "value": value, **extra}


def _sv_rows(source, step, layers=LAYERS, views=("clean",)):
    return [_row(source, step, layer, "spectrum", "sv", 2.0 ** -(k + li), index=str(k), view=view)
            for view in views for li, layer in enumerate(layers) for k in range(6)]


def _scalar_rows(source, step, layers=LAYERS, views=("clean",), bump=0.0):
    rows = []
    for view in views:
        for li, layer in enumerate(layers):
            rows.append(_row(source, step, layer, "spectrum", "effective_rank", 5.0 - li + bump, view=view))
            rows.append(_row(source, step, layer, "center", "center_norm", 0.5 + 0.1 * li + bump))
    return rows


def _r2_rows(source, step, latents, groups=None, layers=LAYERS):
    rows = []
    for li, layer in enumerate(layers):
        for j, latent in enumerate(latents):
            extra = {} if groups is None else {"latent_group": groups[j]}
            rows.append(_row(source, step, layer, "identifiability", "r2", 0.9 - 0.1 * li - 0.01 * j, index=latent,
                             view="clean", **extra))
    return rows


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(make_table(rows), path)
    return path


@pytest.fixture
def drawn(monkeypatch):
    """``{stem: figure summary}`` of every figure make_report saves: per visible panel its title, y label and
    lines (x, y, line style, marker, colour); the figure's legend texts and suptitle."""
    figs = {}
    save = report._save

    def spy(fig, out, stem, formats):
        panels = []
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            lines = [(list(ln.get_xdata()), list(ln.get_ydata()), ln.get_linestyle(), ln.get_marker(), ln.get_color())
                     for ln in ax.get_lines()]
            legend = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
            panels.append({"title": ax.get_title(), "ylabel": ax.get_ylabel(), "lines": lines, "legend": legend})
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        figs[stem] = {"panels": panels, "legend": legend, "suptitle": fig.get_suptitle()}
        return save(fig, out, stem, formats)

    monkeypatch.setattr(report, "_save", spy)
    return figs


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# 1. partial tables, atomic output


def test_tables_with_only_some_rows_give_the_figures_that_apply(tmp_path):
    sv = _write(tmp_path / "sv.csv", _sv_rows("a.h5", 10))
    r2 = _write(tmp_path / "r2.csv", _r2_rows("a.h5", 10, ["c0", "c1", "c2", "s0", "s1", "s2"], ["content"] * 3 + ["style"] * 3))
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(sv), "--out", str(tmp_path / "f_sv"), "--formats", "png"])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "f_sv") == ["spectrum.png"]
    assert "note: r2_per_latent not drawn" in r.output
    r = runner.invoke(app, ["report", str(r2), "--out", str(tmp_path / "f_r2"), "--formats", "png"])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "f_r2") == ["r2_per_latent.png"]
    assert "No artists" not in r.stderr


def test_no_figure_applies_is_a_clear_error_and_writes_nothing(tmp_path):
    # only bookkeeping counts and a metric on one layer: nothing to draw
    rows = [_row("a.h5", 10, "encoder", "matrix_information", "n_batches", 4.0),
            _row("a.h5", 10, "encoder", "tangent", "fvu", 0.3)]
    table = _write(tmp_path / "t.csv", rows)
    with pytest.raises(ReprscopeError, match="no figure can be drawn"):
        make_report([str(table)], tmp_path / "figs", formats=["png"])
    r = CliRunner().invoke(app, ["report", str(table), "--out", str(tmp_path / "figs")])
    assert r.exit_code == 2 and "no figure can be drawn" in r.stderr and "Traceback" not in r.output
    assert _files(tmp_path) == ["t.csv"]  # no folder, no temporary folder


def test_output_is_atomic(tmp_path, monkeypatch):
    table = _write(tmp_path / "t.csv", _sv_rows("a.h5", 10) + _scalar_rows("a.h5", 10))
    out = tmp_path / "figs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "spectrum.png").write_bytes(b"old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as mp:  # a failure after the spectrum was rendered
        mp.setattr(report, "plot_profiles", boom)
        with pytest.raises(RuntimeError):
            make_report([str(table)], out, formats=["png"])
        with pytest.raises(RuntimeError):
            make_report([str(table)], tmp_path / "new" / "deeper", formats=["png"])
    assert _files(tmp_path) == ["figs", "figs/notes.txt", "figs/spectrum.png", "t.csv"]
    assert (out / "spectrum.png").read_bytes() == b"old"

    paths = make_report([str(table)], out, formats=["png", "pdf"])
    assert {p.name for p in paths} >= {"spectrum.png", "spectrum.pdf", "profile_spectrum.png"}
    assert (out / "notes.txt").read_text() == "mine" and _is_png(out / "spectrum.png")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_out_naming_a_file_is_refused(tmp_path):
    table = _write(tmp_path / "t.csv", _sv_rows("a.h5", 10))
    (tmp_path / "figs").write_text("x")
    with pytest.raises(ReprscopeError, match="out must be a folder"):
        make_report([str(table)], tmp_path / "figs", formats=["png"])
    r = CliRunner().invoke(app, ["report", str(table), "--out", str(tmp_path / "figs" / "sub")])
    assert r.exit_code == 2 and "is a file" in r.stderr
    assert _files(tmp_path) == ["figs", "t.csv"] and (tmp_path / "figs").read_text() == "x"


# ---------------------------------------------------------------------------------------------------------------
# 2.–4. runs, labels, the last step of each run


def test_h5_stores_are_runs_of_their_own(tmp_path, drawn):
    a = _write(tmp_path / "a_h5.csv", _sv_rows("a.h5", 10) + _scalar_rows("a.h5", 10))
    b = _write(tmp_path / "blobs.csv", _sv_rows("blobs.h5", 20) + _scalar_rows("blobs.h5", 20, bump=1.0))
    paths = make_report([str(a), str(b)], tmp_path / "figs", formats=["png"], echo=None)
    assert not any(p.name.startswith("trajectory") for p in paths)
    assert any("no run has two or more steps" in n for n in paths.notes)
    assert len(drawn["spectrum"]["panels"]) == 2
    assert {"a.h5 (step 10)", "blobs.h5 (step 20)"} <= set(drawn["profile_center"]["legend"])


def test_same_run_folder_in_two_tables_with_overlapping_steps_is_two_runs(tmp_path, drawn):
    def rows(bump):
        return [r for s in (100, 200, 300) for r in _scalar_rows(f"run/step_{s}.pt", s, bump=bump + s / 1000)]

    e1 = _write(tmp_path / "e1" / "traj.csv", rows(0.0))
    e2 = _write(tmp_path / "e2" / "traj.csv", rows(5.0))
    make_report([str(e1), str(e2)], tmp_path / "figs", formats=["png"])
    for panel in drawn["trajectory_center"]["panels"]:
        assert len(panel["lines"]) == 2 * len(LAYERS)  # a line per run and layer
        for x, y, *_ in panel["lines"]:
            assert x == [100, 200, 300]  # no zig-zag between runs
    legend = drawn["trajectory_center"]["legend"]
    assert {"run/ [e1/traj.csv]", "run/ [e2/traj.csv]"} <= set(legend)


def test_run_rule():
    def table_of(*parts):
        return pd.concat([make_table([_row(src, step, "encoder", "center", "center_norm", 1.0)]).assign(_table=t)
                          for t, src, step in parts], ignore_index=True)

    # checkpoints of one folder in one table: one run
    df = assign_runs(table_of(("t.csv", "run/ckpt-1.pt", 1), ("t.csv", "run/ckpt-2.pt", 2)))
    assert df["_run"].nunique() == 1 and set(df["_run_label"]) == {"run/"}
    # the same folder in two tables with disjoint steps (a resumed run): joined
    df = assign_runs(table_of(("a.csv", "run/ckpt-1.pt", 1), ("b.csv", "run/ckpt-2.pt", 2)))
    assert df["_run"].nunique() == 1
    # ... with a shared step: two runs, told apart by their tables
    df = assign_runs(table_of(("x/t.csv", "run/ckpt-1.pt", 1), ("y/t.csv", "run/ckpt-1.pt", 1),
                              ("y/t.csv", "run/ckpt-2.pt", 2)))
    assert df["_run"].nunique() == 2
    assert set(df["_run_label"]) == {"ckpt-1.pt [x/t.csv]", "run/ [y/t.csv]"}
    # .h5 stores in one folder, one table: a run each
    df = assign_runs(table_of(("t.csv", "s/a.h5", 1), ("t.csv", "s/b.h5", 2)))
    assert df["_run"].nunique() == 2


def test_labels_are_the_shortest_distinguishing_path_suffix(tmp_path, drawn):
    assert short_labels(["x/e.h5", "y/e.h5", "z/f.h5"]) == {"x/e.h5": "x/e.h5", "y/e.h5": "y/e.h5", "z/f.h5": "f.h5"}
    assert short_labels(["e.h5", "x/e.h5"]) == {"e.h5": "e.h5", "x/e.h5": "x/e.h5"}
    assert short_labels(["/data/runs/a/last.pt", "/data/runs/b/last.pt"]) == {
        "/data/runs/a/last.pt": "a/last.pt", "/data/runs/b/last.pt": "b/last.pt"}
    t1 = _write(tmp_path / "1.csv", _sv_rows("x/e.h5", 5) + _scalar_rows("x/e.h5", 5))
    t2 = _write(tmp_path / "2.csv", _sv_rows("y/e.h5", 5) + _scalar_rows("y/e.h5", 5, bump=1.0))
    t3 = _write(tmp_path / "3.csv", _scalar_rows("runs/a/last.pt", 9) + _scalar_rows("runs/b/last.pt", 9, bump=2.0))
    make_report([str(t1), str(t2), str(t3)], tmp_path / "figs", formats=["png"])
    assert {"x/e.h5 (step 5)", "y/e.h5 (step 5)", "a/last.pt (step 9)", "b/last.pt (step 9)"} <= set(
        drawn["profile_center"]["legend"])
    assert [p["title"].split(" · ")[0] for p in drawn["spectrum"]["panels"]] == ["x/e.h5", "y/e.h5"]


def test_spectrum_of_a_run_folder_is_its_last_step(tmp_path, drawn):
    rows = [r for s in range(0, 50) for r in _sv_rows(f"run/ckpt-{s:07d}.pt", s)]
    table = _write(tmp_path / "t.csv", rows)
    make_report([str(table)], tmp_path / "figs", formats=["png"])
    (panel,) = drawn["spectrum"]["panels"]
    assert panel["title"] == "run/ · step 49 · view clean"
    assert len(panel["lines"]) == len(LAYERS)


# ---------------------------------------------------------------------------------------------------------------
# 5. R² per latent: content and style from latent_group only


def test_r2_tells_content_from_style_by_latent_group(tmp_path, drawn):
    latents = [f"z{j}" for j in range(10)]  # names say nothing: the column does
    groups = ["content"] * 4 + ["style"] * 6
    table = _write(tmp_path / "t.csv", _r2_rows("a.h5", 1, latents, groups)
                   + [_row("a.h5", 1, layer, "identifiability", m, v, view="clean")
                      for layer in LAYERS for m, v in (("r2_content_mean", 0.8), ("r2_style_mean", 0.3))])
    make_report([str(table)], tmp_path / "figs", formats=["png"])
    fig = drawn["r2_per_latent"]
    (panel,) = fig["panels"]
    latent_lines = panel["lines"][:10]
    assert [ls for *_, ls, _m, _c in latent_lines] == ["-"] * 4 + ["--"] * 6
    assert len({c for *_, c in latent_lines}) == 10  # every latent its own colour
    assert [f"{z} ({g})" for z, g in zip(latents, groups)] == fig["legend"][:10]
    assert {"content mean", "style mean"} <= set(fig["legend"])
    assert "no content/style split" not in fig["suptitle"]


def test_r2_without_latent_group_does_not_guess_from_names(tmp_path, drawn):
    table = _write(tmp_path / "t.csv", _r2_rows("a.h5", 1, ["c0", "c1", "s0", "s1"]))
    make_report([str(table)], tmp_path / "figs", formats=["png"])
    fig = drawn["r2_per_latent"]
    assert {ls for *_, ls, _m, _c in fig["panels"][0]["lines"]} == {"-"}
    assert fig["legend"] == ["c0", "c1", "s0", "s1"]
    assert "no content/style split" in fig["suptitle"]


# ---------------------------------------------------------------------------------------------------------------
# 6. readability


def test_profiles_and_trajectories_are_readable(tmp_path, drawn):
    rows = []
    for step in (0, 10, 20):
        rows += _scalar_rows(f"run/ckpt-{step}.pt", step, views=("clean", "aug1", "aug2"),
                             bump=step / 100)
        rows.append(_row(f"run/ckpt-{step}.pt", step, "encoder", "tangent", "fvu", 0.5 - step / 100))
    table = _write(tmp_path / "t.csv", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(app, ["report", str(table), "--out", str(tmp_path / "figs"), "--formats", "png"])
    assert r.exit_code == 0, r.output
    assert not [w for w in caught if "No artists" in str(w.message)] and "No artists" not in r.stderr
    # a profile of one layer is skipped, and the output says why
    assert "note: profile_tangent not drawn: tangent reports on one layer only (encoder)" in r.output
    assert not (tmp_path / "figs" / "profile_tangent.png").exists()
    assert (tmp_path / "figs" / "trajectory_tangent.png").exists()
    # y labels name the metric; every view of the spectrum profile is drawn and named
    prof = drawn["profile_spectrum"]
    assert [p["ylabel"] for p in prof["panels"]] == ["effective_rank"]
    assert {"view clean", "view aug1", "view aug2"} <= set(prof["legend"])
    assert len(prof["panels"][0]["lines"]) == 3
    traj = drawn["trajectory_spectrum"]
    assert [p["ylabel"] for p in traj["panels"]] == ["effective_rank"]
    assert "view clean" in traj["panels"][0]["title"]  # the one view drawn of three is named
    # lines differ by more than colour
    styles = {(m, c) for *_, _ls, m, c in traj["panels"][0]["lines"]}
    assert len(styles) == len(LAYERS) and len({m for m, _ in styles}) == len(LAYERS)


def test_depth_order_keeps_every_runs_order():
    """Runs with different layers share one x-axis in an order no run's line steps back on."""
    import pandas as pd

    from reprscope.report import depth_order

    df = pd.DataFrame({"source": ["a/x.h5"] * 4 + ["b/y.h5"] * 7,
                       "layer": ["encoder.layer1", "encoder.layer2", "encoder", "projector",
                                 "encoder.layer1", "encoder.layer2", "encoder.layer3", "encoder", "projector.2",
                                 "projector.5", "projector"]})
    order = depth_order(df)
    assert order == ["encoder.layer1", "encoder.layer2", "encoder.layer3", "encoder", "projector.2", "projector.5",
                     "projector"]
