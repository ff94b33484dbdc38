"""Rendering speed of the procedural ``shapes`` data set: images/s of its batched renderer against the same
renderer called one image at a time (the baseline, same run and same latents).

    python bench/shapes_render.py                    # 512 images at 32 px on the CPU
    python bench/shapes_render.py --n 4096 --resolution 64 --device cuda

``shapes`` draws its images on the fly for every training step, so rendering must keep up with training;
the dataset's target (issue 5) is 512 images of 32 × 32 in well under a second on a CPU. Best of ``--reps``
runs each. Results go to ``bench/results/shapes_render.json``.
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

from reprscope.data import build_dataset

HERE = Path(__file__).resolve().parent


def best_of(fn, reps: int, device: str) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "shapes_render.json"))
    args = ap.parse_args(argv)

    ds = build_dataset("shapes", eval_size=4, resolution=args.resolution).to(args.device)
    z = ds.sample_raw(args.n, np.random.default_rng(0))
    ds.render_images(z[:8])  # first-call set-up
    batched = best_of(lambda: ds.render_images(z), args.reps, args.device)
    one = best_of(lambda: [ds.render_images(z[i:i + 1]) for i in range(len(z))], args.reps, args.device)
    row = {"n": args.n, "resolution": args.resolution, "device": args.device, "batched_s": batched,
           "one_at_a_time_s": one, "images_per_s": args.n / batched, "speedup": one / batched,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"shapes {args.n} images at {args.resolution} px on {args.device}: batched {batched:.3f} s "
          f"({row['images_per_s']:.0f} images/s); one at a time {one:.3f} s; ×{row['speedup']:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
