"""Training throughput: images/s of a full reprscope training step against the bare network, same run.

    python bench/train_throughput.py                       # GPU when there is one: SimCLR, ResNet-18, 32x32, batch 512
    python bench/train_throughput.py --device cpu --batch 32 --steps 6   # the CPU-sized run
    python bench/train_throughput.py --compile --data cifar10:/data/cifar

The *trainer* figure runs ``reprscope.train.train`` itself (data on the device, per-sample augmentation of both
views on the device, SimCLR loss, optimiser step, schedule, EMA/logging hooks) and takes images/s from its
own log between log points after the warm-up steps. The *baseline* is the bare forward + backward of the same
network (encoder + projector, same autocast and memory format) on two pre-made batches of tensors already on the
device — what a training step cannot beat. Ratio = trainer / baseline. Targets (issue 4) on an H100/H200:
ratio ≥ 0.85 and ≥ 25 000 images/s (images = samples: two views each).

Results go to ``bench/results/train_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from reprscope.data import parse_data_arg
from reprscope.models.bundle import build_bundle
from reprscope.train import apply_sets, default_config, resolve_config, train
from reprscope.train.trainer import _autocast, resolve_device

HERE = Path(__file__).resolve().parent


def make_config(args) -> dict:
    data = parse_data_arg(args.data)
    cfg = default_config(args.method, data, args.backbone)
    sets = {
        "backbone.cifar_stem": True,
        "train.batch_size": args.batch,
        "train.steps": args.warmup + args.steps,
        "train.log_every": args.log_every,
        "train.save_every": 0,
        "train.knn_every": 0,
        "train.device": args.device,
        "train.compile": args.compile,
        "train.amp": args.amp,
        "optim.name": "lars",
        "optim.lr": 0.3,
        "optim.warmup_steps": 0,
    }
    return resolve_config(apply_sets(cfg, [(k.split("."), v) for k, v in sets.items()]))


def trainer_ips(cfg: dict, args) -> float:
    """Images/s of ``train`` from its own log points after the warm-up."""
    stamps = []

    def on_log(done, metrics):
        stamps.append((done, time.perf_counter()))

    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d) / "run", progress=False, on_log=on_log)
    after = [(s, t) for s, t in stamps if s >= args.warmup]
    (s0, t0), (s1, t1) = after[0], after[-1]
    return (s1 - s0) * args.batch / (t1 - t0)


def baseline_ips(cfg: dict, args) -> float:
    """Bare forward + backward of encoder + projector on two pre-made views already on the device."""
    device = resolve_device(args.device)
    bundle = build_bundle(cfg["model"], cfg["model"]["in_shape"]).to(device).train()
    cl = device.type == "cuda"
    if cl:
        bundle = bundle.to(memory_format=torch.channels_last)
    if args.compile:
        bundle.compile()
    x = torch.randn(2 * args.batch, *cfg["model"]["in_shape"], device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with _autocast(device, cfg["train"]["amp"]):
            loss = bundle(x)["z"].float().pow(2).mean()
        loss.backward()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--data", default="shapes", help="shapes (procedural, no download) or e.g. cifar10:/path")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default: 512 on GPU, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default: 50 on GPU, 6 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="steps before measuring (default: 20 on GPU, 2 on CPU)")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "train_throughput.json"))
    args = ap.parse_args()
    gpu = resolve_device(args.device).type == "cuda"
    args.batch = args.batch or (512 if gpu else 32)
    args.steps = args.steps or (50 if gpu else 6)
    args.warmup = args.warmup or (20 if gpu else 2)
    args.log_every = 1 if not gpu else 10
    if args.steps % args.log_every:
        args.steps += args.log_every - args.steps % args.log_every
    if args.warmup % args.log_every:
        args.warmup += args.log_every - args.warmup % args.log_every
    cfg = make_config(args)
    base = baseline_ips(cfg, args)
    full = trainer_ips(cfg, args)
    dev = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    res = {"device": dev, "torch": torch.__version__, "method": args.method, "backbone": args.backbone,
           "data": args.data, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "amp": cfg["train"]["amp"],
           "compile": args.compile, "threads": torch.get_num_threads(), "trainer_images_per_s": full,
           "bare_forward_backward_images_per_s": base, "ratio": full / base}
    print(f"{args.method} / {args.backbone} / {args.data} / batch {args.batch} on {dev}")
    print(f"  trainer step          {full:10.1f} images/s")
    print(f"  bare forward+backward {base:10.1f} images/s")
    print(f"  ratio                 {full / base:10.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.is_file() else []
    runs = [r for r in runs if not (r.get("device") == dev and r.get("batch") == args.batch and r.get("compile") == args.compile)]
    out.write_text(json.dumps(runs + [res], indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
