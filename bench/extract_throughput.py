"""Extraction throughput against the bare forward of the same model on the same batches.

    python bench/extract_throughput.py                          # timm ResNet-18, shapes at 64 px, 2048 samples
    python bench/extract_throughput.py --backbone resnet50 --resolution 224 --device cuda --n 8192

Measured in the same run, on the same inputs (the clean view and one augmented view of every sample):

* ``bare``: the model's forward alone (encoder and projector), on inputs prepared beforehand;
* ``extract``: ``reprscope.extract.extract`` writing every layer (or only ``encoder``) to an ``.h5``: the views
  drawn, the forward with the intermediate layers hooked, the copies to the host and the HDF5 writes — with the
  writes in a writer thread (the default) or inline, in float32 or float16 storage.

Prints samples/s and the ratio bare time / extraction time (1.0: extraction costs nothing beyond the forward).
Results go to ``bench/results/extract_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "extract_throughput.json"))
    args = ap.parse_args(argv)

    import timm

    from reprscope.data import build_dataset
    from reprscope.extract import extract
    from reprscope.formats import load_checkpoint

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="reprscope-bench-"))
    net = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    torch.save(net.state_dict(), tmp / "backbone.pth")  # a raw timm/torchvision ResNet: format torchvision
    model = load_checkpoint(tmp / "backbone.pth")
    data = build_dataset({"name": "shapes", "resolution": args.resolution, "eval_size": args.n})
    samples = data.eval_set()
    bundle = model.bundle.to(args.device).eval()
    starts = list(range(0, args.n, args.batch_size))
    inputs = []
    for b, s in enumerate(starts):  # the very views extract draws (batch b's stream is seeded by (seed, b))
        batch = samples.select(slice(s, min(args.n, s + args.batch_size)))
        rng = np.random.default_rng([0, 3, b])
        inputs += [batch.x, data.augment(batch, rng, view=0)]

    def bare():
        with torch.inference_mode():
            for x in inputs:
                out = bundle(x.to(args.device))
                out["h"].cpu()
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    bare()  # warm-up
    t_bare = timed(bare)
    runs = []
    for layers, storage, overlap in ((None, "float32", True), (None, "float32", False), (None, "float16", True),
                                     (["encoder"], "float32", True)):
        def run():
            extract(model, data, tmp / "s.h5", views=1, layers=layers, batch_size=args.batch_size, device=args.device,
                    progress=False, storage=storage, overlap_writes=overlap)
        run()  # warm-up
        t = timed(run)
        size = os.path.getsize(tmp / "s.h5")
        runs.append({"layers": "all" if layers is None else ",".join(layers), "storage": storage,
                     "writer_thread": overlap, "seconds": t, "samples_per_s": args.n / t,
                     "ratio_bare_over_extract": t_bare / t, "store_mb": size / 2**20})
        print(f"extract layers={runs[-1]['layers']:8s} {storage} writer_thread={overlap!s:5s}: {t:7.2f} s "
              f"({args.n / t:7.0f} samples/s), bare/extract = {t_bare / t:.3f}, store {size / 2**20:.1f} MB")
    print(f"bare forward (clean + 1 view of {args.n} samples): {t_bare:.2f} s ({args.n / t_bare:.0f} samples/s)")
    result = {"backbone": args.backbone, "resolution": args.resolution, "n": args.n, "batch_size": args.batch_size,
              "views": ["clean", "aug1"], "device": args.device, "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "bare_seconds": t_bare,
              "bare_samples_per_s": args.n / t_bare, "runs": runs,
              "layers_stored": [i.name for i in bundle.layer_infos()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return result


if __name__ == "__main__":
    main()
