"""The tidy table (README, Files): the one place that enforces its columns.

One row per value, long format, columns in this order::

    source, step, method, layer, view, analyzer, metric, index, value

followed by the context columns ``data`` and ``n`` (the store's data set and sample count), for comparisons the
pair columns ``source_b`` and ``layer_b`` (the other side of the pair), with ``--bootstrap`` the interval
columns ``value_lo``, ``value_hi`` and ``bootstrap``, and the parameter
columns (``tau``, ``ridge``, ``k`` …). ``index`` is empty for scalars and the latent
name, dimension or rank position for vector results; ``view`` is ``all``, a view name or a pair
``aug1|aug2``. ``value`` is a finite float: non-finite results never reach the table (analyzers report them
as notes instead).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, List, Mapping

import pandas as pd

from .errors import ReprscopeError
from .io_utils import atomic_path, describe_file

COLUMNS = ["source", "step", "method", "layer", "view", "analyzer", "metric", "index", "value"]

#: Columns after COLUMNS that say what the values were computed on rather than how: ``data`` (the store's data
#: set) and ``n`` (its sample count). ``check`` compares like with like on them; they are not parameters.
CONTEXT_COLUMNS = ["data", "n"]

#: Columns after the context columns that name the other side of a comparison (pairwise analyzers such as
#: ``similarity``): ``layer_b`` the other layer, ``source_b`` the other source ("" within one source). Empty on
#: the rows of every other analyzer. ``check`` keys rows on ``layer_b``; like ``source``, ``source_b`` is a path
#: and is not compared.
PAIR_COLUMNS = ["source_b", "layer_b"]

#: Columns of a bootstrap interval (``analyze --bootstrap B``): ``value_lo``, ``value_hi`` (the percentile
#: interval) and ``bootstrap`` (the resamples that gave the value); empty on rows without one. Not keys of
#: ``check``.
INTERVAL_COLUMNS = ["value_lo", "value_hi", "bootstrap"]
_STR_COLS = ["source", "method", "layer", "view", "analyzer", "metric", "index"]
_INT_LIKE = re.compile(r"^-?\d+\.0+$")


def make_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a validated table from row dicts; missing core fields default to empty, extras become parameter columns.

    Raises:
        ValueError: a row with a non-finite or non-numeric value (a programming error in an analyzer).
    """
    rows = list(rows)
    extra: List[str] = []
    for r in rows:
        for k in r:
            if k not in COLUMNS and k not in extra:
                extra.append(k)
    df = pd.DataFrame(rows, columns=COLUMNS + extra)
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce dtypes and column order; check that every value is finite."""
    df = df.copy()
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in _STR_COLS:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(object)
    df["step"] = pd.to_numeric(df["step"], errors="coerce").astype("Int64")
    values = pd.to_numeric(df["value"], errors="coerce").astype(float)
    bad = ~values.map(math.isfinite) if len(values) else values.astype(bool)
    if bool(bad.any()):
        first = df[bad].iloc[0]
        raise ValueError(
            f"non-finite value in the table: analyzer={first['analyzer']} metric={first['metric']} "
            f"layer={first['layer']} value={first['value']!r}"
        )
    df["value"] = values
    for c in PAIR_COLUMNS:
        if c in df.columns:
            df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(object)
    for c in INTERVAL_COLUMNS:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
            df[c] = df[c].astype("Int64") if c == "bootstrap" else df[c].astype(float)
    fixed = COLUMNS + CONTEXT_COLUMNS + PAIR_COLUMNS + INTERVAL_COLUMNS
    extra = ([c for c in fixed[len(COLUMNS):] if c in df.columns]
             + [c for c in df.columns if c not in fixed])
    return df[COLUMNS + extra].reset_index(drop=True)


def validate(df: pd.DataFrame) -> None:
    """Raise ReprscopeError unless ``df`` has the tidy table's columns in order."""
    cols = list(df.columns[: len(COLUMNS)])
    if cols != COLUMNS:
        raise ReprscopeError(f"not a reprscope table: expected columns {COLUMNS} first, found {list(df.columns)}")


#: First characters that make a spreadsheet read a cell as a formula (and the escape character itself).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_csv(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (``=HYPERLINK(…)`` from a file name) get a leading
    ``'``; :func:`read_table` removes it again, so a table round-trips exactly."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def _unescape_csv(df: pd.DataFrame) -> pd.DataFrame:
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]):
            df[c] = df[c].map(lambda v: v[1:] if isinstance(v, str) and v.startswith("'") else v)
    return df


def write_table(df: pd.DataFrame, path: os.PathLike | str) -> Path:
    """Write CSV (default) or Parquet (``.parquet``), atomically."""
    path = Path(path)
    df = normalize(df)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    if parquet:  # Arrow needs one type per column: a parameter that is 512 in one row and "all" in another
        for c in df.columns[len(COLUMNS):]:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and str in kinds:
                df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    try:
        with atomic_path(path) as tmp:
            if parquet:
                df.to_parquet(tmp, index=False)
            else:
                escape_csv(df).to_csv(tmp, index=False)
    except OSError as exc:
        raise ReprscopeError(f"cannot write the table '{path}': {exc.strerror or exc}") from None
    return path


def check_writable(path: os.PathLike | str) -> None:
    """Raise ReprscopeError unless a file can be written at ``path`` (checked before long work, so that a bad
    --out fails at once rather than after the analysis)."""
    path = Path(path)
    if path.is_dir():
        raise ReprscopeError(f"out '{path}' is a folder; give a file name such as {path / 'table.csv'}", arg="out")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReprscopeError(f"cannot write '{path}': '{parent}' is not a writable folder")


def read_table(path: os.PathLike | str) -> pd.DataFrame:
    """Read a table that ``write_table`` (or ``reprscope analyze``) wrote."""
    path = Path(path)
    if not path.is_file():
        raise ReprscopeError(f"table '{path}' does not exist; write one with `reprscope analyze` (reprscope.analyze(...).to_csv)")
    with open(path, "rb") as fh:
        what = describe_file(fh.read(512))
    parquet = path.suffix.lower() in (".parquet", ".pq")
    fits = (parquet and what.startswith("a Parquet")) or (not parquet and what.startswith("a text file"))
    if what and not fits:
        raise ReprscopeError(f"'{path}' is {what}, not a table; expected a CSV or Parquet table written by "
                             "`reprscope analyze --out`")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            # empty cells stay "" in the text columns but are missing values in step, value and parameter columns
            header = pd.read_csv(path, nrows=0).columns
            text = _STR_COLS + PAIR_COLUMNS
            df = pd.read_csv(path, dtype={c: str for c in text if c in header}, keep_default_na=False,
                             low_memory=False, na_values={c: [""] for c in header if c not in text})
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ReprscopeError(f"cannot read table '{path}': {exc}") from None
    if path.suffix.lower() not in (".parquet", ".pq"):
        df = _unescape_csv(df)
    validate(df)
    # a table round-tripped through plain pandas has its integer indices (rank positions, dimensions) as floats
    df["index"] = df["index"].map(lambda v: str(v).split(".")[0] if _INT_LIKE.match(str(v)) else v)
    try:
        return normalize(df)
    except (ValueError, TypeError) as exc:  # a non-finite value; a step that is not a whole number
        raise ReprscopeError(f"table '{path}' is damaged: {exc}; every value must be a finite number "
                             "(write it again with `reprscope analyze`)") from None
