"""The cost curve of ``reprscope analyze``: wall time and peak memory against the number of samples, on one
process and on two (torchrun, gloo).

    python bench/scale.py                                   # n = 1e4, 1e5, 1e6 × d = 2048, analyzer spectrum
    python bench/scale.py --n 10000,100000 --analyzers spectrum,vicreg --views 2 --configs 1x2,2x1

For every n a store of one view of n × d float32 embeddings (a low-rank signal plus noise, generated in chunks)
is written to a temporary folder and deleted after. ``reprscope analyze STORE --analyzers …`` then runs as a
fresh process per configuration ``PxT`` (``--configs``: P processes of T BLAS threads each; P > 1 under
torchrun with gloo): ``1x2`` one process using both cores, ``1x1`` one process on one core, ``2x1`` two processes
of one core each — ``2x1`` against ``1x1`` is the speed-up of sharing the pass, ``2x1`` against ``1x2`` what it
gives on a machine whose one process already uses every core. Wall time is measured and peak resident memory
sampled from /proc every 50 ms, summed over the processes of the job. The analyzers declared split (spectrum, vicreg,
lidar, center, knn, matrix_information, similarity) share their passes over the samples between the processes;
the rest runs on rank 0.
Results go to ``bench/results/scale.json``: time should grow linearly in n and memory stay flat in n (the
d × d statistics, not the n × d embeddings, are held).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_store(path: Path, n: int, d: int, seed: int = 0, chunk: int = 65536, views: int = 0) -> None:
    """One layer of n × d: a rank-64 signal plus noise in the ``clean`` view, ``views`` augmented views (the
    clean one plus more noise), and labels (the largest of the signal's first 10 coordinates)."""
    from reprscope.extract.store import StoreWriter

    rng = np.random.default_rng(seed)
    rank = min(64, d)
    basis = rng.standard_normal((rank, d)).astype(np.float32) / np.sqrt(rank)
    attrs = {"source": "bench/scale.py", "method": "synthetic", "dataset": {"name": "synthetic"}, "seed": seed,
             "step": -1}
    names = ["clean"] + [f"aug{i + 1}" for i in range(views)]
    labels = np.empty(n, dtype=np.int64)
    chunk = max(1, chunk // (1 + views))
    with StoreWriter(path, n, names, [("encoder", "encoder", 0, d)], attrs) as w:
        for s in range(0, n, chunk):
            b = min(chunk, n - s)
            c = rng.standard_normal((b, rank)).astype(np.float32)
            labels[s:s + b] = c[:, :min(10, rank)].argmax(axis=1)
            z = c @ basis
            z += 0.1 * rng.standard_normal((b, d)).astype(np.float32)
            out = [z] + [z + 0.1 * rng.standard_normal((b, d)).astype(np.float32) for _ in range(views)]
            w.write_batch(s, {"encoder": np.stack(out)})
        w.write_meta(np.arange(n), labels=labels)


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run(cmd, env) -> tuple:
    peak = [0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{err[-2000:]}")
    return wall, peak[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10000,100000,1000000")
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--analyzers", default="spectrum")
    ap.add_argument("--views", type=int, default=0, help="augmented views besides clean (vicreg, center, …)")
    ap.add_argument("--configs", default="1x2,1x1,2x1", help="PxT: P processes of T BLAS threads each")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        with tempfile.TemporaryDirectory(prefix="reprscope-scale-") as tmp:
            store = Path(tmp) / f"n{n}.h5"
            t = time.perf_counter()
            write_store(store, n, args.d, views=args.views)
            t_write = time.perf_counter() - t
            size = store.stat().st_size
            for cfg in args.configs.split(","):
                procs, threads = (int(v) for v in cfg.lower().split("x"))
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                       "MKL_NUM_THREADS": str(threads), "REPRSCOPE_CACHE": str(Path(tmp) / "cache")}
                head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                        if procs > 1 else [sys.executable])
                cmd = head + ["-m", "reprscope", "analyze", str(store), "--analyzers", args.analyzers, "--quiet",
                              "--out", str(Path(tmp) / f"t{procs}x{threads}.csv")]
                wall, peak = run(cmd, env)
                rows.append({"n": n, "d": args.d, "procs": procs, "blas_threads_per_proc": threads,
                             "analyzers": args.analyzers, "views": 1 + args.views, "wall_s": wall, "peak_rss_mb": peak / 2**20,
                             "store_mb": size / 2**20, "store_write_s": t_write})
                print(f"n={n:>8,} d={args.d} {procs}x{threads}: {wall:8.1f} s, peak RSS {peak / 2**20:7.0f} MB "
                      f"(store {size / 2**20:,.0f} MB)", flush=True)
    by = {(r["n"], r["procs"], r["blas_threads_per_proc"]): r for r in rows}
    for r in rows:
        for base in ((1, 1), (1, cores)):
            one = by.get((r["n"], *base))
            r[f"speedup_vs_1x{base[1]}"] = one["wall_s"] / r["wall_s"] if one else None
    result = {"rows": rows, "cores": cores, "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
