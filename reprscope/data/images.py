"""Image data sets on disk: any ImageFolder tree (``imagefolder:/data/val``) and the CIFAR python batches
(``cifar10:/data/cifar``, ``cifar100:/data/cifar``).

The clean view is the deterministic evaluation preprocessing (ImageNet: resize the shorter side, centre crop,
normalise; CIFAR: normalise). Positive views follow the SimCLR recipe (Chen et al. 2020, appendix A):
RandomResizedCrop(scale=(0.08, 1)), horizontal flip p=0.5, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8,
grayscale p=0.2. Their random parameters are drawn per sample from a ``torch.Generator`` seeded from the
numpy rng handed in, so every view is reproducible from the caller's seed.

CIFAR batches are Python pickles. They are read with :class:`ArrayOnlyUnpickler`, which resolves only the
numpy globals needed to rebuild an array and refuses every other global, so a tampered file cannot run code.
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ReprscopeError
from ..params import Param
from .base import DATASETS, GeneratedDataset, Samples

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as torchvision
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _tvf():
    from torchvision.transforms.v2 import functional as F  # lazy: torchvision is only needed for image sets

    return F


# -- SimCLR augmentation, reproducible from a generator ---------------------------------------------------------


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from one draw of ``rng`` (one per batch)."""
    g = torch.Generator()
    g.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return g


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def random_resized_crop_params(h: int, w: int, g: torch.Generator, scale: Tuple[float, float] = (0.08, 1.0),
                               ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random crop, the algorithm of torchvision's RandomResizedCrop."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    # fallback: the central crop with the ratio clamped into range
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def simclr_view(img: torch.Tensor, size: int, g: torch.Generator, jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                p_jitter: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """One SimCLR view of a (3, H, W) uint8 image → (3, size, size) float32 in [0, 1] (not normalised)."""
    F = _tvf()
    top, left, ch, cw = random_resized_crop_params(int(img.shape[-2]), int(img.shape[-1]), g)
    x = F.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if _uniform(g, 0, 1) < 0.5:
        x = F.horizontal_flip(x)
    if _uniform(g, 0, 1) < p_jitter:
        b, c, s, h = jitter
        factors = [_uniform(g, max(0.0, 1 - b), 1 + b), _uniform(g, max(0.0, 1 - c), 1 + c),
                   _uniform(g, max(0.0, 1 - s), 1 + s), _uniform(g, -h, h)]
        ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
        for k in torch.randperm(4, generator=g).tolist():  # random order, as ColorJitter
            x = ops[k](x, factors[k])
    if _uniform(g, 0, 1) < p_gray:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    return x.clamp(0.0, 1.0)  # grayscale may return an expanded view: no in-place op


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(n, 3, h, w) or (3, h, w) in [0, 1] → (x − mean) / std per channel, float32."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.float() - m) / s


def _three(name: str, owner: str, v: Any) -> List[float]:
    vals = v if isinstance(v, list) else [float(v)] * 3
    if len(vals) != 3:
        raise ReprscopeError(f"The '{name}' parameter of {owner} must be 3 floats (one per RGB channel). Got {v!r} instead.")
    return [float(x) for x in vals]


class _ImageSet(GeneratedDataset):
    """Shared parts: normalisation, SimCLR views, and a held-out set that is the data itself (``limit``)."""

    # the held-out set is the images on disk (``limit``), so the generated sets' ``eval_size`` does not apply
    common_params = [p for p in GeneratedDataset.common_params if p.name != "eval_size"]

    def __init__(self, **given: Any):
        super().__init__(**given)
        owner = f"dataset {self.name}"
        self.mean = _three("mean", owner, self.cfg["mean"])
        self.std = _three("std", owner, self.cfg["std"])
        if self.cfg["augment"] is None:  # the command line's "none" arrives as None
            self.cfg["augment"] = "none"
        if any(s <= 0 for s in self.std):
            raise ReprscopeError(f"The 'std' parameter of {owner} must be positive. Got {self.cfg['std']!r} instead.")
        if not self.cfg.get("path"):
            raise ReprscopeError(f"{self.name} needs a path: --data {self.name}:/path/to/{self._expected_short()}")

    def _expected_short(self) -> str:
        return "data"

    def _n_eval(self, total: int) -> int:
        lim = self.cfg.get("limit")
        return total if lim is None else min(int(lim), total)

    def eval_set(self) -> Samples:
        """The first ``limit`` images of the split in sorted order (all of them with ``limit=none``)."""
        if self._eval is None:
            self._eval = self.make_eval_set(0, np.random.default_rng([self.seed, 1]))
        return self._eval

    def _views(self, images: Sequence[torch.Tensor], size: int, rng: np.random.Generator) -> torch.Tensor:
        g = torch_generator(rng)
        out = torch.stack([simclr_view(im, size, g) for im in images]) if len(images) else torch.empty(0, 3, size, size)
        return _normalize(out, self.mean, self.std)


# -- ImageFolder ---------------------------------------------------------------------------------------------


def scan_image_folder(root: os.PathLike | str) -> Tuple[List[str], List[str], np.ndarray]:
    """``(classes, paths, labels)`` of a torchvision-style ImageFolder tree.

    Classes are the sorted sub-directory names; files are walked recursively within each class, sorted, and
    kept when their extension is an image extension (as ``torchvision.datasets.ImageFolder``).
    """
    root = Path(root)
    if not root.exists():
        raise ReprscopeError(f"imagefolder path '{root}' does not exist; expected a directory with one sub-directory "
                             "of images per class (root/CLASS/IMAGE.jpg)")
    if not root.is_dir():
        raise ReprscopeError(f"imagefolder path '{root}' is not a directory; expected a directory with one "
                             "sub-directory of images per class (root/CLASS/IMAGE.jpg)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    paths: List[str] = []
    labels: List[int] = []
    for ci, cls in enumerate(classes):
        for dirpath, dirnames, files in sorted(os.walk(root / cls, followlinks=True)):
            dirnames.sort()
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(ci)
    if not paths:
        raise ReprscopeError(f"imagefolder path '{root}' holds no images; expected one sub-directory per class with "
                             f"image files ({', '.join(IMG_EXTENSIONS)}); found {len(classes)} sub-directories")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def decode_image(path: str) -> torch.Tensor:
    """A (3, H, W) uint8 RGB tensor of the image file ``path``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ReprscopeError(f"cannot decode image '{path}': {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@DATASETS.register("imagefolder", on_disk=True)
class ImageFolderSet(_ImageSet):
    """Any torchvision-style ImageFolder tree; labels are the class indices of the sorted class names.

    The held-out set keeps the clean views in memory as float32: 3·r²·4 bytes each (≈ 0.6 MB at r = 224, so
    the default ``limit`` of 10000 images needs ≈ 6 GB). The images themselves are decoded again on demand for
    the augmented views. ``limit`` takes the first images in ImageFolder order, i.e. class by class.
    """

    name = "imagefolder"
    summary = "ImageFolder tree on disk (imagefolder:/path); clean = resize+centre crop, views = SimCLR recipe"
    params = [
        Param("path", None, "str", "root of the tree: one sub-directory of images per class (required)"),
        Param("resolution", 224, "int", "side of the (square) input", low=8),
        Param("resize", 256, "int", "clean view: shorter side resized to this, then centre-cropped", low=8),
        Param("mean", list(IMAGENET_MEAN), "floats", "per-channel mean for normalisation (ImageNet)"),
        Param("std", list(IMAGENET_STD), "floats", "per-channel std for normalisation (ImageNet)", low=0, low_open=True),
        Param("limit", 10000, "int", "held-out set: the first N images in sorted order (none: all; ~0.6 MB each at 224)",
              low=1, nullable=True),
        Param("augment", "simclr", "choice", "positive views: the SimCLR recipe, or none (= the clean view)",
              choices=("simclr", "none"), nullable=True),
        Param("epoch_size", None, "int", "nominal samples per epoch (none: the number of images)", low=1, nullable=True),
    ]

    def __init__(self, **given: Any):
        super().__init__(**given)
        if self.cfg["resize"] < self.cfg["resolution"]:
            raise ReprscopeError(f"The 'resize' parameter of dataset imagefolder must be >= resolution "
                                 f"({self.cfg['resolution']}). Got {self.cfg['resize']} instead.")
        self.classes, self.paths, self.targets = scan_image_folder(self.cfg["path"])
        self.num_classes = len(self.classes)
        r = int(self.cfg["resolution"])
        self.input_shape = (3, r, r)
        if self.cfg["epoch_size"] is None:
            self.cfg["epoch_size"] = len(self.paths)

    def _expected_short(self) -> str:
        return "imagefolder-root"

    def clean(self, img: torch.Tensor) -> torch.Tensor:
        """ImageNet evaluation preprocessing of a (3, H, W) uint8 image → (3, r, r) normalised float32."""
        F = _tvf()
        x = F.resize(img, [int(self.cfg["resize"])], antialias=True)  # shorter side
        x = F.center_crop(x, [int(self.cfg["resolution"])] * 2)
        return _normalize(x.float() / 255.0, self.mean, self.std)

    def _samples(self, ids: np.ndarray, keep_images: bool) -> Samples:
        images = [decode_image(self.paths[i]) for i in ids]
        r = int(self.cfg["resolution"])
        x = torch.stack([self.clean(im) for im in images]) if len(ids) else torch.empty(0, 3, r, r)
        state: Dict[str, Any] = {"paths": np.asarray([self.paths[i] for i in ids], dtype=object)}
        if keep_images:  # training batches keep the decoded images for their two views; the held-out set does not
            state["images"] = images
        return Samples(x=x, index=torch.from_numpy(ids.astype(np.int64)),
                       labels=torch.from_numpy(self.targets[ids]), state=state)

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(rng.integers(0, len(self.paths), size=n), keep_images=True)

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(np.arange(self._n_eval(len(self.paths))), keep_images=False)

    def augment(self, samples: Samples, rng: np.random.Generator) -> torch.Tensor:
        if self.cfg["augment"] == "none":
            return samples.x.clone()
        st = samples.state
        images = st.get("images") or [decode_image(p) for p in st["paths"]]
        return self._views(images, int(self.cfg["resolution"]), rng)


# -- CIFAR -----------------------------------------------------------------------------------------------------


def _numpy_global(name: str) -> Any:
    if name == "_reconstruct":
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct
    if name == "_frombuffer":
        try:
            from numpy._core.numeric import _frombuffer
        except ImportError:  # numpy < 2
            from numpy.core.numeric import _frombuffer
        return _frombuffer
    if name == "encode":
        import codecs

        return codecs.encode
    if name == "scalar":  # a numpy scalar (labels re-saved as np.int64): rebuilt from its dtype and bytes
        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import scalar
        return scalar
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


class ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and nothing else.

    ``find_class`` is the only way a pickle reaches code; it resolves the numpy array/dtype reconstruction
    globals (``_reconstruct``, ``ndarray``, ``dtype``, and ``_frombuffer`` for protocol-5 pickles, which builds
    an array from bytes; plus ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes) and raises ReprscopeError for any other global, before anything is called.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol < 3 (str → latin-1 bytes; no side effects)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return _numpy_global(name)
        raise ReprscopeError(f"refusing to unpickle global '{module}.{name}': only numpy arrays are allowed in a "
                             "CIFAR batch file")

    def persistent_load(self, pid: Any) -> Any:
        raise ReprscopeError("refusing to unpickle a persistent id: only numpy arrays are allowed in a CIFAR batch file")


def load_pickle_safely(path: os.PathLike | str) -> Any:
    """Unpickle ``path`` with :class:`ArrayOnlyUnpickler` (``encoding="bytes"``, as the Python-2 CIFAR files)."""
    try:
        with open(path, "rb") as f:
            return ArrayOnlyUnpickler(f, encoding="bytes").load()
    except ReprscopeError as e:
        raise ReprscopeError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ReprscopeError(f"{path} is not a readable CIFAR batch (pickle of numpy arrays): {e}") from None


def _field(d: Dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


class _Cifar(_ImageSet):
    """CIFAR python batches; the whole split lives in memory as uint8 (50000×3×32×32 = 150 MB for train)."""

    folder: str = ""
    files: Dict[str, List[str]] = {}
    label_key: str = "labels"
    coarse_key: Optional[str] = None
    input_shape = (3, 32, 32)

    def __init__(self, **given: Any):
        super().__init__(**given)
        self.images, self.targets, self.targets_coarse = self._load(Path(self.cfg["path"]))
        if self.cfg["epoch_size"] is None:
            self.cfg["epoch_size"] = len(self.images)

    def _expected_short(self) -> str:
        return "dir-containing-" + self.folder

    def _load(self, root: Path) -> Tuple[torch.Tensor, np.ndarray, Optional[np.ndarray]]:
        expected = f"{self.folder}/{{{','.join(self.files[self.cfg['split']])}}}"
        if not root.is_dir():
            raise ReprscopeError(f"{self.name} path '{root}' is not a directory; expected the directory holding "
                                 f"{self.folder}/ (the python version of the data set), or that folder itself")
        base = root / self.folder if (root / self.folder).is_dir() else root
        missing = [f for f in self.files[self.cfg["split"]] if not (base / f).is_file()]
        if missing:
            raise ReprscopeError(f"{self.name} split '{self.cfg['split']}' not found under '{root}': missing "
                                 f"{', '.join(missing)}; expected {expected} (the python version of the data set)")
        data, labels, coarse = [], [], []
        for f in self.files[self.cfg["split"]]:
            d = load_pickle_safely(base / f)
            try:
                x = np.asarray(_field(d, "data"))
                y = np.asarray(_field(d, self.label_key), dtype=np.int64)
                yc = None if self.coarse_key is None else np.asarray(_field(d, self.coarse_key), dtype=np.int64)
            except (KeyError, TypeError) as e:
                raise ReprscopeError(f"{base / f} is not a {self.name} batch: missing key {e}") from None
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x) \
                    or (yc is not None and len(yc) != len(x)):
                raise ReprscopeError(f"{base / f} is not a {self.name} batch: expected uint8 data of shape (n, 3072) "
                                     f"and n labels; got data {x.dtype} {x.shape} and {len(y)} labels")
            data.append(x)
            labels.append(y)
            if yc is not None:
                coarse.append(yc)
        images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))
        return images, np.concatenate(labels), (np.concatenate(coarse) if coarse else None)

    def _samples(self, ids: np.ndarray) -> Samples:
        t = torch.from_numpy(ids.astype(np.int64))
        imgs = self.images[t]
        return Samples(x=_normalize(imgs.float() / 255.0, self.mean, self.std), index=t,
                       labels=torch.from_numpy(self.targets[ids]),
                       labels_coarse=None if self.targets_coarse is None else torch.from_numpy(self.targets_coarse[ids]),
                       state={"images": imgs})

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(rng.integers(0, len(self.images), size=n))

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(np.arange(self._n_eval(len(self.images))))

    def augment(self, samples: Samples, rng: np.random.Generator) -> torch.Tensor:
        if self.cfg["augment"] == "none":
            return samples.x.clone()
        return self._views(list(samples.state["images"]), 32, rng)


def _cifar_params(mean: List[float], std: List[float]) -> List[Param]:
    return [
        Param("path", None, "str", "directory holding the python batches (required)"),
        Param("split", "test", "choice", "which split: test (analysis) or train", choices=("test", "train")),
        Param("mean", mean, "floats", "per-channel mean for normalisation"),
        Param("std", std, "floats", "per-channel std for normalisation", low=0, low_open=True),
        Param("limit", None, "int", "held-out set: the first N images of the split (none: all)", low=1, nullable=True),
        Param("augment", "simclr", "choice", "positive views: the SimCLR recipe at 32x32, or none (= the clean view)",
              choices=("simclr", "none"), nullable=True),
        Param("epoch_size", None, "int", "nominal samples per epoch (none: the size of the split)", low=1, nullable=True),
    ]


@DATASETS.register("cifar10", on_disk=True)
class Cifar10(_Cifar):
    """CIFAR-10, ``cifar-10-batches-py`` (data_batch_1..5, test_batch); 10 classes."""

    name = "cifar10"
    summary = "CIFAR-10 python batches (cifar10:/path); clean = normalised, views = SimCLR recipe at 32x32"
    folder = "cifar-10-batches-py"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    num_classes = 10
    params = _cifar_params([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


@DATASETS.register("cifar100", on_disk=True)
class Cifar100(_Cifar):
    """CIFAR-100, ``cifar-100-python`` (train, test); 100 fine labels and 20 coarse labels (``labels_coarse``)."""

    name = "cifar100"
    summary = "CIFAR-100 python batches (cifar100:/path), fine + coarse labels; views = SimCLR recipe at 32x32"
    folder = "cifar-100-python"
    files = {"train": ["train"], "test": ["test"]}
    label_key = "fine_labels"
    coarse_key = "coarse_labels"
    num_classes = 100
    params = _cifar_params([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
