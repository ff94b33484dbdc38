"""The new analyses against the peer libraries people compare with, on the same data, in the same run.

    pip install reptrix repsim           # the peers (not reprscope dependencies); or PYTHONPATH=DIR with them
    python bench/peers.py                # n = 8192, d = 512

* reptrix (the α-ReQ authors' package): ``get_alpha`` (α-ReQ), ``get_lidar`` (LiDAR), ``get_rankme``;
* repsim: linear CKA (``gretton`` and ``song`` HSIC estimators), SVCCA, CCA, PWCCA.

Where the peer's convention differs from ours the row says which, and the value of ours recomputed under the
peer's convention is compared too, so that a difference is shown to be the convention and nothing else.
Prints each comparison's values, the relative difference and the time of both; writes
``bench/results/peers.json``.
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


def timed(fn, reps=2):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def data(n, d, views=4, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d)).astype(np.float32) * (np.arange(1, d + 1, dtype=np.float32) ** -0.6)
    z = np.stack([base + 0.05 * rng.standard_normal((n, d)).astype(np.float32) for _ in range(views)])
    w = (rng.standard_normal((d, d // 2)) / np.sqrt(d)).astype(np.float32)
    y = np.tanh(z[0] @ w * 4) + 0.1 * rng.standard_normal((n, d // 2)).astype(np.float32)
    return z, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--out", default=str(HERE / "results" / "peers.json"))
    a = ap.parse_args()
    import repsim
    from reptrix import alpha as r_alpha, lidar as r_lidar, rankme as r_rankme

    import reprscope.metrics as M
    from reprscope.metrics.linear_discriminant import lidar_matrices
    from reprscope.metrics._input import layer_data

    z, y = data(a.n, a.d)
    x = z[0]
    rows = []

    def row(name, ours_t, ours_v, peer_t, peer_v, convention="", ours_as_peer=None):
        ours_v, peer_v = float(ours_v), float(peer_v)
        rec = {"what": name, "ours_s": ours_t, "peer_s": peer_t, "speedup": peer_t / ours_t, "ours": float(ours_v),
               "peer": float(peer_v), "rel_diff": abs(ours_v - peer_v) / max(abs(peer_v), 1e-300),
               "convention": convention}
        if ours_as_peer is not None:
            rec["ours_in_peer_convention"] = float(ours_as_peer)
            rec["rel_diff_in_peer_convention"] = float(abs(ours_as_peer - peer_v) / max(abs(peer_v), 1e-300))
        rows.append(rec)
        extra = (f"  (ours in their convention {ours_as_peer:.10g}, rel diff {rec['rel_diff_in_peer_convention']:.1e})"
                 if ours_as_peer is not None else "")
        print(f"{name:34s} ours {ours_v:.10g} ({ours_t:.3f} s)  peer {peer_v:.10g} ({peer_t:.3f} s)  "
              f"×{peer_t / ours_t:5.2f}  rel diff {rec['rel_diff']:.1e}{extra}", flush=True)

    # α-ReQ: reptrix fits ranks 11…100 with weights 1/k on the PCA explained-variance ratios
    t_p, got = timed(lambda: r_alpha.get_alpha(torch.from_numpy(x)))
    t_o, ours = timed(lambda: M.alpha_req(x, fit_start=11, fit_end=100, fit_weighting="inverse_rank"))
    row("alpha_req (reptrix settings)", t_o, ours["alpha"], t_p, got[0],
        "reptrix: ranks 11-100, weights 1/k; our default is every rank, equal weights")

    # LiDAR: reptrix sums where the paper averages, δ = 1e-6, and takes PCA ratios of the rows of Σ_lidar
    tz = torch.from_numpy(np.ascontiguousarray(z.transpose(1, 0, 2)))
    t_p, peer = timed(lambda: r_lidar.get_lidar(tz, a.n, z.shape[0], del_sigma_augs=1e-6))
    t_o, ours = timed(lambda: M.lidar(z, delta=1e-6))
    sb, sw, n = lidar_matrices(layer_data(z))
    v = z.shape[0]
    wv, u = np.linalg.eigh(v * sw + 1e-6 * np.eye(a.d))
    inv = (u / np.sqrt(wv)) @ u.T
    lid = inv @ (n * sb) @ inv
    rc = lid - lid.mean(axis=0)
    ratios = np.linalg.svd(rc, compute_uv=False) ** 2
    ratios = ratios / ratios.sum()
    p = ratios / np.abs(ratios).sum() + 1e-7
    as_peer = float(np.exp(-np.sum(p * np.log(p))))
    row("lidar", t_o, ours, t_p, peer, "reptrix: Σ_b summed over samples, Σ_w summed over views, δ=1e-6, entropy of "
        "the PCA ratios of Σ_lidar's rows (≈ squared eigenvalues) instead of its eigenvalues (Thilak et al.)",
        as_peer)

    # RankMe: reptrix uses the centred covariance eigenvalues (PCA ratios); Garrido et al. the uncentred σ
    t_p, peer = timed(lambda: r_rankme.get_rankme(torch.from_numpy(x)))
    t_o, ours = timed(lambda: M.rankme(x))
    sv = M.singular_values(x, center=True)
    q = sv ** 2 / np.sum(sv ** 2)
    q = q / q.sum() + 1e-7
    row("rankme", t_o, ours, t_p, peer, "reptrix: centred eigenvalues σ² (PCA ratios); Garrido et al. and ours: "
        "uncentred σ", float(np.exp(-np.sum(q * np.log(q)))))

    # CKA and CCA against repsim (C++)
    t_p, peer = timed(lambda: repsim.cka([x, y], kernel_type="linear", estimator="gretton")[0, 1])
    t_o, ours = timed(lambda: M.linear_cka(x, y))
    row("linear CKA (repsim gretton)", t_o, ours, t_p, peer)
    t_p, hs = timed(lambda: repsim.hsic([x, y], kernel_type="linear", estimator="song"))
    t_o, ours = timed(lambda: M.linear_cka(x, y, debiased=True))
    row("debiased CKA (repsim song HSICs)", t_o, ours, t_p, hs[0, 1] / np.sqrt(hs[0, 0] * hs[1, 1]),
        "the ratio of repsim's own unbiased (song) HSICs; its cka(estimator='song') is not that ratio")
    rho = None

    def ours_cca():
        return M.similarity_metrics(x, y, measures="cca_mean")["cca_mean"]

    from reprscope.metrics.similarity import cca_of, moments_of_arrays

    t_p, peer = timed(lambda: repsim.cca([x, y])[0, 1])
    t_o, ours = timed(ours_cca)
    rho = cca_of(moments_of_arrays(x, y)).rho
    row("CCA (repsim)", t_o, ours, t_p, peer, "repsim summarises by Yanai's mean ρ²; we report mean ρ (Raghu et al.)",
        float(np.mean(rho ** 2)))
    t_p, peer = timed(lambda: repsim.svcca([x, y])[0, 1])
    t_o, ours = timed(lambda: M.svcca(x, y))
    rho = cca_of(moments_of_arrays(x, y), 0.99).rho
    row("SVCCA (repsim)", t_o, ours, t_p, peer, "repsim: mean ρ²; ours mean ρ", float(np.mean(rho ** 2)))
    t_p, peer = timed(lambda: repsim.pwcca([x, y])[0, 1])
    t_o, ours = timed(lambda: M.pwcca(x, y))
    row("PWCCA (repsim)", t_o, ours, t_p, peer, "repsim: Google's weights on uncentred neurons; ours centred")

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "torch": torch.__version__, "n": a.n, "d": a.d,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
