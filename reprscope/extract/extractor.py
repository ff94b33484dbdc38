"""Extraction: data set × views × layers → embedding store.

Works on any :class:`~reprscope.formats.LoadedModel`: the bundle says which layers exist and returns their
outputs; the data set gives the fixed held-out samples and their positive views. Batched, under
``torch.inference_mode``, written in chunks, atomically.
"""
from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import GeneratedDataset
from ..errors import ReprscopeError
from .. import distributed as dist
from ..formats.base import LoadedModel
from .store import STORAGE_DTYPES, StoreWriter


#: Most augmented views of one extraction (every view is a full forward pass over the data set).
MAX_VIEWS = 1024


def view_names(n_aug: int, clean: bool = True) -> List[str]:
    """``["clean", "aug1", …, "augK"]``."""
    return (["clean"] if clean else []) + [f"aug{i + 1}" for i in range(n_aug)]


def extract(model: LoadedModel, dataset: GeneratedDataset, out: os.PathLike | str, *, views: int = 2,
            clean: bool = True, layers: Optional[Sequence[str]] = None, limit: Optional[int] = None,
            batch_size: int = 1024, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
            storage: str = "float32", overlap_writes: bool = True) -> Path:
    """Write the store for ``model`` on the held-out set of ``dataset``.

    Args:
        views: number of augmented views drawn from the data set's positive-pair sampler.
        clean: also store the un-augmented input as view 0 (``clean``).
        layers: layer names to store (default: every layer of the bundle).
        limit: use only the first ``limit`` held-out samples.
        storage: the embeddings' dtype on disk, ``float32``, ``float16`` or ``bfloat16`` (read back in float64 /
            float32).
        overlap_writes: write each batch to the store in a writer thread while the next batch is computed.

    The views of batch ``b`` (``batch_size`` samples) are drawn from a random stream seeded by ``(seed, b)``. In a
    torchrun job (the process group initialised) batch ``b`` is extracted by rank ``b mod world`` and rank 0
    assembles the one store, equal to the single-process store (same arrays and attributes but the time).

    Returns:
        The path of the finished ``.h5``.
    """
    if views > MAX_VIEWS:
        raise ReprscopeError(f"views must be at most {MAX_VIEWS}, got {views}", arg="views")
    if views < 0 or (views == 0 and not clean):
        raise ReprscopeError("views must be >= 1 (or >= 0 with the clean view)", arg="views")
    if batch_size < 1:
        raise ReprscopeError(f"batch_size must be >= 1, got {batch_size}", arg="batch_size")
    if limit is not None and limit < 1:
        raise ReprscopeError(f"limit must be >= 1, got {limit}", arg="limit")
    if storage not in STORAGE_DTYPES:
        raise ReprscopeError(f"storage must be one of {', '.join(STORAGE_DTYPES)}; got '{storage}'", arg="storage")
    bundle = model.bundle.to(device).eval()
    infos = bundle.resolve_layers(layers)
    samples = dataset.eval_set()
    n = len(samples) if limit is None else min(limit, len(samples))
    names = view_names(views, clean)
    try:
        with torch.inference_mode():
            probe = bundle.forward_layers(samples.x[:2].to(device), [i.name for i in infos])
    except RuntimeError as exc:  # a shape or dtype mismatch between the model's input layer and the data
        trained = (model.dataset or {}).get("name")
        raise ReprscopeError(
            f"the model cannot take the samples of data set '{dataset.name}' (shape {tuple(samples.x.shape[1:])}): "
            f"{str(exc).splitlines()[0]}; use the data it was trained on"
            + (f" (its checkpoint says '{trained}': leave out data or pass data='{trained}')" if trained else ""),
            arg="data") from None
    dims = {k: int(v.shape[1]) for k, v in probe.items()}
    attrs: Dict[str, Any] = {
        "source": str(model.source), "source_sha256": model.sha256, "source_format": model.format,
        "source_branch": model.branch or "",
        "method": model.method, "dataset": dataset.spec(), "seed": int(seed),
        "step": -1 if model.step is None else int(model.step),
        "augmentation": {"sampler": f"{dataset.name}.augment", "views": names, "pair_mode": dataset.pair_mode,
                         "seed": int(seed), "batch_size": int(batch_size)},
    }
    layer_specs = [(i.name, i.space, i.order, dims[i.name]) for i in infos]
    layer_names = [i.name for i in infos]
    starts = list(range(0, n, batch_size))
    di = dist.work_info()  # every rank of a torchrun job in `reprscope extract`; else one process
    mine = [b for b in range(len(starts)) if b % di.world_size == di.rank]

    def run_batch(b: int) -> Dict[str, np.ndarray]:
        """The stored outputs of batch ``b``: its views are drawn from a stream of its own, seeded by (seed, b),
        so a sample gets the same views whichever process extracts its batch."""
        batch = samples.select(slice(starts[b], min(n, starts[b] + batch_size)))
        rng = np.random.default_rng([seed, 3, b])
        inputs = ([batch.x] if clean else []) + [dataset.augment(batch, rng, view=k) for k in range(views)]
        per_view: List[Dict[str, torch.Tensor]] = []
        with torch.inference_mode():
            for x in inputs:
                per_view.append(bundle.forward_layers(x.to(device, non_blocking=True), layer_names))
        return {name: np.stack([pv[name].float().cpu().numpy() for pv in per_view]) for name in layer_names}

    out = Path(out)
    bar = tqdm(total=sum(min(batch_size, n - starts[b]) for b in mine), desc="extract", unit="sample",
               disable=not progress or not di.is_main, leave=False, dynamic_ncols=True)
    if not di.enabled:
        with StoreWriter(out, n, names, layer_specs, attrs, storage=storage) as w:
            _write_header(w, samples, n, dataset, bundle)
            with ThreadPoolExecutor(max_workers=1) as writer:
                pending = None  # the previous batch's write, running while this batch is computed
                for b in mine:
                    outputs = run_batch(b)
                    if pending is not None:
                        pending.result()
                    if overlap_writes:
                        pending = writer.submit(w.write_batch, starts[b], outputs)
                    else:
                        w.write_batch(starts[b], outputs)
                    bar.update(min(batch_size, n - starts[b]))
                if pending is not None:
                    pending.result()
        bar.close()
        return out
    return _extract_sharded(out, n, names, layer_specs, attrs, samples, dataset, bundle, starts, mine, batch_size,
                            run_batch, bar, di, storage)


def _write_header(w: StoreWriter, samples: Any, n: int, dataset: GeneratedDataset, bundle: Any) -> None:
    """Index, latents, labels and the heads' specs and weights of the store."""
    sub = samples.select(slice(0, n))
    w.write_meta(sub.index.numpy(), None if sub.latents is None else sub.latents.numpy(), dataset.latent_names,
                 dataset.content_mask, None if sub.labels is None else sub.labels.numpy(),
                 None if sub.labels_coarse is None else sub.labels_coarse.numpy())
    for part, spec in bundle.head_specs.items():
        state = {k: v.detach().cpu().numpy() for k, v in getattr(bundle, part).state_dict().items()}
        w.write_module(part, spec, state)


#: A testing hook: the rank named here dies (``os._exit``) after its first batch, as a crashed process would.
FAULT_RANK_ENV = "REPRSCOPE_FAULT_RANK"


def _extract_sharded(out: Path, n: int, names: List[str], layer_specs: List[tuple], attrs: Dict[str, Any],
                     samples: Any, dataset: GeneratedDataset, bundle: Any, starts: List[int], mine: List[int],
                     batch_size: int, run_batch: Any, bar: Any, di: Any, storage: str = "float32") -> Path:
    """Extraction over the ranks of a torchrun job: batch ``b`` goes to rank ``b mod world``. Rank 0 writes its
    batches into the store itself; every other rank into a shard beside it (``.<name>.<pid>.partial``); after all
    ranks finished, rank 0 copies the shards in and moves the store into place. The store is the single-process
    one (same batches, same view streams); if any rank fails, no store is moved into place and every rank stops
    with one error line."""
    fault = os.environ.get(FAULT_RANK_ENV)
    # torchrun stops the other processes with SIGTERM when one fails: turn it into an error, so that this process
    # removes its partial file and says what happened in one line
    previous = signal.getsignal(signal.SIGTERM)

    def stopped(signum: int, frame: Any) -> None:
        raise ReprscopeError("the torchrun job was stopped while extracting (another process failed); no store was "
                             "written")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stopped)
    try:
        return _sharded_body(out, n, names, layer_specs, attrs, samples, dataset, bundle, starts, mine, batch_size,
                             run_batch, bar, di, fault, storage)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _sharded_body(out: Path, n: int, names: List[str], layer_specs: List[tuple], attrs: Dict[str, Any],
                  samples: Any, dataset: GeneratedDataset, bundle: Any, starts: List[int], mine: List[int],
                  batch_size: int, run_batch: Any, bar: Any, di: Any, fault: Optional[str], storage: str) -> Path:
    import h5py

    w: Optional[StoreWriter] = None
    shard_path: Optional[Path] = None
    shard = None
    try:
        if di.is_main:
            w = StoreWriter(out, n, names, layer_specs, attrs, storage=storage)
            _write_header(w, samples, n, dataset, bundle)
        else:
            shard_path = out.parent / f".{out.name}.{os.getpid()}.partial"
            shard = h5py.File(shard_path, "w")
            rows = sum(min(batch_size, n - starts[b]) for b in mine)
            for name, _space, _order, dim in layer_specs:
                shard.create_dataset(name, shape=(len(names), rows, int(dim)), dtype="float32")  # rank 0 encodes
            shard.create_dataset("starts", data=np.asarray([starts[b] for b in mine], dtype=np.int64))
        row = 0
        for i, b in enumerate(mine):
            outputs = run_batch(b)
            size = min(batch_size, n - starts[b])
            if w is not None:
                w.write_batch(starts[b], outputs)
            else:
                for name, arr in outputs.items():
                    shard[name][:, row:row + size] = arr
            row += size
            bar.update(size)
            if fault is not None and int(fault) == di.rank and i == 0:
                os._exit(1)  # the testing hook: die as a crashed process would, without cleaning up
        bar.close()
        if shard is not None:
            shard.close()
            shard = None
        paths = _all_gather_object(None if shard_path is None else str(shard_path))
        if w is not None:
            for r, p in enumerate(paths):
                if p is None:
                    continue
                with h5py.File(p, "r") as f:
                    row = 0
                    for start in f["starts"][()]:
                        size = min(batch_size, n - int(start))
                        w.write_batch(int(start), {name: f[name][:, row:row + size] for name, *_ in layer_specs})
                        row += size
            w.close()
            w = None
        _barrier()  # the store is in place; the shards may go
    except BaseException:
        if w is not None:
            w.abort()
        if shard is not None:
            shard.close()
        if shard_path is not None and shard_path.exists():
            shard_path.unlink()
        raise
    if shard_path is not None and shard_path.exists():
        shard_path.unlink()
    return out


def _collective_failed(exc: BaseException) -> ReprscopeError:
    """The error of a rank whose peer died: a collective fails with the transport's message (gloo's "Connection
    reset by peer" with its source path), which says nothing more to a user than this."""
    del exc
    return ReprscopeError("another process of the torchrun job failed during the extraction (its connection "
                          "closed); no store was written")


def _all_gather_object(obj: Any) -> List[Any]:
    import torch.distributed as tdist

    box: List[Any] = [None] * tdist.get_world_size()
    try:
        tdist.all_gather_object(box, obj)
    except RuntimeError as exc:
        raise _collective_failed(exc) from None
    return box


def _barrier() -> None:
    import torch.distributed as tdist

    try:
        tdist.barrier()
    except RuntimeError as exc:
        raise _collective_failed(exc) from None
