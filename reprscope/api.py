"""reprscope from Python: ``analyze`` and ``extract`` on paths, any ``nn.Module`` or a mapping of arrays.

Thin over the same core the command line uses: a path goes through :func:`reprscope.pipeline.analyze`; a
module is recorded with forward hooks (:mod:`reprscope.extract.module`) into a store and analysed like any
store; a mapping of arrays is analysed in memory by the same per-layer loop
(:func:`reprscope.pipeline.analyze_layers`). Every route ends in the same tidy table (README, Files).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from torch import nn

from .errors import ReprscopeError
from .extract.module import extract_module, space_of
from .extract.store import SPACES, StoreWriter
from .metrics import _input
from .metrics._core import HeadModule, LayerData
from .metrics.functional import ReprscopeWarning, head_module
from .params import resolve_params
from .table import make_table

Source = Union[str, os.PathLike, nn.Module, Mapping[str, Any]]

#: Keyword options by kind of source (anything else is an error naming these).
PATH_OPTIONS = ("views", "limit", "batch_size", "seed", "progress", "set_data", "fmt", "branch", "arch", "preprocess",
                "compare", "bootstrap", "ci", "random_init", "pool")
MODULE_OPTIONS = ("views", "clean", "limit", "batch_size", "seed", "pool", "forward", "progress", "bootstrap", "ci")
ARRAY_OPTIONS = ("labels", "labels_coarse", "latents", "latent_names", "content_mask", "views", "seed", "heads",
                 "spaces", "progress", "bootstrap", "ci")


def _check_options(kind: str, options: Mapping[str, Any], valid: Sequence[str]) -> None:
    bad = [k for k in options if k not in valid]
    if bad:
        raise ReprscopeError(f"analyze/extract of {kind} takes no option '{bad[0]}'; valid: {', '.join(valid)}")


def _selected(analyzers: Optional[Union[str, Sequence[str]]], params: Optional[Mapping[str, Mapping[str, Any]]]
              ) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    from .analyzers import ANALYZERS
    from .pipeline import select_analyzers

    chosen = select_analyzers([analyzers] if isinstance(analyzers, str) else analyzers)
    pp: Dict[str, Dict[str, Any]] = {}
    for name, values in (params or {}).items():
        ANALYZERS.get(name)
        if name not in chosen:
            raise ReprscopeError(f"params names analyzer '{name}', which is not selected (analyzers={chosen})")
        if not isinstance(values, Mapping):
            raise ReprscopeError(f"params['{name}'] must be a mapping of parameter values, got {type(values).__name__}")
        pp[name] = dict(values)
    for a in chosen:  # bad values fail before any work
        resolve_params(f"analyzer {a}", ANALYZERS.get(a).params, pp.get(a, {}))
    return chosen, pp


def _finish(table: pd.DataFrame, notes: List[str]) -> pd.DataFrame:
    from .pipeline import condense_notes

    notes = condense_notes(list(dict.fromkeys(notes)))
    table.attrs["notes"] = notes
    for n in notes:
        warnings.warn(n, ReprscopeWarning, stacklevel=3)
    return table


def analyze(source: Union[Source, Sequence[Union[str, os.PathLike]]], data: Any = None, *,
            layers: Optional[Union[Sequence[str], Mapping[str, str]]] = None,
            analyzers: Optional[Union[str, Sequence[str]]] = None,
            params: Optional[Mapping[str, Mapping[str, Any]]] = None, device: Optional[str] = None,
            **options: Any) -> pd.DataFrame:
    """Analyze a checkpoint, store, run directory, any ``nn.Module`` or a mapping of arrays; the tidy table.

    Args:
        source: a path (checkpoint, ``.h5`` store, run directory — as ``reprscope analyze``) or a list of them;
            any ``torch.nn.Module``; or a mapping ``{layer: (V, n, d) or (n, d) array/tensor}``.
        data: for a path, a registered data set name to extract checkpoints on (default: their training data);
            for a module, an iterable of batches (a ``DataLoader`` yielding a tensor, ``(x1, x2, y)`` or a dict,
            see :func:`reprscope.extract.module.split_batch`) or a registered data set name.
        layers: for a path, layer names to analyse; for a module, the submodules to record,
            ``{"encoder": "backbone", "projector": "head"}`` or a list of dotted paths (default: the model's
            top-level children; names ``encoder``/``backbone``, ``projector``/``head``, ``predictor`` set the
            layer's space, other names are ``intermediate``).
        analyzers: names (``reprscope.ANALYZERS.names()``; default: all).
        params: ``{analyzer: {parameter: value}}``, e.g. ``{"spectrum": {"tau": 1e-3}}``.
        bootstrap, ci (options of every source): B resamples of the samples for a percentile interval at level
            ``ci`` (default 0.95) of every scalar metric (columns ``value_lo``, ``value_hi``, ``bootstrap``).
        device: where the linear algebra (and a module's forward) runs, e.g. ``"cuda"``; default the CPU (a
            module's forward: the model's device).
        **options: path sources: ``views``, ``limit``, ``batch_size``, ``seed``, ``progress``, ``set_data``,
            ``fmt``, ``branch``, ``arch``, ``pool`` (a ViT checkpoint's ``cls`` or ``mean`` pooling), ``preprocess``,
            ``compare`` (a checkpoint or store of the same inputs whose
            every layer ``similarity`` compares with every layer of the sources), ``random_init`` (also the
            checkpoints' architectures at initialisation, source ``CKPT#random_init``; as the command line's flags). Modules: ``views``,
            ``clean``, ``limit``, ``batch_size``, ``seed`` (for a data set name), ``pool`` (``mean``: conv maps and
            token sequences averaged, as the command line; ``cls``; ``flatten``; or a callable), ``forward``
            (``forward(model, x)``, default ``model(x)``), ``progress``. Arrays: ``labels`` (n,),
            ``labels_coarse``, ``latents`` (n, k), ``latent_names``, ``content_mask``, ``views`` (names of the
            V views; default ``view0`` …, all augmented), ``seed``, ``heads`` (``{"projector": nn.Module}`` for
            ``weights``/``tangent``), ``spaces`` (``{layer: space}``).

    Returns:
        The tidy table (columns as in the README's Files section: source, step, method, layer, analyzer, view, metric, index, value,
        parameters, context); ``table.attrs["notes"]`` holds what the analyzers noted (skips, subsamples),
        also issued as :class:`~reprscope.metrics.ReprscopeWarning`.
    """
    chosen, pp = _selected(analyzers, params)
    from .pipeline import check_bootstrap

    boot = {"bootstrap": int(options.pop("bootstrap", 0) or 0) if not isinstance(options.get("bootstrap"), bool)
            else options.pop("bootstrap"), "ci": options.pop("ci", 0.95)}
    check_bootstrap(**boot)
    if isinstance(source, nn.Module):
        _check_options("a module", options, MODULE_OPTIONS)
        if data is None:
            raise ReprscopeError("analyze of a module needs data: an iterable of batches (a DataLoader) or a "
                                 "registered data set name")
        with tempfile.TemporaryDirectory(prefix="reprscope-") as tmp:
            path = extract_module(source, data, Path(tmp) / "module.h5", layers=layers, device=device,
                                  **{k: v for k, v in options.items()})
            from .extract.store import Store
            from .pipeline import analyze_store

            with Store(path) as st:
                from .metrics.esd import module_weights

                rows, notes = analyze_store(st, chosen, pp, None, source=st.attrs["source"],
                                            progress=bool(options.get("progress", True)), device=device or "cpu",
                                            weights=module_weights(source) if "esd" in chosen else None, **boot)
        return _finish(make_table(rows), notes)
    if isinstance(source, Mapping):
        _check_options("arrays", options, ARRAY_OPTIONS)
        if data is not None:
            raise ReprscopeError("analyze of arrays takes no data (the arrays are the embeddings); pass labels= "
                                 "and latents= for the analyzers that need them")
        layer_list, base = _array_layers(source, layers=layers, device=device or "cpu", **options)
        from .pipeline import analyze_layers

        rows, notes = analyze_layers(layer_list, chosen, pp, base, progress=bool(options.get("progress", False)),
                                     seed=int(options.get("seed", 0)), **boot)
        return _finish(make_table(rows), notes)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources or not all(isinstance(s, (str, os.PathLike)) for s in sources):
        raise ReprscopeError(f"expected source as a path, a list of paths, an nn.Module or a mapping of arrays, "
                             f"got {type(source).__name__}")
    _check_options("a path", options, PATH_OPTIONS)
    if data is not None and not isinstance(data, str):
        raise ReprscopeError(f"for a path source, data is a registered data set name, got {type(data).__name__}")
    if isinstance(layers, Mapping):
        raise ReprscopeError("for a path source, layers is a list of layer names (the store's or checkpoint's)")
    from .pipeline import analyze as run

    res = run([str(s) for s in sources], data=data, analyzers=chosen, params=pp, layers=layers,
              device=device or "cpu", **options, **boot)
    return _finish(res.table, res.notes)


def _array_layers(arrays: Mapping[str, Any], *, layers: Optional[Sequence[str]] = None, device: str = "cpu",
                  labels: Any = None, labels_coarse: Any = None, latents: Any = None,
                  latent_names: Optional[Sequence[str]] = None, content_mask: Any = None,
                  views: Optional[Sequence[str]] = None, seed: int = 0, heads: Optional[Mapping[str, Any]] = None,
                  spaces: Optional[Mapping[str, str]] = None, progress: bool = False
                  ) -> Tuple[List[Tuple[str, Callable[[], LayerData]]], Dict[str, Any]]:
    """Validated in-memory layers of a mapping of arrays, and the table's base columns."""
    arrays_v = _validated_arrays(arrays, views)
    names = list(arrays_v)
    if layers is not None:
        missing = [l for l in layers if l not in arrays_v]
        if missing:
            raise ReprscopeError(f"layer '{missing[0]}' is not in the arrays; they have: {', '.join(names)}")
        names = [n for n in names if n in set(layers)]
    first = next(iter(arrays_v.values()))[0]
    v, n = first.shape[0], first.shape[1]
    view_names = list(views) if views is not None else _input.view_names(v)
    meta = _array_meta(n, labels, labels_coarse, latents, latent_names, content_mask)
    mods = {part: head_module(m, part) for part, m in (heads or {}).items()}
    sp = _spaces(names, spaces)

    def make(name: str) -> LayerData:
        arr, dev = arrays_v[name]
        return LayerData(layer=name, space=sp[name], views=view_names, embeddings=arr, modules=mods, seed=int(seed),
                         device=device if device != "cpu" else dev, **meta)

    base = {"source": "arrays", "step": None, "method": "", "data": "arrays", "n": int(n)}
    return [(nm, lambda nm=nm: make(nm)) for nm in names], base


def _validated_arrays(arrays: Mapping[str, Any], views: Optional[Sequence[str]]) -> Dict[str, Tuple[np.ndarray, str]]:
    if not arrays:
        raise ReprscopeError("the mapping of arrays is empty; give {layer: (V, n, d) embeddings}")
    out: Dict[str, Tuple[np.ndarray, str]] = {}
    shape = None
    for name, x in arrays.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ReprscopeError(f"layer names must be non-empty strings without '/', got {name!r}")
        arr, dev = _input.embeddings(x, what=f"embeddings of layer '{name}'")
        if shape is None:
            shape = arr.shape[:2]
        elif arr.shape[:2] != shape:
            raise ReprscopeError(f"every layer needs the same views and samples: '{name}' has {arr.shape[0]} views × "
                                 f"{arr.shape[1]} samples, the first layer {shape[0]} × {shape[1]}")
        out[name] = (arr, dev)
    if views is not None and (len(views) != shape[0] or len(set(views)) != len(views)):
        raise ReprscopeError(f"expected views as {shape[0]} distinct names, one per stored view, got {list(views)}")
    return out


def _array_meta(n: int, labels: Any, labels_coarse: Any, latents: Any, latent_names: Optional[Sequence[str]],
                content_mask: Any) -> Dict[str, Any]:
    lat = None if latents is None else _input.latents(latents, n)
    names = [str(s) for s in latent_names] if latent_names is not None else (
        [str(j) for j in range(lat.shape[1])] if lat is not None else [])
    if lat is not None and len(names) != lat.shape[1]:
        raise ReprscopeError(f"expected {lat.shape[1]} latent_names, one per latent column, got {len(names)}")
    mask = None
    if content_mask is not None:
        if lat is None:
            raise ReprscopeError("content_mask needs latents")
        mask = np.asarray(content_mask, dtype=bool).reshape(-1)
        if mask.size != lat.shape[1]:
            raise ReprscopeError(f"expected content_mask of {lat.shape[1]} entries, one per latent, got {mask.size}")
    return {"labels": None if labels is None else _input.labels(labels, n),
            "labels_coarse": None if labels_coarse is None else _input.labels(labels_coarse, n, "labels_coarse"),
            "latents": lat, "latent_names": names, "content_mask": mask}


def _spaces(names: Sequence[str], spaces: Optional[Mapping[str, str]]) -> Dict[str, str]:
    out = {n: space_of(n) for n in names}
    for k, v in (spaces or {}).items():
        if v not in SPACES:
            raise ReprscopeError(f"spaces['{k}'] must be one of {', '.join(SPACES)}, got {v!r}")
        out[k] = v
    return out


def extract(model: Union[nn.Module, Mapping[str, Any], str, os.PathLike], data: Any = None,
            out: Union[str, os.PathLike, None] = None, *, layers: Any = None, device: Optional[str] = None,
            **options: Any) -> Path:
    """Write the embedding store (``.h5``; README, Files) that ``reprscope extract`` writes, from Python.

    Args:
        model: any ``nn.Module`` (outputs of ``layers`` recorded with hooks; the store's source is the module's
            class and a SHA-256 of its parameters), a checkpoint path (as the command line), or a mapping of
            arrays ``{layer: (V, n, d)}`` (written as they are, with ``labels=``/``latents=``/``views=``).
        data: batches or a data set name for a module; a data set name for a checkpoint; None for arrays.
        out: the ``.h5`` path (written atomically).
        **options: as :func:`analyze` for the same kind of source (a checkpoint: ``views``, ``clean``,
            ``limit``, ``batch_size``, ``seed``, ``progress``, ``fmt``, ``branch``, ``arch``, ``preprocess``).
    """
    if out is None:
        raise ReprscopeError("extract needs out=, the .h5 file to write")
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ReprscopeError(f"out must name an .h5 file, got '{out}'")
    if isinstance(model, nn.Module):
        _check_options("a module", options, MODULE_OPTIONS)
        return extract_module(model, data, out, layers=layers, device=device, **options)
    if isinstance(model, Mapping):
        _check_options("arrays", options, ARRAY_OPTIONS)
        return _write_arrays(model, out, layers=layers, **options)
    if isinstance(model, (str, os.PathLike)):
        from .pipeline import extract_checkpoint

        return extract_checkpoint(Path(model), data, out, layers=layers, device=device or "cpu", **options)
    raise ReprscopeError(f"expected a module, a checkpoint path or a mapping of arrays, got {type(model).__name__}")


def _write_arrays(arrays: Mapping[str, Any], out: Path, *, layers: Any = None, labels: Any = None,
                  labels_coarse: Any = None, latents: Any = None, latent_names: Optional[Sequence[str]] = None,
                  content_mask: Any = None, views: Optional[Sequence[str]] = None, seed: int = 0,
                  heads: Optional[Mapping[str, Any]] = None, spaces: Optional[Mapping[str, str]] = None,
                  progress: bool = False) -> Path:
    arrays_v = _validated_arrays(arrays, views)
    names = list(arrays_v)
    if layers is not None:
        missing = [l for l in layers if l not in arrays_v]
        if missing:
            raise ReprscopeError(f"layer '{missing[0]}' is not in the arrays; they have: {', '.join(names)}")
        names = [nm for nm in names if nm in set(layers)]
    v, n = next(iter(arrays_v.values()))[0].shape[:2]
    meta = _array_meta(n, labels, labels_coarse, latents, latent_names, content_mask)
    sp = _spaces(names, spaces)
    view_names = list(views) if views is not None else _input.view_names(v)
    attrs = {"source": "arrays", "source_sha256": "", "source_format": "arrays", "source_branch": "", "method": "",
             "dataset": "arrays", "seed": int(seed), "step": -1}
    rows = [(nm, sp[nm], i, int(arrays_v[nm][0].shape[2])) for i, nm in enumerate(names)]
    with StoreWriter(out, n, view_names, rows, attrs) as w:
        w.write_meta(np.arange(n), meta["latents"], meta["latent_names"],
                     None if meta["content_mask"] is None else list(meta["content_mask"]), meta["labels"],
                     meta["labels_coarse"])
        for part, m in (heads or {}).items():
            hm: HeadModule = head_module(m, part)
            w.write_module(part, hm.spec, hm.params)
        w.write_batch(0, {nm: arrays_v[nm][0].astype(np.float32) for nm in names})
    return out


__all__ = ["analyze", "extract"]
