"""Which label-free metric predicts accuracy: rank correlations across checkpoints or models.

The label-free metrics (RankMe, effective rank, α-ReQ, LiDAR, matrix entropies, center norm …) are used to pick
checkpoints and hyper-parameters without labels (Garrido et al. 2023, arXiv:2210.02885; Agrawal et al. 2022;
Thilak et al. 2023, arXiv:2312.04000). :func:`correlate` measures how well each one ranks the sources of a table
— the checkpoints of a run directory, or several models — as the accuracy does: Spearman's ρ and Kendall's τ-b
between a metric on a layer and k-NN / linear-probe accuracy on the same layer (or on one chosen layer), with
their two-sided p-values (scipy: Spearman's from the t distribution with n − 2 degrees of freedom, Kendall's exact
for small samples without ties, else the normal approximation).

Points are the (source, step) pairs of the table; a metric reported for several views is read on one view (the
reference view ``clean`` when there, else ``all``, else the first); matrix_information's two forms are two
predictors (``… (gram)``, ``… (cov)``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .errors import ReprscopeError

#: Analyzers whose numbers need labels or latents (they are targets or readouts, not label-free predictors),
#: and those that do not describe one layer.
NOT_LABEL_FREE = ("knn", "linear_probe", "identifiability", "similarity")

#: Default targets: k-NN and linear-probe top-1.
DEFAULT_TARGETS = ("knn/top1", "linear_probe/top1")

#: Bookkeeping metrics that describe the computation, not the representation.
_BOOKKEEPING = {"n_batches", "alpha_req_fit_start", "alpha_req_fit_end", "alpha_req_r2", "collapsed_dims"}

COLUMNS = ["layer", "target_layer", "predictor", "target", "n", "spearman", "spearman_p", "kendall", "kendall_p"]


def _view_choice(views: Sequence[str]) -> str:
    vs = list(dict.fromkeys(views))
    for v in ("clean", "all"):
        if v in vs:
            return v
    return sorted(vs)[0]


def series(table: pd.DataFrame) -> pd.DataFrame:
    """One value per (layer, series, source, step): scalar metrics (and the entries of short vector metrics, as
    ``metric[index]``) on one view each; columns ``layer, series, analyzer, point, value``."""
    df = table
    if "layer_b" in df.columns:
        df = df[df["layer_b"].fillna("").astype(str) == ""]
    if df.empty:
        return pd.DataFrame(columns=["layer", "series", "analyzer", "point", "value"])
    counts = df.groupby(["analyzer", "metric"])["index"].nunique()
    short = {k for k, v in counts.items() if v <= 4}
    keep = df[[(a, m) in short and m not in _BOOKKEEPING and not m.endswith("_std")
               for a, m in zip(df["analyzer"], df["metric"])]].copy()
    form = keep["form"].fillna("").astype(str) if "form" in keep.columns else pd.Series("", index=keep.index)
    index = keep["index"].astype(str)
    keep["series"] = (keep["analyzer"] + "/" + keep["metric"] + np.where(index != "", "[" + index + "]", "")
                      + np.where(form != "", " (" + form + ")", ""))
    step = keep["step"].astype("Int64").astype(str).replace("<NA>", "")
    keep["point"] = keep["source"].astype(str) + "@" + step
    chosen = keep.groupby(["layer", "series"])["view"].agg(_view_choice).rename("chosen")
    keep = keep.join(chosen, on=["layer", "series"])
    keep = keep[keep["view"] == keep["chosen"]]
    return (keep.groupby(["layer", "series", "analyzer", "point"], sort=False)["value"].first().reset_index())


def _rank_correlations(x: np.ndarray, y: np.ndarray) -> Tuple[float, float, float, float]:
    from scipy import stats

    rho, p_rho = stats.spearmanr(x, y)
    tau, p_tau = stats.kendalltau(x, y)
    return float(rho), float(p_rho), float(tau), float(p_tau)


def correlate(table: pd.DataFrame, targets: Sequence[str] = DEFAULT_TARGETS, *, target_layer: Optional[str] = None,
              min_points: int = 3) -> pd.DataFrame:
    """Rank correlation of every label-free metric with every target accuracy across the table's sources.

    Args:
        table: a tidy table of several checkpoints (a run directory) or sources, with ``knn`` and/or
            ``linear_probe`` rows.
        targets: ``analyzer/metric`` (every entry of it: ``knn/top1`` gives ``knn/top1[20]`` and
            ``knn/top1[200]``) or one entry ``knn/top1[20]``.
        target_layer: read the targets on this layer for every predictor layer (e.g. the encoder's accuracy
            against the projector's RankMe); default: the predictor's own layer.
        min_points: pairs with fewer common points are left out.

    Returns:
        One row per (layer, predictor, target) with ``n`` points, ``spearman``, ``spearman_p``, ``kendall``,
        ``kendall_p``; ``attrs["notes"]`` says what was left out. A predictor or target constant across the
        points has no rank correlation and is left out.
    """
    if min_points < 3:
        raise ReprscopeError(f"min_points must be at least 3 (a rank correlation of two points is ±1), got {min_points}",
                             arg="min_points")
    s = series(table)
    notes: List[str] = []
    want = [t.strip() for t in targets if t.strip()]
    is_target = np.array([any(x == t or (x.startswith(t + "[") and "[" not in t) for t in want) for x in s["series"]],
                         dtype=bool) if len(s) else np.zeros(0, dtype=bool)
    tgt = s[is_target]
    pred = s[~is_target & ~s["analyzer"].isin(NOT_LABEL_FREE)]
    if tgt.empty:
        raise ReprscopeError(f"the table has no rows of the targets {', '.join(want)} (analyze with knn and/or "
                             "linear_probe on labelled data)", arg="targets")
    if target_layer is not None and target_layer not in set(tgt["layer"]):
        raise ReprscopeError(f"target_layer '{target_layer}' has no target rows; layers with them: "
                             f"{', '.join(dict.fromkeys(tgt['layer']))}", arg="target_layer")
    if s["point"].nunique() < min_points:
        raise ReprscopeError(f"the table holds {s['point'].nunique()} sources/checkpoints; a rank correlation across "
                             f"them needs at least {min_points} (analyze a run directory or several sources)",
                             arg="min_points")
    by_layer: Dict[str, pd.DataFrame] = {l: g.pivot_table(index="point", columns="series", values="value", sort=False)
                                         for l, g in tgt.groupby("layer", sort=False)}
    rows = []
    skipped_constant = 0
    for (layer, name), g in pred.groupby(["layer", "series"], sort=False):
        tl = target_layer or layer
        if tl not in by_layer:
            continue
        x = g.set_index("point")["value"]
        for tname in by_layer[tl].columns:
            y = by_layer[tl][tname].dropna()
            common = x.index.intersection(y.index)
            if len(common) < min_points:
                continue
            xv, yv = x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)
            if np.ptp(xv) == 0 or np.ptp(yv) == 0:
                skipped_constant += 1
                continue
            rho, p_rho, tau, p_tau = _rank_correlations(xv, yv)
            rows.append({"layer": layer, "target_layer": tl, "predictor": name, "target": tname, "n": len(common),
                         "spearman": rho, "spearman_p": p_rho, "kendall": tau, "kendall_p": p_tau})
    if skipped_constant:
        notes.append(f"{skipped_constant} predictor/target pairs are constant across the points and have no rank "
                     "correlation")
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs["notes"] = notes
    return out
