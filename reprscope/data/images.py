"""Image data sets on disk: any ImageFolder tree (``imagefolder:/data/val``), the CIFAR python batches
(``cifar10:/data/cifar``, ``cifar100:/data/cifar``) and the STL-10 binary files (``stl10:/data/stl``).

The clean view is the deterministic evaluation preprocessing (ImageNet: resize the shorter side, centre crop,
normalise; CIFAR and STL-10: resize to ``resolution`` when it differs from the native side, normalise). Positive
views come from an augmentation preset of :data:`reprscope.data.augment.AUGMENTATIONS` (``augment``, default
``simclr``: the SimCLR recipe of Chen et al. 2020 without blur), computed batched on the data set's device with
per-sample parameters drawn from a ``torch.Generator`` seeded from the numpy rng handed in, so every view is
reproducible from the caller's seed. CIFAR and STL-10 live in memory as uint8 and move with ``to(device)``.

CIFAR batches are Python pickles. They are read with :class:`ArrayOnlyUnpickler`, which resolves only the
numpy globals needed to rebuild an array and refuses every other global, so a tampered file cannot run code.
With ``download=true`` a missing set is fetched with torchvision's download helper (the archive's URL and MD5
from ``torchvision.datasets.CIFAR10`` …), then read here; torchvision's own loader, which unpickles with the
default unpickler, is never called.
"""
from __future__ import annotations

import abc
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as TF

from ..errors import ReprscopeError
from ..params import Param
from .augment import AUGMENTATIONS, AugmentationPreset, augment_images, get_preset, normalize, pad_to_canvas
from .augment import torch_generator  # noqa: F401  (re-exported: the seeding helper of every image set)
from .base import DATASETS, GeneratedDataset, Samples

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as torchvision
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _tvf():
    from torchvision.transforms.v2 import functional as F  # lazy: torchvision is only needed for image sets

    return F


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(n, 3, h, w) or (3, h, w) in [0, 1] → (x − mean) / std per channel, float32, on x's device."""
    return normalize(x if x.ndim == 4 else x[None], mean, std).view(x.shape)


def _three(name: str, owner: str, v: Any) -> List[float]:
    vals = v if isinstance(v, list) else [float(v)] * 3
    if len(vals) != 3:
        raise ReprscopeError(f"The '{name}' parameter of {owner} must be 3 floats (one per RGB channel). Got {v!r} instead.")
    return [float(x) for x in vals]


def augment_param(default: str = "simclr", doc: str = "") -> Param:
    """The ``augment`` parameter: any preset name of ``AUGMENTATIONS`` (``none``: the clean view)."""
    return Param("augment", default, "choice", doc or "positive views: an augmentation preset (none = the clean view)",
                 choices=tuple(AUGMENTATIONS.names()), nullable=True)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, h, w) uint8 or float → (n, 3, size, size) float in [0, 1] (antialiased bilinear, as torchvision)."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x
    return TF.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def fetch_archive(url: str, root: Path, filename: str, md5: str) -> None:
    """Download ``url`` into ``root`` and extract it, checking ``md5`` (torchvision's downloader; no unpickling)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, str(root), filename=filename, md5=md5)
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError is an OSError
        raise ReprscopeError(f"could not download {url} into '{root}': {e}") from None


class _ImageSet(GeneratedDataset):
    """Shared parts: normalisation, batched views from a preset, and a held-out set that is the data itself."""

    modality = "image"

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
            raise ReprscopeError(f"{self.name} needs a path: data='{self.name}:/path/to/{self._expected_short()}'", arg="data")

    @property
    def preset(self) -> AugmentationPreset:
        """The augmentation preset named by ``augment``."""
        return get_preset(self.cfg["augment"])

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

    def _views(self, images: torch.Tensor, size: int, rng: np.random.Generator, view: int,
               sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Batched views of (n, 3, H, W) images (uint8 or float in [0, 1]) on ``self.device``."""
        images = images.to(self.device)
        g = torch_generator(rng, images.device)
        return augment_images(images, self.preset.view(view), size, g, self.mean, self.std, sizes=sizes)


# -- ImageFolder ---------------------------------------------------------------------------------------------


#: Most folders an ImageFolder scan walks (a bound on a tree that is not a data set, e.g. '/').
MAX_FOLDERS = 1_000_000


def scan_image_folder(root: os.PathLike | str) -> Tuple[List[str], List[str], np.ndarray]:
    """``(classes, paths, labels)`` of a torchvision-style ImageFolder tree.

    Classes are the sorted sub-directory names; files are walked recursively within each class, sorted, and
    kept when their extension is an image extension (as ``torchvision.datasets.ImageFolder``). Symbolic links
    are followed inside the root only: a link that leads outside it is neither walked nor opened, and every
    real folder is walked once (a symlink loop cannot make the walk hang or repeat).
    """
    root = Path(root)
    if not root.exists():
        raise ReprscopeError(f"imagefolder path '{root}' does not exist; expected a directory with one sub-directory "
                             "of images per class (root/CLASS/IMAGE.jpg)")
    if not root.is_dir():
        raise ReprscopeError(f"imagefolder path '{root}' is not a directory; expected a directory with one "
                             "sub-directory of images per class (root/CLASS/IMAGE.jpg)")
    real_root = os.path.realpath(root)
    inside = lambda p: os.path.commonpath([real_root, os.path.realpath(p)]) == real_root  # noqa: E731
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and inside(e.path))
    paths: List[str] = []
    labels: List[int] = []
    seen_dirs: set = set()
    for ci, cls in enumerate(classes):
        for dirpath, dirnames, files in os.walk(root / cls, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # a symlink loop or a second link to the same folder: walked once
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            if len(seen_dirs) > MAX_FOLDERS:
                raise ReprscopeError(f"imagefolder path '{root}' holds more than {MAX_FOLDERS:,} folders; give the "
                                     "folder of one data set")
            # links that leave the root are neither walked nor opened
            dirnames[:] = sorted(d for d in dirnames if inside(os.path.join(dirpath, d)))
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                if f.lower().endswith(IMG_EXTENSIONS) and inside(full):
                    paths.append(full)
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
    summary = "ImageFolder tree on disk (imagefolder:/path); clean = resize+centre crop, views = an augmentation preset"
    params = [
        Param("path", None, "str", "root of the tree: one sub-directory of images per class (required)"),
        Param("resolution", 224, "int", "side of the (square) input", low=8),
        Param("resize", 256, "int", "clean view: shorter side resized to this, then centre-cropped", low=8),
        Param("interpolation", "bilinear", "choice", "clean view's resize filter: bilinear (antialiased, on the "
              "tensor), or bicubic (PIL's, as timm's evaluation transform)", choices=("bilinear", "bicubic")),
        Param("mean", list(IMAGENET_MEAN), "floats", "per-channel mean for normalisation (ImageNet)"),
        Param("std", list(IMAGENET_STD), "floats", "per-channel std for normalisation (ImageNet)", low=0, low_open=True),
        Param("limit", 10000, "int", "held-out set: the first N images in sorted order (none: all; ~0.6 MB each at 224)",
              low=1, nullable=True),
        augment_param("simclr", "positive views: an augmentation preset (simclr, byol, vicreg, small, moderate, "
                      "large, ...; none = the clean view)"),
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
        if self.cfg.get("interpolation") == "bicubic":  # PIL's bicubic, exactly what timm's eval transform does
            from PIL import Image

            pil = Image.fromarray(img.permute(1, 2, 0).numpy())
            short = int(self.cfg["resize"])
            w, h = pil.size
            size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)  # torchvision's rule
            pil = pil.resize(size, Image.BICUBIC)
            x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
        else:
            x = F.resize(img, [int(self.cfg["resize"])], antialias=True)  # shorter side
        x = F.center_crop(x, [int(self.cfg["resolution"])] * 2)
        return _normalize(x.float() / 255.0, self.mean, self.std)

    def _samples(self, ids: np.ndarray, keep_images: bool) -> Samples:
        images = [decode_image(self.paths[i]) for i in ids]
        r = int(self.cfg["resolution"])
        x = (torch.stack([self.clean(im) for im in images]) if len(ids) else torch.empty(0, 3, r, r)).to(self.device)
        state: Dict[str, Any] = {"paths": np.asarray([self.paths[i] for i in ids], dtype=object)}
        if keep_images:  # training batches keep the decoded images for their two views; the held-out set does not
            state["images"] = images
        return Samples(x=x, index=torch.from_numpy(ids.astype(np.int64)),
                       labels=torch.from_numpy(self.targets[ids]), state=state)

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(rng.integers(0, len(self.paths), size=n), keep_images=True)

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(np.arange(self._n_eval(len(self.paths))), keep_images=False)

    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        """A batch of views: the decoded images (sizes differ) padded into one canvas, augmented on the device."""
        if self.preset.clean:
            return samples.x.to(self.device).clone()
        st = samples.state
        images = st.get("images") or [decode_image(p) for p in st["paths"]]
        canvas, sizes = pad_to_canvas(images)
        return self._views(canvas, int(self.cfg["resolution"]), rng, view, sizes=sizes)


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
    return {"ndarray": _CheckedArray, "dtype": np.dtype}[name]


#: Largest CIFAR/STL batch file read (the real ones are about 30 MB; the file is read whole into memory).
MAX_PICKLE_BYTES = 1 << 30


class _CheckedArray(np.ndarray):
    """The ndarray a pickle rebuilds: its state is checked before numpy allocates it, so a tiny file that claims
    a shape of 2**40 elements is refused instead of allocating (the state must carry exactly the bytes of the
    shape it declares)."""

    def __setstate__(self, state: Any) -> None:
        try:
            _, shape, dtype, _, raw = state
            count = 1
            for x in shape:
                count *= int(x)
            need = count * np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            raise ReprscopeError("a pickled array has a malformed state") from None
        if isinstance(raw, (bytes, bytearray)) and len(raw) != need:
            raise ReprscopeError(f"a pickled array declares shape {tuple(shape)} ({need:,} bytes) but holds "
                                 f"{len(raw):,} bytes")
        if not isinstance(raw, (bytes, bytearray)) and count > MAX_PICKLE_BYTES:
            raise ReprscopeError(f"a pickled array declares shape {tuple(shape)}, more than the file can hold")
        super().__setstate__(state)


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


def _plain_arrays(x: Any, depth: int = 0) -> Any:
    """The unpickled object with every checked array as a plain ndarray view."""
    if isinstance(x, _CheckedArray):
        return x.view(np.ndarray)
    if depth < 8 and isinstance(x, dict):
        return {k: _plain_arrays(v, depth + 1) for k, v in x.items()}
    if depth < 8 and isinstance(x, list):
        return [_plain_arrays(v, depth + 1) for v in x]
    return x


def load_pickle_safely(path: os.PathLike | str) -> Any:
    """Unpickle ``path`` with :class:`ArrayOnlyUnpickler` (``encoding="bytes"``, as the Python-2 CIFAR files)."""
    size = os.path.getsize(path)
    if size > MAX_PICKLE_BYTES:
        raise ReprscopeError(f"{path} is {size:,} bytes, more than a CIFAR/STL batch ({MAX_PICKLE_BYTES:,} at most)")
    try:
        with open(path, "rb") as f:  # read whole: a length field in the pickle cannot make a read allocate more
            data = io.BytesIO(f.read())
        out = ArrayOnlyUnpickler(data, encoding="bytes").load()
        return _plain_arrays(out)
    except ReprscopeError as e:
        raise ReprscopeError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OverflowError,
            MemoryError, KeyError, RecursionError) as e:
        raise ReprscopeError(f"{path} is not a readable CIFAR batch (pickle of numpy arrays): {e}") from None


def _field(d: Dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


class _InMemoryImages(_ImageSet):
    """A split held in memory as uint8 (n, 3, H, W) pixels, with labels; subclasses read the files.

    ``to(device)`` moves the pixels (1 byte per value: CIFAR-10 train 150 MB, STL-10 unlabeled 2.8 GB), and the
    views are then augmented there. The held-out set keeps the clean views as float32, 3·r²·4 bytes per image
    (12 KB at r = 32, 0.6 MB at r = 224: set ``limit`` for large resolutions).
    """

    folder: str = ""  # the folder the archive extracts to
    tv_class: str = ""  # the torchvision.datasets class whose url / filename / tgz_md5 the download uses
    layout: str = ""  # how the files are described in messages
    splits: Dict[str, List[str]] = {}

    def __init__(self, **given: Any):
        super().__init__(**given)
        r = int(self.cfg["resolution"])
        self.input_shape = (3, r, r)
        root = Path(self.cfg["path"])
        if self.cfg["download"] and self._missing(root):
            self._download(root)
        self.images, self.targets, self.targets_coarse = self._load(root)
        if self.cfg["epoch_size"] is None:
            self.cfg["epoch_size"] = len(self.images)

    # -- files ------------------------------------------------------------------------------------------------
    def _expected_short(self) -> str:
        return "dir-containing-" + self.folder

    def _files(self) -> List[str]:
        return list(self.splits[self.cfg["split"]])

    def _base(self, root: Path) -> Path:
        return root / self.folder if (root / self.folder).is_dir() else root

    def _missing(self, root: Path) -> List[str]:
        if not root.is_dir():
            return self._files()
        base = self._base(root)
        return [f for f in self._files() if not (base / f).is_file()]

    def _download(self, root: Path) -> None:
        import torchvision.datasets as tvd

        tv = getattr(tvd, self.tv_class)
        fetch_archive(tv.url, root, tv.filename, tv.tgz_md5)

    def _check_present(self, root: Path) -> Path:
        hint = "; set data.download=true to fetch it" if not self.cfg["download"] else ""
        if not root.is_dir():
            raise ReprscopeError(f"{self.name} path '{root}' is not a directory; expected the directory holding "
                                 f"{self.folder}/ ({self.layout}), or that folder itself{hint}")
        missing = self._missing(root)
        if missing:
            expected = f"{self.folder}/{{{','.join(self._files())}}}"
            raise ReprscopeError(f"{self.name} split '{self.cfg['split']}' not found under '{root}': missing "
                                 f"{', '.join(missing)}; expected {expected} ({self.layout}){hint}")
        return self._base(root)

    @abc.abstractmethod
    def _load(self, root: Path) -> Tuple[torch.Tensor, Optional[np.ndarray], Optional[np.ndarray]]:
        """``(pixels (n, 3, H, W) uint8, labels (n,) int64 or None, coarse labels or None)`` of the split."""

    # -- device ---------------------------------------------------------------------------------------------
    def _move(self, device: torch.device) -> None:
        self.images = self.images.to(device)

    def memory_bytes(self) -> int:
        return int(self.images.numel()) * self.images.element_size()

    # -- samples and views ----------------------------------------------------------------------------------
    def clean(self, images: torch.Tensor) -> torch.Tensor:
        """The clean view of (n, 3, H, W) uint8 images: resized to ``resolution`` if needed, normalised."""
        return _normalize(resize_images(images, int(self.cfg["resolution"])), self.mean, self.std)

    def _labels(self, ids: np.ndarray, which: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        return None if which is None else torch.from_numpy(which[ids])

    def _samples(self, ids: np.ndarray, imgs: torch.Tensor) -> Samples:
        return Samples(x=self.clean(imgs), index=torch.from_numpy(ids.astype(np.int64)),
                       labels=self._labels(ids, self.targets), labels_coarse=self._labels(ids, self.targets_coarse),
                       state={"images": imgs})

    def _take(self, ids: np.ndarray) -> torch.Tensor:
        return self.images[torch.from_numpy(ids.astype(np.int64)).to(self.images.device)]

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        ids = rng.integers(0, len(self.images), size=n)
        return self._samples(ids, self._take(ids))

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        m = self._n_eval(len(self.images))
        return self._samples(np.arange(m), self.images[:m])  # a view of the pixels, not a copy

    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        if self.preset.clean:
            return samples.x.to(self.device).clone()
        return self._views(samples.state["images"], int(self.cfg["resolution"]), rng, view)

    def train_views(self, batch_size: int, rng: np.random.Generator) -> List[torch.Tensor]:
        """As the default (same draws from ``rng``), without computing the unused clean view."""
        ids = rng.integers(0, len(self.images), size=batch_size)
        imgs = self._take(ids)
        if self.preset.clean:
            x = self.clean(imgs)
            return [x, x.clone()]
        r = int(self.cfg["resolution"])
        return [self._views(imgs, r, rng, 0), self._views(imgs, r, rng, 1)]


# -- CIFAR -----------------------------------------------------------------------------------------------------


class _Cifar(_InMemoryImages):
    """CIFAR python batches; the whole split lives in memory as uint8 (50000×3×32×32 = 150 MB for train)."""

    label_key: str = "labels"
    coarse_key: Optional[str] = None
    layout = "the python version of the data set"

    def _load(self, root: Path) -> Tuple[torch.Tensor, np.ndarray, Optional[np.ndarray]]:
        base = self._check_present(root)
        data, labels, coarse = [], [], []
        for f in self._files():
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


def _resolution_param(native: int) -> Param:
    return Param("resolution", native, "int", f"side of the clean view and the views (native {native}; "
                 "another value resizes, e.g. 224 to evaluate an ImageNet-sized model)", low=8)


def _download_param() -> Param:
    return Param("download", False, "bool", "fetch the files with torchvision's downloader when they are missing "
                 "(then read here; off by default: nothing is downloaded unless asked)")


def _cifar_params(mean: List[float], std: List[float]) -> List[Param]:
    return [
        Param("path", None, "str", "directory holding the python batches (required)"),
        Param("split", "test", "choice", "which split: test (analysis) or train", choices=("test", "train")),
        _resolution_param(32),
        Param("mean", mean, "floats", "per-channel mean for normalisation"),
        Param("std", std, "floats", "per-channel std for normalisation", low=0, low_open=True),
        Param("limit", None, "int", "held-out set: the first N images of the split (none: all)", low=1, nullable=True),
        augment_param("simclr", "positive views: an augmentation preset (default the SimCLR CIFAR recipe; "
                      "none = the clean view)"),
        Param("epoch_size", None, "int", "nominal samples per epoch (none: the size of the split)", low=1, nullable=True),
        _download_param(),
    ]


@DATASETS.register("cifar10", on_disk=True)
class Cifar10(_Cifar):
    """CIFAR-10, ``cifar-10-batches-py`` (data_batch_1..5, test_batch); 10 classes."""

    name = "cifar10"
    summary = "CIFAR-10 python batches (cifar10:/path); clean = normalised, views = an augmentation preset"
    folder = "cifar-10-batches-py"
    tv_class = "CIFAR10"
    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    num_classes = 10
    params = _cifar_params([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


@DATASETS.register("cifar100", on_disk=True)
class Cifar100(_Cifar):
    """CIFAR-100, ``cifar-100-python`` (train, test); 100 fine labels and 20 coarse labels (``labels_coarse``)."""

    name = "cifar100"
    summary = "CIFAR-100 python batches (cifar100:/path), fine + coarse labels; views = an augmentation preset"
    folder = "cifar-100-python"
    tv_class = "CIFAR100"
    splits = {"train": ["train"], "test": ["test"]}
    label_key = "fine_labels"
    coarse_key = "coarse_labels"
    num_classes = 100
    params = _cifar_params([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])


# -- STL-10 ----------------------------------------------------------------------------------------------------

STL10_SIDE = 96
_STL10_BYTES = 3 * STL10_SIDE * STL10_SIDE


def read_stl10_images(path: Path) -> np.ndarray:
    """(n, 3, 96, 96) uint8 of an STL-10 ``*_X.bin`` (raw bytes, each channel stored column-major)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _STL10_BYTES:
        raise ReprscopeError(f"{path} is not an STL-10 image file: {raw.size} bytes is not a positive multiple of "
                             f"3x96x96 = {_STL10_BYTES}")
    return raw.reshape(-1, 3, STL10_SIDE, STL10_SIDE).transpose(0, 1, 3, 2)  # column-major → (c, row, col)


def read_stl10_labels(path: Path, n: int) -> np.ndarray:
    """(n,) int64 labels 0..9 of an STL-10 ``*_y.bin`` (stored as bytes 1..10)."""
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(y) != n or (len(y) and (y.min() < 1 or y.max() > 10)):
        raise ReprscopeError(f"{path} is not an STL-10 label file for {n} images: expected {n} bytes in 1..10; got "
                             f"{len(y)} bytes" + (f" in {y.min()}..{y.max()}" if len(y) else ""))
    return y - 1


@DATASETS.register("stl10", on_disk=True)
class STL10(_InMemoryImages):
    """STL-10, the binary version ``stl10_binary/{train,test,unlabeled}_X.bin`` and ``{train,test}_y.bin``.

    96×96 colour images, 10 classes (labels 1..10 on disk, 0..9 here). Splits: ``train`` (5 000), ``test``
    (8 000), ``unlabeled`` (100 000, no labels) and ``train+unlabeled`` (the SSL training set; no labels, as a
    mixed split would need a placeholder class). In memory as uint8: 2.8 GB for ``unlabeled``; the held-out
    set's clean views take 110 KB per image at r = 96 (≈ 0.9 GB for ``test``).
    """

    name = "stl10"
    summary = "STL-10 binary files (stl10:/path), 96x96, split train/test/unlabeled/train+unlabeled"
    folder = "stl10_binary"
    tv_class = "STL10"
    layout = "the binary version of the data set"
    num_classes = 10
    splits = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"],
              "train+unlabeled": ["train", "unlabeled"]}
    params = [
        Param("path", None, "str", "directory holding stl10_binary/ (or that folder itself; required)"),
        Param("split", "test", "choice", "which split: test (analysis), train, unlabeled or train+unlabeled (SSL)",
              choices=("test", "train", "unlabeled", "train+unlabeled")),
        _resolution_param(STL10_SIDE),
        Param("mean", [0.4467, 0.4398, 0.4066], "floats", "per-channel mean for normalisation"),
        Param("std", [0.2603, 0.2566, 0.2713], "floats", "per-channel std for normalisation", low=0, low_open=True),
        Param("limit", None, "int", "held-out set: the first N images of the split (none: all)", low=1, nullable=True),
        augment_param("simclr", "positive views: an augmentation preset (none = the clean view)"),
        Param("epoch_size", None, "int", "nominal samples per epoch (none: the size of the split)", low=1, nullable=True),
        _download_param(),
    ]

    def _files(self) -> List[str]:
        parts = self.splits[self.cfg["split"]]
        return [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]

    def _load(self, root: Path) -> Tuple[torch.Tensor, Optional[np.ndarray], None]:
        base = self._check_present(root)
        parts = self.splits[self.cfg["split"]]
        images = [read_stl10_images(base / f"{p}_X.bin") for p in parts]
        labels = None
        if "unlabeled" not in parts:
            labels = np.concatenate([read_stl10_labels(base / f"{p}_y.bin", len(x)) for p, x in zip(parts, images)])
        pixels = images[0] if len(images) == 1 else np.concatenate(images)
        return torch.from_numpy(pixels), labels, None
