"""The functional core behind `analyze`: source resolution, parameter routing, note condensing."""
from pathlib import Path

import pytest

from reprscope.errors import ReprscopeError
from reprscope.pipeline import condense_notes, parse_params, resolve_sources, select_analyzers


def test_condense_notes_merges_layers_and_keeps_the_rest():
    notes = [f"knn skipped on {l}: needs labels" for l in ("encoder.layer1", "encoder.layer2", "encoder", "projector")]
    notes += ["tangent on encoder: no labels", "a note without a layer"]
    out = condense_notes(notes)
    assert out[0] == "knn skipped on 4 layers (encoder.layer1, encoder.layer2, encoder, …): needs labels"
    assert "tangent on encoder: no labels" in out and out[-1] == "a note without a layer"


def test_select_and_route_parameters():
    from reprscope.analyzers import ANALYZERS

    assert select_analyzers(None) == ANALYZERS.names()
    with pytest.raises(ReprscopeError, match="unknown analyzer 'nope'"):
        select_analyzers(["nope"])
    assert parse_params([(["spectrum", "tau"], "0.1")], ["spectrum"]) == {"spectrum": {"tau": "0.1"}}
    with pytest.raises(ReprscopeError, match="not selected"):
        parse_params([(["center", "x"], "1")], ["spectrum"])


def test_resolve_sources(tmp_path):
    with pytest.raises(ReprscopeError, match="does not exist"):
        resolve_sources([tmp_path / "missing.h5"])
    with pytest.raises(ReprscopeError, match="no ckpt"):
        resolve_sources([tmp_path])
    for n in ("ckpt-0000010.pt", "ckpt-0000000.pt", "last.pt"):
        (tmp_path / n).write_bytes(b"x")
    got = resolve_sources([tmp_path])
    assert [s.path.name for s in got] == ["ckpt-0000000.pt", "ckpt-0000010.pt"] and {s.kind for s in got} == {"checkpoint"}


def test_inspect_describes_a_checkpoint_and_refuses_non_checkpoints(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from reprscope_cli.main import app

    fix = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_simclr.pt"
    r = CliRunner().invoke(app, ["inspect", str(fix)])
    assert r.exit_code == 0, r.output
    for want in ("format:       reprscope", "method:       simclr", "projector", "linear(16→8)",
                 "encoder.layer1 [intermediate]", "unused keys: none"):
        assert want in r.stdout
    bad = tmp_path / "x.pt"
    bad.write_text("not a checkpoint")
    r = CliRunner().invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2 and r.stderr.startswith("error:")


def test_format_override_on_inspect_and_analyze(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from reprscope_cli.main import app

    fix = Path(__file__).resolve().parent.parent / "fixtures"
    r = CliRunner().invoke(app, ["inspect", str(fix / "tiny_simclr.pt"), "--format", "reprscope"])
    assert r.exit_code == 0 and "format:       reprscope" in r.stdout
    r = CliRunner().invoke(app, ["inspect", str(fix / "tiny_simclr.pt"), "--format", "nope"])
    assert r.exit_code == 2 and "unknown checkpoint format 'nope'" in r.stderr
    r = CliRunner().invoke(app, ["inspect", str(fix / "tiny_simclr.pt"), "--format", "simsiam"])
    assert r.exit_code == 2 and "does not fit the format 'simsiam'" in r.stderr
    r = CliRunner().invoke(app, ["analyze", str(fix / "tiny_simclr.pt"), "--format", "reprscope", "--analyzers",
                                 "center", "--limit", "50", "--quiet", "--out", str(tmp_path / "t.csv")])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def _cache_seen_by_a_module_fixture():
    from reprscope.pipeline import cache_dir

    return cache_dir()


def test_module_fixtures_do_not_write_the_home_cache(_cache_seen_by_a_module_fixture):
    """Module- and session-scoped fixtures run before the per-test cache redirection: conftest gives them a
    session cache, so running the tests never fills the user's ~/.cache/reprscope."""
    home = Path.home() / ".cache" / "reprscope"
    assert _cache_seen_by_a_module_fixture != home and home not in _cache_seen_by_a_module_fixture.parents


def test_encoder_only_analyzers_say_why_only_when_they_ran_nowhere():
    from reprscope.analyzers.base import ENCODER_ONLY
    from reprscope.extract import Store
    from reprscope.pipeline import analyze_store

    fix = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_dgp.h5"
    with Store(fix) as st:
        rows, notes = analyze_store(st, ["weights", "tangent"])
        assert {r["analyzer"] for r in rows} == {"weights", "tangent"}
        assert not any(n.endswith(ENCODER_ONLY) for n in notes), notes  # ran on the encoder: nothing to say
        rows, notes = analyze_store(st, ["weights", "tangent"], layers=["projector"])
        assert rows == []
        assert sorted(n.split(" ")[0] for n in notes if n.endswith(ENCODER_ONLY)) == ["tangent", "weights"]


def test_summary_shows_short_vector_metrics_as_columns():
    import pandas as pd

    from reprscope.pipeline import summarize

    rows = [{"source": "s", "layer": "encoder", "analyzer": "knn", "metric": "top1", "index": k, "value": v}
            for k, v in (("20", 0.91), ("200", 0.88))]
    rows += [{"source": "s", "layer": "encoder", "analyzer": "spectrum", "metric": "sv", "index": str(i), "value": 1.0}
             for i in range(8)]
    text = summarize(pd.DataFrame(rows))
    assert "[knn]" in text and "top1[20]" in text and "top1[200]" in text and "0.910" in text
    assert "sv[" not in text  # a spectrum is a vector, not a column per rank
