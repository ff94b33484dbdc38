"""Cost of ``reprscope.Monitor`` in a training loop, as a ratio to the training step it sits in.

    python bench/monitor_overhead.py                       # ResNet-18 (timm) on 32 px, batch 128, probe 512
    python bench/monitor_overhead.py --probe 1024 --analyzers spectrum,center,knn --device cuda

Measured in the same run: the median time of one training step (two views forward, backward, SGD step) and
the median time of one ``monitor(step)`` call on a fixed probe set (its forward in eval mode plus the
analyzers). Prints the ratio monitor/step and the overhead at monitoring every N steps (ratio / N). Results go
to ``bench/results/monitor_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import reprscope

HERE = Path(__file__).resolve().parent


class Model(nn.Module):
    def __init__(self, backbone: str):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, num_classes=0, pretrained=False)
        d = self.backbone.num_features
        self.head = nn.Sequential(nn.Linear(d, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))

    def forward(self, x):
        return self.head(self.backbone(x))


def timed(fn, reps: int, device: str) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--probe", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--analyzers", default="spectrum,center")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", reprscope.ReprscopeWarning)
    torch.manual_seed(0)
    dev = args.device
    model = Model(args.backbone).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    r = args.resolution
    x1 = torch.randn(args.batch_size, 3, r, r, device=dev)
    x2 = x1 + 0.1 * torch.randn_like(x1)
    probe = torch.randn(args.probe, 3, r, r)
    probe = (probe, probe + 0.1 * torch.randn_like(probe))

    def step():
        model.train()
        z1, z2 = model(x1), model(x2)
        loss = ((z1 - z2) ** 2).mean() - z1.std(0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    monitor = reprscope.Monitor(model, [tuple(t.to(dev) for t in probe)], layers={"encoder": "backbone", "projector": "head"},
                                analyzers=args.analyzers.split(","), device=dev)
    step()
    monitor(0)  # warm-up of both
    t_step = timed(step, args.reps, dev)
    t_mon = timed(lambda: monitor(1), args.reps, dev)
    ratio = t_mon / t_step
    res = {
        "backbone": args.backbone, "batch_size": args.batch_size, "probe": args.probe, "resolution": r,
        "analyzers": args.analyzers, "device": dev, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "train_step_s": round(t_step, 4), "monitor_call_s": round(t_mon, 4), "ratio_monitor_to_step": round(ratio, 3),
        "overhead_every_10_steps": round(ratio / 10, 4), "overhead_every_100_steps": round(ratio / 100, 5),
    }
    print(f"train step {t_step * 1e3:.1f} ms, monitor call {t_mon * 1e3:.1f} ms: {ratio:.2f}x one step; "
          f"monitoring every 10 steps adds {100 * ratio / 10:.1f} %, every 100 steps {100 * ratio / 100:.2f} %")
    out = HERE / "results" / "monitor_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
