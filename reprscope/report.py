"""``reprscope report``: figures from tidy tables, one figure per question.

* ``spectrum``: log singular values per layer (the encoder log-spectrum of paper 002 Fig. 4, the spectra of
  paper 001 Fig. 1), for the last step of each source;
* ``r2_per_latent``: held-out R² of every latent across layers, content solid and style dashed (paper 001);
* ``profile_<analyzer>``: every scalar metric of an analyzer across layers (how it changes with depth);
* ``trajectory_<analyzer>``: every scalar metric over training steps, one line per layer (tables of run dirs).

Each figure is written as PNG and/or PDF.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd

from .errors import ReprscopeError
from .table import read_table

FORMATS = ("png", "pdf")
MAX_INDEX_SERIES = 4  # vector metrics with at most this many entries (k of k-NN, fine/coarse) count as scalars


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_name(row: pd.Series, extra: Sequence[str]) -> str:
    name = str(row["metric"])
    if row["index"] != "":
        name += f"[{row['index']}]"
    for c in extra:
        v = row.get(c)
        if isinstance(v, str) and v:
            name += f" ({c}={v})"
    return name


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are one number per (source, step, layer, metric): scalars and short vectors, first view."""
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = {k for k, v in counts.items() if v <= MAX_INDEX_SERIES}
    keep = df[[(a, m) in short for a, m in zip(df["analyzer"], df["metric"])]].copy()
    extra = [c for c in ("form",) if c in keep.columns]
    keep["series"] = [_series_name(r, extra) for _, r in keep.iterrows()] if len(keep) else []
    return keep.groupby(["source", "step", "layer", "analyzer", "series"], dropna=False, sort=False).first().reset_index()


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
    fig, axes = _plt().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
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


def plot_profiles(df: pd.DataFrame, out: Path, formats: Sequence[str]) -> List[Path]:
    rows = scalar_rows(_last_step(df))
    paths: List[Path] = []
    for analyzer, g in rows.groupby("analyzer", sort=False):
        series = list(dict.fromkeys(g["series"]))
        fig, axes = _grid(len(series))
        layers = list(dict.fromkeys(g["layer"]))
        x = np.arange(len(layers))
        for ax, name in zip(axes, series):
            s = g[g["series"] == name]
            for src in dict.fromkeys(s["source"]):
                v = s[s["source"] == src].set_index("layer").reindex(layers)["value"]
                ax.plot(x, v.to_numpy(), marker="o", ms=3, label=Path(src).name)
            ax.set_xticks(x, layers, rotation=45, ha="right", fontsize=7)
            ax.set_title(name, fontsize=9)
        if len(set(g["source"])) > 1:
            axes[0].legend(fontsize=7)
        fig.suptitle(f"{analyzer}: metrics across layers")
        fig.tight_layout()
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
                t = s[s["layer"] == layer].sort_values("step")
                if len(t):
                    ax.plot(t["step"].astype(float), t["value"], marker=".", color=cmap(i / max(1, len(layers) - 1)), label=layer)
            ax.set_xlabel("training step")
            ax.set_title(name, fontsize=9)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{analyzer}: metrics over training")
        fig.tight_layout()
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
