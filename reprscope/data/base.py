"""The data-set contract.

Every data set reprscope trains on or extracts from is a registered class with declared parameters. Generated
sets are infinite streams (``sample`` draws fresh samples from the marginal) with a nominal ``epoch_size`` so
that ``--epochs`` means the same everywhere, plus a fixed held-out set (``eval_set``) for evaluation. Positive
pairs come from the set's own sampler (``augment``): an image augmentation, the conditional p(z̃|z) of a
latent-variable model, or "another point of the same class" for the toy sets of the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL").

Randomness flows through a ``numpy.random.Generator`` handed in by the caller, so training streams are
reproducible from the seed and their state can be checkpointed for exact resume (image augmentations draw their
per-sample parameters from a ``torch.Generator`` on the data's device seeded by one draw of that rng).

Devices: ``to(device)`` moves a data set; afterwards inputs (``Samples.x``, the image ``state``) and every view
from ``augment``/``train_views`` are tensors on that device (image sets keep their uint8 pixels there and
augment there), while the metadata (``index``, ``latents``, ``labels``, ``labels_coarse``) stays on the CPU.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ReprscopeError
from ..params import Param, resolve_params
from ..registry import Registry

DATASETS: Registry[type] = Registry("dataset")


@dataclass
class Samples:
    """A batch of samples with everything known about them.

    Attributes:
        x: (n, *input_shape) float32 clean inputs.
        index: (n,) int64 sample indices (position in the held-out set, or a running counter for streams).
        latents: (n, k) float32 ground-truth latents, or None.
        labels: (n,) int64 class labels, or None; ``labels_coarse`` likewise.
        state: what ``augment`` acts on (the latents of a DGP, the class of a toy point, an image …).
    """

    x: torch.Tensor
    index: torch.Tensor
    latents: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    labels_coarse: Optional[torch.Tensor] = None
    state: Any = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: str | torch.device) -> "Samples":
        """These samples with ``x`` and the tensors in ``state`` on ``device`` (metadata stays on the CPU)."""
        dev = torch.device(device)
        st = self.state
        if isinstance(st, torch.Tensor):
            st = st.to(dev)
        elif isinstance(st, dict):
            st = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
        return replace(self, x=self.x.to(dev), state=st)

    def select(self, sl: slice) -> "Samples":
        """The samples ``sl`` (a slice) of this batch; ``state`` is sliced when it supports it."""
        cut = lambda t: None if t is None else t[sl]  # noqa: E731
        st = self.state
        if isinstance(st, (torch.Tensor, np.ndarray)):
            st = st[sl]
        elif isinstance(st, dict):
            st = {k: v[sl] for k, v in st.items()}
        return replace(self, x=self.x[sl], index=self.index[sl], latents=cut(self.latents), labels=cut(self.labels),
                       labels_coarse=cut(self.labels_coarse), state=st)


#: The most memory a generated held-out set may take (it is generated at once and kept for every view).
MAX_HELD_OUT_BYTES = 8 * 2**30


class GeneratedDataset(abc.ABC):
    """Base class of the built-in generated sets. Subclasses set ``name``, ``params`` and implement the hooks.

    Class attributes:
        modality: ``vector`` or ``image`` (what a default backbone must take; see
            :func:`reprscope.train.config.default_backbone`).
        name: registry name.
        params: declared parameters (``--set data.KEY=VALUE``).
        pair_mode: ``"two_aug"`` (both views augmented, the usual SSL pair) or ``"anchor"`` (the clean anchor
            and one positive, as in the cl-ica / content-style experiments).
    """

    modality: ClassVar[str] = "vector"
    #: bytes the held-out set keeps per input value (float32 inputs; image sets add their uint8 pixels)
    held_out_bytes_per_value: ClassVar[int] = 4

    name: ClassVar[str] = ""
    params: ClassVar[List[Param]] = []
    summary: ClassVar[str] = ""
    common_params: ClassVar[List[Param]] = [
        Param("seed", 0, "int", "seed of the data set itself (mixing map, held-out set)", low=0),
        Param("epoch_size", 10000, "int", "nominal number of samples per epoch of the stream", low=1),
        Param("eval_size", 5000, "int", "size of the fixed held-out set", low=1),
    ]

    def __init__(self, **given: Any):
        self.cfg: Dict[str, Any] = resolve_params(f"dataset {self.name}", self.all_params(), given)
        self.seed: int = self.cfg["seed"]
        self.device: torch.device = torch.device("cpu")
        self._eval: Optional[Samples] = None

    @classmethod
    def all_params(cls) -> List[Param]:
        own = {p.name for p in cls.params}
        return list(cls.params) + [p for p in cls.common_params if p.name not in own]

    # -- description -------------------------------------------------------------------------------------
    input_shape: Tuple[int, ...] = ()
    latent_names: List[str] = []
    content_mask: Optional[List[bool]] = None
    num_classes: int = 0
    pair_mode: str = "two_aug"

    def spec(self) -> Dict[str, Any]:
        """JSON-able spec that rebuilds this data set with :func:`build_dataset`."""
        return {"name": self.name, **self.cfg}

    @property
    def has_latents(self) -> bool:
        return bool(self.latent_names)

    # -- hooks -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        """Draw ``n`` fresh samples from the marginal."""

    @abc.abstractmethod
    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        """One positive view per sample from the set's own positive-pair sampler, (n, *input_shape) float32 on
        ``self.device``. ``view`` (0-based) picks the view's distribution where a pipeline is asymmetric (BYOL's
        two views); symmetric samplers ignore it."""

    # -- device ------------------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "GeneratedDataset":
        """Keep this data set's tensors on ``device`` from now on (inputs, views, the cached held-out set).

        Sets that hold data in memory move it there (the image sets keep uint8 pixels, 1 byte per value, and
        augment on the device). Returns ``self``.
        """
        self.device = torch.device(device)
        self._move(self.device)
        if self._eval is not None:
            self._eval = self._eval.to(self.device)
        return self

    def _move(self, device: torch.device) -> None:
        """Hook: move the data held in memory to ``device`` (default: nothing is held)."""

    def memory_bytes(self) -> int:
        """Bytes of data held in memory that ``to`` would move (0 for generated sets): lets a trainer decide
        whether the whole set fits on its device."""
        return 0

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        """The held-out set; default: ``n`` samples of the marginal from a dedicated stream."""
        s = self.sample(n, rng)
        s.index = torch.arange(len(s), dtype=torch.int64)
        return s

    # -- derived -----------------------------------------------------------------------------------------
    def eval_set(self) -> Samples:
        """The fixed held-out set (same for every call and every run with the same data seed).

        Raises:
            ReprscopeError: the set would take more than :data:`MAX_HELD_OUT_BYTES` of memory (checked before
                anything is generated; ``data.eval_size`` or the resolution bring it down).
        """
        if self._eval is None:
            n = int(self.cfg.get("eval_size") or 0)
            shape = getattr(self, "input_shape", None) or ()
            need = n * int(np.prod(shape)) * self.held_out_bytes_per_value if shape else 0
            if need > MAX_HELD_OUT_BYTES:
                raise ReprscopeError(
                    f"the held-out set of {self.name} ({n:,} inputs of shape {tuple(shape)}) would take "
                    f"{need / 2**30:.1f} GiB of memory, more than the {MAX_HELD_OUT_BYTES / 2**30:.0f} GiB reprscope "
                    f"allows; lower data.eval_size (e.g. --set data.eval_size={max(1, n * MAX_HELD_OUT_BYTES // need // 2)})"
                    " or the resolution", arg="set_data")
            self._eval = self.make_eval_set(self.cfg["eval_size"], np.random.default_rng([self.seed, 1]))
        return self._eval

    def train_views(self, batch_size: int, rng: np.random.Generator) -> List[torch.Tensor]:
        """A batch of positive pairs ``[view1, view2]`` from the training stream, on ``self.device``.

        ``two_aug``: ``augment`` with ``view=0`` and ``view=1`` (the two branches of an asymmetric pipeline);
        ``anchor``: the clean input and ``augment(view=0)``.
        """
        s = self.sample(batch_size, rng)
        if self.pair_mode == "anchor":
            return [s.x.to(self.device), self.augment(s, rng, view=0)]
        return [self.augment(s, rng, view=0), self.augment(s, rng, view=1)]


def parse_data_arg(arg: str) -> Dict[str, Any]:
    """``NAME`` or ``NAME:PATH`` → ``{"name": NAME[, "path": PATH]}``."""
    if not arg:
        raise ReprscopeError("data needs a data-set name, e.g. 'dgp' (see `reprscope list datasets`)", arg="data")
    name, _, path = arg.partition(":")
    spec: Dict[str, Any] = {"name": name}
    if path:
        spec["path"] = path
    return spec


#: Data-set parameters that choose files, folders or downloads: they come from the user, never from a file.
LOCATION_PARAMS = ("path", "download", "root", "data_root")


def data_spec_from_file(spec: Any) -> Dict[str, Any]:
    """The data set a checkpoint says it was trained on, as far as a file may decide it: the name and the
    declared parameters of that data set, without any location (``path``) or ``download`` (a checkpoint from a
    stranger must not make reprscope read a folder or fetch anything); unknown or non-plain entries are dropped.
    Empty when the file names no registered data set."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"] not in DATASETS:
        return {}
    declared = {p.name for p in DATASETS.get(spec["name"]).all_params()}
    ok = lambda v: isinstance(v, (str, int, float, bool, type(None))) or (  # noqa: E731
        isinstance(v, list) and len(v) <= 1000 and all(isinstance(x, (str, int, float, bool)) for x in v))
    return {"name": spec["name"], **{k: v for k, v in spec.items()
                                     if k in declared and k not in LOCATION_PARAMS and ok(v)}}


def build_dataset(spec: Dict[str, Any] | str, **overrides: Any) -> GeneratedDataset:
    """Instantiate a registered data set from a spec dict (``{"name": ..., **params}``) or a ``--data`` string."""
    if isinstance(spec, str):
        spec = parse_data_arg(spec)
    spec = {**spec, **overrides}
    name = spec.get("name")
    cls = DATASETS.get(str(name))
    params = {k: v for k, v in spec.items() if k != "name"}
    return cls(**params)
