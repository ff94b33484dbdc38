"""Analyzer benchmark: each analyzer against its naive reference, and the whole suite on a large store.

    python bench/analyzers.py                 # both parts, CPU
    python bench/analyzers.py --part naive    # part A only
    OMP_NUM_THREADS=1 python bench/analyzers.py --part naive --key naive_1thread   # part A, one thread
    python bench/analyzers.py --part naive --device cuda --key naive_cuda     # fast analyzers on a GPU
    python bench/analyzers.py --part suite --n 100000 --d 2048

Part A (per analyzer, n = 8192, float64): the fast analyzer (``run_analyzer``) and the naive reference of
``bench/naive.py`` (the straightforward computation: n×n eigendecompositions, per-sample loops, per-latent
least squares …) on the same data, in the same run; prints the time of both, the speed-up and the largest
relative difference over the metrics both report (best of ``--reps`` runs each; see :func:`part_naive`).

Part B (the whole suite): writes a store with n samples × d dims × two views (plus labels, latents and a
linear projector under /modules), then runs ``reprscope analyze`` on it with every analyzer in a child
process and reports the wall time and the child's peak resident memory. Per-analyzer times come from a second,
in-process run (shared per-layer statistics are charged to the first analyzer that needs them).

Results go to ``bench/results/analyzers.json`` and are printed as a table; a part not run keeps its previous
entry there, with its own ``when_naive`` / ``when_suite`` time stamp.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_store(path: Path, n: int, d: int, k_classes: int = 10, k_latents: int = 10, d_proj: int = 128, seed: int = 0,
               chunk: int = 8192) -> Path:
    """A structured two-view store: class means + a linear image of latents + noise; view 2 = view 1 + jitter."""
    from reprscope.extract import StoreWriter

    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k_classes, d)).astype(np.float32)
    mix = (rng.standard_normal((k_latents, d)) / np.sqrt(k_latents)).astype(np.float32)
    labels = rng.integers(0, k_classes, size=n)
    latents = rng.uniform(0, 1, size=(n, k_latents)).astype(np.float32)
    proj = (rng.standard_normal((d_proj, d)) / np.sqrt(d)).astype(np.float32)
    attrs = {"source": "bench", "source_sha256": "", "source_format": "bench", "method": "bench",
             "dataset": {"name": "bench", "n": n, "d": d}, "seed": seed, "step": -1, "augmentation": {"jitter": 0.3}}
    with StoreWriter(path, n, ["aug1", "aug2"], [("encoder", "encoder", 0, d)], attrs) as w:
        w.write_meta(np.arange(n), latents, [f"c{i}" for i in range(k_latents // 2)] + [f"s{i}" for i in range(k_latents - k_latents // 2)],
                     [True] * (k_latents // 2) + [False] * (k_latents - k_latents // 2), labels)
        w.write_module("projector", [{"type": "linear", "in": d, "out": d_proj, "bias": False}], {"0.weight": proj})
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            base = means[labels[s:e]] + latents[s:e] @ mix
            v1 = base + rng.standard_normal((e - s, d), dtype=np.float32)
            v2 = v1 + 0.3 * rng.standard_normal((e - s, d), dtype=np.float32)
            w.write_batch(s, {"encoder": np.stack([v1, v2])})
    return path


#: A naive reference is repeated (up to ``reps`` times, best time kept) only while its runs so far took less
#: than this many seconds; the slow ones (minutes) run once.
NAIVE_REPEAT_BELOW_S = 3.0


def part_naive(n: int, d: int, reps: int = 3, device: str = "cpu") -> list:
    """Part A: fast vs naive per analyzer on the same in-memory float64 data.

    The fast analyzers run on ``device`` (their ``--device``: the heavy linear algebra moves there, the data
    stays in host memory as ``analyze`` reads it); the naive references always run on the CPU.

    Each fast analyzer runs ``reps`` times on a fresh per-layer cache (it pays for every shared statistic it
    uses) and its best time is kept; its naive reference likewise, interleaved with the fast runs, but only
    while its runs so far took less than NAIVE_REPEAT_BELOW_S in total. Best-of-several removes one-off costs
    (first-call set-up, page faults) and part of the noise of a shared machine from both sides alike; the
    load average before and after each analyzer is recorded, since BLAS with several threads slows down by
    large factors when another process holds a core.
    """
    import naive
    from reprscope.analyzers import ANALYZERS, LayerData, run_analyzer

    with tempfile.TemporaryDirectory() as tmp:
        from reprscope.extract import Store

        path = make_store(Path(tmp) / "a.h5", n, d, d_proj=min(128, d))
        with Store(path) as st:
            data = st.layer_data("encoder")
            data = LayerData(**{**data.__dict__, "embeddings": np.asarray(data.embeddings[()], dtype=np.float64), "cache": {}})
    out = []
    for name in ANALYZERS.names():
        ref = naive.REFERENCES.get(name)
        if ANALYZERS.get(name).pairwise:
            print(f"  {name:20s} (compares two layers: bench/similarity.py)")
            continue
        if ref is None:
            print(f"  {name:20s} (no naive reference)")
            continue
        fn, params = ref
        load0 = round(os.getloadavg()[0], 2)
        best_fast = best_naive = float("inf")
        spent, runs = 0.0, 0
        for _ in range(reps):  # interleaved, so both sides see the same state of a shared machine
            fresh = LayerData(**{**data.__dict__, "cache": {}, "device": device})
            t = time.perf_counter(); res = run_analyzer(name, fresh, params); _sync(device); best_fast = min(best_fast, time.perf_counter() - t)
            if runs == 0 or spent < NAIVE_REPEAT_BELOW_S:
                t = time.perf_counter(); want = fn(data, **params); took = time.perf_counter() - t
                best_naive, spent, runs = min(best_naive, took), spent + took, runs + 1
        load1 = round(os.getloadavg()[0], 2)
        got = {(r["metric"], r["view"], r["index"], r.get("form", "")): r["value"] for r in res.rows}
        diffs = [abs(got[k] - v) / max(abs(v), 1e-12) for k, v in want.items() if k in got]
        row = {"analyzer": name, "n": n, "d": d, "device": device, "fast_s": best_fast, "naive_s": best_naive,
               "speedup": best_naive / best_fast, "max_rel_diff": max(diffs) if diffs else None, "compared": len(diffs),
               "fast_runs": reps, "naive_runs": runs, "load_avg_1min": [load0, load1]}
        out.append(row)
        print(f"  {name:20s} fast {best_fast:8.3f}s  naive {best_naive:8.3f}s  x{row['speedup']:7.1f}  "
              f"max rel diff {row['max_rel_diff'] if row['max_rel_diff'] is not None else float('nan'):.2e} over {len(diffs)} values"
              f"  (load {load0:.1f}→{load1:.1f})")
    return out


def _sync(device: str) -> None:
    """Wait for queued GPU work, so that a timing covers it (a no-op on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def part_suite(n: int, d: int, device: str) -> dict:
    """Part B: the whole `reprscope analyze` on a large store, in a child process (peak RSS of the child)."""
    from reprscope.analyzers import ANALYZERS

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.h5"
        t = time.perf_counter()
        make_store(path, n, d)
        gen = time.perf_counter() - t
        names = ",".join(ANALYZERS.names())
        cmd = [sys.executable, "-m", "reprscope", "analyze", str(path), "--analyzers", names, "--device", device,
               "--out", str(Path(tmp) / "t.csv"), "--quiet"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise SystemExit(f"analyze failed: {proc.stderr}")
        per = {}
        from reprscope.extract import Store
        from reprscope.analyzers import run_analyzer

        with Store(path) as st:
            data = st.layer_data("encoder", device=device)
            for name in ANALYZERS.names():
                if ANALYZERS.get(name).pairwise:  # the store has one layer: no pair to compare
                    continue
                t0 = time.perf_counter()
                run_analyzer(name, data)
                per[name] = time.perf_counter() - t0
    res = {"n": n, "d": d, "views": 2, "device": device, "generate_s": gen, "analyze_wall_s": wall,
           "peak_rss_gib": peak_kb / 2**20, "peak_rss_note": "max RSS of any child of this process (KB from getrusage)",
           "per_analyzer_s": per, "analyzers": names}
    print(f"  whole suite: {wall:.1f} s wall, peak RSS {res['peak_rss_gib']:.2f} GiB (n={n}, d={d}, 2 views, {device})")
    for k, v in per.items():
        print(f"    {k:20s} {v:7.2f} s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "naive", "suite"), default="all")
    ap.add_argument("--n-naive", type=int, default=8192)
    ap.add_argument("--d-naive", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3, help="part A: runs per analyzer, best time kept")
    ap.add_argument("--key", default="naive", help="part A: key of the results in the JSON file, e.g. naive_1thread "
                    "for a run under OMP_NUM_THREADS=1 next to the default-threads one")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="device of the fast analyzers in both parts (the naive "
                    "references of part A always run on the CPU), e.g. cuda")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "analyzers.json")
    args = ap.parse_args()
    import torch

    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.part in ("all", "naive"):
        print(f"Part A: each analyzer ({args.device}) vs its naive reference (cpu), n={args.n_naive}, d={args.d_naive}, float64")
        result[args.key] = part_naive(args.n_naive, args.d_naive, args.reps, args.device)
        result[f"when_{args.key}"] = result["when"]
        result[f"threads_{args.key}"] = {**{k: os.environ.get(k, "default") for k in
                                            ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
                                         "torch_threads": torch.get_num_threads()}
    if args.part in ("all", "suite"):
        print(f"Part B: the whole suite on n={args.n}, d={args.d}")
        result["suite"] = part_suite(args.n, args.d, args.device)
        result["when_suite"] = result["when"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for part in ("naive", "suite"):  # files written before the per-part stamps: the stamp of their last run
        if part in prev and f"when_{part}" not in prev:
            prev[f"when_{part}"] = prev.get("when")
    prev.update(result)
    args.out.write_text(json.dumps(prev, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
