"""The trainer: one loop for every registered method (no branch per method).

``train(config, out_dir)`` builds the data set, the model bundle and the method from a resolved config, runs
the optimisation with a progress bar, and writes native checkpoints (SPEC §3) every ``save_every`` epochs or
``save_every_steps`` steps plus ``last.pt``; ``resume=True`` continues exactly from ``last.pt`` (weights,
optimiser, schedule, and the random streams of the model and the data).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import build_dataset
from ..errors import ReprscopeError
from ..formats.base import read_checkpoint_file
from ..formats.native import FORMAT, save_native
from ..methods import build_method
from ..models.bundle import build_bundle
from .config import steps_per_epoch, total_steps


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReprscopeError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReprscopeError(f"device '{name}' was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def build_optimizer(params, cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def lr_factor(step: int, total: int, cfg: Dict[str, Any]) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` (or constant)."""
    warm = cfg["warmup_steps"]
    if warm and step < warm:
        return (step + 1) / warm
    if cfg["schedule"] == "constant":
        return 1.0
    t = (step - warm) / max(1, total - warm)
    lo = cfg["min_lr_ratio"]
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@dataclass
class TrainResult:
    run_dir: Path
    last: Path
    checkpoints: List[Path]
    metrics: Dict[str, float]


def _rng_state(data_rng: np.random.Generator) -> Dict[str, Any]:
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "data": data_rng.bit_generator.state, "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any], data_rng: np.random.Generator) -> None:
    torch.set_rng_state(st["torch"])
    data_rng.bit_generator.state = st["data"]
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train(config: Dict[str, Any], out_dir: str | Path, resume: bool = False, progress: bool = True,
          on_log: Optional[Callable[[int, Dict[str, float]], None]] = None) -> TrainResult:
    """Train ``config`` (a resolved config, see ``train.config.resolve_config``) into ``out_dir``."""
    out_dir = Path(out_dir)
    tcfg, ocfg = config["train"], config["optim"]
    device = resolve_device(tcfg["device"])
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    data_rng = np.random.default_rng([seed, 0])

    dataset = build_dataset(config["data"])
    bundle = build_bundle(config["model"], config["model"]["in_shape"]).to(device)
    method_cfg = {k: v for k, v in config["method"].items() if k != "name"}
    method = build_method(config["method"]["name"], method_cfg).to(device)
    optimizer = build_optimizer([p for p in list(bundle.parameters()) + list(method.parameters()) if p.requires_grad], ocfg)
    total = total_steps(config)
    per_epoch = steps_per_epoch(config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, ocfg))
    start = 0
    metrics_at_resume: Dict[str, float] = {}
    checkpoints: List[Path] = []
    last = out_dir / "last.pt"
    if resume:
        # last.pt is only written when a run finishes; an interrupted run resumes from its newest ckpt-*.pt
        src = last if last.is_file() else max(out_dir.glob("ckpt-*.pt"), default=None)
        if src is None:
            raise ReprscopeError(f"--resume: no last.pt or ckpt-*.pt in '{out_dir}'; train without --resume first")
        ck = read_checkpoint_file(src)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise ReprscopeError(f"--resume: '{src}' is not a reprscope checkpoint")
        if ck["config"] != config:
            raise ReprscopeError("--resume: the run dir was trained with a different config; use a new --out or the same settings")
        bundle.load_state_dict(ck["state_dict"])
        method.load_state_dict(ck.get("method_state", {}))
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"], data_rng)
        start = int(ck["step"])
        metrics_at_resume = dict(ck.get("metrics", {}))
        checkpoints = sorted(out_dir.glob("ckpt-*.pt"))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_steps = tcfg.get("save_every_steps") or (tcfg["save_every"] * per_epoch if tcfg["save_every"] else None)

    def save(step: int, metrics: Dict[str, float]) -> Dict[str, Any]:
        return {
            "format": FORMAT, "reprscope_version": __version__, "method": config["method"]["name"], "config": config,
            "state_dict": {k: v.detach().cpu() for k, v in bundle.state_dict().items()},
            "method_state": {k: v.detach().cpu() for k, v in method.state_dict().items()},
            "step": step, "epoch": step / per_epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": _rng_state(data_rng), "metrics": dict(metrics),
        }

    metrics: Dict[str, float] = metrics_at_resume
    if start == 0 and save_steps:
        payload = save(0, metrics)  # the initialisation: the first point of every trajectory
        checkpoints.append(save_native(out_dir / "ckpt-0000000.pt", payload))
    bundle.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {config['method']['name']}",
               disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        views = [v.to(device, non_blocking=True) for v in dataset.train_views(tcfg["batch_size"], data_rng)]
        loss, logs = method.training_step(bundle, views, step, total)
        if not torch.isfinite(loss):
            raise ReprscopeError(f"the loss became {float(loss)} at step {step}; lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        method.after_step(bundle, step, total)
        metrics = {**logs, "lr": optimizer.param_groups[0]["lr"]}
        done = step + 1
        if done % tcfg["log_every"] == 0 or done == total:
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            if on_log:
                on_log(done, metrics)
        if save_steps and (done % save_steps == 0 or done == total):
            path = out_dir / f"ckpt-{done:07d}.pt"
            save_native(path, save(done, metrics))
            if path not in checkpoints:
                checkpoints.append(path)
    bar.close()
    bundle.eval()
    save_native(last, save(total, metrics))
    return TrainResult(out_dir, last, checkpoints, metrics)
