"""Extraction: data set × views × layers → embedding store.

Works on any :class:`~reprscope.formats.LoadedModel`: the bundle says which layers exist and returns their
outputs; the data set gives the fixed held-out samples and their positive views. Batched, under
``torch.inference_mode``, written in chunks, atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import GeneratedDataset
from ..errors import ReprscopeError
from ..formats.base import LoadedModel
from .store import StoreWriter


#: Most augmented views of one extraction (every view is a full forward pass over the data set).
MAX_VIEWS = 1024


def view_names(n_aug: int, clean: bool = True) -> List[str]:
    """``["clean", "aug1", …, "augK"]``."""
    return (["clean"] if clean else []) + [f"aug{i + 1}" for i in range(n_aug)]


def extract(model: LoadedModel, dataset: GeneratedDataset, out: os.PathLike | str, *, views: int = 2,
            clean: bool = True, layers: Optional[Sequence[str]] = None, limit: Optional[int] = None,
            batch_size: int = 1024, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True) -> Path:
    """Write the store for ``model`` on the held-out set of ``dataset``.

    Args:
        views: number of augmented views drawn from the data set's positive-pair sampler.
        clean: also store the un-augmented input as view 0 (``clean``).
        layers: layer names to store (default: every layer of the bundle).
        limit: use only the first ``limit`` held-out samples.
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
    bundle = model.bundle.to(device).eval()
    infos = bundle.resolve_layers(layers)
    samples = dataset.eval_set()
    n = len(samples) if limit is None else min(limit, len(samples))
    names = view_names(views, clean)
    rng = np.random.default_rng([seed, 3])
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
    with StoreWriter(out, n, names, [(i.name, i.space, i.order, dims[i.name]) for i in infos], attrs) as w:
        sub = samples.select(slice(0, n))
        w.write_meta(sub.index.numpy(), None if sub.latents is None else sub.latents.numpy(), dataset.latent_names,
                     dataset.content_mask, None if sub.labels is None else sub.labels.numpy(),
                     None if sub.labels_coarse is None else sub.labels_coarse.numpy())
        for part, spec in bundle.head_specs.items():
            state = {k: v.detach().cpu().numpy() for k, v in getattr(bundle, part).state_dict().items()}
            w.write_module(part, spec, state)
        bar = tqdm(total=n, desc="extract", unit="sample", disable=not progress, leave=False, dynamic_ncols=True)
        for start in range(0, n, batch_size):
            batch = samples.select(slice(start, min(n, start + batch_size)))
            inputs = ([batch.x] if clean else []) + [dataset.augment(batch, rng, view=k) for k in range(views)]
            per_view: List[Dict[str, torch.Tensor]] = []
            with torch.inference_mode():
                for x in inputs:
                    per_view.append(bundle.forward_layers(x.to(device, non_blocking=True), [i.name for i in infos]))
            w.write_batch(start, {i.name: np.stack([pv[i.name].float().cpu().numpy() for pv in per_view]) for i in infos})
            bar.update(len(batch))
        bar.close()
    return Path(out)
