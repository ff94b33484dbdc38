"""Matrix mutual information of order α = 2 (Gram form): reprscope against the plain n×n Frobenius computation.

    python bench/mi_alpha2.py                 # n = 4096 and 8192, d = 256

The baseline is repitl's recipe for α = 2 written out in torch (repitl is not on PyPI): K = ẐẐᵀ of the
ℓ2-normalised rows for each view as a plain matrix product, K₁ ⊙ K₂, and H₂(K) = −log ‖K/tr K‖²_F for the
three matrices. Ours is ``reprscope.metrics.matrix_mutual_information(z1, z2, alpha=2, batch_size="all")``:
the same numbers (compared), through the analyzer's code. Best of ``--reps`` runs each, interleaved; writes
``bench/results/mi_alpha2.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def plain(z1: torch.Tensor, z2: torch.Tensor) -> float:
    def gram(z):
        zh = z / z.norm(dim=1, keepdim=True)
        return zh @ zh.T

    def h2(k):
        k = k / torch.trace(k)
        return -float(torch.log((k * k).sum()))

    k1, k2 = gram(z1), gram(z2)
    return h2(k1) + h2(k2) - h2(k1 * k2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="4096,8192")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "mi_alpha2.json"))
    a = ap.parse_args()
    import reprscope.metrics as M

    rows = []
    for n in [int(x) for x in a.ns.split(",")]:
        rng = np.random.default_rng(0)
        base = rng.standard_normal((n, a.d))
        z1 = base + 0.5 * rng.standard_normal((n, a.d))
        z2 = base + 0.5 * rng.standard_normal((n, a.d))
        t1, t2 = torch.from_numpy(z1), torch.from_numpy(z2)
        best_o = best_p = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = M.matrix_mutual_information(z1, z2, alpha=2, batch_size="all")
            best_o = min(best_o, time.perf_counter() - t)
            t = time.perf_counter()
            ref = plain(t1, t2)
            best_p = min(best_p, time.perf_counter() - t)
        rel = abs(ours - ref) / abs(ref)
        rows.append({"n": n, "d": a.d, "ours_s": best_o, "plain_s": best_p, "speedup": best_p / best_o,
                     "ours": ours, "plain": ref, "rel_diff": rel})
        print(f"n={n:6d} d={a.d}: ours {best_o:7.3f} s  plain n×n {best_p:7.3f} s  ×{best_p / best_o:5.2f}  "
              f"rel diff {rel:.1e}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
