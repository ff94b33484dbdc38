"""The command line end to end on a tiny budget (SPEC §2), and every input error → exit 2 with one line.

Commands run in-process through Typer's CliRunner (stdout and stderr kept apart); one real subprocess checks
that the installed ``reprscope`` console script starts.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reprscope.analyzers import ANALYZERS
from reprscope.catalog import KINDS
from reprscope.data import DATASETS
from reprscope.extract import Store
from reprscope.formats import FORMATS
from reprscope.methods import METHODS
from reprscope.models import BACKBONES, HEADS
from reprscope.table import COLUMNS, read_table
from reprscope_cli.main import app

from reprscope.data.augment import AUGMENTATIONS  # noqa: E402
from reprscope.reproduce import RECIPES  # noqa: E402

REGISTRIES = {"methods": METHODS, "analyzers": ANALYZERS, "datasets": DATASETS, "formats": FORMATS,
              "backbones": BACKBONES, "heads": HEADS, "augmentations": AUGMENTATIONS, "recipes": RECIPES}
TINY = ["--set", "data.eval_size=300", "--set", "backbone.width=16", "--set", "backbone.depth=3",
        "--set", "projector.kind=linear", "--set", "projector.out_dim=8", "--batch-size", "64"]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps result.stderr apart


def invoke(*args, ok: bool = True):
    res = _runner().invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, f"exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}\n{res.exception!r}"
    return res


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """``reprscope train simclr --data dgp --steps 10`` on a tiny model, checkpoints every 5 steps."""
    out = tmp_path_factory.mktemp("cli") / "run"
    res = invoke("train", "simclr", "--data", "dgp", "--steps", 10, "--save-every-steps", 5, "--out", out,
                 "--quiet", *TINY)
    assert "trained simclr for 10 steps" in res.stdout
    assert "final loss" in res.stdout
    return out


@pytest.fixture(scope="module")
def cli_h5(cli_run) -> Path:
    out = cli_run.parent / "e.h5"
    res = invoke("extract", cli_run / "last.pt", "--out", out, "--limit", 200, "--quiet")
    assert f"wrote {out}" in res.stdout
    return out


# -- the happy path ----------------------------------------------------------------------------------------


def test_train_writes_checkpoints(cli_run):
    names = sorted(p.name for p in cli_run.iterdir())
    assert names == ["ckpt-0000000.pt", "ckpt-0000005.pt", "ckpt-0000010.pt", "last.pt", "metrics.csv"]


def test_extract_writes_store(cli_h5, cli_run):
    with Store(cli_h5) as st:
        assert st.n == 200
        assert st.views == ["clean", "aug1", "aug2"]
        assert st.attrs["step"] == 10 and st.attrs["source"] == str(cli_run / "last.pt")
        assert st.attrs["dataset"]["eval_size"] == 300
        assert {l["name"] for l in st.layers()} == {"encoder.layer1", "encoder.layer2", "encoder", "projector"}


def test_analyze_h5_csv(cli_h5, tmp_path):
    out = tmp_path / "t.csv"
    res = invoke("analyze", cli_h5, "--out", out, "--quiet")
    assert f"wrote {out}" in res.stdout
    df = read_table(out)
    assert list(df.columns[:9]) == COLUMNS
    # by default every registered analyzer runs; the dgp has no labels, so knn and linear_probe are skipped
    from reprscope.analyzers import ANALYZERS

    assert set(df["analyzer"]) == {n for n in ANALYZERS.names() if "labels" not in ANALYZERS.get(n).needs}
    assert set(df["layer"]) == {"encoder.layer1", "encoder.layer2", "encoder", "projector"}
    assert set(df["step"]) == {10} and set(df["source"]) == {str(cli_h5)} and set(df["method"]) == {"simclr"}
    assert np.isfinite(df["value"]).all()


def test_analyze_prints_summary(cli_h5):
    res = invoke("analyze", cli_h5, "--analyzers", "spectrum,identifiability")
    assert "[spectrum]" in res.stdout and "[identifiability]" in res.stdout
    assert "effective_rank" in res.stdout and "r2_content_mean" in res.stdout
    assert "projector" in res.stdout


def test_analyze_parquet_equals_csv(cli_h5, tmp_path):
    invoke("analyze", cli_h5, "--analyzers", "spectrum,center", "--out", tmp_path / "t.csv", "--quiet")
    invoke("analyze", cli_h5, "--analyzers", "spectrum,center", "--out", tmp_path / "t.parquet", "--quiet")
    a, b = read_table(tmp_path / "t.csv"), read_table(tmp_path / "t.parquet")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    assert pd.read_parquet(tmp_path / "t.parquet")["value"].dtype == np.float64


def test_param_column(cli_h5, tmp_path):
    out = tmp_path / "t.csv"
    invoke("analyze", cli_h5, "--analyzers", "spectrum", "--param", "spectrum.tau=0.1", "--out", out, "--quiet")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["tau"] for r in rows} == {"0.1"}
    assert {r["analyzer"] for r in rows} == {"spectrum"}
    df = read_table(out)
    assert (df["tau"] == 0.1).all()
    # the parameter changes the result: rank_tau at tau=0.1 is at most the default's
    default = read_table(invoke_out(cli_h5, tmp_path / "d.csv", "--analyzers", "spectrum"))
    k = lambda t: t[t["metric"] == "rank_tau"].set_index(["layer", "view"])["value"]  # noqa: E731
    assert (k(df) <= k(default)).all() and (k(df) < k(default)).any()


def invoke_out(src, out, *args):
    invoke("analyze", src, "--out", out, "--quiet", *args)
    return out


def test_analyze_checkpoint_uses_cache(cli_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("REPRSCOPE_CACHE", str(cache))
    ckpt = cli_run / "last.pt"
    a = invoke_out(ckpt, tmp_path / "a.csv", "--analyzers", "spectrum", "--limit", 100)
    cached = list((cache / "extract").glob("*.h5"))
    assert len(cached) == 1
    assert not list((cache / "extract").glob("*.partial"))
    df = read_table(a)
    assert set(df["source"]) == {str(ckpt)} and set(df["step"]) == {10}

    import reprscope.pipeline as pipeline

    def no_extract(*args, **kwargs):
        raise AssertionError("extracted again although the store is cached")

    monkeypatch.setattr(pipeline, "extract", no_extract)
    b = invoke_out(ckpt, tmp_path / "b.csv", "--analyzers", "spectrum", "--limit", 100)
    pd.testing.assert_frame_equal(read_table(a), read_table(b))
    # other extraction settings are another cache entry (and would need a new extraction)
    res = invoke("analyze", ckpt, "--analyzers", "spectrum", "--limit", 50, "--quiet", ok=False)
    assert res.exit_code != 0


def test_analyze_run_dir_fills_step(cli_run, tmp_path):
    out = invoke_out(cli_run, tmp_path / "r.csv", "--analyzers", "spectrum", "--limit", 100)
    df = read_table(out)
    assert sorted(set(df["step"])) == [0, 5, 10]
    assert set(df["source"]) == {str(cli_run / f"ckpt-{s:07d}.pt") for s in (0, 5, 10)}
    # the trajectory is not constant: training changed the representation
    er = df[(df["metric"] == "effective_rank") & (df["layer"] == "projector") & (df["view"] == "aug1")]
    assert er["value"].nunique() == 3


def test_analyze_several_sources(cli_run, cli_h5, tmp_path):
    out = invoke_out(cli_h5, tmp_path / "m.csv", "--analyzers", "center", "--limit", 100)
    invoke("analyze", cli_h5, cli_run / "ckpt-0000005.pt", "--analyzers", "center", "--limit", 100, "--out",
           tmp_path / "m2.csv", "--quiet")
    df = read_table(tmp_path / "m2.csv")
    assert set(df["source"]) == {str(cli_h5), str(cli_run / "ckpt-0000005.pt")}
    assert sorted(set(df["step"])) == [5, 10]
    assert len(read_table(out)) * 2 == len(df)


@pytest.mark.parametrize("kind", KINDS)
def test_list(kind):
    res = invoke("list", kind)
    lines = res.stdout.strip().splitlines()
    names = REGISTRIES[kind].names()
    assert names
    listed = [l.split()[0] for l in lines if l and not l.startswith("(")]
    assert listed == names
    if kind == "analyzers":
        for n in names:
            line = next(l for l in lines if l.split()[0] == n)
            for p in ANALYZERS.get(n).params:
                assert f"{p.name}=" in line, (n, p.name)


@pytest.mark.parametrize("command", [[], ["train"], ["extract"], ["analyze"], ["list"], ["demo"]])
def test_help(command):
    res = invoke(*command, "--help")
    assert "Usage" in res.stdout
    if command:
        assert command[0] in res.stdout
    else:
        for c in ("train", "extract", "analyze", "list", "demo"):
            assert c in res.stdout


def test_version():
    import reprscope

    res = invoke("--version")
    assert reprscope.__version__ in res.stdout


def test_console_script_help():
    exe = shutil.which("reprscope")
    assert exe, "the reprscope console script is not installed"
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout and "analyze" in p.stdout and "train" in p.stdout
    assert "Traceback" not in p.stderr


def test_demo(tmp_path):
    out = tmp_path / "demo"
    res = invoke("demo", "--steps", 30, "--out", out, "--quiet")
    text = res.stdout
    assert "R² content" in text and "R² style" in text
    assert "encoder" in text and "projector" in text
    assert "HELD" in text or "NOT REPRODUCED" in text
    assert (out / "run" / "last.pt").is_file()
    assert (out / "embeddings.h5").is_file()
    assert (out / "table.csv").is_file()
    df = read_table(out / "table.csv")
    assert {"center", "spectrum", "identifiability"} <= set(df["analyzer"])
    assert f"table:      {out / 'table.csv'}" in text


# -- every input error: exit 2, one line "error: …" on stderr, no traceback, no output ---------------------


@pytest.fixture
def bad_inputs(tmp_path, cli_run, cli_h5):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    empty_dir = tmp_path / "emptyrun"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("nothing here")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("data", data=np.zeros((3, 4)))
    fake_h5 = tmp_path / "fake.h5"
    fake_h5.write_text("not hdf5")
    dir_csv = tmp_path / "isdir.csv"
    dir_csv.mkdir()
    return {"tmp": tmp_path, "ckpt": cli_run / "last.pt", "h5": cli_h5, "text": text, "empty_dir": empty_dir,
            "foreign": foreign, "fake_h5": fake_h5, "dir_csv": dir_csv, "run": cli_run,
            "run_ckpt": sorted(cli_run.glob("ckpt-*.pt"))[0]}


TRAIN = ["train", "simclr", "--data", "dgp", "--steps", "2", "--quiet", "--out", "{tmp}/newrun"]
ERRORS = {
    # files
    "extract_missing_ckpt": (["extract", "{tmp}/missing.pt", "--out", "{tmp}/o.h5"], "does not exist"),
    "analyze_missing_ckpt": (["analyze", "{tmp}/missing.pt", "--out", "{tmp}/o.csv"], "does not exist"),
    "extract_non_ckpt": (["extract", "{text}", "--out", "{tmp}/o.h5"], "is a text file, not a checkpoint"),
    "analyze_non_ckpt": (["analyze", "{text}", "--out", "{tmp}/o.csv"], "is a text file, not a checkpoint"),
    "analyze_dir_without_ckpts": (["analyze", "{empty_dir}", "--out", "{tmp}/o.csv"], "no ckpt-*.pt"),
    "analyze_h5_without_datasets": (["analyze", "{foreign}", "--out", "{tmp}/o.csv"], "not a reprscope embedding store"),
    "analyze_non_hdf5": (["analyze", "{fake_h5}", "--out", "{tmp}/o.csv"], "not an HDF5 file"),
    "analyze_missing_h5": (["analyze", "{tmp}/missing.h5", "--out", "{tmp}/o.csv"], "does not exist"),
    # unknown names (the message lists the valid ones)
    "train_unknown_dataset": (["train", "simclr", "--data", "nope", "--out", "{tmp}/newrun"], "unknown dataset 'nope'; available: {datasets}"),
    "extract_unknown_dataset": (["extract", "{ckpt}", "--data", "nope", "--out", "{tmp}/o.h5"], "unknown dataset 'nope'; available: {datasets}"),
    "analyze_unknown_dataset": (["analyze", "{ckpt}", "--data", "nope", "--out", "{tmp}/o.csv"], "unknown dataset 'nope'; available: {datasets}"),
    "train_unknown_method": (["train", "nope", "--data", "dgp", "--out", "{tmp}/newrun"], "unknown method 'nope'; available: {methods}"),
    "analyze_unknown_analyzer": (["analyze", "{h5}", "--analyzers", "spectrum,nope", "--out", "{tmp}/o.csv"], "unknown analyzer 'nope'; available: {analyzers}"),
    "train_unknown_backbone": (TRAIN + ["--backbone", "no_such_net"], "unknown backbone 'no_such_net'; available: {backbones}"),
    "list_unknown_kind": (["list", "nope"], "unknown list 'nope'; choose one of: " + ", ".join(KINDS)),
    "analyze_unknown_layer": (["analyze", "{h5}", "--layers", "encoder,nope", "--out", "{tmp}/o.csv"], "layer 'nope'"),
    "extract_unknown_layer": (["extract", "{ckpt}", "--layers", "nope", "--out", "{tmp}/o.h5"], "unknown layer 'nope'"),
    # --param
    "param_bad_value": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "spectrum.tau=abc", "--out", "{tmp}/o.csv"], "'tau' parameter of analyzer spectrum"),
    "param_bad_value_ckpt": (["analyze", "{ckpt}", "--analyzers", "spectrum", "--param", "spectrum.tau=abc", "--out", "{tmp}/o.csv"], "'tau' parameter of analyzer spectrum"),
    "param_out_of_range": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "spectrum.tau=-1", "--out", "{tmp}/o.csv"], "'tau' parameter"),
    "param_unknown_key": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "spectrum.bogus=1", "--out", "{tmp}/o.csv"], "no parameter 'bogus'; valid parameters: tau"),
    "param_not_selected": (["analyze", "{h5}", "--analyzers", "center", "--param", "spectrum.tau=0.1", "--out", "{tmp}/o.csv"], "'spectrum' is not selected"),
    "param_default_not_selected": (["analyze", "{h5}", "--param", "nope.x=1", "--out", "{tmp}/o.csv"], "unknown analyzer 'nope'"),
    "param_malformed": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "spectrum", "--out", "{tmp}/o.csv"], "--param expects"),
    "param_no_key": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "tau=0.1", "--out", "{tmp}/o.csv"], "--param expects ANALYZER.KEY=VALUE"),
    # --set
    "set_malformed": (TRAIN + ["--set", "data.content_dims"], "--set expects KEY=VALUE"),
    "set_empty_part": (TRAIN + ["--set", "data..x=1"], "--set expects KEY=VALUE with a dotted key"),
    "set_unknown_section": (TRAIN + ["--set", "bogus.x=1"], "must start with one of"),
    "set_unknown_optim_key": (TRAIN + ["--set", "optim.bogus=1"], "no parameter 'bogus'"),
    "set_unknown_data_key": (TRAIN + ["--set", "data.bogus=1"], "no parameter 'bogus'"),
    "set_unknown_train_key": (TRAIN + ["--set", "train.bogus=1"], "no parameter 'bogus'"),
    "set_bad_value": (TRAIN + ["--set", "train.batch_size=abc"], "'batch_size' parameter"),
    "set_unknown_head_kind": (TRAIN + ["--set", "projector.kind=nope"], "unknown head 'nope'"),
    "set_section_without_key": (TRAIN + ["--set", "optim=1"], "needs a field"),
    "extract_set_not_data": (["extract", "{ckpt}", "--set", "optim.lr=1", "--out", "{tmp}/o.h5"], "--set here takes data.KEY=VALUE"),
    "extract_set_unknown_data_key": (["extract", "{ckpt}", "--set", "data.bogus=1", "--out", "{tmp}/o.h5"], "no parameter 'bogus'"),
    # --out and other options
    "analyze_out_suffix": (["analyze", "{h5}", "--out", "{tmp}/o.txt"], "--out must end in .csv or .parquet"),
    "analyze_out_is_folder": (["analyze", "{h5}", "--out", "{dir_csv}"], "is a folder"),
    "analyze_out_under_a_file": (["analyze", "{h5}", "--out", "{text}/o.csv"], "is not a writable folder"),
    "analyze_same_source_twice": (["analyze", "{h5}", "{h5}", "--out", "{tmp}/o.csv"], "is given twice"),
    "analyze_checkpoint_of_a_given_run_dir": (["analyze", "{run}", "{run_ckpt}", "--out", "{tmp}/o.csv"], "is given twice"),
    "report_formats_empty": (["report", "{tmp}/none.csv", "--formats", ",", "--out", "{tmp}/figs"], "--formats names nothing"),
    "report_table_twice": (["report", "{tmp}/t.csv", "{tmp}/t.csv", "--out", "{tmp}/figs"], "is given twice"),
    "analyze_analyzers_empty": (["analyze", "{h5}", "--analyzers", ",", "--out", "{tmp}/o.csv"], "--analyzers names nothing"),
    "analyze_ckpt_on_other_data": (["analyze", "{ckpt}", "--data", "blobs", "--out", "{tmp}/o.csv"],
                                   "the model cannot take the samples of data set 'blobs'"),
    "param_fraction_one": (["analyze", "{h5}", "--analyzers", "identifiability", "--param", "identifiability.test_fraction=1",
                            "--out", "{tmp}/o.csv"], "must be a float > 0, < 1"),
    "param_ks_zero": (["analyze", "{ckpt}", "--analyzers", "knn", "--param", "knn.ks=0,20", "--out", "{tmp}/o.csv"],
                      "'ks' parameter of analyzer knn must be a comma list of ints >= 1"),
    "param_relative_tau_above_one": (["analyze", "{h5}", "--analyzers", "spectrum", "--param", "spectrum.tau=2",
                                      "--out", "{tmp}/o.csv"], "<= 1"),
    "extract_out_suffix": (["extract", "{ckpt}", "--out", "{tmp}/o.csv"], "--out must name an .h5 file"),
    "extract_bad_limit": (["extract", "{ckpt}", "--limit", "0", "--out", "{tmp}/o.h5"], "--limit"),
    "extract_bad_batch_size": (["extract", "{ckpt}", "--batch-size", "0", "--out", "{tmp}/o.h5"], "--batch-size"),
    "train_resume_without_run": (TRAIN + ["--resume"], "--resume"),
    "train_bad_config_file": (TRAIN + ["--config", "{tmp}/missing.json"], "config file"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_paths(case, bad_inputs):
    args, expected = ERRORS[case]
    names = {k: ", ".join(r.names()) for k, r in REGISTRIES.items()}
    args = [a.format(**bad_inputs) for a in args]
    expected = expected.format(**names)
    before = {p.name for p in bad_inputs["tmp"].iterdir()}
    res = invoke(*args, ok=False)
    assert res.exit_code == 2, f"{case}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"{case}: stderr has {len(lines)} lines:\n{res.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], f"{case}: {expected!r} not in {lines[0]!r}"
    assert "Traceback" not in res.output
    assert res.stdout == ""
    # nothing was created: no output file, no run directory, no partial file, no cache entry
    after = {p.name for p in bad_inputs["tmp"].iterdir()}
    assert after - before <= {"cache"}, f"{case}: created {after - before}"
    cache = bad_inputs["tmp"] / "cache"
    assert not cache.exists() or not list(cache.rglob("*.h5")), list(cache.rglob("*"))


def test_debug_shows_traceback(tmp_path):
    res = invoke("--debug", "analyze", tmp_path / "missing.pt", ok=False)
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and "error: " in res.stderr


def test_usage_error_is_exit_2(tmp_path):
    res = invoke("train", "simclr", ok=False)  # --data missing: Click's own usage error
    assert res.exit_code == 2
    assert "--data" in res.stderr


def test_analyze_default_states_why_analyzers_were_skipped(cli_h5):
    res = invoke("analyze", cli_h5)
    assert "knn skipped" in res.stdout and "needs labels" in res.stdout


def test_train_config_file_addresses_the_model_like_set(tmp_path):
    """A [projector] section in a config file changes the head (and a new kind drops the old kind's settings)."""
    import torch

    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsteps = 3\nbatch_size = 16\n[data]\ncontent_dims = 3\neval_size = 50\n'
                   '[projector]\nout_dim = 6\nkind = "linear"\n[backbone]\nwidth = 8\ndepth = 2\n')
    invoke("train", "simclr", "--data", "dgp", "--config", cfg, "--out", tmp_path / "r", "--quiet")
    c = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["config"]
    assert c["model"]["heads"]["projector"] == [{"type": "linear", "in": 8, "out": 6, "bias": False}]
    assert c["data"]["content_dims"] == 3 and c["train"]["steps"] == 3


def test_train_config_file_unknown_section_is_exit_2(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"bogus": {"a": 1}}')
    res = invoke("train", "simclr", "--data", "dgp", "--config", cfg, "--out", tmp_path / "r", ok=False)
    assert res.exit_code == 2 and "bogus" in res.stderr and not (tmp_path / "r").exists()


def test_analyze_repeated_options_and_mixed_parameter_types_in_parquet(cli_h5, tmp_path):
    """--layers given twice keeps both; a parameter column holding 512 and 'all' (tangent's and
    matrix_information's batch_size) still writes Parquet; --data on a store is noted, not silently ignored."""
    out = tmp_path / "t.parquet"
    res = invoke("analyze", str(cli_h5), "--analyzers", "tangent", "--analyzers", "matrix_information", "--layers", "encoder",
                 "--layers", "projector", "--param", "matrix_information.batch_size=all", "--data", "blobs", "--out", str(out))
    df = read_table(out)
    assert set(df["layer"]) == {"encoder", "projector"} and set(df["analyzer"]) == {"tangent", "matrix_information"}
    assert set(df["batch_size"].astype(str)) == {"512", "all"}
    assert "(data=/set_data= in Python) do not apply to the store" in res.stdout
