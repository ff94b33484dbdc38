"""Which label-free metric predicts accuracy: rank correlations across checkpoints against hand computations
(average ranks, pair counts, an exact permutation p-value), and how the table's rows become points."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import reprscope
from reprscope.correlate import correlate
from reprscope.errors import ReprscopeError
from reprscope.table import make_table


def _table(pred, acc, extra=(), layer="encoder"):
    rows = []
    for s, (p, a) in enumerate(zip(pred, acc)):
        base = dict(source=f"run/ckpt-{s}.pt", step=s * 10, layer=layer)
        rows.append({**base, "view": "clean", "analyzer": "spectrum", "metric": "rankme", "index": "", "value": p})
        rows.append({**base, "view": "aug1", "analyzer": "spectrum", "metric": "rankme", "index": "", "value": -p})
        rows.append({**base, "view": "clean", "analyzer": "knn", "metric": "top1", "index": "20", "value": a})
        rows.append({**base, "view": "clean", "analyzer": "knn", "metric": "top1", "index": "200", "value": a * a})
        for r in extra:
            rows.append({**base, **r(s)})
    return make_table(rows)


def _avg_ranks(x):
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def _tau_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))


def test_spearman_and_kendall_equal_hand_computations():
    pred = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.6])
    acc = np.array([0.30, 0.10, 0.35, 0.20, 0.31, 0.80, 0.25])
    out = correlate(_table(pred, acc), targets=["knn/top1[20]"])
    assert len(out) == 1
    row = out.iloc[0]
    assert (row["predictor"], row["target"], row["n"], row["layer"]) == ("spectrum/rankme", "knn/top1[20]", 7, "encoder")
    rho = np.corrcoef(_avg_ranks(pred), _avg_ranks(acc))[0, 1]
    t = rho * np.sqrt((7 - 2) / (1 - rho ** 2))
    assert row["spearman"] == pytest.approx(rho, abs=1e-12)
    assert row["spearman_p"] == pytest.approx(2 * stats.t.sf(abs(t), 5), rel=1e-9)
    tau = _tau_b(pred, acc)
    assert row["kendall"] == pytest.approx(tau, abs=1e-12)
    # exact two-sided p-value without ties: the share of all 7! orderings at least as extreme
    extreme = sum(abs(_tau_b(pred, np.array(p))) >= abs(tau) - 1e-12 for p in itertools.permutations(acc))
    assert row["kendall_p"] == pytest.approx(extreme / 5040, rel=1e-9)


def test_ties_use_average_ranks_and_tau_b():
    pred = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0])
    acc = np.array([0.1, 0.3, 0.2, 0.2, 0.6, 0.5])
    row = correlate(_table(pred, acc), targets=["knn/top1[20]"]).iloc[0]
    assert row["spearman"] == pytest.approx(np.corrcoef(_avg_ranks(pred), _avg_ranks(acc))[0, 1], abs=1e-12)
    assert row["kendall"] == pytest.approx(_tau_b(pred, acc), abs=1e-12)


def test_points_views_targets_and_what_is_left_out():
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    acc = np.array([0.1, 0.2, 0.4, 0.3])
    const = lambda s: {"view": "all", "analyzer": "center", "metric": "center_norm", "index": "", "value": 1.0}  # noqa: E731
    latent = lambda s: {"view": "clean", "analyzer": "identifiability", "metric": "r2_content_mean", "index": "",  # noqa: E731
                        "value": float(s)}
    out = correlate(_table(pred, acc, extra=(const, latent)))
    # the clean view is read (the aug1 rows are its negatives); both entries of knn/top1 are targets;
    # identifiability is not label-free, a constant predictor has no rank correlation
    assert set(out["target"]) == {"knn/top1[20]", "knn/top1[200]"}
    assert set(out["predictor"]) == {"spectrum/rankme"}
    assert (out["spearman"] > 0).all()
    assert any("constant" in n for n in out.attrs["notes"])


def test_target_layer_and_refusals():
    t = pd.concat([_table([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]), _table([4, 3, 2, 1], [0.5, 0.5, 0.5, 0.5], layer="projector")])
    out = correlate(t, targets=["knn/top1[20]"], target_layer="encoder")
    proj = out[out["layer"] == "projector"].iloc[0]
    assert proj["target_layer"] == "encoder" and proj["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ReprscopeError, match="no rows of the targets"):
        correlate(t, targets=["linear_probe/top1"])
    with pytest.raises(ReprscopeError, match="at least 3"):
        correlate(_table([1, 2], [0.1, 0.2]))
    with pytest.raises(ReprscopeError, match="target_layer 'nope'"):
        correlate(t, target_layer="nope")


def test_report_writes_the_correlation_table_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    acc = np.linspace(0.2, 0.8, 6)
    path = tmp_path / "t.csv"
    _table(acc * 10 + rng.normal(size=6), acc).to_csv(path, index=False)
    paths = reprscope.report([path], tmp_path / "fig", formats=["png"])
    names = {p.name for p in paths}
    assert {"predicts_accuracy.csv", "predicts_accuracy.png"} <= names
    back = pd.read_csv(tmp_path / "fig" / "predicts_accuracy.csv")
    assert list(back.columns[:4]) == ["layer", "target_layer", "predictor", "target"]
    assert (tmp_path / "fig" / "predicts_accuracy.png").stat().st_size > 5000
