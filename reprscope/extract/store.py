"""The embedding store (README, Files): one self-contained HDF5 file per extraction.

Writing goes to a temporary ``.partial`` file that is renamed only when everything is written, so an
interrupted extraction never leaves a file that looks complete. Reading validates the schema up front and
turns every problem into one clear line.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

try:
    import resource
except ImportError:  # not on POSIX
    resource = None

import h5py
import numpy as np

from .. import __version__
from ..metrics._core import HeadModule, LayerData
from ..errors import ReprscopeError
from ..models.heads import spec_problem

SPACES = ("encoder", "intermediate", "projector", "predictor")
REQUIRED_ATTRS = ("reprscope_version", "created", "source", "method", "dataset", "n", "views", "seed", "step")
JSON_ATTRS = ("dataset", "views", "augmentation")


def remove_stale_partials(path: Path) -> List[Path]:
    """Remove the ``.partial`` files of ``path`` left by extractions whose process is gone (killed, crashed);
    a partial of a running process is left alone. Returns what was removed."""
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        try:
            pid = int(p.name[len(path.name) + 2:-len(".partial")])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


#: The dtypes an extraction may store embeddings in (``--storage``). HDF5 has no bfloat16: it is stored as its bit
#: pattern (uint16, the top half of the float32) with the dataset attribute ``encoding = "bfloat16"``, and read back
#: as float32 (:class:`BFloat16Dataset`).
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def to_bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest, ties to even (as torch rounds); a NaN stays
    a (quiet) NaN."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def from_bfloat16_bits(u: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


class BFloat16Dataset:
    """An ``/embeddings`` dataset stored as bfloat16 bit patterns, indexed like the h5py dataset and read as
    float32 (what every analyzer sees)."""

    def __init__(self, ds: "h5py.Dataset"):
        self.ds = ds
        self.attrs = ds.attrs
        self.shape = ds.shape
        self.ndim = ds.ndim
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        return from_bfloat16_bits(self.ds[key])

    def __len__(self) -> int:
        return len(self.ds)

#: Bytes kept free beyond a write's own size (HDF5's metadata, chunk index and superblock updates).
ROOM_MARGIN = 1 << 20


class StoreWriter:
    """Create a store and fill it batch by batch.

    Args:
        path: final ``.h5`` path (written as ``.<name>.<pid>.partial`` until :meth:`close`).
        n: number of samples; views: view names; layers: ``(name, space, order, dim)`` tuples.
        attrs: provenance attributes (README, Files); dicts/lists are stored as JSON strings.
        chunk: chunk length along n.
        storage: the embeddings' dtype on disk, ``float32``, ``float16`` or ``bfloat16`` (half the size; the
            analyzers read every store in float64 or float32, so only the stored values are rounded: to ~5e-4
            relative in float16, ~4e-3 in bfloat16, whose range is float32's).
    """

    def __init__(self, path: os.PathLike | str, n: int, views: Sequence[str], layers: Sequence[tuple],
                 attrs: Dict[str, Any], chunk: int = 4096, growable: bool = False, storage: str = "float32"):
        if storage not in STORAGE_DTYPES:
            raise ReprscopeError(f"storage must be one of {', '.join(STORAGE_DTYPES)}; got '{storage}'", arg="storage")
        self.storage = storage
        self.path = Path(path)
        self.growable, self.written = bool(growable), 0
        if self.path.is_dir():
            raise ReprscopeError(f"out '{self.path}' is a folder; give the .h5 file to write", arg="out")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReprscopeError(f"cannot create the folder of '{self.path}': {exc.strerror or exc}", arg="out") from None
        remove_stale_partials(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.n, self.views = int(n), list(views)
        try:
            self.f = h5py.File(self.tmp, "w")
        except OSError as exc:
            raise ReprscopeError(f"cannot write '{self.path}': {exc.strerror or exc}", arg="out") from None
        base = {"reprscope_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "n": self.n, "views": self.views}
        for k, v in {**base, **attrs}.items():
            self.f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v
        grow = (None,) if growable else (self.n,)
        self.f.create_dataset("index", shape=(self.n,), dtype="int64", maxshape=grow,
                              chunks=(max(1, min(chunk, self.n)),) if growable else None)
        grp = self.f.create_group("embeddings")
        self.layers: Dict[str, h5py.Dataset] = {}
        for name, space, order, dim in layers:
            if space not in SPACES:
                raise ValueError(f"space {space!r} not in {SPACES}")
            ds = grp.create_dataset(name, shape=(len(self.views), self.n, int(dim)),
                                    dtype="uint16" if self.storage == "bfloat16" else self.storage,
                                    chunks=(1, max(1, min(chunk, self.n)), int(dim)),
                                    maxshape=(len(self.views), None if growable else self.n, int(dim)))
            ds.attrs.update({"dim": int(dim), "space": space, "order": int(order)})
            if self.storage == "bfloat16":
                ds.attrs["encoding"] = "bfloat16"
            self.layers[name] = ds

    def ensure_room(self, nbytes: int) -> None:
        """Refuse, before writing, ``nbytes`` that would not fit: the free space of the output's file system and
        the process's file-size limit, with a margin for HDF5's own metadata. HDF5 cannot recover from a write
        that fails half-way (the library crashes the process at exit), so a full disk is caught here instead."""
        need = int(nbytes * 1.1) + ROOM_MARGIN
        try:
            room = shutil.disk_usage(self.tmp.parent).free
        except OSError:
            return
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
        if soft not in (-1, getattr(resource, "RLIM_INFINITY", -1)):
            used = self.tmp.stat().st_size if self.tmp.exists() else 0
            room = min(room, soft - used)
        if need > room:
            raise ReprscopeError(f"cannot write '{self.path}': not enough space ({need:,} more bytes needed, "
                                 f"{max(room, 0):,} available); nothing was written", arg="out")

    def write_meta(self, index: np.ndarray, latents: Optional[np.ndarray] = None, latent_names: Sequence[str] = (),
                   content_mask: Optional[Sequence[bool]] = None, labels: Optional[np.ndarray] = None,
                   labels_coarse: Optional[np.ndarray] = None) -> None:
        extra = sum(np.asarray(a).nbytes for a in (latents, labels, labels_coarse) if a is not None)
        self.ensure_room(np.asarray(index).size * 8 + extra)
        self.f["index"][:] = np.asarray(index, dtype=np.int64)
        if latents is not None:
            ds = self.f.create_dataset("latents", data=np.asarray(latents, dtype=np.float32))
            ds.attrs["names"] = json.dumps(list(latent_names))
            ds.attrs["content"] = json.dumps([bool(c) for c in (content_mask or [False] * len(latent_names))])
        if labels is not None:
            self.f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        if labels_coarse is not None:
            self.f.create_dataset("labels_coarse", data=np.asarray(labels_coarse, dtype=np.int64))

    def write_module(self, part: str, spec: List[Dict[str, Any]], state: Dict[str, np.ndarray]) -> None:
        """A head under ``/modules/<part>``: its spec as JSON and its float32 parameters/buffers."""
        self.ensure_room(sum(np.asarray(v).size * 4 for v in state.values()))
        grp = self.f.require_group("modules").create_group(part)
        grp.attrs["spec"] = json.dumps(spec)
        for k, v in state.items():
            if k.endswith("num_batches_tracked"):
                continue  # a counter, not needed to rebuild the forward map
            grp.create_dataset(k, data=np.asarray(v, dtype=np.float32))

    def write_batch(self, start: int, outputs: Dict[str, np.ndarray]) -> None:
        """``outputs[layer]`` is (V, b, d) for samples ``start:start+b``."""
        self.ensure_room(sum(a.size * (2 if self.storage == "bfloat16" else np.dtype(self.storage).itemsize)
                             for a in outputs.values()))
        for name, arr in outputs.items():
            stored = to_bfloat16_bits(arr) if self.storage == "bfloat16" else arr.astype(self.storage, copy=False)
            self.layers[name][:, start : start + arr.shape[1], :] = stored

    def append(self, outputs: Dict[str, np.ndarray], labels: Optional[np.ndarray] = None,
               latents: Optional[np.ndarray] = None) -> None:
        """Growable stores (a data loader of unknown length): ``outputs[layer]`` (V, b, d) of the next b samples,
        with their labels (b,) and latents (b, k) when the batches carry them (every batch, or none)."""
        b = next(iter(outputs.values())).shape[1]
        start, end = self.written, self.written + b
        extra = {"labels": labels, "latents": latents}
        for key, val in extra.items():
            have = key in self.f
            if (val is not None) != have and start > 0:
                raise ReprscopeError(f"the batches disagree: some carry {key}, others do not (batch at sample {start})")
            if val is not None and not have:
                arr = np.asarray(val)
                self.f.create_dataset(key, shape=(0,) + arr.shape[1:], maxshape=(None,) + arr.shape[1:],
                                      dtype="int64" if key == "labels" else "float32",
                                      chunks=(4096,) + arr.shape[1:])
        if end > self.n:
            self.n = max(end, 2 * self.n)
            for ds in list(self.layers.values()) + [self.f["index"]]:
                ds.resize(self.n, axis=1 if ds.ndim == 3 else 0)
        self.write_batch(start, outputs)
        self.f["index"][start:end] = np.arange(start, end, dtype=np.int64)
        for key, val in extra.items():
            if val is not None:
                ds = self.f[key]
                if ds.shape[1:] != np.shape(val)[1:]:
                    raise ReprscopeError(f"the batches disagree on the shape of {key}: {ds.shape[1:]} and "
                                         f"{np.shape(val)[1:]}")
                ds.resize(end, axis=0)
                ds[start:end] = val
        self.written = end

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self.growable:
            if self.written < 2:
                raise ReprscopeError(f"the data gave {self.written} sample(s); an embedding store needs at least 2")
            for ds in list(self.layers.values()) + [self.f["index"]]:
                ds.resize(self.written, axis=1 if ds.ndim == 3 else 0)
            self.n = self.written
            self.f.attrs["n"] = self.n
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - a file that failed to write may fail to close; it is removed anyway
            pass
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except (OSError, RuntimeError) as err:  # the disk filled up or went read-only while finishing
                self.abort()
                raise ReprscopeError(f"cannot write '{self.path}': {getattr(err, 'strerror', None) or err}; nothing "
                                     "was written",
                                     arg="out") from None
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
            if isinstance(exc, OSError):  # h5py reports a failed write as an OSError
                raise ReprscopeError(f"cannot write '{self.path}': {exc.strerror or exc}; nothing was written",
                                     arg="out") from None


def _json_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


#: Most objects (groups and datasets) a store may hold; a store has a few dozen (one dataset per layer).
MAX_OBJECTS = 100_000


def outside_storage(f: h5py.File) -> Optional[str]:
    """What in ``f`` points outside it or cannot be read as plain data, or None.

    Walks the file by its links without following any: an external link, a soft link (reprscope writes
    none; a soft link can name itself), a virtual dataset (its data are other files' datasets, or zeros when
    they are missing) and a dataset with raw external storage (its bytes are another file, e.g. the system's
    password file) are refused. The walk is bounded by MAX_OBJECTS, so hard-link cycles cannot make it hang.
    """
    seen = 0
    stack = [("", f)]
    while stack:
        path, group = stack.pop()
        for name in group.keys():
            seen += 1
            if seen > MAX_OBJECTS:
                return f"it holds more than {MAX_OBJECTS} objects (or hard links that form a cycle)"
            link = group.get(name, getlink=True)
            where = f"{path}/{name}"
            if isinstance(link, h5py.ExternalLink):
                return f"{where} is an external link to '{link.filename}'"
            if isinstance(link, h5py.SoftLink):
                return f"{where} is a soft link to '{link.path}'"
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                stack.append((where, obj))
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    return f"{where} is a virtual dataset (its data live in other files)"
                if obj.external:
                    return f"{where} keeps its data in external file(s) {', '.join(str(e[0]) for e in obj.external)}"
    return None


class Store:
    """Read access to an embedding store, schema-checked on open."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise ReprscopeError(f"embedding store '{self.path}' does not exist")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError:
            raise ReprscopeError(f"'{self.path}' is not an HDF5 file; expected an embedding store written by `reprscope extract`") from None
        foreign = outside_storage(self.f)
        if foreign:
            self.f.close()
            raise ReprscopeError(f"'{self.path}' is not a self-contained embedding store: {foreign}; reprscope reads "
                                 "only data inside the file it is given")
        missing = [a for a in REQUIRED_ATTRS if a not in self.f.attrs]
        if "embeddings" not in self.f or "index" not in self.f or missing:
            what = f"attributes {missing}" if missing else "the /embeddings and /index datasets"
            self.f.close()
            raise ReprscopeError(f"'{self.path}' is an HDF5 file but not a reprscope embedding store (it lacks {what}); "
                                 f"write one with `reprscope extract`")
        self.attrs: Dict[str, Any] = {k: _json_attr(v) for k, v in self.f.attrs.items()}
        views, n = self.attrs["views"], self.attrs["n"]
        bad = ("the 'views' attribute must be a JSON list of view names" if not isinstance(views, (list, tuple))
               or not all(isinstance(v, str) for v in views) else
               "the 'n' attribute must be a whole number" if not isinstance(n, (int, np.integer)) or isinstance(n, bool)
               else next((f"the '{k}' attribute must be a whole number" for k in ("seed", "step")
                          if not isinstance(self.attrs[k], (int, np.integer)) or isinstance(self.attrs[k], bool)), None))
        if bad:
            self.f.close()
            raise ReprscopeError(f"'{self.path}' is a damaged embedding store: {bad}; write it again with `reprscope extract`")
        self.views: List[str] = list(views)
        self.n = int(n)
        if not len(self.f["embeddings"]):
            self.f.close()
            raise ReprscopeError(f"'{self.path}' has no layers under /embeddings")
        problem = self._schema_problem()
        if problem:
            self.f.close()
            raise ReprscopeError(f"'{self.path}' is a damaged embedding store: {problem}; write it again with "
                                 "`reprscope extract`")

    def _schema_problem(self) -> Optional[str]:
        """What disagrees with the store contract (README, Files) in the shapes and attributes (None when nothing): every layer (V, n, d)
        with V the ``views`` attribute's length and n its ``n``; per-sample datasets of length n; latent names
        and content flags one per latent; module specs JSON lists."""
        v, n = len(self.views), self.n
        for name, ds in self.f["embeddings"].items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
                return f"/embeddings/{name} must be a (views, n, d) array, found shape {getattr(ds, 'shape', None)}"
            if not np.issubdtype(ds.dtype, np.number) or np.issubdtype(ds.dtype, np.complexfloating):
                return f"/embeddings/{name} holds {ds.dtype} values, not real numbers"
            try:
                int(ds.attrs.get("order", 0))
            except (TypeError, ValueError):
                return f"/embeddings/{name} attribute 'order' must be a whole number, got {ds.attrs.get('order')!r}"
            if ds.shape[0] != v or ds.shape[1] != n:
                return (f"/embeddings/{name} has {ds.shape[0]} views × {ds.shape[1]} samples, the attributes say "
                        f"{v} views ({', '.join(self.views)}) × {n} samples")
        for key in ("index", "labels", "labels_coarse", "latents"):
            if key in self.f and (self.f[key].ndim == 0 or self.f[key].shape[0] != n):
                return f"/{key} has {self.f[key].shape[0] if self.f[key].ndim else 0} entries for n = {n} samples"
        for key in ("labels", "labels_coarse"):
            if key in self.f and self.f[key].ndim != 1:
                return f"/{key} must hold one label per sample, found shape {self.f[key].shape}"
        if "latents" in self.f:
            k = self.f["latents"].shape[1] if self.f["latents"].ndim == 2 else 1
            for attr in ("names", "content"):
                if attr not in self.f["latents"].attrs:
                    return f"/latents lacks its '{attr}' attribute"
                val = _json_attr(self.f["latents"].attrs[attr])
                if not isinstance(val, (list, tuple, np.ndarray)):
                    return f"/latents attribute '{attr}' is not a JSON list"
                got = len(val)
                if got != k:
                    return f"/latents attribute '{attr}' has {got} entries for {k} latents"
        for part, grp in (self.f["modules"].items() if "modules" in self.f else []):
            try:
                spec = _json_attr(grp.attrs["spec"])
            except (KeyError, TypeError, ValueError):
                return f"/modules/{part} lacks a JSON 'spec' attribute"
            if not isinstance(spec, list) or not all(isinstance(layer, dict) for layer in spec):
                return f"/modules/{part} 'spec' must be a JSON list of layer mappings"
            bad = spec_problem(spec)
            if bad:
                return f"/modules/{part} 'spec': {bad}"
        return None

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *a) -> None:
        self.close()

    # -- contents ---------------------------------------------------------------------------------------
    def layers(self) -> List[Dict[str, Any]]:
        """Layers shallow to deep: ``{"name", "space", "order", "dim"}``."""
        out = []
        for name, ds in self.f["embeddings"].items():
            out.append({"name": name, "space": str(ds.attrs.get("space", "")), "order": int(ds.attrs.get("order", 0)),
                        "dim": int(ds.shape[-1])})
        return sorted(out, key=lambda d: d["order"])

    def embeddings(self, layer: str) -> Any:
        """The layer's (V, n, d) dataset (a bfloat16-encoded one read as float32 through :class:`BFloat16Dataset`)."""
        if layer not in self.f["embeddings"]:
            raise ReprscopeError(f"layer '{layer}' is not in '{self.path}'; it has: {', '.join(l['name'] for l in self.layers())}")
        ds = self.f["embeddings"][layer]
        if _json_attr(ds.attrs.get("encoding", "")) == "bfloat16":
            if ds.dtype != np.uint16:
                raise ReprscopeError(f"/embeddings/{layer} in '{self.path}' says bfloat16 but holds {ds.dtype} values")
            return BFloat16Dataset(ds)
        return ds

    def _opt(self, key: str) -> Optional[np.ndarray]:
        return self.f[key][()] if key in self.f else None

    @property
    def latents(self) -> Optional[np.ndarray]:
        return self._opt("latents")

    @property
    def latent_names(self) -> List[str]:
        return list(_json_attr(self.f["latents"].attrs["names"])) if "latents" in self.f else []

    @property
    def content_mask(self) -> Optional[np.ndarray]:
        if "latents" not in self.f:
            return None
        return np.asarray(_json_attr(self.f["latents"].attrs["content"]), dtype=bool)

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self._opt("labels")

    @property
    def labels_coarse(self) -> Optional[np.ndarray]:
        return self._opt("labels_coarse")

    def modules(self) -> Dict[str, HeadModule]:
        out: Dict[str, HeadModule] = {}
        if "modules" not in self.f:
            return out
        for part, grp in self.f["modules"].items():
            out[part] = HeadModule(spec=list(_json_attr(grp.attrs["spec"])), params={k: grp[k][()] for k in grp.keys()})
        return out

    def layer_data(self, layer: str, seed: int = 0, device: str = "cpu", chunk_size: int = 8192) -> LayerData:
        """One layer with everything analyzers may need; the embeddings stay on disk and are streamed."""
        ds = self.embeddings(layer)
        return LayerData(
            layer=layer, space=str(ds.attrs.get("space", "")), views=self.views, embeddings=ds,
            latents=self.latents, latent_names=self.latent_names, content_mask=self.content_mask,
            labels=self.labels, labels_coarse=self.labels_coarse, modules=self.modules(), seed=seed,
            device=device, chunk_size=chunk_size,
        )
