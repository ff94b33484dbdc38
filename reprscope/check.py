"""``reprscope check``: compare a freshly computed table against a baseline table (a CI regression gate).

A baseline is a table ``reprscope analyze`` wrote. The source is analyzed again with the analyzers and
parameters of the selected baseline rows, rows are matched on (step, layer, view, analyzer, metric, index,
parameters), and each pair is compared with the tolerance of the first matching rule:

    |new − base| ≤ atol + rtol·|base|

A rule may give a direction: ``higher`` (higher is better — only a drop beyond the tolerance fails) or
``lower`` (only a rise fails); the default ``both`` fails on any change beyond the tolerance. A baseline row
with no counterpart fails as ``missing``. When the baseline and the new table each hold a single checkpoint
(one step each), the steps need not agree — the usual CI case, a new checkpoint against an older one's table;
tables of several steps (run directories) are matched step by step, and a single checkpoint against a run
directory's table is compared with that table's rows of its step (a step the table lacks is an input error). Rules come from the command line (one
default) and a TOML file::

    [default]
    rtol = 0.01
    atol = 1e-6

    [[rule]]
    metric = "identifiability/r2*"   # glob on "analyzer/metric" (or just the metric name)
    layer = "encoder*"               # glob on the layer (default "*")
    atol = 0.02
    direction = "higher"

The same in YAML (``.yaml``/``.yml``): ``default: {rtol: 0.01}`` and ``rule: [{metric: ..., atol: ...}]``.
"""
from __future__ import annotations

import fnmatch
import math
import os
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from .errors import ReprscopeError
from .table import COLUMNS, CONTEXT_COLUMNS, INTERVAL_COLUMNS, PAIR_COLUMNS

KEY = ["step", "layer", "view", "analyzer", "metric", "index"]
DIRECTIONS = ("both", "higher", "lower")


@dataclass(frozen=True)
class Rule:
    """A tolerance for the metrics and layers its globs select."""

    metric: str = "*"
    layer: str = "*"
    rtol: float = 1e-3
    atol: float = 1e-6
    direction: str = "both"

    def matches(self, analyzer: str, metric: str, layer: str) -> bool:
        m = fnmatch.fnmatch(f"{analyzer}/{metric}", self.metric) or fnmatch.fnmatch(metric, self.metric)
        return m and fnmatch.fnmatch(layer, self.layer)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _short(v: Any) -> str:
    """A bounded repr of a value read from a file: YAML aliases can make a small file a huge nested value
    ("billion laughs"), which a plain repr would expand in full."""
    return _REPR.repr(v)


def _number(v: Any) -> Any:
    """A tolerance as a float: numbers, and strings that spell one (PyYAML reads ``1e-6`` as a string)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _rule_from(d: Any, base: Rule, where: str) -> Rule:
    if not isinstance(d, dict):
        raise ReprscopeError(f"{where} must be a table of keys (metric, layer, rtol, atol, direction), got "
                             f"{type(d).__name__} {_short(d)}; in TOML write each rule as [[rule]]")
    allowed = {"metric", "layer", "rtol", "atol", "direction"}
    unknown = set(d) - allowed
    if unknown:
        raise ReprscopeError(f"{where}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(allowed))}")
    d = {k: (_number(v) if k in ("rtol", "atol") else v) for k, v in d.items()}
    r = Rule(**{**asdict(base), **d})
    for k in ("metric", "layer", "direction"):
        if not isinstance(getattr(r, k), str):
            raise ReprscopeError(f"{where}: {k} must be a string (a glob such as \"spectrum/*\"), got {_short(getattr(r, k))}")
    if r.direction not in DIRECTIONS:
        raise ReprscopeError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}, got '{r.direction}'")
    for k in ("rtol", "atol"):
        v = getattr(r, k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or math.isinf(v):
            raise ReprscopeError(f"{where}: {k} must be a finite number >= 0, got {_short(v)}")
    return r


def _read_rules_file(path: Path) -> Dict[str, Any]:
    """TOML, or YAML (``.yaml``/``.yml``, with the same ``default`` mapping and ``rule`` list)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReprscopeError(f"tolerance file '{path}' is not UTF-8 text; write it as TOML or YAML") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # PyYAML comes with timm

            doc = yaml.safe_load(text) or {}
        else:
            import tomllib

            doc = tomllib.loads(text)
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError: both are parse errors of the user's file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReprscopeError(f"cannot parse tolerance file '{path}': {first}") from None
    if not isinstance(doc, dict):
        raise ReprscopeError(f"tolerance file '{path}' must hold a mapping with 'default' and 'rule'")
    return doc


def load_rules(path: Optional[Path], rtol: Optional[float] = None, atol: Optional[float] = None) -> List[Rule]:
    """Rules from a TOML file (``[default]`` and ``[[rule]]`` tables) with the CLI's rtol/atol as defaults.

    Precedence, lowest first: the built-in default (rtol 1e-3, atol 1e-6), the file's ``[default]``, the
    command line's ``--rtol``/``--atol``, then what a ``[[rule]]`` sets itself. The file's rules come first
    (first match wins); the default rule catches everything else.
    """
    default = Rule()
    cli = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    raw_rules: List[Any] = []
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ReprscopeError(f"tolerance file '{path}' is a folder; give a .toml or .yaml file")
        if not path.is_file():
            raise ReprscopeError(f"tolerance file '{path}' does not exist")
        doc = _read_rules_file(path)
        unknown = set(doc) - {"default", "rule"}
        if unknown:
            raise ReprscopeError(f"tolerance file '{path}': unknown table '{sorted(unknown)[0]}'; use [default] and [[rule]]")
        default = _rule_from(doc.get("default", {}), default, f"{path} [default]")
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list):
            raise ReprscopeError(f"tolerance file '{path}': 'rule' must be a list of tables; in TOML write each rule "
                                 "as [[rule]] (two brackets), in YAML as a list under rule:")
    if cli:
        default = _rule_from(cli, default, "--rtol/--atol")
    rules = [_rule_from(r, default, f"{path} rule {i + 1}") for i, r in enumerate(raw_rules)]
    return rules + [default]


@dataclass
class CheckResult:
    compared: int
    failures: pd.DataFrame
    missing: pd.DataFrame
    extra: int
    steps: Optional[List[str]] = None  # [baseline step, new step] when single checkpoints were compared
    ok: bool = field(init=False)
    notes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ok = self.failures.empty and self.missing.empty


def baseline_analyzers(base: pd.DataFrame) -> Dict[str, Dict[str, Any]]:
    """The analyzers of a baseline table and the parameter values recorded in it (for recomputation)."""
    from .analyzers import ANALYZERS

    out: Dict[str, Dict[str, Any]] = {}
    for name, g in base.groupby("analyzer", sort=False):
        declared = {p.name for p in ANALYZERS.get(str(name)).params}
        vals: Dict[str, Any] = {}
        for c in [c for c in base.columns if c in declared]:
            col = g[c].dropna()
            col = col[col.astype(str) != ""]
            if len(col):
                vals[c] = col.iloc[0]  # Param validation coerces 512.0 → 512 and "0.01" → 0.01
        out[str(name)] = vals
    return out


def _key_frame(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    out = df.copy()
    out["step"] = out["step"].astype("Int64").astype(str)
    for c in params:
        out[c] = out[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else
                            (f"{float(v):.12g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)))
    return out


def select_rows(table: pd.DataFrame, metrics: Optional[str] = None, layers: Optional[str] = None) -> pd.DataFrame:
    """The rows of ``table`` whose ``analyzer/metric`` (or metric) matches one of the comma-separated globs
    ``metrics`` and whose layer matches one of ``layers`` (None: all)."""
    sel = pd.Series(True, index=table.index)
    if metrics:
        pats = [p.strip() for p in metrics.split(",") if p.strip()]
        sel &= pd.Series([any(fnmatch.fnmatch(f"{a}/{m}", p) or fnmatch.fnmatch(m, p) for p in pats)
                          for a, m in zip(table["analyzer"], table["metric"])], index=table.index, dtype=bool)
    if layers:
        pats = [p.strip() for p in layers.split(",") if p.strip()]
        sel &= pd.Series([any(fnmatch.fnmatch(l, p) for p in pats) for l in table["layer"]], index=table.index, dtype=bool)
    return table[sel]


def compare(new: pd.DataFrame, base: pd.DataFrame, rules: Sequence[Rule], metrics: Optional[str] = None,
            layers: Optional[str] = None) -> CheckResult:
    """Compare two tables row by row; see the module docstring for the rules."""
    base = select_rows(base, metrics, layers)
    if base.empty:
        raise ReprscopeError("no baseline rows match the metrics/layers globs; nothing to check", arg="metrics")
    new = select_rows(new, metrics, layers)
    # parameters and the other layer of a pair are keys; the other source is a path, not compared (as source)
    shared = set(base.columns) & set(new.columns)
    params = sorted(c for c in shared if c not in COLUMNS + CONTEXT_COLUMNS + PAIR_COLUMNS + INTERVAL_COLUMNS)
    params += [c for c in PAIR_COLUMNS if c in shared and c != "source_b"]
    b, n = _key_frame(base, params), _key_frame(new, params)
    steps_b, steps_n = b["step"].unique(), n["step"].unique()
    if len(steps_n) == 1 and len(steps_b) > 1:  # one checkpoint against a run directory's table
        if steps_n[0] not in set(steps_b):
            raise ReprscopeError(f"the baseline holds {len(steps_b)} steps (a run directory's table) and the new "
                                 f"checkpoint is at step {steps_n[0]}, which it lacks; check a run directory against "
                                 "it, or make the baseline from one checkpoint")
        b = b[b["step"] == steps_n[0]]
        steps_b = b["step"].unique()
    single = len(steps_b) == 1 and len(steps_n) <= 1
    key = [k for k in KEY if not (single and k == "step")] + params
    if b.duplicated(key).any():
        raise ReprscopeError("the baseline has several rows for the same step/layer/view/metric; is it a table of several sources?")
    merged = b.merge(n[key + ["value"]].drop_duplicates(key), on=key, how="left", suffixes=("_base", "_new"))
    missing = merged[merged["value_new"].isna()][KEY + params + ["value_base"]]
    both = merged[merged["value_new"].notna()].copy()
    tol, dirs = [], []
    for a, m, l, v in zip(both["analyzer"], both["metric"], both["layer"], both["value_base"]):
        rule = next(r for r in rules if r.matches(a, m, l))
        tol.append(rule.atol + rule.rtol * abs(v))
        dirs.append(rule.direction)
    both["tolerance"] = tol
    both["direction"] = dirs
    diff = both["value_new"] - both["value_base"]
    both["diff"] = diff
    bad = ((both["direction"] == "both") & (diff.abs() > both["tolerance"])) | \
          ((both["direction"] == "higher") & (-diff > both["tolerance"])) | \
          ((both["direction"] == "lower") & (diff > both["tolerance"]))
    fails = both[bad][KEY + params + ["value_base", "value_new", "diff", "tolerance", "direction"]]
    extra = len(n) - int(n[key].merge(b[key], on=key, how="inner").shape[0])
    steps = [str(steps_b[0]), str(steps_n[0])] if single and len(steps_n) and steps_b[0] != steps_n[0] else None
    return CheckResult(compared=len(both), failures=fails.reset_index(drop=True), missing=missing.reset_index(drop=True),
                       extra=extra, steps=steps)


def baseline_context(base: pd.DataFrame) -> Dict[str, Any]:
    """What the baseline's values were computed on: ``{"data": name, "n": samples}`` for the context columns it
    records with a single value (older tables: none)."""
    out: Dict[str, Any] = {}
    for c in CONTEXT_COLUMNS:
        if c in base.columns:
            vals = base[c].dropna()
            vals = vals[vals.astype(str) != ""].unique()
            if len(vals) == 1 and c == "n":
                try:
                    out[c] = int(vals[0]) if float(vals[0]).is_integer() and float(vals[0]) > 0 else None
                except (TypeError, ValueError):
                    out[c] = None
                if out[c] is None:
                    raise ReprscopeError(f"the table's n column must hold the number of samples, got {_short(vals[0])}; "
                                         "rewrite it with `reprscope analyze`")
            elif len(vals) == 1:
                out[c] = str(vals[0])
    return out


def check_context(base: pd.DataFrame, new: pd.DataFrame, store: bool = False) -> None:
    """Refuse to compare values computed on another data set or another number of samples (exit 2). ``store``:
    the new source is an .h5 store, whose samples are fixed (the advice is then to extract it again)."""
    want, got = baseline_context(base), baseline_context(new)
    diff = [c for c in want if c in got and want[c] != got[c]]
    if diff:
        fmt = lambda d: ", ".join(f"{c}={d[c]}" for c in CONTEXT_COLUMNS if c in d)  # noqa: E731
        d, n = want.get("data", got.get("data")), want.get("n", got.get("n"))
        opts = f"--data {d} --limit {n}"
        todo = (f"extract the store again with `reprscope extract ... {opts}`" if store
                else f"pass data='{d}' and limit={n} ({opts} on the command line)")
        raise ReprscopeError(f"the baseline was computed on {fmt(want)} and the new results on {fmt(got)}; compare like "
                             f"with like: {todo}, or write a new baseline")


def format_result(res: CheckResult, max_rows: int = 50, notes: Sequence[str] = ()) -> str:
    """A readable report: the verdict, then the failing and missing rows (at most ``max_rows`` each, with a count
    of the rest), and the analyzers' notes when rows are missing (e.g. why an analyzer was skipped)."""
    lines = [f"{'OK' if res.ok else 'REGRESSION'}: {res.compared} values compared, {len(res.failures)} outside tolerance, "
             f"{len(res.missing)} missing" + (f", {res.extra} new rows not in the baseline (ignored)" if res.extra else "")]
    if res.steps:
        lines.append(f"(baseline checkpoint at step {res.steps[0]}, new one at step {res.steps[1]}: compared as one checkpoint each)")
    cols = ["step", "layer", "view", "analyzer", "metric", "index"]
    more = lambda df: [f"... and {len(df) - max_rows} more (--json lists them all)"] if len(df) > max_rows else []  # noqa: E731
    if not res.failures.empty:
        f = res.failures[cols + ["value_base", "value_new", "diff", "tolerance", "direction"]].head(max_rows)
        f = f.rename(columns={"value_base": "baseline", "value_new": "new"})
        lines += ["", "outside tolerance:", f.to_string(index=False, float_format=lambda v: f"{v:.6g}")] + more(res.failures)
    if not res.missing.empty:
        m = res.missing[cols + ["value_base"]].head(max_rows).rename(columns={"value_base": "baseline"})
        lines += ["", "missing in the new results:", m.to_string(index=False, float_format=lambda v: f"{v:.6g}")]
        lines += more(res.missing)
        if notes:
            lines += ["", "notes of the new analysis:"] + [f"  {n}" for n in notes]
    return "\n".join(lines)


def _json_value(key: str, v: Any) -> Any:
    """A cell for JSON: None for empty/NaN, numbers as numbers (steps and parameters are keyed as text)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v in ("", "<NA>")):
        return None
    if isinstance(v, str) and key not in ("layer", "view", "analyzer", "metric", "index", "direction"):
        if v in ("True", "False"):
            return v == "True"
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def result_json(res: CheckResult, source: Optional[str] = None, baseline: Optional[str] = None) -> Dict[str, Any]:
    def recs(df: pd.DataFrame) -> List[Dict[str, Any]]:
        return [{k: _json_value(k, v) for k, v in r.items()} for r in df.astype(object).to_dict(orient="records")]

    steps = None if res.steps is None else [_json_value("step", s) for s in res.steps]
    return {"ok": res.ok, "source": source, "baseline": baseline, "compared": res.compared,
            "failed": recs(res.failures), "missing": recs(res.missing), "extra": res.extra, "steps": steps}


def check(source: str | os.PathLike, baseline: str | os.PathLike | pd.DataFrame, *, rtol: Optional[float] = None,
          atol: Optional[float] = None, tolerances: Optional[str | os.PathLike] = None, metrics: Optional[str] = None,
          layers: Optional[str] = None, data: Optional[str] = None, views: int = 2, limit: Optional[int] = None,
          device: str = "cpu", progress: bool = False) -> CheckResult:
    """Recompute ``source``'s table and compare it with a baseline table: the CI gate as a function.

    Args:
        source: a checkpoint, ``.h5`` store or run directory.
        baseline: a table written by ``analyze`` (a path, or the DataFrame itself).
        rtol, atol: default tolerances (1e-3, 1e-6); tolerances: a TOML/YAML file of rules.
        metrics, layers: comma-separated globs selecting the baseline rows to check.
        data, views, limit: extraction settings for a checkpoint (``limit`` defaults to the baseline's n).

    Returns:
        A :class:`CheckResult`: ``ok`` (no failure, no missing row), ``failures`` and ``missing`` rows,
        ``compared`` and ``notes``. Inputs that cannot be compared (another data set or sample count, no row in
        common) raise :class:`~reprscope.errors.ReprscopeError`.
    """
    from .pipeline import analyze as run_analyze, condense_notes
    from .table import read_table

    rules = load_rules(Path(tolerances) if tolerances is not None else None, rtol, atol)
    base = baseline if isinstance(baseline, pd.DataFrame) else read_table(Path(baseline))
    selected = select_rows(base, metrics, layers)
    dropped: List[str] = []
    if "source_b" in selected.columns and (selected["source_b"].fillna("") != "").any():
        # comparisons with another source (--compare, a run's last checkpoint) need that source: not rechecked
        other = selected["source_b"].fillna("") != ""
        dropped.append(f"{int(other.sum())} baseline rows compare with another source ({selected.loc[other, 'source_b'].iloc[0]}"
                       "…) and are not checked: check compares one SOURCE's own rows")
        base = base[base["source_b"].fillna("") == ""]
        selected = selected[~other]
    if selected.empty:
        raise ReprscopeError("no baseline rows match the metrics/layers globs; nothing to check", arg="metrics")
    wanted = baseline_analyzers(selected)  # only what the selected rows need is recomputed
    if limit is None:
        limit = baseline_context(selected).get("n")
    res = run_analyze([str(source)], data=data, analyzers=list(wanted), params=wanted, views=views, limit=limit,
                      device=device, progress=progress)
    check_context(selected, res.table, store=Path(source).suffix.lower() in (".h5", ".hdf5"))
    result = compare(res.table, base, rules, metrics=metrics, layers=layers)
    result.notes = dropped + condense_notes(res.notes)
    if result.compared == 0:
        skipped = [n for n in result.notes if "skipped" in n]
        why = f" ({skipped[0]})" if skipped else ""
        raise ReprscopeError(f"none of the {len(result.missing)} selected baseline rows has a counterpart in the new "
                             f"results{why}: the baseline comes from other layers, views, analyzers or parameters; "
                             "write a new baseline with `reprscope analyze`")
    return result
