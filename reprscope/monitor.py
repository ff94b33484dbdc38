"""A training-loop monitor: the analyzers on a fixed probe set, every few steps, without touching training.

``monitor = reprscope.Monitor(model, probe, layers=..., analyzers=[...])``; then ``monitor(step)`` inside the
loop records the named layers on the probe batches (eval mode, no autograd), runs the analyzers in memory
(the same per-layer loop as ``reprscope.analyze`` on arrays) and appends rows with ``step`` filled to
``monitor.table``, and optionally to a CSV file and TensorBoard.

What it guarantees (tested: a run with the monitor ends bit-identical to the same run without it):

* every module's train/eval flag is restored, no gradient is recorded, no parameter or buffer changes (the
  forward runs in eval mode, so BatchNorm's running statistics are not updated);
* the random streams of torch (CPU and CUDA), numpy's global generator and Python's ``random`` are saved
  before and restored after (iterating a shuffling DataLoader draws from torch's generator).
"""
from __future__ import annotations

import csv
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import ReprscopeError
from .extract.module import Batch, ModuleLayers, embed, split_batch
from .table import escape_csv, make_table


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore torch's (CPU and every CUDA device's), numpy's global and Python's random state on exit."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class Monitor:
    """Analyzers on a fixed probe set during training.

    Args:
        model: the ``nn.Module`` being trained (its ``layers`` recorded with hooks), or a function
            ``embed(x) -> tensor | {layer: tensor}`` giving the (B, d) embeddings of one view ``x``.
        probe: a fixed batch (a tensor, ``(x1, x2, y)`` or a dict, as a DataLoader yields) or an iterable of such
            batches (re-read at every call; keep it small: everything is held in memory).
        layers: as in :func:`reprscope.analyze` for a module (default: the model's top-level children).
        analyzers: analyzer names (default: ``spectrum``, ``center``); params: ``{analyzer: {key: value}}``.
        csv_path: append every new row to this CSV file (header written once).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` (or a log folder): scalar rows are logged as
            ``reprscope/<layer>/<analyzer>/<metric>/<view>`` at the step.
        pool, forward: as in :func:`reprscope.analyze` for a module.
        device: where the analyzers' linear algebra runs (default: the CPU).
    """

    def __init__(self, model: Union[nn.Module, Callable[[Any], Any]], probe: Any, *,
                 layers: Union[None, Sequence[str], Mapping[str, str]] = None,
                 analyzers: Optional[Sequence[str]] = ("spectrum", "center"),
                 params: Optional[Mapping[str, Mapping[str, Any]]] = None, csv_path: Optional[os.PathLike] = None,
                 tensorboard: Any = None, pool: Union[str, Callable] = "mean", forward: Optional[Callable] = None,
                 device: Optional[str] = None, seed: int = 0):
        from .api import _selected

        self.analyzers, self.params = _selected(analyzers, params)
        if isinstance(model, nn.Module):
            self._layers: Optional[ModuleLayers] = ModuleLayers(model, layers, pool, forward)
            self._fn = None
        elif callable(model):
            self._layers, self._fn = None, model
        else:
            raise ReprscopeError(f"expected model as an nn.Module or a function returning embeddings, got "
                                 f"{type(model).__name__}")
        if probe is None:
            raise ReprscopeError("Monitor needs a probe: a fixed batch or a small loader of batches")
        self.probe = probe
        self.device = device or "cpu"
        self.seed = int(seed)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        if self.csv_path is not None and self.csv_path.is_dir():
            raise ReprscopeError(f"csv_path '{self.csv_path}' is a folder; give a file name")
        self._tb = self._writer(tensorboard)
        self._tables: List[pd.DataFrame] = []
        self.notes: List[str] = []

    @staticmethod
    def _writer(tb: Any) -> Any:
        if tb is None or hasattr(tb, "add_scalar"):
            return tb
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ReprscopeError("tensorboard= needs the tensorboard package (pip install 'reprscope[tensorboard]')") from None
        return SummaryWriter(str(tb))

    def _batches(self) -> List[Any]:
        p = self.probe
        if isinstance(p, (torch.Tensor, np.ndarray, tuple, dict)) or (isinstance(p, list) and p and
                                                                        isinstance(p[0], (torch.Tensor, np.ndarray))):
            return [p]
        return list(p)

    def embeddings(self) -> Dict[str, Any]:
        """``{"arrays": {layer: (V, n, d)}, "labels": (n,) or None, "latents": ...}`` of the probe, now."""
        outs: List[Dict[str, np.ndarray]] = []
        labels: List[Any] = []
        latents: List[Any] = []
        if self._layers is not None:
            for o, b in embed(self._layers, self._batches()):
                outs.append(o)
                labels.append(b.labels)
                latents.append(b.latents)
        else:
            for raw in self._batches():
                b = raw if isinstance(raw, Batch) else split_batch(raw)
                with torch.no_grad():
                    per_view = [self._fn_outputs(x) for x in b.views]
                outs.append({k: np.stack([pv[k] for pv in per_view]) for k in per_view[0]})
                labels.append(b.labels)
                latents.append(b.latents)
        arrays = {k: np.concatenate([o[k] for o in outs], axis=1) for k in outs[0]}
        cat = lambda xs: None if any(x is None for x in xs) else np.concatenate(xs)  # noqa: E731
        return {"arrays": arrays, "labels": cat(labels), "latents": cat(latents)}

    def _fn_outputs(self, x: Any) -> Dict[str, np.ndarray]:
        got = self._fn(x)
        if isinstance(got, Mapping):
            return {str(k): _host(v) for k, v in got.items()}
        return {"embeddings": _host(got)}

    def __call__(self, step: int) -> pd.DataFrame:
        """Compute the analyzers on the probe at ``step``; the new rows (also appended to :attr:`table`)."""
        from .api import _array_layers
        from .pipeline import analyze_layers

        with preserved_random_state():
            emb = self.embeddings()
            layer_list, base = _array_layers(emb["arrays"], labels=emb["labels"], latents=emb["latents"],
                                             seed=self.seed, device=self.device)
            rows, notes = analyze_layers(layer_list, self.analyzers, self.params,
                                         {**base, "source": "monitor", "data": "probe", "step": int(step)})
        self.notes.extend(n for n in notes if n not in self.notes)
        new = make_table(rows)
        self._tables.append(new)
        self._log(new, int(step))
        return new

    def _log(self, new: pd.DataFrame, step: int) -> None:
        if self.csv_path is not None and len(new):
            header = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            try:
                escape_csv(new).to_csv(self.csv_path, mode="a", header=header, index=False, quoting=csv.QUOTE_MINIMAL)
            except OSError as exc:
                raise ReprscopeError(f"cannot append to csv_path '{self.csv_path}': {exc.strerror}") from None
        if self._tb is not None:
            for r in new[new["index"] == ""].itertuples():
                self._tb.add_scalar(f"reprscope/{r.layer}/{r.analyzer}/{r.metric}/{r.view}", float(r.value), step)

    @property
    def table(self) -> pd.DataFrame:
        """Every row recorded so far (one block per monitored step)."""
        return pd.concat(self._tables, ignore_index=True) if self._tables else make_table([])


def _host(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dim() > 2:
            from .models.bundle import pool_features
            x = pool_features(x)
        return x.float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


__all__ = ["Monitor", "preserved_random_state"]
