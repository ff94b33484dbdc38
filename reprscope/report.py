"""``reprscope report``: figures from tidy tables, one figure per question.

* ``spectrum``: log singular values per layer (the encoder log-spectrum of Cosentino et al. 2022, arXiv:2205.06926 Fig. 4, the spectra of
  Rusak et al. 2022 Fig. 1), one panel per run at its last step, from one view (``clean`` when the table has it; the
  panel title names it);
* ``r2_per_latent``: held-out R² of every latent across layers, one panel per run at its last step (paper
  001). Content and style latents are told apart by the table's ``latent_group`` column only (content solid,
  style dashed, the group means thick black); a table without it has its latents drawn in one style and the
  title says that it carries no content/style split. The legend names every latent;
* ``profile_<analyzer>``: every scalar metric of an analyzer across layers, a line per run and view (how it
  changes with depth); an analyzer that reports on one layer only (``weights``, ``tangent``) has no profile;
* ``trajectory_<analyzer>``: every scalar metric over training steps, a line per run and layer, for runs
  with two or more steps; where a metric is reported for several views the reference view is drawn (``clean``
  when there, else the first) and the panel title names it.
* ``similarity_<measure>``: heat maps of a similarity measure (linear CKA, SVCCA …), a panel per run at its
  last step (layer × layer, mirrored, the diagonal 1 — 0 for the Procrustes distance) and per comparison with
  another source (this source's layers × the other's), values written in the cells;
* ``settling_<measure>``: for a run whose checkpoints were compared with its last one, the measure between
  each layer and the same layer of the last checkpoint over the steps (how fast each layer settles).
* ``predicts_accuracy``: for tables of three or more checkpoints or sources with k-NN / linear-probe rows, the
  Spearman ρ of every label-free metric with each accuracy across them (:func:`reprscope.correlate.correlate`),
  a heat map per target (metrics × layers, ``*`` where p < 0.05), and the whole table as
  ``predicts_accuracy.csv`` (ρ, τ-b and both p-values).

In profiles and trajectories a metric ``M_std`` reported next to ``M`` (matrix_information's spread over
batches) is drawn as a band M ± M_std on M's panel rather than as a panel of its own, the two matrix forms of
matrix_information share a panel (solid ``gram``, dashed ``cov``), and bookkeeping counts (``n_batches``) are
left out.

Runs. Rows belong to the same run when they come from the same training run, which a table cannot say
outright; the rule used here:

1. a source that is an ``.h5``/``.hdf5`` store is a run of its own (one point in time);
2. checkpoint sources in the same parent folder are one run within one table file;
3. when several table files have checkpoint rows of the same parent folder (or the same ``.h5`` source), they
   are joined into one run if no step occurs in two of these tables; otherwise each table's rows are a run
   of their own (two tables of relative paths like ``run/ckpt-0000100.pt`` written in different folders).

Legend labels are the shortest trailing part of a run's path that no other run's path ends in (``x/e.h5`` and
``y/e.h5``; ``a/last.pt`` and ``b/last.pt``; a folder of several checkpoints ends in ``/``); runs kept apart
by rule 3 add their table's shortest distinguishing path in brackets (``run/ [e1/traj.csv]``).

Output is atomic: every figure is rendered into a temporary folder beside ``out`` and moved into ``out`` only
when all of them were written, so a failure leaves neither files nor an empty folder behind; files already in
``out`` are kept (ours are replaced). Figures that do not apply are skipped with a note saying why; when none
applies the call fails with a :class:`ReprscopeError`.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePath
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .errors import ReprscopeError
from .table import read_table

FORMATS = ("png", "pdf")
MAX_INDEX_SERIES = 4  # vector metrics with at most this many entries (k of k-NN, fine/coarse) count as scalars
BOOKKEEPING = ("n_batches",)  # counts that describe the computation, not the representation
FORM_STYLE = {"": "-", "gram": "-", "cov": "--"}
H5_SUFFIXES = (".h5", ".hdf5")
#: Line styles cycle colour and marker together (10 and 7 are coprime: 70 distinct pairs), then the dash.
COLORS = tuple(f"C{i}" for i in range(10))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DASHES = ("-", "--", ":", "-.")
R2_FLOOR = -1.0  # R² axes stop here: a latent read out worse than its mean is "not readable" whatever the value

# internal columns added by make_report
TABLE, RUN, LABEL = "_table", "_run", "_run_label"


class Report(list):
    """The paths written (a list, in order), with ``notes``: one line per figure that was skipped and why."""

    def __init__(self, paths: Sequence[Path] = (), notes: Sequence[str] = ()):
        super().__init__(paths)
        self.notes: List[str] = list(notes)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------- runs


def short_labels(paths: Sequence[str]) -> Dict[str, str]:
    """``{path: the shortest trailing part of it that no other path ends in}`` (the whole path when another
    path ends in all of it, e.g. ``e.h5`` next to ``x/e.h5``)."""
    parts = {p: PurePath(p).parts or (p,) for p in dict.fromkeys(map(str, paths))}
    out: Dict[str, str] = {}
    for p, ps in parts.items():
        tail = ps
        for k in range(1, len(ps) + 1):
            tail = ps[-k:]
            if not any(q != p and qs[-k:] == tail for q, qs in parts.items()):
                break
        out[p] = str(PurePath(*tail))
    return out


def assign_runs(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (with the table file of every row in column ``_table``) plus ``_run`` (an id) and ``_run_label``
    (the legend label), by the rule of the module docstring."""
    df = df.copy()
    src = df["source"].astype(str)
    is_h5 = src.str.lower().str.endswith(H5_SUFFIXES)
    folder = src.map(lambda s: str(PurePath(s).parent))
    key = np.where(is_h5, "h5\0" + src, "dir\0" + folder)
    df[RUN] = key
    steps = df["step"].astype(object).where(df["step"].notna(), None)
    split = set()
    for k, g in df.groupby(RUN, sort=False):
        per_table = [set(s) for _, s in steps[g.index].groupby(g[TABLE], sort=False)]
        if len(per_table) > 1 and sum(map(len, per_table)) != len(set().union(*per_table)):
            df.loc[g.index, RUN] = k + "\0" + g[TABLE]
            split.update(df.loc[g.index, RUN])
    # the path that names a run: the store, the one checkpoint, or the folder of several checkpoints
    named: Dict[str, Tuple[str, bool]] = {}
    for run, g in df.groupby(RUN, sort=False):
        sources = list(dict.fromkeys(g["source"].astype(str)))
        if len(sources) == 1:
            named[run] = (sources[0], False)
        else:
            named[run] = (str(PurePath(sources[0]).parent), True)
    short = short_labels([p for p, _ in named.values()])
    tables = short_labels(list(dict.fromkeys(df[TABLE])))
    run_table = df.groupby(RUN, sort=False)[TABLE].first()
    labels = {}
    for run, (path, is_folder) in named.items():
        label = short[path]
        if is_folder:
            label = "./" if label == "." else label + "/"
        if run in split:
            label += f" [{tables[run_table[run]]}]"
        labels[run] = label
    df[LABEL] = df[RUN].map(labels)
    return df


def _ensure_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Tables handed to the plot functions directly (not through make_report) are one table file."""
    if RUN in df.columns:
        return df
    return assign_runs(df.assign(**{TABLE: ""}))


def _last_step(df: pd.DataFrame, by: Sequence[str] = (RUN,)) -> pd.DataFrame:
    """The rows of each run's last step (all rows of a run without steps), from one source per run."""
    if df.empty:
        return df
    by = list(by)
    last = df.groupby(by, sort=False)["step"].transform("max")
    keep = (df["step"] == last).fillna(False).astype(bool) | last.isna().to_numpy()
    d = df[keep]
    first = d.groupby(by, sort=False)["source"].transform("first")
    return d[d["source"] == first]


def _step_text(g: pd.DataFrame) -> str:
    steps = g["step"].dropna()
    return f"step {int(steps.iloc[0])}" if len(steps) else ""


def depth_order(df: pd.DataFrame) -> List[str]:
    """The layers of ``df`` in an order that keeps every run's own (shallow-to-deep, as its table lists them):
    runs of different architectures are merged so that no run's line steps back in depth; ties go to the
    layer seen first."""
    run = RUN if RUN in df.columns else "source"
    seqs = [list(dict.fromkeys(g["layer"])) for _, g in df.groupby(run, sort=False)]
    first = {layer: i for i, layer in enumerate(dict.fromkeys(df["layer"]))}
    after: Dict[str, set] = {layer: set() for layer in first}  # layer → the layers that must come before it
    for seq in seqs:
        for i, layer in enumerate(seq):
            after[layer].update(seq[:i])
    order: List[str] = []
    left = dict(first)
    while left:
        ready = [l for l in left if not (after[l] & set(left))] or list(left)  # a cycle: fall back to first seen
        nxt = min(ready, key=first.get)
        order.append(nxt)
        del left[nxt]
    return order


def _reference_view(views: Sequence[str]) -> str:
    views = list(dict.fromkeys(views))
    return "clean" if "clean" in views else views[0]


# ---------------------------------------------------------------------------------------------------- rows


def pair_mask(df: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: the rows of a comparison of two layers (``layer_b`` set: similarity)."""
    if "layer_b" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["layer_b"].fillna("").astype(str).to_numpy() != ""


def single_layer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that describe one layer (the comparisons of two are drawn by :func:`plot_similarity`)."""
    return df[~pair_mask(df)]


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One number per (run, step, layer, view, analyzer, series, form) — scalars and short vectors — with the
    spread of a metric ``M`` that has an ``M_std`` companion in column ``err`` (NaN elsewhere), and the band to
    draw in ``lo``/``hi``: the bootstrap interval (``value_lo``/``value_hi``) where the table has one, else
    value ± err.

    The run is ``_run`` where ``df`` has it (see :func:`assign_runs`), else the source. Columns: those of the
    table plus ``series`` (metric[index]), ``form`` ("" when the table has none) and ``err``; the ``M_std``
    rows themselves and the BOOKKEEPING metrics are not returned.
    """
    run = RUN if RUN in df.columns else "source"
    keys = [run, "step", "layer", "view", "analyzer", "series", "form"]
    df = single_layer_rows(df)
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = {k for k, v in counts.items() if v <= MAX_INDEX_SERIES}
    keep = df[np.array([(a, m) in short and m not in BOOKKEEPING for a, m in zip(df["analyzer"], df["metric"])], dtype=bool)].copy()
    keep["form"] = keep["form"].fillna("").astype(str) if "form" in keep.columns else ""
    index = keep["index"].astype(str)
    keep["series"] = (keep["metric"].astype(str) + np.where(index != "", "[" + index + "]", "")).astype(object)
    if keep.empty:
        return keep.assign(err=pd.Series(dtype=float), lo=pd.Series(dtype=float), hi=pd.Series(dtype=float))
    first = keep.groupby(keys, dropna=False, sort=False).first().reset_index()
    metrics = set(zip(first["analyzer"], first["metric"]))
    is_std = np.array([m.endswith("_std") and i == "" and (a, m[:-4]) in metrics
                       for a, m, i in zip(first["analyzer"], first["metric"], first["index"])], dtype=bool)
    if not is_std.any():
        return _bands(first.assign(err=np.nan))
    spread = first[is_std].assign(series=lambda t: t["metric"].str[:-4])[keys + ["value"]].rename(columns={"value": "err"})
    return _bands(first[~is_std].merge(spread, on=keys, how="left"))


def _bands(rows: pd.DataFrame) -> pd.DataFrame:
    lo = rows["value"] - rows["err"]
    hi = rows["value"] + rows["err"]
    if "value_lo" in rows.columns:
        has = rows["value_lo"].notna() & rows["value_hi"].notna()
        lo = lo.where(~has, rows["value_lo"])
        hi = hi.where(~has, rows["value_hi"])
    return rows.assign(lo=lo.astype(float), hi=hi.astype(float))





# ---------------------------------------------------------------------------------------------------- drawing


def _style(i: int) -> Dict[str, str]:
    """The i-th line style: colour and marker cycle together, the dash changes every 10 lines."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)], "ls": DASHES[(i // len(COLORS)) % len(DASHES)]}


def _grid(n: int):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, entries: Sequence[Tuple[str, Dict]], title: Optional[str] = None) -> None:
    """One legend for the whole figure, right of the panels, from (label, line style) pairs."""
    if not entries:
        return
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **{"ms": 4, **style}) for _, style in entries]
    # right of the panels, centred: at the top the legend's title would run into the figure's title
    fig.legend(handles, [label for label, _ in entries], loc="outside right center", fontsize=7, title=title,
               title_fontsize=7, ncols=1 if len(entries) <= 18 else 2, frameon=False)


def _line(ax, x, y, lo, hi, **kw) -> None:
    """A line with markers, and a band lo … hi where it is known (a bootstrap interval or ± a spread)."""
    line, = ax.plot(x, y, **{"marker": "o", "ms": 3, **kw})
    if lo is not None and np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def _band_text(g: pd.DataFrame) -> str:
    boot = "value_lo" in g.columns and g["value_lo"].notna().any()
    std = g["err"].notna().any()
    parts = (["bootstrap intervals"] if boot else []) + (["± std over batches"] if std else [])
    return f" (bands: {', '.join(parts)})" if parts else ""


def _form_entries(forms: Sequence[str]) -> List[Tuple[str, Dict]]:
    if len(set(forms)) < 2:
        return []
    return [(f"{f or 'no'} form", {"color": "0.3", "ls": FORM_STYLE.get(f, ":")}) for f in forms]


def _line_styles(keys: Sequence[Tuple[str, str]], names: Tuple[Dict[str, str], Dict[str, str]],
                 dims: Tuple[str, str], forms: Sequence[str]) -> Tuple[Dict[Tuple[str, str], Dict], List[Tuple[str, Dict]], str]:
    """A line style per (a, b) key — a run and a view or layer — with the legend entries and the legend title.

    When both parts vary, the part with fewer values (at most 4, and no matrix forms that need the dash)
    gets the dash and the other colour and marker, so the legend lists each value once; otherwise every key
    gets its own colour and marker (70 distinct pairs) and its own legend entry. ``names`` label the values.
    """
    parts = [list(dict.fromkeys(k[i] for k in keys)) for i in (0, 1)]
    many = [len(p) > 1 for p in parts]
    if all(many) and len(set(forms)) < 2 and min(map(len, parts)) <= len(DASHES):
        d = 0 if len(parts[0]) <= len(parts[1]) else 1  # the dashed part
        c = 1 - d
        look = {v: _style(i) for i, v in enumerate(parts[c])}
        style = {k: {**look[k[c]], "ls": DASHES[parts[d].index(k[d])]} for k in keys}
        entries = [(names[c][v], {**look[v], "ls": "-"}) for v in parts[c]]
        entries += [(names[d][v], {"color": "0.35", "ls": DASHES[i], "marker": ""}) for i, v in enumerate(parts[d])]
        return style, entries, f"colour: {dims[c]}, dash: {dims[d]}"
    style = {k: _style(i) for i, k in enumerate(keys)}
    entries = [(_key_label([names[i][k[i]] for i in (0, 1) if many[i]]), style[k]) for k in keys] if len(keys) > 1 else []
    return style, entries, " · ".join(dims[i] for i in (0, 1) if many[i])


def safe_stem(stem: str, limit: int = 100) -> str:
    """A file name from text that may come from a table (an analyzer's name): letters, digits, ``_``, ``-`` and
    ``.`` only, no leading dot, at most ``limit`` characters (the rest replaced by a short hash), so a name
    read from a file never escapes the output folder or exceeds the file system's name length."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip(".") or "figure"
    if len(clean) > limit:
        clean = clean[:limit - 9] + "-" + hashlib.sha256(stem.encode()).hexdigest()[:8]
    return clean


def _save(fig, out: Path, stem: str, formats: Sequence[str]) -> List[Path]:
    paths = []
    for fmt in formats:
        p = out / f"{safe_stem(stem)}.{fmt}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def plot_spectra(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``spectrum``: log singular values per layer, a panel per run at its last step, one view."""
    notes = [] if notes is None else notes
    df = _ensure_runs(df)
    sv = _last_step(df[(df["analyzer"] == "spectrum") & (df["metric"] == "sv")])
    if sv.empty:
        notes.append("spectrum not drawn: the tables have no spectrum `sv` rows (analyze with the spectrum analyzer)")
        return []
    runs = list(dict.fromkeys(sv[RUN]))
    style = {layer: _style(i) for i, layer in enumerate(dict.fromkeys(sv["layer"]))}  # the same in every panel
    fig, axes = _grid(len(runs))
    for ax, run in zip(axes, runs):
        g = sv[sv[RUN] == run]
        view = _reference_view(g["view"])
        g = g[g["view"] == view]
        for layer in dict.fromkeys(g["layer"]):
            s = g[g["layer"] == layer]
            vals = s["value"].to_numpy(dtype=float)
            pos = vals > 0  # a log axis cannot show exact zeros (rank-deficient layers)
            x = s["index"].astype(int).to_numpy()[pos] + 1
            ax.plot(x, vals[pos], lw=1.2, ms=3.5, markevery=max(1, len(x) // 8), **style[layer])
        ax.set_yscale("log")
        ax.set_xlabel("rank position k")
        ax.set_ylabel("singular value σ_k (centred)")
        ax.set_title(" · ".join(t for t in (g[LABEL].iloc[0], _step_text(g), f"view {view}") if t), fontsize=9)
        ax.grid(alpha=0.3, which="major")
    _legend(fig, list(style.items()), title="layer")
    fig.suptitle("Singular-value spectra per layer (log scale)")
    return _save(fig, out, "spectrum", formats)


def plot_r2(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``r2_per_latent``: held-out R² of every latent across layers, a panel per run at its last step."""
    notes = [] if notes is None else notes
    df = _ensure_runs(df)
    ident = df[df["analyzer"] == "identifiability"]
    r2 = _last_step(ident[(ident["metric"] == "r2") & (ident["index"] != "")])
    if r2.empty:
        notes.append("r2_per_latent not drawn: the tables have no per-latent identifiability `r2` rows "
                     "(analyze an .h5 store with ground-truth latents with the identifiability analyzer)")
        return []
    r2 = r2.assign(_group=r2["latent_group"].fillna("").astype(str) if "latent_group" in r2.columns else "")
    at = set(zip(r2[RUN], r2["source"], r2["step"].astype(object)))
    means = ident[ident["metric"].isin(["r2_content_mean", "r2_style_mean", "r2_mean"])]
    means = means[np.array([k in at for k in zip(means[RUN], means["source"], means["step"].astype(object))], dtype=bool)]

    # one colour per latent, the same in every panel; the group (of the row: tables may differ) sets dash and marker
    latents = list(dict.fromkeys(r2["index"]))
    named = r2[r2["_group"] != ""].groupby("index")["_group"].agg(lambda g: g.iloc[0] if g.nunique() == 1 else "")
    groups = {lat: named.get(lat, "") for lat in latents}
    palette = [f"C{i}" for i in range(10)] if len(latents) <= 10 else [_plt().get_cmap("tab20")(i) for i in range(20)]
    color = {lat: palette[i % len(palette)] for i, lat in enumerate(latents)}
    group_style = {"content": {"ls": "-", "marker": "o"}, "style": {"ls": "--", "marker": "s"}}
    neutral = {"ls": "-", "marker": "o"}
    mean_style = {"r2_content_mean": ("content mean", "-"), "r2_style_mean": ("style mean", "--"), "r2_mean": ("mean", "-")}

    split = r2["_group"].isin(["content", "style"])
    runs = list(dict.fromkeys(r2[RUN]))
    fig, axes = _grid(len(runs))
    for ax, run in zip(axes, runs):
        g = r2[r2[RUN] == run]
        layers = list(dict.fromkeys(g["layer"]))
        x = np.arange(len(layers))
        for lat, t in g.groupby("index", sort=False):
            s = t.set_index("layer").reindex(layers)["value"].to_numpy(dtype=float)
            ax.plot(x, s, lw=1.0, ms=3.5, alpha=0.85, color=color[lat], **group_style.get(t["_group"].iloc[0], neutral))
        m = means[means[RUN] == run]
        values = list(g["value"])
        for metric, (_, ls) in mean_style.items():
            s = m[m["metric"] == metric].set_index("layer").reindex(layers)["value"].to_numpy(dtype=float)
            if np.isfinite(s).any():
                ax.plot(x, s, lw=2.8, color="black", ls=ls, marker="none")
                values += list(s[np.isfinite(s)])
        lo = float(np.nanmin(values))
        ax.set_ylim(max(lo - 0.05, R2_FLOOR - 0.05), 1.05)
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("held-out R²" + (f" (clipped at {R2_FLOOR:g})" if lo < R2_FLOOR else ""))
        ax.grid(alpha=0.3)
        unmarked = "" if split[g.index].any() else "latents not marked content/style"
        ax.set_title(" · ".join(t for t in (g[LABEL].iloc[0], _step_text(g), unmarked) if t), fontsize=9)

    order = sorted(latents, key=lambda lat: {"content": 0, "style": 1}.get(groups[lat], 2))
    entries = [(f"{lat} ({groups[lat]})" if groups[lat] else lat, {"color": color[lat], **group_style.get(groups[lat], neutral)})
               for lat in order]
    present = set(means["metric"])
    entries += [(label, {"color": "black", "ls": ls, "lw": 2.8}) for metric, (label, ls) in mean_style.items() if metric in present]
    _legend(fig, entries, title="latent")
    if split.all():
        how = "content latents solid, style latents dashed; thick black: group means"
    elif split.any():
        how = "content latents solid, style latents dashed where the table marks them; thick black: group means"
    else:
        how = "the table carries no content/style split (its latent_group column is missing)"
    fig.suptitle(f"Held-out R² of each ground-truth latent across layers\n{how}", fontsize=11)
    return _save(fig, out, "r2_per_latent", formats)


def _key_label(parts: Sequence[str]) -> str:
    return " · ".join(p for p in parts if p)


def plot_profiles(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``profile_<analyzer>``: every scalar metric across layers, a line per run (at its last step) and view."""
    notes = [] if notes is None else notes
    df = _ensure_runs(df)
    rows = scalar_rows(_last_step(df, by=[RUN, "analyzer"]))
    paths: List[Path] = []
    for analyzer, g in rows.groupby("analyzer", sort=False):
        layers = depth_order(g)
        if len(layers) < 2:
            notes.append(f"profile_{analyzer} not drawn: {analyzer} reports on one layer only ({layers[0]}), so there "
                         "is no profile across layers (its values are in the table, and in trajectory_"
                         f"{analyzer} for runs with several steps)")
            continue
        series = list(dict.fromkeys(g["series"]))
        views = list(dict.fromkeys(g["view"]))
        forms = list(dict.fromkeys(g["form"]))
        keys = list(dict.fromkeys(zip(g[RUN], g["view"])))
        run_names = {}
        for run, t in g.groupby(RUN, sort=False):
            step = _step_text(t)
            run_names[run] = f"{t[LABEL].iloc[0]} ({step})" if step else t[LABEL].iloc[0]
        style, entries, title = _line_styles(keys, (run_names, {v: f"view {v}" for v in views}), ("run", "view"), forms)
        fig, axes = _grid(len(series))
        # lines of equal values (two views of a symmetric metric) are dodged sideways so none hides another
        dodge = {k: (i - (len(keys) - 1) / 2) * min(0.08, 0.3 / max(1, len(keys))) for i, k in enumerate(keys)}
        for ax, name in zip(axes, series):
            s = g[g["series"] == name]
            for (run, view, form), t in s.groupby([RUN, "view", "form"], sort=False):
                t = t.set_index("layer").reindex(layers)
                has = t["value"].notna().to_numpy()  # a run without some layer: join the layers it has
                st = dict(style[(run, view)])
                if len(forms) > 1:
                    st["ls"] = FORM_STYLE.get(form, ":")
                x = np.arange(len(layers)) + dodge.get((run, view), 0.0)
                _line(ax, x[has], t["value"].to_numpy(dtype=float)[has], t["lo"].to_numpy(dtype=float)[has],
                      t["hi"].to_numpy(dtype=float)[has], **st)
            ax.set_xticks(np.arange(len(layers)), layers, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel(name, fontsize=8)
            ax.grid(alpha=0.3)
        _legend(fig, entries + _form_entries(forms), title=title or None)
        single = f" — {run_names[keys[0][0]]}" if len(run_names) == 1 else ""
        single += f", view {views[0]}" if len(views) == 1 else ""
        band = _band_text(g)
        fig.suptitle(f"{analyzer}: metrics across layers{single}{band}")
        paths += _save(fig, out, f"profile_{analyzer}", formats)
    return paths


def plot_trajectories(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``trajectory_<analyzer>``: every scalar metric over training steps, a line per run and layer."""
    notes = [] if notes is None else notes
    df = _ensure_runs(df)
    stepped = df[df["step"].notna()]
    n_steps = stepped.groupby(RUN)["step"].nunique()
    multi = set(n_steps[n_steps >= 2].index)
    if not multi:
        notes.append("trajectory figures not drawn: no run has two or more steps (a run is a folder of checkpoints "
                     "analyzed together; an .h5 store is a run of its own)")
        return []
    rows = scalar_rows(stepped[stepped[RUN].isin(multi)])
    paths: List[Path] = []
    for analyzer, g in rows.groupby("analyzer", sort=False):
        # one view per metric: the reference view (clean when there), named in the panel title
        ref = {name: _reference_view(s["view"]) for name, s in g.groupby("series", sort=False)}
        several_views = g.groupby("series")["view"].nunique().max() > 1
        g = g[np.array([ref[s] == v for s, v in zip(g["series"], g["view"])], dtype=bool)]
        if g.groupby(RUN)["step"].nunique().max() < 2:
            notes.append(f"trajectory_{analyzer} not drawn: no run has {analyzer} rows at two or more steps")
            continue
        series = list(ref)
        runs = list(dict.fromkeys(g[RUN]))
        forms = list(dict.fromkeys(g["form"]))
        keys = list(dict.fromkeys(zip(g[RUN], g["layer"])))
        labels = dict(zip(g[RUN], g[LABEL]))
        layers = list(dict.fromkeys(g["layer"]))
        style, entries, title = _line_styles(keys, (labels, {v: v for v in layers}), ("run", "layer"), forms)
        fig, axes = _grid(len(series))
        for ax, name in zip(axes, series):
            s = g[g["series"] == name]
            for (run, layer, form), t in s.groupby([RUN, "layer", "form"], sort=False):
                t = t.sort_values("step")
                st = dict(style[(run, layer)])
                if len(forms) > 1:
                    st["ls"] = FORM_STYLE.get(form, ":")
                _line(ax, t["step"].to_numpy(dtype=float), t["value"].to_numpy(dtype=float),
                      t["lo"].to_numpy(dtype=float), t["hi"].to_numpy(dtype=float), **st)
            ax.set_xlabel("training step")
            ax.set_ylabel(name, fontsize=8)
            ax.grid(alpha=0.3)
            if several_views:
                ax.set_title(f"view {ref[name]}", fontsize=8)
        _legend(fig, entries + _form_entries(forms), title=title or None)
        who = f" — {labels[runs[0]]}" if len(runs) == 1 else ""
        who += f", layer {layers[0]}" if len(layers) == 1 else ""
        band = _band_text(g)
        fig.suptitle(f"{analyzer}: metrics over training{who}{band}")
        paths += _save(fig, out, f"trajectory_{analyzer}", formats)
    return paths


# ---------------------------------------------------------------------------------------------------- output


#: Colour range of each similarity measure (the debiased CKA can dip below 0; Procrustes is a distance in [0, 2]).
SIMILARITY_RANGE = {"procrustes": (0.0, 2.0)}


def plot_similarity(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``similarity_<measure>`` heat maps and ``settling_<measure>`` lines from the rows of layer pairs."""
    notes = [] if notes is None else notes
    df = _ensure_runs(df)
    pairs = df[pair_mask(df)]
    if pairs.empty:
        notes.append("similarity figures not drawn: the tables have no rows of layer pairs (analyze with the "
                     "similarity analyzer: every pair of layers of a source, --compare, or a run directory)")
        return []
    pairs = pairs.assign(source_b=pairs["source_b"].fillna("").astype(str) if "source_b" in pairs.columns else "")
    paths: List[Path] = []
    within = _last_step(pairs[pairs["source_b"] == ""])
    across = pairs[pairs["source_b"] != ""]
    settle = across[across["layer"] == across["layer_b"]]
    # a comparison with another source is a panel unless it is a run's checkpoints against its last one
    settled_runs = {r for r, g in settle.groupby(RUN) if g["step"].nunique() >= 2}
    cross = across[~across[RUN].isin(settled_runs)]
    cross = cross[cross["source"] == cross.groupby([RUN, "source_b"])["source"].transform("first")]
    labels = short_labels(sorted(set(cross["source_b"]))) if len(cross) else {}
    for measure in dict.fromkeys(pairs["metric"]):
        panels: List[Tuple[str, List[str], List[str], Dict[Tuple[str, str], float]]] = []
        diag = 0.0 if measure == "procrustes" else 1.0
        for run, g in within[within["metric"] == measure].groupby(RUN, sort=False):
            layers = list(dict.fromkeys(list(g["layer"]) + list(g["layer_b"])))  # the pairs' order: i < j
            vals = {(a, b): v for a, b, v in zip(g["layer"], g["layer_b"], g["value"])}
            vals.update({(b, a): v for (a, b), v in list(vals.items())})
            vals.update({(l, l): diag for l in layers})
            title = " · ".join(t for t in (g[LABEL].iloc[0], _step_text(g)) if t)
            panels.append((title, layers, layers, vals))
        for (run, other), g in cross[cross["metric"] == measure].groupby([RUN, "source_b"], sort=False):
            rows_l = list(dict.fromkeys(g["layer"]))
            cols_l = list(dict.fromkeys(g["layer_b"]))
            vals = {(a, b): v for a, b, v in zip(g["layer"], g["layer_b"], g["value"])}
            panels.append((f"{g[LABEL].iloc[0]} ~ {labels.get(other, other)}", rows_l, cols_l, vals))
        if panels:
            paths += _heat_maps(measure, panels, out, formats)
    for measure in dict.fromkeys(settle["metric"]):
        g = settle[(settle["metric"] == measure) & settle[RUN].isin(settled_runs)]
        if g.empty:
            continue
        runs = list(dict.fromkeys(g[RUN]))
        fig, axes = _grid(len(runs))
        for ax, run in zip(axes, runs):
            r = g[g[RUN] == run]
            for i, layer in enumerate(depth_order(r)):
                t = r[r["layer"] == layer].sort_values("step")
                ax.plot(t["step"].to_numpy(dtype=float), t["value"].to_numpy(dtype=float), ms=3, lw=1.2,
                        label=layer, **_style(i))
            ax.set_xlabel("step")
            ax.set_ylabel(f"{measure} with the last checkpoint")
            ax.set_title(str(r[LABEL].iloc[0]), fontsize=9)
            ax.grid(alpha=0.3)
        _legend(fig, [(l, _style(i)) for i, l in enumerate(depth_order(g))], title="layer")
        fig.suptitle(f"{measure}: each layer against\nthe same layer of the run's last checkpoint", fontsize=10)
        paths += _save(fig, out, f"settling_{measure}", formats)
    return paths


def _heat_maps(measure: str, panels: Sequence[Tuple[str, List[str], List[str], Dict[Tuple[str, str], float]]],
               out: Path, formats: Sequence[str]) -> List[Path]:
    """One figure of heat maps of ``measure``, a panel per (title, row layers, column layers, values)."""
    plt = _plt()
    lo, hi = SIMILARITY_RANGE.get(measure, (0.0, 1.0))
    cols = min(2, len(panels))
    nrows = math.ceil(len(panels) / cols)
    size = max(max(len(r), len(c)) for _, r, c, _ in panels)
    side = min(9.0, 2.2 + 0.45 * size)
    fig, axes = plt.subplots(nrows, cols, figsize=(side * cols + 1.2, side * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    image = None
    for ax, (title, rows_l, cols_l, vals) in zip(axes.flat, panels):
        mat = np.array([[vals.get((a, b), np.nan) for b in cols_l] for a in rows_l], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=lo, vmax=hi, aspect="equal")
        ax.set_xticks(range(len(cols_l)), cols_l, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows_l)), rows_l, fontsize=7)
        if len(rows_l) * len(cols_l) <= 144:
            for i in range(len(rows_l)):
                for j in range(len(cols_l)):
                    if np.isfinite(mat[i, j]):
                        dark = (mat[i, j] - lo) / (hi - lo) < 0.6
                        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if dark else "black")
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=list(axes.flat[:len(panels)]), shrink=0.8, label=measure)
    fig.suptitle(f"{measure} between layers" + (" (a distance: 0 = same up to rotation and scale)"
                                                if measure == "procrustes" else ""))
    return _save(fig, out, f"similarity_{measure}", formats)


def plot_predictors(df: pd.DataFrame, out: Path, formats: Sequence[str], notes: Optional[List[str]] = None) -> List[Path]:
    """``predicts_accuracy``: the rank correlation of every label-free metric with accuracy, as a table (CSV) and
    a heat map of Spearman's ρ per target."""
    from .correlate import correlate
    from .table import escape_csv

    notes = [] if notes is None else notes
    try:
        corr = correlate(df.drop(columns=[c for c in (TABLE, RUN, LABEL) if c in df.columns]))
    except ReprscopeError as exc:
        notes.append(f"predicts_accuracy not drawn: {exc}")
        return []
    if corr.empty:
        notes.append("predicts_accuracy not drawn: no label-free metric and accuracy share three or more points")
        return []
    paths = [out / "predicts_accuracy.csv"]
    escape_csv(corr).to_csv(paths[0], index=False)
    targets = list(dict.fromkeys(corr["target"]))
    plt = _plt()
    layers = list(dict.fromkeys(corr["layer"]))
    preds = list(dict.fromkeys(corr["predictor"]))
    cols = min(2, len(targets))
    nrows = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=((2.8 + 0.6 * len(layers)) * cols + 2.5, (1.2 + 0.28 * len(preds)) * nrows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(targets):]:
        ax.set_visible(False)
    image = None
    for ax, target in zip(axes.flat, targets):
        g = corr[corr["target"] == target]
        rho = {(p, l): v for p, l, v in zip(g["predictor"], g["layer"], g["spearman"])}
        pval = {(p, l): v for p, l, v in zip(g["predictor"], g["layer"], g["spearman_p"])}
        mat = np.array([[rho.get((p, l), np.nan) for l in layers] for p in preds], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for i, p in enumerate(preds):
            for j, l in enumerate(layers):
                if np.isfinite(mat[i, j]):
                    star = "*" if pval[(p, l)] < 0.05 else ""
                    ax.text(j, i, f"{mat[i, j]:.2f}{star}", ha="center", va="center", fontsize=6,
                            color="white" if abs(mat[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(preds)), preds, fontsize=6)
        n_pts = int(g["n"].max())
        ax.set_title(f"{target}  (n = {n_pts} checkpoints/sources)", fontsize=9)
    fig.colorbar(image, ax=list(axes.flat[:len(targets)]), shrink=0.8, label="Spearman ρ")
    fig.suptitle("Which label-free metric ranks the checkpoints as the accuracy does (* p < 0.05)")
    return paths + _save(fig, out, "predicts_accuracy", formats)


def _staging_parent(out: Path) -> Path:
    """The folder the temporary folder goes in: ``out``'s parent, or its nearest existing ancestor."""
    if out.exists() and not out.is_dir():
        raise ReprscopeError(f"out must be a folder, but '{out}' is a file; give a folder name (it is created if missing)", arg="out")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ReprscopeError(f"out '{out}' cannot be created: '{parent}' is a file, not a folder", arg="out")
    return parent


def make_report(tables: Sequence[str], out: Path | str, formats: Sequence[str] = ("png", "pdf"),
                echo: Optional[Callable[[str], None]] = print) -> Report:
    """Write every figure the tables support into ``out``.

    Args:
        tables: paths of tables written by ``reprscope analyze``.
        out: folder for the figures; created if missing; files already there are kept, ours replaced.
        formats: any of FORMATS.
        echo: called with one ``note: ...`` line per figure that was skipped and why (after the figures are in
            place); None to keep the notes on the result only.

    Returns:
        The paths written, with ``.notes`` (the skipped figures and why).

    Raises:
        ReprscopeError: an unknown format, a missing or unreadable table, ``out`` naming a file, or tables from
            which no figure can be drawn. Nothing is written then.
    """
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReprscopeError(f"unknown figure format '{bad[0]}'; use {', '.join(FORMATS)}")
    if not formats:
        raise ReprscopeError(f"give at least one figure format: {', '.join(FORMATS)}")
    if not tables:
        raise ReprscopeError("give at least one table written by `reprscope analyze`")
    resolved = [Path(t).resolve() for t in tables]
    twice = next((t for t, r in zip(tables, resolved) if resolved.count(r) > 1), None)
    if twice is not None:
        raise ReprscopeError(f"table '{twice}' is given twice; give each table once")
    out = Path(out)
    parent = _staging_parent(out)
    df = pd.concat([read_table(t).assign(**{TABLE: str(t)}) for t in tables], ignore_index=True)
    if df.empty:
        raise ReprscopeError("the tables have no rows; nothing to plot")
    df = assign_runs(df)

    plt = _plt()
    open_before = set(plt.get_fignums())
    staging = None
    # beside out; inside an existing out when its parent is read-only (the folder is removed either way)
    for where in (parent, out) if out.is_dir() else (parent,):
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name or 'report'}.", suffix=".partial", dir=where))
            break
        except OSError as exc:
            error = exc
    if staging is None:
        raise ReprscopeError(f"cannot write figures into '{out}': {error.strerror or error}")
    notes: List[str] = []
    try:
        staged: List[Path] = []
        try:
            for fn in (plot_spectra, plot_r2, plot_profiles, plot_trajectories, plot_similarity, plot_predictors):
                staged += fn(df, staging, formats, notes)
        except OSError as exc:  # a full or read-only disk while drawing
            raise ReprscopeError(f"cannot write figures into '{out}': {exc.strerror or exc}; nothing was written",
                                 arg="out") from None
        if not staged:
            raise ReprscopeError("no figure can be drawn from these tables: " + "; ".join(notes))
        clash = [p.name for p in staged if (out / p.name).is_dir()]
        if clash:
            raise ReprscopeError(f"'{out / clash[0]}' is a folder; remove it or choose another out folder", arg="out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = Report()
            for p in staged:
                os.replace(p, out / p.name)
                paths.append(out / p.name)
        except OSError as exc:
            raise ReprscopeError(f"cannot write figures into '{out}': {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for num in set(plt.get_fignums()) - open_before:
            plt.close(num)
    paths.notes = notes
    if echo is not None:
        for note in notes:
            echo(f"note: {note}")
    return paths
