"""The data every metric reads, and the record every metric computation returns.

:class:`LayerData` holds the (V, n, d) embeddings of one layer, in memory or on disk (an ``h5py.Dataset``),
and hands them out in chunks: every metric is computed from those chunks (sufficient statistics per chunk,
then a final step), so a whole array in memory and a store streamed from disk give the same numbers.
:class:`Result` is what a metric computation returns: tidy rows ``{view, metric, index, value}`` and notes.
:func:`declare` attaches to a computation the parameters and needs under which the analyzer registry
(:mod:`reprscope.analyzers`) runs it; nothing here registers anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..params import Param


@dataclass(frozen=True)
class Declaration:
    """How a row-producing computation ``fn(data: LayerData, **params) -> Result`` is run as an analyzer."""

    name: str
    params: Sequence[Param] = ()
    needs: Sequence[str] = ()
    summary: str = ""
    paper: str = ""
    min_samples: int = 2
    reads_embeddings: bool = True
    pairwise: bool = False
    no_bootstrap: str = ""
    headline: Sequence[str] = ()
    split: bool = False


def declare(name: str, *, params: Sequence[Param] = (), needs: Sequence[str] = (), summary: str = "",
            paper: str = "", min_samples: int = 2, reads_embeddings: bool = True, pairwise: bool = False,
            no_bootstrap: str = "", headline: Sequence[str] = (), split: bool = False) -> Callable:
    """Attach a :class:`Declaration` to ``fn`` as ``fn.declaration`` (the function itself is unchanged).

    ``pairwise=True`` declares a computation of two layers on the same samples, ``fn(x, y, **params)``
    (representation similarity): the pipeline runs it on pairs of layers instead of on each layer.
    ``no_bootstrap`` says why resampling the samples with replacement would not give a valid confidence
    interval of this computation (a train/test split that copies of a sample land on both sides of, nearest
    neighbours at distance 0 …); empty when it does. ``headline``: the metrics a summary shows first.
    ``split``: the computation's passes over the samples are shared by the processes of a torchrun job
    (:mod:`reprscope.metrics._ranks`: each rank reads its share of the chunks or batches, the partial results
    are reduced with collectives), so every rank runs it; the others run on rank 0 alone.
    """

    def deco(fn: Callable) -> Callable:
        line = summary or (fn.__doc__ or "").strip().splitlines()[0]
        fn.declaration = Declaration(name, tuple(params), tuple(needs), line, paper, min_samples, reads_embeddings,
                                     pairwise, no_bootstrap, tuple(headline), split)
        return fn

    return deco


@dataclass
class HeadModule:
    """A stored head: its layer-spec list and parameters by ``nn.Sequential`` name ( ``/modules``)."""

    spec: List[Dict[str, Any]]
    params: Dict[str, np.ndarray]


@dataclass
class LayerData:
    """Everything an analyzer sees for one layer of one source.

    The embeddings may live on disk (an ``h5py.Dataset``): analyzers read them through :meth:`chunks` (bounded
    memory, the streaming path) or :meth:`view` (one whole view in memory), never by indexing
    ``embeddings`` directly, so that the sample mask and the chunking apply everywhere. Statistics shared by
    several analyzers (per-view moments, the finite mask) are computed once per layer and kept in ``cache``.

    Attributes:
        layer: dotted layer name; ``space``: encoder | intermediate | projector | predictor.
        views: view names, e.g. ``["clean", "aug1", "aug2"]``; ``embeddings``: (V, n_stored, d) array or dataset.
        latents: (n, k) ground truth or None, with ``latent_names`` and ``content_mask`` (k,) bool.
        labels, labels_coarse: (n,) int arrays or None (already restricted to the kept samples).
        modules: stored heads by part name.
        seed: seed for anything random (splits, subsampling).
        mask: (n_stored,) bool, the samples kept (None: all).
        device: torch device for the heavy linear algebra (``cpu``, ``cuda``…).
        chunk_size: samples per chunk on the streaming path.
        weights: the source network's weight matrices by module path, when the source is a checkpoint or a
            module (``esd``); empty for a store (which holds only its heads, in ``modules``).
    """

    layer: str
    space: str
    views: List[str]
    embeddings: Any
    latents: Optional[np.ndarray] = None
    latent_names: List[str] = field(default_factory=list)
    content_mask: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    labels_coarse: Optional[np.ndarray] = None
    modules: Dict[str, HeadModule] = field(default_factory=dict)
    seed: int = 0
    mask: Optional[np.ndarray] = None
    device: str = "cpu"
    chunk_size: int = 8192
    weights: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    cache: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.embeddings.dtype)

    def aug_view_ids(self) -> List[int]:
        """Indices of the augmented views (every view except ``clean``)."""
        return [i for i, v in enumerate(self.views) if v != "clean"]

    def reference_view_id(self) -> int:
        """The view whose inputs the latents/labels describe: ``clean`` when stored, else view 0."""
        return self.views.index("clean") if "clean" in self.views else 0

    def chunks(self, views: Optional[Sequence[int]] = None, dtype: Any = np.float64,
               size: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yield (len(views), b, d) arrays of the kept samples in order, ``size`` (default ``chunk_size``)
        stored samples at a time.

        Each chunk is read in one indexing operation (a slice when the views are consecutive, else one sorted
        index list). For in-memory embeddings of the requested dtype without a sample mask the chunk is a
        *view* of ``embeddings``, not a copy: callers must never modify a chunk in place.
        """
        for _start, block in self._chunks(views, dtype, size, (0, 1)):
            yield block

    def shared_chunks(self, views: Optional[Sequence[int]] = None, dtype: Any = np.float64,
                      size: Optional[int] = None) -> Iterator["tuple[int, np.ndarray]"]:
        """This process's share of :meth:`chunks` in a torchrun job that splits the work (chunk i when i mod
        world = rank; every chunk in a single process), each with the position of its first kept sample. The
        other ranks' chunks are not read."""
        from ._ranks import share

        yield from self._chunks(views, dtype, size, share())

    def _chunks(self, views: Optional[Sequence[int]], dtype: Any, size: Optional[int],
                part: "tuple[int, int]") -> Iterator["tuple[int, np.ndarray]"]:
        ids = list(range(len(self.views))) if views is None else [int(v) for v in views]
        step = int(size or self.chunk_size)
        total = int(self.embeddings.shape[1])
        if not ids:
            return
        consecutive = ids == list(range(ids[0], ids[0] + len(ids)))
        order = sorted(set(ids))
        pos = 0
        for i, s in enumerate(range(0, total, step)):
            e = min(total, s + step)
            kept = e - s if self.mask is None else int(np.count_nonzero(self.mask[s:e]))
            if i % part[1] != part[0] or not kept:
                pos += kept
                continue
            if consecutive:
                block = np.asarray(self.embeddings[ids[0]:ids[-1] + 1, s:e])
            else:  # h5py takes one increasing index list per read
                got = np.asarray(self.embeddings[order, s:e])
                block = got[[order.index(v) for v in ids]] if order != ids else got
            block = block.astype(dtype, copy=False)
            if self.mask is not None:
                block = block[:, self.mask[s:e]]
            yield pos, block
            pos += kept

    def batches(self, views: Sequence[int], size: int, dtype: Any = np.float64) -> Iterator[np.ndarray]:
        """(len(views), b, d) batches of exactly ``size`` kept samples in order, then the remainder.

        :meth:`chunks` counts stored samples, so with a sample mask its chunks can be short; re-buffering keeps
        the batches independent of which samples were masked out (streaming equals whole).
        """
        total = int(self.embeddings.shape[1])
        buf: List[np.ndarray] = []
        have = 0
        for c in self.chunks(views=views, dtype=dtype, size=max(1, min(size, total))):
            buf.append(c)
            have += c.shape[1]
            while have >= size:
                cat = np.concatenate(buf, axis=1) if len(buf) > 1 else buf[0]
                yield cat[:, :size]
                rest = cat[:, size:]
                buf, have = ([rest] if rest.shape[1] else []), rest.shape[1]
        if have:
            yield np.concatenate(buf, axis=1) if len(buf) > 1 else buf[0]

    def sample_range(self, views: Sequence[int], start: int, stop: int, dtype: Any = np.float64) -> np.ndarray:
        """(len(views), stop − start, d) array of the kept samples ``start`` … ``stop − 1`` (in kept order),
        read at once: a few batches of a large store without reading the rest of it."""
        ids = [int(v) for v in views]
        sel = None
        if self.mask is None:
            lo, hi = int(start), int(stop)
        else:
            kept = np.flatnonzero(self.mask)[start:stop]
            if not kept.size:
                return np.zeros((len(ids), 0, self.dim), dtype=dtype)
            lo, hi = int(kept[0]), int(kept[-1]) + 1
            sel = kept - lo
        order = sorted(set(ids))
        if ids == list(range(ids[0], ids[0] + len(ids))):
            block = np.asarray(self.embeddings[ids[0]:ids[-1] + 1, lo:hi])
        else:  # h5py takes one increasing index list per read
            got = np.asarray(self.embeddings[order, lo:hi])
            block = got[[order.index(v) for v in ids]] if order != ids else got
        if sel is not None:
            block = block[:, sel]
        return block.astype(dtype, copy=False)

    def view(self, i: int, dtype: Any = np.float64) -> np.ndarray:
        """One whole view of the kept samples, (n, d), in memory (filled chunk by chunk, no second copy)."""
        out = np.empty((self.n, self.dim), dtype=dtype)
        pos = 0
        for c in self.chunks([i], dtype=dtype):
            out[pos : pos + c.shape[1]] = c[0]
            pos += c.shape[1]
        return out

    def take(self, keep: np.ndarray) -> "LayerData":
        """The same data restricted to the samples ``keep``: a bool mask over the current samples, or their
        indices (the original order is kept)."""
        keep = np.asarray(keep)
        if keep.dtype != bool:
            idx = keep.astype(np.int64)
            keep = np.zeros(self.n, dtype=bool)
            keep[idx] = True
        full = np.ones(int(self.embeddings.shape[1]), dtype=bool) if self.mask is None else self.mask.copy()
        full[np.flatnonzero(full)[~keep]] = False
        cut = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
        return replace(self, mask=full, latents=cut(self.latents), labels=cut(self.labels),
                       labels_coarse=cut(self.labels_coarse), cache={})


@dataclass
class Result:
    """Rows ``{view, metric, index, value}`` plus notes (skips, degenerate cases) for the summary."""

    rows: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, metric: str, value: float, view: str = "all", index: Any = "") -> None:
        """Add one finite value; a non-finite one is turned into a note instead of a table row."""
        v = float(value)
        if not np.isfinite(v):
            self.notes.append(f"{metric}{'[' + str(index) + ']' if index != '' else ''} ({view}) is undefined here ({v})")
            return
        self.rows.append({"view": view, "metric": metric, "index": "" if index is None else str(index), "value": v})

    def add_vector(self, metric: str, values: Sequence[float], view: str = "all", index: Optional[Sequence[Any]] = None) -> None:
        for i, v in enumerate(values):
            self.add(metric, v, view=view, index=i if index is None else index[i])

    def extend(self, other: "Result") -> None:
        self.rows.extend(other.rows)
        self.notes.extend(other.notes)


def _finite_rows(c: np.ndarray) -> np.ndarray:
    """(b,) bool: sample j of the (V, b, d) chunk ``c`` is finite in every view.

    A row sum is finite only when every entry is (NaN and ±Inf propagate), so one reduction settles almost
    every sample without a (V, b, d) boolean temporary; the few rows whose sum is not finite (a non-finite
    entry, or finite entries whose sum overflows) are checked entry by entry.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(np.add.reduce(c, axis=2)).all(axis=0)
    bad = np.flatnonzero(~ok)
    if bad.size:
        ok[bad] = np.isfinite(c[:, bad]).all(axis=(0, 2))
    return ok


def finite_mask(data: LayerData) -> np.ndarray:
    """(n,) bool over the current samples: finite in every view. Computed once per layer (cached)."""
    if "finite" not in data.cache:
        from ._ranks import sum_over_ranks

        bad = np.zeros(data.n)  # in a torchrun job each rank checks its chunks, and the counts are added
        for start, c in data.shared_chunks(dtype=data.dtype):
            bad[start:start + c.shape[1]] = ~_finite_rows(c)
        data.cache["finite"] = sum_over_ranks(bad) == 0
    return data.cache["finite"]


