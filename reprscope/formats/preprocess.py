"""Preprocessing follows the source: what a checkpoint's project fed its network, and how an image data set is
set up to feed it the same.

Each format reports a :class:`~reprscope.formats.base.Preprocess` in its ``LoadedModel`` (ImageNet-trained:
resize 256 + centre crop 224 with ImageNet mean/std; CIFAR models: 32×32 with CIFAR statistics; a reprscope
checkpoint: what its training data used). :func:`dataset_for_model` applies it to an image ``--data`` set
through the set's own parameters (``resolution``, ``resize``, ``mean``, ``std`` where it declares them),
unless the user set that parameter (``--set data.mean=…``) or asked for the data set's own preprocessing
(``--preprocess data``).
"""
from __future__ import annotations

import math

from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import ReprscopeError
from .base import LoadedModel, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIFAR-10 statistics, which solo-learn and most CIFAR SSL code use for CIFAR-100 too
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

#: ``--preprocess`` choices
MODES = ("source", "data")

#: the ImageNet evaluation crop ratio (224 of 256)
CROP_PCT = 0.875


def imagenet(resolution: int = 224, reason: str = "ImageNet-trained", crop_pct: float = CROP_PCT,
             mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD,
             stats: str = "ImageNet", interpolation: str = "bilinear") -> Preprocess:
    """Resize the shorter side to ⌊``resolution / crop_pct``⌋ (256 for 224; timm's ``scale_size``), centre-crop
    ``resolution``; ``interpolation`` ``bilinear`` or ``bicubic``."""
    r = int(resolution)
    return Preprocess(resolution=r, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                      resize=int(math.floor(r / crop_pct)) if crop_pct < 1 else r, stats=stats, reason=reason,
                      interpolation=interpolation)


def cifar(reason: str, dataset: str = "cifar10", resolution: int = 32) -> Preprocess:
    """CIFAR images as they are (32×32), CIFAR-10 (or CIFAR-100) statistics."""
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if dataset == "cifar100" else (CIFAR_MEAN, CIFAR_STD)
    return Preprocess(resolution=int(resolution), mean=mean, std=std, resize=None,
                      stats="CIFAR-100" if dataset == "cifar100" else "CIFAR-10", reason=reason)


def for_resnet(cifar_stem: bool, what: str = "ResNet") -> Preprocess:
    """A CIFAR-stem ResNet (3×3 conv1, no max-pool) was trained on 32×32 CIFAR images; a 7×7 stem on ImageNet."""
    if cifar_stem:
        return cifar(f"{what} with a CIFAR stem: 3×3 conv1, no max-pool")
    return imagenet(224, f"{what} with an ImageNet stem: 7×7 conv1")


def for_vit(img_size: int, what: str = "ViT") -> Preprocess:
    """A ViT's input side is fixed by its position embedding; ImageNet statistics unless the source says
    otherwise (every ViT source reprscope reads trains on ImageNet)."""
    return imagenet(int(img_size), f"{what} position embedding for {img_size}×{img_size} inputs")


def from_dataset_name(name: str, reason: str, resolution: Optional[int] = None) -> Preprocess:
    """The preprocessing of a training set named in a source's own config (solo-learn ``data.dataset`` …)."""
    n = str(name).lower()
    if n in ("cifar10", "cifar100"):
        return cifar(reason, n, int(resolution or 32))
    if n in ("stl10",):
        return imagenet(int(resolution or 96), reason, crop_pct=1.0)
    return imagenet(int(resolution or 224), reason)


def from_native(data_spec: Optional[Dict[str, Any]], in_shape: Optional[Iterable[int]]) -> Optional[Preprocess]:
    """A reprscope checkpoint's preprocessing is its training data's: image sets declare ``mean``/``std``
    (and ``resolution``/``resize`` where they resize); a non-image set (dgp, blobs …) has none."""
    if not data_spec or "mean" not in data_spec or "std" not in data_spec:
        return None
    shape = list(in_shape or [])

    def three(v: Any) -> Tuple[float, float, float]:
        vals = v if isinstance(v, (list, tuple)) else [v] * 3
        return tuple(float(x) for x in vals)  # type: ignore[return-value]

    res = data_spec.get("resolution") or (shape[-1] if len(shape) == 3 else None)
    if res is None:
        return None
    resize = data_spec.get("resize")
    name = str(data_spec.get("name", "?"))
    return Preprocess(resolution=int(res), mean=three(data_spec["mean"]), std=three(data_spec["std"]),
                      resize=int(resize) if resize else None, stats=f"{name} (training data)",
                      reason=f"reprscope checkpoint trained on {name}")


# -- applying it to a data set --------------------------------------------------------------------------------


def _declared(name: str) -> Optional[set]:
    from ..data import DATASETS

    cls = DATASETS.get(str(name))
    return {p.name for p in cls.all_params()}


def apply_preprocess(spec: Dict[str, Any], preprocess: Optional[Preprocess], mode: str = "source",
                     explicit: Iterable[str] = ()) -> Tuple[Dict[str, Any], List[str]]:
    """``spec`` with the source's preprocessing set through the data set's parameters, and notes.

    Args:
        spec: the data-set spec (``{"name": …, **params}``) as the user and the checkpoint gave it.
        preprocess: the checkpoint's :class:`Preprocess` (None: nothing to apply).
        mode: ``source`` (apply it) or ``data`` (keep the data set's own parameters).
        explicit: parameters the user set (``--set data.KEY=…``); they always win.

    Returns:
        ``(spec, notes)``; notes say what was applied and what the data set could not take.
    """
    if mode not in MODES:
        raise ReprscopeError(f"preprocess must be one of {', '.join(MODES)}; got '{mode}'", arg="preprocess")
    spec = dict(spec)
    if preprocess is None or mode == "data" or not spec.get("name"):
        return spec, []
    declared = _declared(spec["name"])
    if not {"mean", "std"} <= declared:  # not an image data set: nothing to apply
        return spec, []
    explicit = set(explicit)
    applied, missing = [], []
    for key, value in preprocess.data_params().items():
        if key in explicit:
            continue
        if key in declared:
            spec[key] = value
            applied.append(key)
        elif key == "resolution":
            missing.append(key)
    notes = [f"input preprocessing follows the checkpoint: {preprocess.describe()} "
             f"(set through data.{', data.'.join(applied)}; --preprocess data keeps the data set's own)"] if applied else []
    if missing:
        notes.append(f"dataset {spec['name']} has no 'resolution' parameter, so its images keep their own size "
                     f"instead of the checkpoint's {preprocess.resolution}×{preprocess.resolution}")
    return spec, notes


def dataset_for_model(model: LoadedModel, spec: Dict[str, Any], mode: str = "source",
                      explicit: Iterable[str] = ()) -> Tuple[Any, List[str]]:
    """Build the data set ``spec`` names with ``model``'s preprocessing applied (:func:`apply_preprocess`) and
    check that its inputs fit a network with a fixed input size (a ViT's position embedding).

    Raises:
        ReprscopeError: the data set's inputs cannot be fed to the network.
    """
    from ..data import build_dataset

    spec, notes = apply_preprocess(spec, model.preprocess, mode, explicit)
    dataset = build_dataset(spec)
    fixed = getattr(model.bundle.encoder, "fixed_input_size", None)
    shape = tuple(getattr(dataset, "input_shape", ()) or ())
    if fixed is not None and len(shape) == 3 and tuple(shape[1:]) != tuple(fixed):
        raise ReprscopeError(
            f"the checkpoint's network takes {fixed[0]}×{fixed[1]} inputs (its position embedding is fixed) but "
            f"dataset {spec.get('name')} gives {shape[1]}×{shape[2]}; set data.resolution={fixed[0]} if the data "
            "set has that parameter, or use a data set at that size")
    if len(shape) != 3 and model.preprocess is not None and getattr(model.bundle.encoder, "image_input", False):
        raise ReprscopeError(f"the checkpoint holds an image model ({model.preprocess.describe()}) but dataset "
                             f"{spec.get('name')} is not an image data set; give data='imagefolder:/path', "
                             "'cifar10:/path' or another image set", arg="data")
    return dataset, notes


def rgb_triple(v: Any, fallback: Tuple[float, float, float]) -> Tuple[float, float, float]:
    """Three per-channel numbers read from a source's JSON config (mean, std), else ``fallback``."""
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v):
        return tuple(float(x) for x in v)  # type: ignore[return-value]
    return fallback
