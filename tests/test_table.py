"""The tidy table (SPEC §5): column order, dtypes, finite values, CSV/Parquet round trips, atomic writes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reprscope.errors import ReprscopeError
from reprscope.table import COLUMNS, make_table, read_table, validate, write_table

CORE = ["source", "step", "method", "layer", "view", "analyzer", "metric", "index", "value"]


def _rows():
    return [
        {"source": "a.h5", "step": None, "method": "simclr", "layer": "encoder", "view": "all",
         "analyzer": "spectrum", "metric": "effective_rank", "index": "", "value": 3, "tau": 0.1, "eps": 1e-7},
        {"source": "a.h5", "step": 10, "method": "simclr", "layer": "encoder", "view": "aug1",
         "analyzer": "spectrum", "metric": "sv", "index": "0", "value": 1.5, "tau": 0.1, "eps": 1e-7},
        {"source": "run/ckpt-0000000.pt", "step": 0, "method": "", "layer": "projector.2", "view": "aug1|aug2",
         "analyzer": "identifiability", "metric": "r2", "index": "z_1", "value": -0.25, "readout": "linear",
         "ridge": 0.001, "seed": 0},
        {"source": "a.h5", "step": 20, "method": "simclr", "layer": "encoder", "view": "all",
         "analyzer": "center", "metric": "center_norm", "index": None, "value": np.float32(0.5)},
    ]


def test_column_order_and_param_columns():
    df = make_table(_rows())
    assert COLUMNS == CORE
    assert list(df.columns) == CORE + ["tau", "eps", "readout", "ridge", "seed"]


def test_column_order_independent_of_row_key_order():
    r = {"value": 1.0, "tau": 0.5, "metric": "m", "analyzer": "a", "layer": "l", "view": "all", "index": "",
         "method": "x", "step": 3, "source": "s"}
    df = make_table([r])
    assert list(df.columns) == CORE + ["tau"]
    assert df.loc[0, "step"] == 3 and df.loc[0, "tau"] == 0.5


def test_dtypes_and_empty_fields():
    df = make_table(_rows())
    assert df["value"].dtype == np.float64
    assert all(isinstance(v, float) for v in df["value"].tolist())
    assert df["value"].tolist() == [3.0, 1.5, -0.25, 0.5]
    assert str(df["step"].dtype) == "Int64"
    assert pd.isna(df.loc[0, "step"]) and df.loc[1, "step"] == 10
    assert df["index"].tolist() == ["", "0", "z_1", ""]  # None → empty for scalars
    assert df.loc[2, "method"] == ""
    for c in ["source", "method", "layer", "view", "analyzer", "metric", "index"]:
        assert all(isinstance(v, str) for v in df[c]), c


def test_missing_core_fields_default_to_empty():
    df = make_table([{"analyzer": "a", "metric": "m", "value": 1}])
    assert list(df.columns) == CORE
    assert df.loc[0, "layer"] == "" and df.loc[0, "view"] == "" and pd.isna(df.loc[0, "step"])


def test_empty_table_has_columns():
    df = make_table([])
    assert list(df.columns) == CORE and len(df) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), "abc", None])
def test_non_finite_or_non_numeric_value_rejected(bad):
    rows = _rows()
    rows[1]["value"] = bad
    with pytest.raises(ValueError, match="non-finite value.*analyzer=spectrum metric=sv"):
        make_table(rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    df = make_table(_rows())
    path = write_table(df, tmp_path / f"t{suffix}")
    assert path.exists()
    back = read_table(path)
    pd.testing.assert_frame_equal(back, df)
    assert back.loc[0, "index"] == "" and pd.isna(back.loc[0, "step"])
    assert back.loc[0, "tau"] == 0.1 and math.isnan(back.loc[2, "tau"])
    assert back["tau"].dtype == np.float64 and back["ridge"].dtype == np.float64


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_only_core_columns_and_empty(tmp_path, suffix):
    df = make_table([{"source": "s", "step": None, "method": "", "layer": "l", "view": "all", "analyzer": "a",
                      "metric": "m", "index": "", "value": 0.0}])
    pd.testing.assert_frame_equal(read_table(write_table(df, tmp_path / f"a{suffix}")), df)
    empty = make_table([])
    back = read_table(write_table(empty, tmp_path / f"e{suffix}"))
    assert list(back.columns) == CORE and len(back) == 0


def test_round_trip_keeps_full_precision(tmp_path):
    v = 0.1 + 1e-16 * 3 + 1 / 3
    df = make_table([{"analyzer": "a", "metric": "m", "value": v}])
    assert read_table(write_table(df, tmp_path / "p.csv")).loc[0, "value"] == v


def test_csv_and_parquet_agree(tmp_path):
    df = make_table(_rows())
    a = read_table(write_table(df, tmp_path / "t.csv"))
    b = read_table(write_table(df, tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(a, b)


def test_csv_is_plain_text_with_header(tmp_path):
    write_table(make_table(_rows()), tmp_path / "t.csv")
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert header.split(",")[:9] == CORE


def test_write_table_rejects_non_finite(tmp_path):
    df = make_table(_rows())
    df.loc[0, "value"] = float("nan")
    with pytest.raises(ValueError):
        write_table(df, tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []


def test_read_table_rejects_other_csv(tmp_path):
    p = tmp_path / "other.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ReprscopeError, match="not a reprscope table"):
        read_table(p)


def test_read_table_rejects_reordered_columns(tmp_path):
    df = make_table(_rows())
    p = tmp_path / "swapped.csv"
    df[["step", "source"] + CORE[2:]].to_csv(p, index=False)
    with pytest.raises(ReprscopeError, match="not a reprscope table"):
        read_table(p)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(ReprscopeError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_read_table_bad_parquet(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(ReprscopeError, match="is a text file, not a table"):
        read_table(p)


def test_validate():
    validate(make_table(_rows()))
    with pytest.raises(ReprscopeError):
        validate(pd.DataFrame({"x": [1]}))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_is_atomic(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"t{suffix}"
    write_table(make_table(_rows()), path)
    before = path.read_bytes()
    method = "to_parquet" if suffix == ".parquet" else "to_csv"

    def broken(self, target, *a, **k):
        with open(target, "w") as f:
            f.write("source,step\nhalf")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, method, broken)
    with pytest.raises(ReprscopeError, match="cannot write the table .*disk full"):
        write_table(make_table(_rows()[:1]), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_write_creates_parent_dirs(tmp_path):
    p = write_table(make_table(_rows()), tmp_path / "a" / "b" / "t.csv")
    assert p.is_file()
