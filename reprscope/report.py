"""``reprscope report``: figures from tidy tables, one figure per question.

* ``spectrum``: log singular values per layer (the encoder log-spectrum of paper 002 Fig. 4, the spectra of
  paper 001 Fig. 1), for the last step of each source;
* ``r2_per_latent``: held-out R² of every latent across layers, content solid and style dashed (paper 001);
* ``profile_<analyzer>``: every scalar metric of an analyzer across layers (how it changes with depth);
* ``trajectory_<analyzer>``: every scalar metric over training steps, one line per layer (tables of run dirs).

In both, a metric ``M_std`` reported next to ``M`` (matrix_information's spread over batches) is drawn as a
band M ± M_std on M's panel rather than as a panel of its own, the two matrix forms of matrix_information
share a panel (solid ``gram``, dashed ``cov``), and bookkeeping counts (``n_batches``) are left out.

Each figure is written as PNG and/or PDF.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pandas as pd

from .errors import ReprscopeError
from .table import read_table

FORMATS = ("png", "pdf")
MAX_INDEX_SERIES = 4  # vector metrics with at most this many entries (k of k-NN, fine/coarse) count as scalars
BOOKKEEPING = ("n_batches",)  # counts that describe the computation, not the representation
FORM_STYLE = {"": "-", "gram": "-", "cov": "--"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_name(row: pd.Series) -> str:
    name = str(row["metric"])
    if row["index"] != "":
        name += f"[{row['index']}]"
    return name


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One number per (source, step, layer, analyzer, series, form) — scalars and short vectors, first view —
    with the spread of a metric ``M`` that has an ``M_std`` companion in column ``err`` (NaN elsewhere).

    Columns: those of the table plus ``series`` (metric[index]), ``form`` ("" when the table has none) and
    ``err``; the ``M_std`` rows themselves and the BOOKKEEPING metrics are not returned.
    """
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = {k for k, v in counts.items() if v <= MAX_INDEX_SERIES}
    keep = df[[(a, m) in short and m not in BOOKKEEPING for a, m in zip(df["analyzer"], df["metric"])]].copy()
    keep["form"] = keep["form"].fillna("").astype(str) if "form" in keep.columns else ""
    keep["series"] = [_series_name(r) for _, r in keep.iterrows()] if len(keep) else []
    keys = ["source", "step", "layer", "analyzer", "series", "form"]
    first = keep.groupby(keys, dropna=False, sort=False).first().reset_index()
    metrics = set(zip(first["analyzer"], first["metric"]))
    is_std = np.array([m.endswith("_std") and i == "" and (a, m[:-4]) in metrics
                       for a, m, i in zip(first["analyzer"], first["metric"], first["index"])], dtype=bool)
    spread = first[is_std].assign(series=lambda t: t["metric"].str[:-4])[keys + ["value"]].rename(columns={"value": "err"})
    return first[~is_std].merge(spread, on=keys, how="left")


def _save(fig, out: Path, stem: str, formats: Sequence[str]) -> List[Path]:
    paths = []
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def _last_step(df: pd.DataFrame) -> pd.DataFrame:
    if df["step"].notna().any():
        last = df.groupby("source")["step"].transform("max")
        return df[(df["step"] == last) | df["step"].isna()]
    return df


def _grid(n: int):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_spectra(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> List[Path]:
    sv = _last_step(df[(df["analyzer"] == "spectrum") & (df["metric"] == "sv")])
    if sv.empty:
        return []
    sources = list(dict.fromkeys(sv["source"]))
    fig, axes = _grid(len(sources))
    cmap = _plt().get_cmap("viridis")
    for ax, src in zip(axes, sources):
        g = sv[sv["source"] == src]
        g = g[g["view"] == g["view"].iloc[0]]
        layers = list(dict.fromkeys(g["layer"]))
        for i, layer in enumerate(layers):
            s = g[g["layer"] == layer]
            vals = s["value"].to_numpy()
            pos = vals > 0
            ax.plot(s["index"].astype(int).to_numpy()[pos] + 1, vals[pos], color=cmap(i / max(1, len(layers) - 1)), label=layer)
        ax.set_yscale("log")
        ax.set_xlabel("rank position k")
        ax.set_ylabel("singular value σ_k (centred)")
        ax.set_title(f"{Path(src).name} ({g['view'].iloc[0]})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Singular-value spectra per layer")
    return _save(fig, out, "spectrum", formats)


def plot_r2(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> List[Path]:
    r2 = _last_step(df[(df["analyzer"] == "identifiability") & (df["metric"] == "r2")])
    if r2.empty:
        return []
    means = _last_step(df[(df["analyzer"] == "identifiability") & df["metric"].isin(["r2_content_mean", "r2_style_mean"])])
    sources = list(dict.fromkeys(r2["source"]))
    fig, axes = _grid(len(sources))
    for ax, src in zip(axes, sources):
        g = r2[r2["source"] == src]
        layers = list(dict.fromkeys(g["layer"]))
        x = np.arange(len(layers))
        for latent in dict.fromkeys(g["index"]):
            s = g[g["index"] == latent].set_index("layer").reindex(layers)["value"]
            content = str(latent).startswith("c")
            ax.plot(x, s.to_numpy(), ls="-" if content else "--", lw=0.8, alpha=0.5, color="tab:blue" if content else "tab:orange")
        m = means[means["source"] == src]
        for metric, color, label in (("r2_content_mean", "tab:blue", "content (mean)"), ("r2_style_mean", "tab:orange", "style (mean)")):
            s = m[m["metric"] == metric].set_index("layer").reindex(layers)["value"]
            if s.notna().any():
                ax.plot(x, s.to_numpy(), lw=2.5, color=color, ls="-" if "content" in metric else "--", label=label)
        ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(min(-0.05, float(np.nanmin(g["value"])) - 0.05), 1.05)
        ax.set_ylabel("held-out R² (linear readout)")
        ax.set_title(Path(src).name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("R² of each ground-truth latent across layers (content solid, style dashed)")
    return _save(fig, out, "r2_per_latent", formats)


def _panel_title(name: str, rows: pd.DataFrame, analyzer_rows: pd.DataFrame) -> str:
    """The series name, with the view it was read from when the analyzer reports several (per view and pair)."""
    if analyzer_rows["view"].nunique() > 1:
        return f"{name} ({rows['view'].iloc[0]})"
    return name


def _line(ax, x, y, err, **kw) -> None:
    """A line with markers, and a band y ± err where the spread is known."""
    line, = ax.plot(x, y, marker="o", ms=3, **kw)
    if err is not None and np.isfinite(err).any():
        ax.fill_between(x, y - err, y + err, color=line.get_color(), alpha=0.2, lw=0)


def plot_profiles(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> List[Path]:
    rows = scalar_rows(_last_step(df))
    paths: List[Path] = []
    for analyzer, g in rows.groupby("analyzer", sort=False):
        series = list(dict.fromkeys(g["series"]))
        fig, axes = _grid(len(series))
        layers = list(dict.fromkeys(g["layer"]))
        x = np.arange(len(layers))
        sources = list(dict.fromkeys(g["source"]))
        colors = {src: f"C{i % 10}" for i, src in enumerate(sources)}
        for ax, name in zip(axes, series):
            s = g[g["series"] == name]
            for (src, form), t in s.groupby(["source", "form"], sort=False):
                t = t.set_index("layer").reindex(layers)
                label = " · ".join(v for v in (Path(src).name if len(sources) > 1 else "", form) if v)
                color = colors[src] if len(sources) > 1 else ("C1" if form == "cov" else "C0")
                _line(ax, x, t["value"].to_numpy(dtype=float), t["err"].to_numpy(dtype=float),
                      color=color, ls=FORM_STYLE.get(form, ":"), label=label or None)
            ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
            ax.set_title(_panel_title(name, s, g), fontsize=9)
            if ax.get_legend_handles_labels()[1] and len(ax.get_lines()) > 1:
                ax.legend(fontsize=6)
        band = " (bands: ± std over batches)" if g["err"].notna().any() else ""
        fig.suptitle(f"{analyzer}: metrics across layers{band}")
        paths += _save(fig, out, f"profile_{analyzer}", formats)
    return paths


def plot_trajectories(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> List[Path]:
    if df["step"].dropna().nunique() < 2:
        return []
    rows = scalar_rows(df[df["step"].notna()])
    runs = rows["source"].map(lambda s: str(Path(s).parent))
    if runs.nunique() > 1:  # several runs: one line per run and layer
        rows["layer"] = [f"{Path(r).name}/{l}" for r, l in zip(runs, rows["layer"])]
    paths: List[Path] = []
    cmap = _plt().get_cmap("viridis")
    for analyzer, g in rows.groupby("analyzer", sort=False):
        series = list(dict.fromkeys(g["series"]))
        fig, axes = _grid(len(series))
        layers = list(dict.fromkeys(g["layer"]))
        for ax, name in zip(axes, series):
            s = g[g["series"] == name]
            for i, layer in enumerate(layers):
                for form, t in s[s["layer"] == layer].groupby("form", sort=False):
                    t = t.sort_values("step")
                    _line(ax, t["step"].to_numpy(dtype=float), t["value"].to_numpy(dtype=float),
                          t["err"].to_numpy(dtype=float), color=cmap(i / max(1, len(layers) - 1)),
                          ls=FORM_STYLE.get(form, ":"), label=layer if form in ("", "gram") else None)
            ax.set_xlabel("training step")
            ax.set_title(_panel_title(name, s, g), fontsize=9)
        axes[0].legend(fontsize=6)
        forms = " (solid: gram form, dashed: covariance form)" if set(g["form"]) >= {"gram", "cov"} else ""
        fig.suptitle(f"{analyzer}: metrics over training{forms}")
        paths += _save(fig, out, f"trajectory_{analyzer}", formats)
    return paths


def make_report(tables: Sequence[str], out: Path | str, formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """Write every figure the tables support into ``out``; returns the paths written."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReprscopeError(f"unknown figure format '{bad[0]}'; use {', '.join(FORMATS)}")
    if not tables:
        raise ReprscopeError("give at least one table written by `reprscope analyze`")
    df = pd.concat([read_table(t) for t in tables], ignore_index=True)
    if df.empty:
        raise ReprscopeError("the tables have no rows; nothing to plot")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    for fn in (plot_spectra, plot_r2, plot_profiles, plot_trajectories):
        paths += fn(df, out, formats)
    return paths
