"""Any ``torch.nn.Module``: its named submodules' outputs recorded with forward hooks, from any batches.

The user's model needs no registered format. :class:`ModuleLayers` records the outputs of the submodules named
by dotted path (``{"encoder": "backbone", "projector": "head"}``, a list of paths, or by default the model's
top-level children) during the model's own forward, pools conv maps and token sequences to (B, d) as the
checkpoint path does, and restores every train/eval flag and gradient mode it touched. Heads made of the layer
types of :func:`~reprscope.models.heads.spec_of_module` are stored under ``/modules`` so that the ``weights``
and ``tangent`` analyzers work on a user's own projector.

Batches (:func:`split_batch`): a tensor (one view); a tuple or list whose floating tensors are the views and
whose integer tensor is the labels — ``(x1, x2, y)``, ``(x, y)``, ``([x1, x2], y)``; or a dict with views
under any floating keys (or a list under ``views``), labels under ``label(s)``/``y``/``target(s)`` and
latents under ``latents``.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ReprscopeError
from ..models.bundle import pool_features
from ..models.heads import spec_of_module
from .store import StoreWriter

#: Pooling of a layer output with more than two dimensions (B, ...) → (B, d).
POOLS = ("mean", "cls", "flatten")

#: Layer names (the table's names) whose space is read off the name; any other layer is ``intermediate``.
_SPACE_NAMES = {
    "encoder": "encoder", "backbone": "encoder", "trunk": "encoder", "features": "encoder",
    "projector": "projector", "head": "projector", "projection_head": "projector", "projection": "projector",
    "proj": "projector", "predictor": "predictor", "prediction_head": "predictor",
}

_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def space_of(name: str) -> str:
    """The store space (encoder | intermediate | projector | predictor) of a layer named ``name``."""
    return _SPACE_NAMES.get(name.split(".")[0].lower(), "intermediate") if "." not in name else "intermediate"


def pool(t: torch.Tensor, how: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "mean") -> torch.Tensor:
    """(B, d) from a layer output: ``mean`` averages conv maps over space and token sequences over tokens (the
    checkpoint path's choice), ``cls`` takes token 0 of a sequence (conv maps averaged), ``flatten`` keeps
    everything; a callable is applied as it is."""
    if callable(how):
        out = how(t)
    elif t.dim() == 2:
        out = t
    elif how == "mean":
        out = pool_features(t)
    elif how == "cls":
        out = t[:, 0] if t.dim() == 3 else pool_features(t)
    else:
        out = t.flatten(1)
    if out.dim() != 2:
        raise ReprscopeError(f"pooling gave shape {tuple(out.shape)}; expected (batch, d)")
    return out


def _first_tensor(o: Any) -> Optional[torch.Tensor]:
    if isinstance(o, torch.Tensor):
        return o
    if isinstance(o, Mapping):
        if "last_hidden_state" in o:
            return o["last_hidden_state"]
        o = list(o.values())
    if isinstance(o, (list, tuple)):
        for x in o:
            t = _first_tensor(x)
            if t is not None:
                return t
    return None


def resolve_layers(model: nn.Module, layers: Union[None, str, Sequence[str], Mapping[str, str]]) -> Dict[str, str]:
    """``{table name: dotted path}``: a mapping as given, a list of paths (named by themselves), or the model's
    top-level children. Every path must name a submodule (``""`` is the whole model)."""
    if layers is None:
        names = [n for n, _ in model.named_children()]
        if not names:
            raise ReprscopeError(f"{type(model).__name__} has no child modules; name the layers to record, "
                                 "e.g. layers={'encoder': ''} for the whole model")
        out = {n: n for n in names}
    elif isinstance(layers, str):
        out = {layers or "output": layers}
    elif isinstance(layers, Mapping):
        out = {str(k): str(v) for k, v in layers.items()}
    else:
        out = {str(p) or "output": str(p) for p in layers}
    if not out:
        raise ReprscopeError("layers names nothing; give dotted module paths or leave it out for the top-level children")
    for name, path in out.items():
        try:
            model.get_submodule(path)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children()) or "(none)"
            raise ReprscopeError(f"{type(model).__name__} has no submodule '{path}' (layer '{name}'); its top-level "
                                 f"children are: {children}") from None
    return out


@contextmanager
def frozen(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Eval mode and no autograd inside; every module's train flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


class ModuleLayers:
    """The outputs of named submodules of a user's model.

    Args:
        model: any ``nn.Module``.
        layers: ``{name: dotted path}``, a list of paths, or None (top-level children).
        pool: ``mean`` | ``cls`` | ``flatten`` or a callable (B, ...) → (B, d), see :func:`pool`.
        forward: how to run the model on a view, ``forward(model, x)``; default ``model(x)``.
    """

    def __init__(self, model: nn.Module, layers: Union[None, str, Sequence[str], Mapping[str, str]] = None,
                 pool: Union[str, Callable] = "mean", forward: Optional[Callable[[nn.Module, Any], Any]] = None):
        if not isinstance(model, nn.Module):
            raise ReprscopeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if not callable(pool) and pool not in POOLS:
            raise ReprscopeError(f"The 'pool' parameter must be one of {', '.join(POOLS)} or a callable. Got {pool!r} instead.")
        self.model, self.pool, self.forward = model, pool, forward
        self.paths = resolve_layers(model, layers)
        bad = [n for n in self.paths if "/" in n or not n]
        if bad:
            raise ReprscopeError(f"layer name {bad[0]!r} cannot be used; give names without '/'")

    @property
    def names(self) -> List[str]:
        return list(self.paths)

    def spaces(self) -> Dict[str, str]:
        return {n: space_of(n) for n in self.paths}

    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def outputs(self, x: Any) -> Dict[str, torch.Tensor]:
        """{name: (B, d) float tensor} of one view ``x`` (the caller sets eval/no-grad, see :func:`frozen`)."""
        got: Dict[str, Any] = {}
        hooks = []
        for name, path in self.paths.items():
            mod = self.model.get_submodule(path)
            hooks.append(mod.register_forward_hook(lambda _m, _i, o, n=name: got.setdefault(n, o)))
        try:
            if self.forward is not None:
                self.forward(self.model, x)
            else:
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
        out: Dict[str, torch.Tensor] = {}
        for name in self.paths:
            if name not in got:
                raise ReprscopeError(f"layer '{name}' (module '{self.paths[name]}') was not called by the model's "
                                     "forward; name modules the forward runs, or pass forward=")
            t = _first_tensor(got[name])
            if t is None or not torch.is_floating_point(t):
                raise ReprscopeError(f"layer '{name}' returned {type(got[name]).__name__}, not a floating tensor")
            out[name] = pool(t.detach(), self.pool).float()
        return out

    def heads(self) -> Dict[str, tuple]:
        """``{projector|predictor: (spec, params)}`` for recorded heads made of supported layers."""
        out: Dict[str, tuple] = {}
        for name, path in self.paths.items():
            part = self.spaces()[name]
            if part in ("projector", "predictor") and part not in out:
                got = spec_of_module(self.model.get_submodule(path))
                if got is not None and got[0]:
                    out[part] = got
        return out

    def source(self) -> str:
        return f"{type(self.model).__module__}.{type(self.model).__qualname__}"

    def param_hash(self) -> str:
        """SHA-256 of the model's parameters and buffers (names, shapes, dtypes and values, in order)."""
        h = hashlib.sha256()
        for k, v in self.model.state_dict().items():
            if not isinstance(v, torch.Tensor):
                continue
            t = v.detach().cpu().contiguous()
            h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


@dataclass
class Batch:
    """One batch: its views (each (B, ...)), and (B,) labels / (B, k) latents when it carries them."""

    views: List[Any]
    labels: Optional[np.ndarray] = None
    latents: Optional[np.ndarray] = None


def _as_tensor(x: Any) -> Any:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def split_batch(batch: Any) -> Batch:
    """Views, labels and latents of one batch of a data loader (see the module docstring)."""
    batch = _as_tensor(batch)
    if isinstance(batch, torch.Tensor):
        return Batch([batch])
    views: List[Any] = []
    labels = latents = None

    def take(x: Any, key: str = "") -> None:
        nonlocal labels, latents
        x = _as_tensor(x)
        if isinstance(x, (list, tuple)) and x and all(isinstance(_as_tensor(v), torch.Tensor) for v in x):
            for v in x:
                take(v, key)
            return
        if not isinstance(x, torch.Tensor):
            return  # strings, paths, metadata
        k = key.lower()
        if k == "latents":
            latents = x.detach().cpu().numpy().reshape(len(x), -1)
        elif k in _LABEL_KEYS or (not k and not torch.is_floating_point(x) and x.dim() <= 2):
            if labels is not None:
                raise ReprscopeError("a batch holds two integer tensors; which are the labels is ambiguous (give a "
                                     "dict with 'labels')")
            labels = x.detach().cpu().numpy().reshape(len(x), -1)[:, 0]
        elif torch.is_floating_point(x):
            views.append(x)

    if isinstance(batch, Mapping):
        for k, v in batch.items():
            take(v, str(k))
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            take(v)
    else:
        raise ReprscopeError(f"expected batches as a tensor, a tuple/list of tensors or a dict, got "
                             f"{type(batch).__name__}")
    if not views:
        raise ReprscopeError("a batch holds no floating tensor to feed the model (expected a tensor, (x1, x2, y) or "
                             "a dict with the inputs)")
    return Batch(views, labels, latents)


def dataset_batches(name: Union[str, Mapping[str, Any]], views: int = 2, clean: bool = True,
                    limit: Optional[int] = None, batch_size: int = 256, seed: int = 0) -> Tuple[Iterator[Batch], int, Any]:
    """Batches of a registered data set's held-out samples: the clean input and ``views`` augmented views, with
    labels and latents (the views, their order and the random stream of the checkpoint path's extraction)."""
    from ..data.base import build_dataset

    dataset = build_dataset(dict(name) if isinstance(name, Mapping) else name)
    samples = dataset.eval_set()
    n = len(samples) if limit is None else min(int(limit), len(samples))
    rng = np.random.default_rng([seed, 3])

    def gen() -> Iterator[Batch]:
        for start in range(0, n, batch_size):
            b = samples.select(slice(start, min(n, start + batch_size)))
            xs = ([b.x] if clean else []) + [dataset.augment(b, rng, view=k) for k in range(views)]
            yield Batch(xs, None if b.labels is None else b.labels.numpy(),
                        None if b.latents is None else b.latents.numpy())

    return gen(), n, dataset


def embed(layers: ModuleLayers, batches: Iterable[Any], *, device: Any = None, limit: Optional[int] = None,
          eval_mode: bool = True, progress: bool = False, total: Optional[int] = None
          ) -> Iterator[Tuple[Dict[str, np.ndarray], Batch]]:
    """``({layer: (V, b, d) float32}, batch)`` for every batch, in eval mode without gradients (modes restored).
    ``device``: where the inputs go (default: the model's)."""
    dev = torch.device(device) if device is not None else layers.device()
    seen = 0
    n_views = None
    bar = tqdm(total=total, desc="extract", unit="sample", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        with frozen(layers.model, eval_mode):
            for raw in batches:
                batch = raw if isinstance(raw, Batch) else split_batch(raw)
                if n_views is None:
                    n_views = len(batch.views)
                elif len(batch.views) != n_views:
                    raise ReprscopeError(f"the batches disagree: the first has {n_views} view(s), a later one "
                                         f"{len(batch.views)}")
                b = len(batch.views[0])
                if limit is not None and seen + b > limit:
                    b = limit - seen
                    batch = Batch([v[:b] for v in batch.views], None if batch.labels is None else batch.labels[:b],
                                  None if batch.latents is None else batch.latents[:b])
                per_view = [layers.outputs(_to(v, dev)) for v in batch.views]
                out = {n: np.stack([pv[n].cpu().numpy() for pv in per_view]) for n in layers.names}
                seen += b
                bar.update(b)
                yield out, batch
                if limit is not None and seen >= limit:
                    break
    finally:
        bar.close()


def _to(x: Any, dev: torch.device) -> Any:
    return x.to(dev) if isinstance(x, torch.Tensor) else x


def extract_module(model: nn.Module, data: Any, out: Union[str, os.PathLike], *,
                   layers: Union[None, str, Sequence[str], Mapping[str, str]] = None, views: int = 2,
                   clean: bool = True, limit: Optional[int] = None, batch_size: int = 256, device: Any = None,
                   seed: int = 0, pool: Union[str, Callable] = "mean", forward: Optional[Callable] = None,
                   progress: bool = True) -> Path:
    """Write the embedding store of a user's model: the same ``.h5`` as ``reprscope extract`` (README, Files), written
    atomically, with the model's class name and a SHA-256 of its parameters as its source.

    Args:
        data: an iterable of batches (a ``DataLoader``; see :func:`split_batch`) or a registered data set name
            (its held-out set, ``clean`` + ``views`` augmented views, as the command line extracts it).
        views, clean, batch_size, seed: for a registered data set only (a loader's batches carry their views).
        limit: at most this many samples.
    """
    ml = ModuleLayers(model, layers, pool, forward)
    if limit is not None and limit < 2:
        raise ReprscopeError(f"The 'limit' parameter must be an int >= 2. Got {limit!r} instead.")
    dataset_spec: Any = "custom"
    total = None
    if isinstance(data, (str, Mapping)) and not isinstance(data, torch.Tensor):
        if batch_size < 1:
            raise ReprscopeError(f"The 'batch_size' parameter must be an int >= 1. Got {batch_size!r} instead.")
        batches, total, ds = dataset_batches(data, views, clean, limit, batch_size, seed)
        names = (["clean"] if clean else []) + [f"aug{i + 1}" for i in range(views)]
        dataset_spec = ds.spec()
        latent_names, content = list(ds.latent_names), list(ds.content_mask or [False] * len(ds.latent_names))
    else:
        if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
            raise ReprscopeError(f"expected data as an iterable of batches (e.g. a DataLoader) or a data set name, "
                                 f"got {type(data).__name__}")
        batches, names, latent_names, content = iter(data), None, [], []
        try:
            total = len(data.dataset) if hasattr(data, "dataset") else len(data)
        except TypeError:
            total = None
        if total is not None and limit is not None:
            total = min(total, limit)
    stream = embed(ml, batches, device=device, limit=limit, progress=progress, total=total)
    first = next(stream, None)
    if first is None:
        raise ReprscopeError("the data gave no batch")
    outs, batch = first
    if names is None:
        names = [f"view{i}" for i in range(len(batch.views))]
    spaces = ml.spaces()
    dims = {n: int(a.shape[2]) for n, a in outs.items()}
    attrs: Dict[str, Any] = {
        "source": ml.source(), "source_sha256": ml.param_hash(), "source_format": "module", "source_branch": "",
        "method": "", "dataset": dataset_spec, "seed": int(seed), "step": -1,
        "augmentation": {"sampler": "data loader" if dataset_spec == "custom" else f"{dataset_spec['name']}.augment",
                         "views": names, "seed": int(seed)},
        "modules_recorded": dict(ml.paths),
    }
    layer_rows = [(n, spaces[n], i, dims[n]) for i, n in enumerate(ml.names)]
    with StoreWriter(out, total or 4096, names, layer_rows, attrs, growable=True) as w:
        for part, (spec, state) in ml.heads().items():
            w.write_module(part, spec, state)
        first_latents = batch.latents is not None
        while True:
            w.append(outs, batch.labels, batch.latents)
            got = next(stream, None)
            if got is None:
                break
            outs, batch = got
        if first_latents:
            k = w.f["latents"].shape[1]
            names_l = latent_names if len(latent_names) == k else [str(j) for j in range(k)]
            w.f["latents"].attrs["names"] = json.dumps(names_l)
            w.f["latents"].attrs["content"] = json.dumps([bool(c) for c in (content if len(content) == k else [False] * k)])
    return Path(out)


__all__ = ["Batch", "ModuleLayers", "POOLS", "dataset_batches", "embed", "extract_module", "frozen", "pool",
           "space_of", "split_batch"]
