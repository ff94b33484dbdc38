"""ESD benchmark: reprscope's ``esd`` against WeightWatcher on the same network, in the same run.

    pip install weightwatcher            # the peer (not a reprscope dependency); or PYTHONPATH=DIR with it
    python bench/esd.py                  # timm resnet18 at initialisation (no download)
    python bench/esd.py --model resnet50

Times ``WeightWatcher(model).analyze()`` (its defaults: pooled conv kernels, its own power-law fit, no MP fit)
and ``reprscope.metrics.esd`` on every linear/conv weight of the same model, and compares alpha, xmin, D,
log_norm, log_spectral_norm, stable_rank and alpha_weighted layer by layer (matched by order and shape).
Writes ``bench/results/esd.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = {"alpha": "alpha", "xmin": "xmin", "D": "ks_distance", "log_norm": "log_norm",
         "log_spectral_norm": "log_spectral_norm", "stable_rank": "stable_rank", "alpha_weighted": "alpha_weighted"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "esd.json"))
    a = ap.parse_args()
    import timm
    import torch
    import weightwatcher

    from reprscope.metrics.esd import esd_metrics, module_weights

    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False).eval()
    weights = {k: v for k, v in module_weights(model).items()}

    def ours():
        return {name: esd_metrics(w) for name, w in weights.items()}

    def theirs():
        return weightwatcher.WeightWatcher(model=model).analyze()

    t_ours = t_ww = float("inf")
    for _ in range(a.reps):
        t = time.perf_counter(); got = ours(); t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter(); df = theirs(); t_ww = min(t_ww, time.perf_counter() - t)
    # WeightWatcher's rows are its layers with an ESD, in module order; ours are every weight in module order
    ours_list = [(n, got[n]) for n in weights if weights[n].ndim in (2, 4) and min(weights[n].shape[:2]) > 1]
    ww_rows = df[df["has_esd"].astype(bool)] if "has_esd" in df.columns else df
    diffs = {m: [] for m in PAIRS}
    matched = 0
    for (name, mine), (_, row) in zip(ours_list, ww_rows.iterrows()):
        if (int(row["N"]), int(row["M"])) != tuple(sorted(weights[name].shape[:2], reverse=True)):
            continue
        matched += 1
        for theirs_key, ours_key in PAIRS.items():
            if ours_key in mine and np.isfinite(row[theirs_key]):
                diffs[theirs_key].append(abs(mine[ours_key] - row[theirs_key]) / max(abs(row[theirs_key]), 1e-12))
    summary = {m: (max(v) if v else None) for m, v in diffs.items()}
    print(f"{a.model}: {len(weights)} weights, {len(ww_rows)} WeightWatcher layers, {matched} matched")
    print(f"  reprscope esd {t_ours:7.3f} s   WeightWatcher {t_ww:7.3f} s   ×{t_ww / t_ours:5.2f}")
    for m, v in summary.items():
        print(f"  max rel diff {m:18s} {v if v is not None else float('nan'):.2e}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "model": a.model, "machine": platform.machine(),
                               "cpus": os.cpu_count(), "torch": torch.__version__,
                               "weightwatcher": getattr(weightwatcher, "__version__", "?"), "ours_s": t_ours,
                               "weightwatcher_s": t_ww, "speedup": t_ww / t_ours, "matched_layers": matched,
                               "max_rel_diff": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
