"""Similarity benchmark: the ``similarity`` analyzer against whole-array references, measured in the same run.

Both sides start from the float32 arrays a store holds (the references convert them to float64 inside their
timing, as ours does chunk by chunk).

    python bench/similarity.py                        # n = 8192, d_x = 1024, d_y = 512
    python bench/similarity.py --n 20000 --dx 2048 --dy 2048

The references follow the public implementations people use, written here on whole arrays in float64:

* linear CKA (biased and debiased) in feature space as anatome's ``linear_cka_distance`` and Kornblith et al.'s
  ``feature_space_linear_cka``: centre both arrays in memory, three d×d products;
* CCA as anatome's ``_cca_by_qr``: QR of both centred arrays, SVD of QxᵀQy; SVCCA as Raghu et al.'s tutorial
  (SVD of each centred array, keep 99 % of the variance, then CCA); PWCCA as Google's ``pwcca.py`` (canonical
  variates in sample space, QR, weights over the neurons — on centred neurons, our convention);
* Procrustes as Ding et al.'s code: SVD of the normalised XᵀY;
* RBF CKA as Kornblith's ``gram_rbf`` + ``cka`` with the unbiased HSIC of each batch (numpy, n×n per batch);
* mutual k-NN as platonic-rep's ``mutual_knn``: the full n×n cosine similarity and an argsort of each row.

Ours streams the store in chunks (``LayerData``, two passes) and never forms an n×n matrix for the linear
measures. Prints each group's time, the speed-up and the largest relative difference of the values; writes
``bench/results/similarity.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def layers(n: int, dx: int, dy: int, seed: int = 0):
    """Two related layers: y is a noisy non-linear image of part of x (float32, as a store holds them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx)).astype(np.float32) * np.linspace(2, 0.05, dx, dtype=np.float32) + 1.0
    w = (rng.standard_normal((dx, dy)) / np.sqrt(dx)).astype(np.float32)
    y = np.tanh(x @ w) + 0.3 * rng.standard_normal((n, dy)).astype(np.float32)
    return x, y


# -- whole-array references -----------------------------------------------------------------------------------


def ref_linear(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)
    xty = np.linalg.norm(xc.T @ yc) ** 2
    xtx, yty = np.linalg.norm(xc.T @ xc), np.linalg.norm(yc.T @ yc)
    a, b = (xc * xc).sum(1), (yc * yc).sum(1)

    def deb(v, s1, s2):
        return v - n / (n - 2) * s1 @ s2 + s1.sum() * s2.sum() / ((n - 1) * (n - 2))

    biased = xty / (xtx * yty)
    debiased = deb(xty, a, b) / np.sqrt(deb(xtx ** 2, a, a) * deb(yty ** 2, b, b))
    xn, yn = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    procrustes = 2 - 2 * np.linalg.svd(xn.T @ yn, compute_uv=False).sum()
    return {"cka_linear": biased, "cka_linear_debiased": debiased, "procrustes": procrustes}


def _cca(x, y):
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    u, s, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return s, qx @ u, qy @ vt.T


def _reduce(a, variance=0.99):
    ac = a - a.mean(0)
    u, s, _ = np.linalg.svd(ac, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), variance - 1e-12) + 1)
    return u[:, :k] * s[:k]


def ref_cca(x, y):
    rho, hx, hy = _cca(x, y)
    side, h = (x, hx) if x.shape[1] <= y.shape[1] else (y, hy)
    p, _ = np.linalg.qr(h[:, :len(rho)])
    w = np.abs(p.T @ (side - side.mean(0))).sum(1)
    return {"cca_mean": rho.mean(), "pwcca": float(np.sum(w / w.sum() * rho)),
            "svcca": _cca(_reduce(x), _reduce(y))[0].mean()}


def _gram_rbf(a, sigma=1.0):
    sq = (a * a).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0)
    np.fill_diagonal(d2, 0)
    return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))


def _hsic_u(k, l):
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ k) @ (l @ one)) / (n * (n - 3))


def ref_rbf(x, y, order, batch=1024):
    xs, ys = x[order], y[order]
    kl = kk = ll = 0.0
    for s in range(0, len(xs), batch):
        if len(xs) - s < 4:
            break
        k, l = _gram_rbf(xs[s:s + batch]), _gram_rbf(ys[s:s + batch])
        kl, kk, ll = kl + _hsic_u(k, l), kk + _hsic_u(k, k), ll + _hsic_u(l, l)
    return {"cka_rbf": kl / np.sqrt(kk * ll)}


def ref_knn(x, y, order, k=10):
    def nn(a):
        t = torch.from_numpy(a / np.linalg.norm(a, axis=1, keepdims=True))
        return (t @ t.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k].numpy()

    xs, ys = x[order], y[order]
    a, b = nn(xs), nn(ys)
    n = len(xs)
    ma, mb = np.zeros((n, n)), np.zeros((n, n))
    ma[np.arange(n)[:, None], a] = 1
    mb[np.arange(n)[:, None], b] = 1
    return {"mutual_knn": float(((ma * mb).sum(1) / k).mean())}


def timed(fn, reps):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--dx", type=int, default=1024)
    ap.add_argument("--dy", type=int, default=512)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "similarity.json"))
    a = ap.parse_args()
    from reprscope.analyzers.base import LayerData, run_pair
    from reprscope.metrics.similarity import subset_order

    x32, y32 = layers(a.n, a.dx, a.dy)
    x, y = x32.astype(np.float64), y32.astype(np.float64)  # for the kernel references (their float64 copies)
    wide = lambda: (x32.astype(np.float64), y32.astype(np.float64))  # noqa: E731  (stored float32, as ours reads)
    lx = LayerData("x", "encoder", ["clean"], x32[None])
    ly = LayerData("y", "projector", ["clean"], y32[None])
    order = subset_order(a.n, 4096, 0)
    groups = {
        "linear CKA + Procrustes": ("cka_linear,cka_linear_debiased,procrustes", lambda: ref_linear(*wide())),
        "CCA, SVCCA, PWCCA": ("svcca,pwcca,cca_mean", lambda: ref_cca(*wide())),
        "RBF CKA (4096, batches of 1024)": ("cka_rbf", lambda: ref_rbf(x, y, order)),
        "mutual k-NN (4096, k = 10)": ("mutual_knn", lambda: ref_knn(x, y, order)),
    }
    rows = []
    for name, (measures, ref) in groups.items():
        t_ours, res = timed(lambda: run_pair("similarity", lx, ly, {"measures": measures}), a.reps)
        ours = {r["metric"]: r["value"] for r in res.rows}
        t_ref, theirs = timed(ref, a.reps)
        diff = max(abs(ours[m] - theirs[m]) / max(abs(theirs[m]), 1e-300) for m in theirs)
        rows.append({"group": name, "ours_s": t_ours, "reference_s": t_ref, "speedup": t_ref / t_ours,
                     "max_rel_diff": diff, "values": ours})
        print(f"{name:34s} ours {t_ours:8.3f} s  reference {t_ref:8.3f} s  ×{t_ref / t_ours:6.2f}  "
              f"max rel diff {diff:.1e}", flush=True)
    t_all, _ = timed(lambda: run_pair("similarity", lx, ly), 1)
    print(f"{'all measures in one call':34s} ours {t_all:8.3f} s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "torch": torch.__version__, "n": a.n, "dx": a.dx, "dy": a.dy,
                               "groups": rows, "all_measures_s": t_all}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
