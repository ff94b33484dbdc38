"""Format registry and the safe file reader shared by every format."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import ReprscopeError
from ..io_utils import describe_file, sha256_file
from ..models.bundle import ModelBundle
from ..registry import Registry

FORMATS: Registry = Registry("checkpoint format")
READERS: Registry = Registry("checkpoint file type")

#: the names ``--branch`` accepts. Checkpoints use two vocabularies for their two networks (DINO: teacher /
#: student; MoCo, BYOL, solo-learn: momentum / online); the teacher *is* the momentum (EMA) network and the
#: student the online one, so each name also finds its counterpart (``--branch momentum`` on a DINO file picks
#: the teacher).
BRANCHES = ("teacher", "student", "online", "momentum")
BRANCH_COUNTERPART = {"teacher": "momentum", "momentum": "teacher", "student": "online", "online": "student"}


@dataclass(frozen=True)
class LoadOptions:
    """What the user overrides in detection (``--branch``, ``--arch``); every format's build receives it.

    Attributes:
        branch: ``teacher``, ``student``, ``online`` or ``momentum``; None: the format's default branch.
        arch: a timm model name, optionally with timm kwargs: ``vit_small_patch16_224`` or
            ``vit_small_patch16_224:num_heads=12`` (values parsed as JSON); None: read from the shapes.
        pool: how a ViT's tokens become the representation: ``cls`` (class token) or ``mean`` (patch tokens).
    """

    branch: Optional[str] = None
    arch: Optional[str] = None
    #: a ViT's pooling, ``cls`` or ``mean`` (``--pool``); None: what the source's own evaluation reads
    pool: Optional[str] = None
    #: the file being read (set by :func:`load_checkpoint`): formats whose config sits beside the checkpoint
    #: (solo-learn's ``args.json``) read it from there
    source: Optional[str] = None

    def __post_init__(self):
        if self.branch is not None and self.branch not in BRANCHES:
            raise ReprscopeError(f"branch must be one of {', '.join(BRANCHES)}; got '{self.branch}'", arg="branch")
        if self.arch is not None:
            parse_arch(self.arch)  # fail early on a malformed --arch
        if self.pool is not None and self.pool not in ("cls", "mean"):
            raise ReprscopeError(f"pool must be cls or mean; got '{self.pool}'", arg="pool")

    @property
    def arch_name(self) -> Optional[str]:
        return None if self.arch is None else parse_arch(self.arch)[0]

    @property
    def arch_kwargs(self) -> Dict[str, Any]:
        return {} if self.arch is None else parse_arch(self.arch)[1]


def parse_arch(text: str) -> Tuple[str, Dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` → ``(NAME, {key: value})``; values are JSON where they parse."""
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if not name:
        raise ReprscopeError(f"arch needs a timm model name, e.g. resnet50 or vit_small_patch16_224; got '{text}'", arg="arch")
    kwargs: Dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ReprscopeError(f"arch takes NAME or NAME:key=value,...; '{item}' in '{text}' is not key=value", arg="arch")
        try:
            kwargs[key.strip()] = json.loads(value)
        except ValueError:
            kwargs[key.strip()] = value.strip()
    return name, kwargs


@dataclass(frozen=True)
class Preprocess:
    """The input preprocessing of a checkpoint's source (what its own evaluation feeds the network).

    Attributes:
        resolution: side of the square input, in pixels.
        mean, std: per-channel normalisation of [0, 1] RGB.
        resize: shorter side the image is resized to before the centre crop of ``resolution`` (ImageNet
            evaluation: 256 → 224); None: no resize (CIFAR images are already 32×32).
        stats: the name of the statistics (``imagenet``, ``cifar10`` …), for messages.
        reason: what in the checkpoint says so.
        interpolation: the resize filter, ``bilinear`` or ``bicubic`` (timm's evaluation transform).
    """

    resolution: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    resize: Optional[int]
    stats: str
    reason: str
    interpolation: str = "bilinear"

    def data_params(self) -> Dict[str, Any]:
        """The image data sets' parameters that apply this preprocessing."""
        return {"resolution": int(self.resolution), "resize": int(self.resize or self.resolution),
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "interpolation": self.interpolation}

    def describe(self) -> str:
        size = (f"resize {self.resize} + centre crop {self.resolution}" if self.resize
                else f"{self.resolution}×{self.resolution}")
        filt = f" ({self.interpolation})" if self.interpolation != "bilinear" else ""
        return f"{size}{filt}, {self.stats} mean/std ({self.reason})"


@dataclass
class LoadedModel:
    """What a checkpoint resolves to, whatever its format (the one model contract plus provenance).

    Attributes:
        branch: the network analysed (``teacher``/``student``/``online``/``momentum``); ``branches`` maps every
            branch the file holds to where its weights sit.
        preprocess: the source's input preprocessing (None: not an image model, e.g. trained on ``dgp``).
        file_type: ``torch`` (``torch.save``, read with ``weights_only=True``) or ``safetensors``.
        skipped_globals: globals the file names that were replaced by inert stand-ins (an optimizer's filter
            functions, config classes), never imported or called.
    """

    bundle: ModelBundle
    format: str
    method: str
    config: Dict[str, Any]
    source: str
    sha256: str
    step: Optional[int] = None
    epoch: Optional[int] = None
    dataset: Optional[Dict[str, Any]] = None
    unused_keys: List[str] = field(default_factory=list)
    branch: Optional[str] = None
    branches: Dict[str, str] = field(default_factory=dict)
    preprocess: Optional[Preprocess] = None
    file_type: str = "torch"
    options: LoadOptions = field(default_factory=LoadOptions)
    skipped_globals: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class FormatSpec:
    """A checkpoint layout: ``detect(payload) -> bool`` and ``build(payload, options) -> dict`` with the
    :class:`LoadedModel` fields ``bundle``, ``method``, ``config``, ``branch``, ``branches`` (and optionally
    ``epoch``, ``step``, ``dataset``, ``unused_keys``, ``preprocess``)."""

    name: str
    detect: Callable[[Dict[str, Any]], bool]
    build: Callable[[Dict[str, Any], LoadOptions], Dict[str, Any]]
    summary: str


def register_format(name: str, *, detect: Callable[[Dict[str, Any]], bool], summary: str) -> Callable:
    """Decorator registering ``build(payload, options) -> dict(bundle=..., method=..., config=..., ...)``."""

    def deco(build):
        FORMATS.register(name)(FormatSpec(name, detect, build, summary))
        return build

    return deco


def pick_branch(fmt: str, available: Dict[str, str], default: str, requested: Optional[str]) -> str:
    """The branch to analyse: ``requested`` (or its counterpart name, see :data:`BRANCHES`) or ``default``.

    Args:
        available: branch → where its weights are in the file (``"module.encoder_k.*"``), in display order.

    Raises:
        ReprscopeError: the file holds neither the requested branch nor its counterpart; lists the branches.
    """
    if requested is None:
        return default
    if requested not in BRANCHES:
        raise ReprscopeError(f"branch must be one of {', '.join(BRANCHES)}; got '{requested}'", arg="branch")
    for name in (requested, BRANCH_COUNTERPART[requested]):
        if name in available:
            return name
    listed = "; ".join(f"{b} ({w})" for b, w in available.items())
    raise ReprscopeError(f"this {fmt} checkpoint has no '{requested}' branch; available: {listed}")


# -- reading files ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileReader:
    """A file type: ``sniff(head bytes, size) -> bool`` and ``read(path) -> payload``."""

    name: str
    sniff: Callable[[bytes, int], bool]
    read: Callable[[Path], Any]
    summary: str


def _sniff_safetensors(head: bytes, size: int) -> bool:
    # 8-byte little-endian header length, then the JSON header itself
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= 100_000_000


def _read_safetensors(path: Path) -> Any:
    try:
        from safetensors.torch import load_file
    except ImportError:  # a declared dependency; only a broken install lacks it
        raise ReprscopeError(f"'{path}' is a safetensors file; install the 'safetensors' package to read it") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, MemoryError …: all one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReprscopeError(f"'{path}' is not a readable safetensors file ({msg[:200]}); it may be truncated or "
                             "corrupt") from None


READERS.register("safetensors")(FileReader("safetensors", _sniff_safetensors, _read_safetensors,
                                           "safetensors: a flat dict of tensors (no pickle at all)"))


def _read_torch(path: Path) -> Any:
    return _torch_load(path)


READERS.register("torch")(FileReader("torch", lambda head, size: True, _read_torch,
                                     "torch.save archive or legacy pickle, read with weights_only=True"))

#: sniffed in this order; ``torch`` accepts whatever the others do not
_READER_ORDER = ("safetensors", "torch")


#: the weight files of a Hugging Face model folder, as ``from_pretrained`` looks for them (single files first)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: bounds on what a model folder's JSON files may hold (they are read before any weight)
MAX_JSON_BYTES = 4 * 2**20
MAX_SHARDS = 256


def is_model_folder(path: os.PathLike | str) -> bool:
    """A Hugging Face model folder: ``config.json`` beside ``model.safetensors`` / ``pytorch_model.bin`` (or a
    sharded index of them)."""
    p = Path(path)
    return (p.is_dir() and (p / "config.json").is_file()
            and any((p / n).is_file() for n in HF_WEIGHT_FILES + HF_INDEX_FILES))


def read_json_file(path: Path, what: str) -> Dict[str, Any]:
    """A small JSON object (a model folder's ``config.json``, an index): bounded, parsed, never evaluated."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReprscopeError(f"{what} '{path}' cannot be read ({exc.strerror or exc})") from None
    if size > MAX_JSON_BYTES:
        raise ReprscopeError(f"{what} '{path}' is {size:,} bytes; a JSON file of that kind is at most {MAX_JSON_BYTES:,}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReprscopeError(f"{what} '{path}' is not readable JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise ReprscopeError(f"{what} '{path}' holds a JSON {type(obj).__name__}; expected an object")
    return obj


def folder_weight_files(folder: Path) -> List[Path]:
    """The weight files of a model folder: the single file, or every shard its index names (plain file names
    inside the folder only; a name with a path, a link out of the folder or a missing shard is an error)."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in HF_INDEX_FILES:
        if (folder / name).is_file():
            index = read_json_file(folder / name, "weight index")
            wmap = index.get("weight_map")
            if not isinstance(wmap, dict) or not wmap:
                raise ReprscopeError(f"weight index '{folder / name}' has no 'weight_map'")
            shards = sorted({str(v) for v in wmap.values()})
            if len(shards) > MAX_SHARDS:
                raise ReprscopeError(f"weight index '{folder / name}' names {len(shards)} shards; at most {MAX_SHARDS}")
            root = folder.resolve()
            out = []
            for shard in shards:
                f = folder / shard
                if Path(shard).name != shard or shard in (".", "..") or not f.is_file() or f.resolve().parent != root:
                    raise ReprscopeError(f"weight index '{folder / name}' names '{shard}', which is not a file in "
                                         f"'{folder}'")
                out.append(f)
            return out
    raise ReprscopeError(f"'{folder}' is a folder without {' or '.join(HF_WEIGHT_FILES)}; give a checkpoint file, "
                         "a Hugging Face model folder or a run directory")


def source_sha256(path: os.PathLike | str) -> str:
    """The SHA-256 of a checkpoint file; of a model folder, the hash of its ``config.json`` and weight files'."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    parts = [p / "config.json"] + folder_weight_files(p)
    return hashlib.sha256("".join(f"{f.name}:{sha256_file(f)};" for f in parts).encode()).hexdigest()


def read_checkpoint(path: os.PathLike | str) -> Tuple[Any, str]:
    """``(payload, file type)``: the file read by the first reader whose magic matches, never unpickling code. A
    Hugging Face model folder gives the tensors of its weight file(s), merged."""
    path = Path(path)
    if not path.exists():
        raise ReprscopeError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ReprscopeError(f"'{path}' is a directory, not a checkpoint file (a Hugging Face model folder has "
                                 "a config.json)")
        merged: Dict[str, Any] = {}
        kind = "torch"
        for f in folder_weight_files(path):
            payload, kind = read_checkpoint(f)
            if not isinstance(payload, dict):
                raise ReprscopeError(f"'{f}' holds a {type(payload).__name__}, not a dict of tensors")
            twice = sorted(set(merged) & set(payload))
            if twice:
                raise ReprscopeError(f"'{f}' repeats tensors of another shard ({', '.join(map(str, twice[:4]))})")
            merged.update(payload)
        return merged, kind
    size = path.stat().st_size
    if size == 0:
        raise ReprscopeError(f"'{path}' is empty; expected a PyTorch checkpoint (.pt/.pth) or a .safetensors file")
    with open(path, "rb") as fh:
        head = fh.read(512)
    what = describe_file(head)
    if what and not what.startswith(("a pickle", "a zip")):  # torch.save writes a zip (or a legacy pickle)
        raise ReprscopeError(f"'{path}' is {what}, not a checkpoint; expected a PyTorch checkpoint (.pt/.pth, "
                             "written by torch.save) or a .safetensors file")
    for name in _READER_ORDER:
        reader: FileReader = READERS.get(name)
        if reader.sniff(head, size):
            return reader.read(path), name
    raise ReprscopeError(f"'{path}' is not a checkpoint file reprscope can read")


def read_checkpoint_file(path: os.PathLike | str) -> Any:
    """The payload of ``path`` (:func:`read_checkpoint` without the file type)."""
    return read_checkpoint(path)[0]


#: Globals a checkpoint may name beyond torch's weights-only allow list (inert data holders, loaded as such):
#: ``argparse.Namespace`` (DINO, MAE, timm save their args as one) and numpy's array reconstruction (older model-zoo
#: files, VISSL's NPID, hold numpy arrays): data only, and the one function, numpy's ``_reconstruct``, is reached
#: through :func:`_bounded_reconstruct`, which builds nothing but an ``ndarray`` of a bounded size.
ALLOWED_GLOBALS = ("argparse.Namespace", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                   "numpy.ndarray", "numpy.dtype")
#: the most values ``_reconstruct`` may be asked to allocate: numpy's own pickles declare shape (0,) there and give
#: the real shape with the data (whose bytes the file holds), so only a crafted pickle comes near this
MAX_NUMPY_VALUES = 1 << 20


def _bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's ``_reconstruct`` (what unpickling an array calls) for plain ``ndarray``s of at most
    :data:`MAX_NUMPY_VALUES` values; anything else is refused before it is built."""
    import numpy as np

    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"a pickled numpy array of type {subtype!r}; only numpy.ndarray is read")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims) or int(np.prod(dims, dtype=object)) > MAX_NUMPY_VALUES:
        raise pickle.UnpicklingError(f"a pickled numpy array declares shape {shape!r}")
    try:  # numpy's own, called with checked arguments (numpy 2 moved it under numpy._core)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct(subtype, shape, dtype)


def _safe_globals() -> List[Any]:
    """The objects (or ``(object, name)`` pairs) :data:`ALLOWED_GLOBALS` stand for, for ``torch.load``."""
    import numpy as np

    # a dtype is rebuilt as numpy.dtype(...) and then given its state (BUILD), which torch allows only for listed
    # types: the numeric dtype classes (numpy >= 1.25 has one class per dtype)
    kinds = {type(np.dtype(c)) for c in "?bhilqBHILQefdFD"} - {np.dtype}
    return [argparse.Namespace, (_bounded_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_bounded_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *sorted(kinds, key=str)]


class SkippedGlobal:
    """An inert stand-in for a global a checkpoint names but reprscope does not allow (a training script's
    function in an optimizer's parameter groups, an OmegaConf config class …). Never imported, never called:
    the weights-only unpickler maps the name to a subclass of this, building one from it (REDUCE) makes an
    instance that keeps nothing, and BUILD's state is dropped."""

    global_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<skipped {self.global_name}>"


def _placeholder(name: str) -> type:
    """A SkippedGlobal subclass standing for the global ``name`` (a class built here, never the named object)."""
    return type("SkippedGlobal", (SkippedGlobal,), {"global_name": name, "__module__": __name__})


class PlaceholderPayload(dict):
    """A checkpoint dict read with placeholders: ``skipped_globals`` lists the globals that were not loaded."""

    skipped_globals: List[str] = []


def _load_with_placeholders(path: Path) -> Optional[PlaceholderPayload]:
    """The payload of a ``torch.save`` archive whose pickle names globals outside the allow list, each replaced by
    an inert :class:`SkippedGlobal` (the names are read from the pickle's opcodes, nothing is executed); None when
    the file is not such an archive (a plain pickle) or the payload is not a dict."""
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in ALLOWED_GLOBALS]
    except Exception:  # noqa: BLE001 - a plain pickle or a damaged archive: keep the refusal
        return None
    if not names or len(names) > 256:
        return None
    stand_ins = [(_placeholder(n), n) for n in names]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([*_safe_globals(), *stand_ins]):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - still not loadable with stand-ins (REDUCE on a stand-in's instance …)
        return None
    if not isinstance(payload, dict):
        return None
    out = PlaceholderPayload(payload)
    out.skipped_globals = names
    return out


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into one clear line. A ``torch.save``
    archive that names globals outside the allow list is read again with inert stand-ins for them
    (:class:`SkippedGlobal`); whether its tensors then make a model is the format detection's call."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_safe_globals()):
            # a plain pickle (not a torch.save archive) makes torch warn about its protocol before we refuse it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # argparse.Namespace is inert data (DINO, MAE, timm save their args as one); everything else that
            # is not a tensor or a plain container is refused
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # torch wraps the reason in boilerplate (which advises the unsafe load); keep only the reason
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        reasons = [l.split("WeightsUnpickler error:", 1)[1].strip() for l in lines if "WeightsUnpickler error:" in l]
        reasons = [r for r in reasons if r] or [l for l in lines if "unsupported" in l.lower()] or lines[:1]
        msg = reasons[0].split(". Please use")[0] if reasons else type(exc).__name__
        if "unsupported global" in text.lower():
            loaded = _load_with_placeholders(path)
            if loaded is not None:
                return loaded
            raise ReprscopeError(
                f"'{path}' needs arbitrary unpickling, which reprscope refuses (it could run code): {msg.strip()[:200]}"
            ) from None
        raise ReprscopeError(f"'{path}' is not a readable PyTorch checkpoint ({_short(msg)}); {_EXPECTED}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything (zip, pickle, safetensors, memory errors)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReprscopeError(f"'{path}' is not a readable PyTorch checkpoint ({_short(msg)}); {_EXPECTED}") from None


_EXPECTED = "expected a file written by torch.save (it may be truncated or corrupt)"


def _short(msg: str) -> str:
    """The reason torch gives, without its boilerplate (miniz's advice, 'Please use …')."""
    for cut in (". This is an internal miniz error", ". Please use", ". If you"):
        msg = msg.split(cut)[0]
    return msg.strip()[:200]


def load_checkpoint(path: os.PathLike | str, fmt: Optional[str] = None,
                    options: Optional[LoadOptions] = None) -> LoadedModel:
    """Detect the format of ``path`` (or use ``fmt``) and rebuild its model bundle.

    Args:
        fmt: a registered format name (``--format``); None: detected.
        options: ``--branch`` / ``--arch`` overrides handed to the format's build.
    """
    options = replace(options or LoadOptions(), source=str(path))
    payload, file_type = read_checkpoint(path)
    if not isinstance(payload, dict):
        raise ReprscopeError(f"'{path}' holds a {type(payload).__name__}, not a checkpoint dict; expected the dict "
                             "torch.save writes for a model (`reprscope inspect` lists what a file holds)")
    forced = fmt is not None
    skipped = list(getattr(payload, "skipped_globals", []) or [])
    if fmt is None:
        hits = [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]
        if not hits and skipped:  # objects reprscope will not build, and no model among the tensors
            raise ReprscopeError(
                f"'{path}' needs arbitrary unpickling, which reprscope refuses (it could run code): it names "
                f"{', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}, and no checkpoint format reprscope "
                "knows is among its tensors")
        if not hits:
            keys = ", ".join(map(str, list(payload)[:8])) + (" …" if len(payload) > 8 else "")
            raise ReprscopeError(
                f"'{path}' is a {'safetensors' if file_type == 'safetensors' else 'PyTorch'} file but not a checkpoint "
                f"format reprscope knows (top-level keys: {keys}); known formats: {', '.join(FORMATS.names())}; "
                f"`reprscope inspect {path}` lists its tensors"
            )
        fmt = hits[0]
    spec: FormatSpec = FORMATS.get(fmt)
    try:
        built = dict(spec.build(payload, options))
    except ReprscopeError as exc:
        if not forced:
            raise
        raise ReprscopeError(f"'{path}' does not fit the format '{fmt}' that was asked for: {exc}", arg="fmt") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file in a known layout: wrong types, shapes, missing keys
        what = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ReprscopeError(f"'{path}' looks like a '{fmt}' checkpoint but its contents are damaged "
                             f"({type(exc).__name__}: {what})") from None
    if built.get("dataset") is not None:  # a file never chooses data locations or downloads
        from ..data.base import data_spec_from_file

        built["dataset"] = data_spec_from_file(built["dataset"]) or None
    if options.pool is not None and not hasattr(built["bundle"].encoder, "pool_tokens"):
        raise ReprscopeError(f"pool '{options.pool}' chooses how a ViT pools its tokens; the {fmt} checkpoint "
                             f"'{path}' has a {type(built['bundle'].encoder).__name__} encoder", arg="pool")
    if built.get("branch") is None and options.branch is not None:
        raise ReprscopeError(f"format '{fmt}' did not resolve branch '{options.branch}'", arg="branch")
    return LoadedModel(source=str(path), sha256=source_sha256(path), format=fmt, file_type=file_type,
                       options=options, skipped_globals=skipped, **built)


def payload_summary(payload: Any, limit: int = 40) -> List[str]:
    """Lines describing an arbitrary checkpoint payload: top-level keys and, for the tensor dict, its key
    prefixes with tensor counts and a few shapes (``reprscope inspect`` on a file no format recognises)."""
    if not isinstance(payload, dict):
        return [f"payload: a {type(payload).__name__} (expected a dict)"]
    lines = ["top-level keys:"]
    for k, v in list(payload.items())[:limit]:
        if isinstance(v, torch.Tensor):
            what = f"tensor {list(v.shape)} {str(v.dtype).replace('torch.', '')}"
        elif isinstance(v, dict):
            n = sum(isinstance(x, torch.Tensor) for x in v.values())
            what = f"dict of {len(v)} entries ({n} tensors)"
        else:
            what = type(v).__name__
        lines.append(f"  {k}: {what}")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        subs = [(k, v) for k, v in payload.items() if isinstance(v, dict)]
        subs = [(k, {kk: vv for kk, vv in v.items() if isinstance(vv, torch.Tensor)}) for k, v in subs]
        subs = [s for s in subs if s[1]]
        if subs:
            name, tensors = max(subs, key=lambda s: len(s[1]))
            lines.append(f"tensors under '{name}':")
    else:
        lines.append("tensors:")
    groups: Dict[str, List[str]] = {}
    for k in tensors:
        parts = str(k).split(".")
        groups.setdefault(".".join(parts[:2]) if len(parts) > 2 else parts[0], []).append(k)
    for prefix, keys in list(groups.items())[:limit]:
        first = tensors[keys[0]]
        lines.append(f"  {prefix}.* ({len(keys)} tensors; e.g. {keys[0]} {list(first.shape)})")
    if len(groups) > limit:
        lines.append(f"  … and {len(groups) - limit} more prefixes")
    return lines


#: Standard deviation of the truncated normal given to parameters no module re-initialises (ViT class tokens
#: and position embeddings: timm's own initialisation of them).
TOKEN_INIT_STD = 0.02


def random_init(model: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same architecture at initialisation: a copy of ``model`` whose every layer is re-initialised.

    Every submodule with ``reset_parameters`` (convolutions, linear layers, norms, which also resets
    BatchNorm's running statistics) is reset with PyTorch's default initialisation, seeded; parameters that no
    module resets (class tokens, position embeddings) are drawn from a normal of std TOKEN_INIT_STD truncated at
    ±2 std. The result is a chance baseline for every metric: what the architecture gives before training.
    """
    import copy
    import hashlib

    import torch
    from torch import nn

    bundle = copy.deepcopy(model.bundle)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        reset: set = set()
        for module in bundle.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
                reset.update(id(p) for p in module.parameters(recurse=False))
        with torch.no_grad():
            for p in bundle.parameters():
                if id(p) not in reset:
                    nn.init.trunc_normal_(p, std=TOKEN_INIT_STD, a=-2 * TOKEN_INIT_STD, b=2 * TOKEN_INIT_STD)
    finally:
        torch.random.set_rng_state(gen_state)
    sha = hashlib.sha256(f"{model.sha256}:random_init:{int(seed)}".encode()).hexdigest()
    return LoadedModel(**{**model.__dict__, "bundle": bundle, "sha256": sha, "step": None, "epoch": None,
                          "source": f"{model.source}#random_init"})
