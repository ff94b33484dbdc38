"""The trainer: one loop for every registered method (no branch per method).

``train(config, out_dir)`` builds the data set, the model bundle and the method from a resolved config, runs
the optimisation with a progress bar (loss, images/s), logs metrics to ``metrics.csv`` in the run dir (and
TensorBoard when installed), monitors k-NN accuracy online where the data has labels, and writes native
checkpoints (``reprscope/1``, README: Files) every ``save_every`` epochs or ``save_every_steps`` steps plus ``last.pt``.
``resume=True`` continues exactly from the newest checkpoint (weights, optimiser, schedule, and the random
streams of the model and of every rank's data).

Under ``torchrun --nproc-per-node N`` the same loop trains with DDP: the global batch is split over the ranks
(each samples its own part from its own stream), BatchNorm is synchronised, methods compute their losses on
the gathered global batch (``reprscope.distributed``), and only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..data import build_dataset
from ..errors import ReprscopeError
from ..formats.base import read_checkpoint_file
from ..formats.native import FORMAT, save_native
from ..methods import build_method
from ..methods.base import Method
from ..models.bundle import ModelBundle, build_bundle
from .. import distributed as dist
from .config import steps_per_epoch, total_steps
from .optim import build_optimizer, lr_factor, split_decay


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReprscopeError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReprscopeError(f"device '{name}' was asked for but no CUDA GPU is available; use device 'cpu'", arg="device")
    return dev


class TrainModule(nn.Module):
    """Bundle + method as one module, so DDP wraps the whole training step whatever the method does inside."""

    def __init__(self, bundle: ModelBundle, method: Method):
        super().__init__()
        self.bundle = bundle
        self.method = method

    def forward(self, views: List[torch.Tensor], step: int, total: int):
        return self.method.training_step(self.bundle, views, step, total)


@dataclass
class TrainResult:
    run_dir: Path
    last: Path
    checkpoints: List[Path]
    metrics: Dict[str, float]


def _rng_state(data_rng: np.random.Generator) -> Dict[str, Any]:
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "data": data_rng.bit_generator.state,
                          "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any], data_rng: np.random.Generator) -> None:
    torch.set_rng_state(st["torch"])
    data_rng.bit_generator.state = st["data"]
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _as_floats(logs: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()}


def _autocast(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class MetricsLog:
    """Tidy ``metrics.csv`` (step, epoch, name, value), appended as training goes; TensorBoard when installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the CSV is the log
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we continue from (they will be logged again)."""
        if not (self.enabled and self.path.is_file()):
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "epoch", "name", "value"])
            w.writeheader()
            w.writerows(rows)

    def write(self, step: int, epoch: float, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "name", "value"])
            for k, v in values.items():
                w.writerow([step, f"{epoch:.6g}", k, repr(float(v))])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def knn_monitor(bundle: ModelBundle, dataset, device: torch.device, samples: int, seed: int) -> Optional[float]:
    """Top-1 weighted k-NN accuracy (k = 20, T = 0.07, cosine) of the encoder on the held-out set: 80% of
    ``samples`` held-out points as the bank, 20% as queries. None when the data set has no labels."""
    from ..metrics.knn import knn_predict, split_indices

    ev = dataset.eval_set()
    if ev.labels is None:
        return None
    n = min(samples, len(ev))
    was = bundle.training
    bundle.eval()
    feats = []
    for s in range(0, n, 512):
        x = ev.x[s:min(n, s + 512)].to(device)
        feats.append(bundle.encoder.forward_features(x).float())
    bundle.train(was)
    f = torch.nn.functional.normalize(torch.cat(feats), dim=1)
    labels = ev.labels[:n].to(device)
    bank_idx, query_idx = split_indices(n, 0.2, seed)
    bi, qi = torch.as_tensor(bank_idx, device=device), torch.as_tensor(query_idx, device=device)
    k = min(20, len(bank_idx))
    pred = knn_predict(f[bi], labels[bi], f[qi], [k], 0.07, int(labels.max()) + 1)[k]
    return float((pred == labels[qi]).float().mean())


def train(config: Dict[str, Any], out_dir: str | Path, resume: bool = False, progress: bool = True,
          on_log: Optional[Callable[[int, Dict[str, float]], None]] = None) -> TrainResult:
    """Train ``config`` (a resolved config, see ``train.config.resolve_config``) into ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReprscopeError(f"the run folder '{out_dir}' is a file; give a folder name", arg="out")
    tcfg = config["train"]
    device = resolve_device(tcfg["device"])
    started_dist = not dist.is_distributed()
    di = dist.init_from_env(device.type)
    started_dist = started_dist and di.enabled
    if di.enabled and device.type == "cuda":
        device = torch.device("cuda", di.local_rank)
        torch.cuda.set_device(device)
    try:
        result = _train(config, out_dir, resume, progress, on_log, device, di)
    except BaseException:
        dist.cleanup(started_dist, wait_for_peers=False)
        raise
    dist.cleanup(started_dist)
    return result


def _fits(dataset, device: torch.device) -> bool:
    """Whether the data set fits in half of the device's free memory (always on the CPU)."""
    if device.type != "cuda":
        return True
    need = int(dataset.memory_bytes()) if hasattr(dataset, "memory_bytes") else 0
    free, _total = torch.cuda.mem_get_info(device)
    return need <= free // 2


def _train(config, out_dir, resume, progress, on_log, device, di: dist.DistInfo) -> TrainResult:
    tcfg, ocfg = config["train"], config["optim"]
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)  # same initialisation on every rank
    random.seed(seed)
    # rank 0 draws the stream a one-process run draws; other ranks their own
    data_rng = np.random.default_rng([seed, 0] if di.rank == 0 else [seed, 0, di.rank])
    batch = int(tcfg["batch_size"])
    if batch % di.world_size:
        raise ReprscopeError(f"batch_size {batch} is the global batch and must divide by the {di.world_size} processes", arg="batch_size")
    local_batch = batch // di.world_size

    dataset = build_dataset(config["data"])
    if tcfg["data_on_device"] and _fits(dataset, device):
        dataset.to(device)  # uint8 images on the GPU, augmented there in batches
    bundle = build_bundle(config["model"], config["model"]["in_shape"])
    if di.enabled:
        bundle = dist.sync_batchnorm(bundle, device.type)
    bundle = bundle.to(device)
    images = len(config["model"]["in_shape"]) == 3
    if images and device.type == "cuda" and tcfg["channels_last"]:
        bundle = bundle.to(memory_format=torch.channels_last)
    method_cfg = {k: v for k, v in config["method"].items() if k != "name"}
    method = build_method(config["method"]["name"], method_cfg)
    method.setup(bundle)
    method = method.to(device)

    total = total_steps(config)
    per_epoch = steps_per_epoch(config)
    lr = ocfg["lr"] * (batch / 256 if ocfg["lr_scaling"] == "linear" else 1.0)
    groups = split_decay(method.param_groups(bundle), ocfg["exclude_bias_bn"])
    optimizer = build_optimizer(groups, ocfg, lr)
    warm = int(round(ocfg["warmup_epochs"] * per_epoch)) if ocfg.get("warmup_epochs") is not None else ocfg["warmup_steps"]
    lambdas = [(lambda s: 1.0) if g.get("fixed_lr") else
               (lambda s: lr_factor(s, total, warm, ocfg["schedule"], ocfg["min_lr_ratio"])) for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    start = 0
    metrics: Dict[str, float] = {}
    checkpoints: List[Path] = []
    last = out_dir / "last.pt"
    if not resume and (last.exists() or any(out_dir.glob("ckpt-*.pt"))):
        raise ReprscopeError(f"'{out_dir}' already holds a run (its checkpoints would mix with this one's); resume "
                             "it, or train into another folder", arg="resume")
    if resume:
        # last.pt is only written when a run finishes; an interrupted run resumes from its newest ckpt-*.pt
        src = last if last.is_file() else max(out_dir.glob("ckpt-*.pt"), default=None)
        if src is None:
            raise ReprscopeError(f"resume: no last.pt or ckpt-*.pt in '{out_dir}'; train without resume first", arg="resume")
        ck = read_checkpoint_file(src)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise ReprscopeError(f"resume: '{src}' is not a reprscope checkpoint", arg="resume")
        if ck["config"] != config:
            raise ReprscopeError("resume: the run dir was trained with a different config; use a new run folder or the same settings", arg="resume")
        if int(ck.get("world_size", 1)) != di.world_size:
            raise ReprscopeError(f"resume: the run was trained on {ck.get('world_size', 1)} processes, this is "
                                 f"{di.world_size}; resume with the same number to continue exactly", arg="resume")
        bundle.load_state_dict(ck["state_dict"])
        method.load_state_dict(ck.get("method_state", {}))
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng_ranks"][di.rank] if "rng_ranks" in ck else ck["rng"], data_rng)
        start = int(ck["step"])
        metrics = dict(ck.get("metrics", {}))
        checkpoints = sorted(out_dir.glob("ckpt-*.pt"))
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir, di.is_main)
    if resume:
        log.truncate_after(start)
    save_steps = tcfg.get("save_every_steps") or (tcfg["save_every"] * per_epoch if tcfg["save_every"] else None)
    knn_every = tcfg["knn_every"] if tcfg["knn_every"] is not None else save_steps
    has_labels = dataset.eval_set().labels is not None if knn_every else False

    module: nn.Module = TrainModule(bundle, method)
    if di.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
    if tcfg["compile"]:
        bundle.compile()

    def payload(step: int, metrics: Dict[str, float]) -> Dict[str, Any]:
        rng = _rng_state(data_rng)
        ranks = [rng]
        if di.enabled:
            ranks = [None] * di.world_size
            torch.distributed.all_gather_object(ranks, rng)
        return {
            "format": FORMAT, "reprscope_version": __version__, "method": config["method"]["name"], "config": config,
            "state_dict": {k: v.detach().cpu() for k, v in bundle.state_dict().items()},
            "method_state": {k: v.detach().cpu() for k, v in method.state_dict().items()},
            "step": step, "epoch": step / per_epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": ranks[0], "rng_ranks": ranks, "world_size": di.world_size,
            "metrics": dict(metrics),
        }

    def save(path: Path, step: int) -> None:
        p = payload(step, metrics)  # every rank takes part in gathering the rng states
        if di.is_main:
            try:
                save_native(path, p)
            except (OSError, RuntimeError) as exc:  # a full or read-only disk (torch reports it as RuntimeError)
                what = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise ReprscopeError(f"cannot write the checkpoint '{path}' ({what}); the checkpoints written "
                                     "before it are kept and a run can resume from them", arg="out") from None

    def monitor(step: int) -> None:
        if has_labels and di.is_main:
            acc = knn_monitor(bundle, dataset, device, tcfg["knn_samples"], seed)
            if acc is not None:
                metrics["knn_top1"] = acc
                log.write(step, step / per_epoch, {"knn_top1": acc})

    if start == 0 and save_steps:
        monitor(0)
        save(out_dir / "ckpt-0000000.pt", 0)  # the initialisation: the first point of every trajectory
        checkpoints.append(out_dir / "ckpt-0000000.pt")
    bundle.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {config['method']['name']}",
               disable=not (progress and di.is_main), dynamic_ncols=True, leave=False)
    t0, seen = time.perf_counter(), 0
    amp = _autocast(device, tcfg["amp"])
    cl = images and device.type == "cuda" and tcfg["channels_last"]
    for step in bar:
        views = [v.to(device, non_blocking=True) for v in dataset.train_views(local_batch, data_rng)]
        if cl:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with amp:
            loss, logs = module(views, step, total)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ocfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], ocfg["grad_clip"])
        optimizer.step()
        scheduler.step()
        method.after_step(bundle, step, total)
        seen += batch
        done = step + 1
        if done % tcfg["log_every"] == 0 or done == total:
            values = _as_floats({"loss": loss, **logs})
            if not np.isfinite(values["loss"]):
                raise ReprscopeError(f"the loss became {values['loss']} by step {done}; lower optim.lr or check the data")
            dt = time.perf_counter() - t0
            values["lr"] = optimizer.param_groups[0]["lr"]
            values["images_per_s"] = seen / dt if dt > 0 else float("nan")
            metrics.update(values)
            t0, seen = time.perf_counter(), 0
            bar.set_postfix(loss=f"{values['loss']:.4f}", ips=f"{values['images_per_s']:.0f}")
            log.write(done, done / per_epoch, values)
            if on_log:
                on_log(done, dict(values))
        if knn_every and done % knn_every == 0 and done != total:
            monitor(done)
        if save_steps and (done % save_steps == 0 or done == total):
            if done == total and knn_every:
                monitor(done)
            path = out_dir / f"ckpt-{done:07d}.pt"
            save(path, done)
            if path not in checkpoints:
                checkpoints.append(path)
    bar.close()
    bundle.eval()
    if not save_steps and knn_every:
        monitor(total)
    save(last, total)
    log.close()
    dist.barrier()
    return TrainResult(out_dir, last, checkpoints, metrics)
