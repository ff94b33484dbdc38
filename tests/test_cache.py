"""The extraction cache is bounded: least recently used stores go first, the one just written stays, nothing
outside the cache folder (or behind a link) is touched; ``reprscope cache`` shows and clears it."""
import os

import pytest
from typer.testing import CliRunner

from reprscope.errors import ReprscopeError
from reprscope.pipeline import cache_dir, cache_entries, cache_limit, prune_cache
from reprscope_cli.main import app


def _store(name, size, age):
    p = cache_dir() / "extract" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0" * size)
    os.utime(p, (1_000_000 + age, 1_000_000 + age))
    return p


def test_least_recently_used_go_first_and_the_new_one_stays(tmp_path):
    old, mid, new = _store("a.h5", 400, 1), _store("b.h5", 400, 2), _store("c.h5", 400, 3)
    outside = tmp_path / "elsewhere.h5"
    outside.write_bytes(b"\0" * 4000)
    (cache_dir() / "extract" / "link.h5").symlink_to(outside)
    (cache_dir() / "extract" / "notes.txt").write_text("x" * 5000)
    assert cache_entries() == [old, mid, new]  # the link and the text file are not cache entries
    removed = prune_cache(keep=old, limit=500)
    assert removed == [mid, new] and old.exists() and outside.exists()
    assert prune_cache(limit=10**9) == []


def test_the_bound_from_the_environment(monkeypatch):
    monkeypatch.setenv("REPRSCOPE_CACHE_MAX", "2G")
    assert cache_limit() == 2 * 2**30
    monkeypatch.setenv("REPRSCOPE_CACHE_MAX", "1500")
    assert cache_limit() == 1500
    monkeypatch.setenv("REPRSCOPE_CACHE_MAX", "lots")
    with pytest.raises(ReprscopeError, match="REPRSCOPE_CACHE_MAX"):
        cache_limit()


def test_cache_command_shows_and_clears():
    _store("a.h5", 1000, 1)
    _store("b.h5", 1000, 2)
    r = CliRunner().invoke(app, ["cache"])
    assert r.exit_code == 0 and "2 stores" in r.output
    r = CliRunner().invoke(app, ["cache", "--clear"])
    assert r.exit_code == 0 and "removed 2 stores" in r.output
    assert cache_entries() == []


def test_an_analysis_keeps_the_cache_within_its_bound(tiny_ckpt, monkeypatch):
    import reprscope

    monkeypatch.setenv("REPRSCOPE_CACHE_MAX", "1")  # smaller than any store: only the newest is kept
    reprscope.analyze(tiny_ckpt, analyzers="center", limit=50)
    reprscope.analyze(tiny_ckpt, analyzers="center", limit=60)
    assert len(cache_entries()) == 1
