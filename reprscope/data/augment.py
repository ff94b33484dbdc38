"""Batched, per-sample image augmentation on any device, and the augmentation presets (``AUGMENTATIONS``).

A batch of images ``(n, 3, H, W)`` (uint8, or float in [0, 1]) on the CPU or a GPU becomes ``(n, 3, s, s)``
float32 views in one pass of batched tensor operations: every random parameter is drawn *per sample* from a
``torch.Generator`` on the images' device (seeded from one draw of the caller's numpy rng, so a training stream
is reproducible and resumable from the numpy state), and no step loops over samples. Nothing in the hot path
leaves the device or touches numpy. The same seed gives the same views on the same kind of device; the CPU
and CUDA generators are different algorithms, so a CPU and a GPU run of one seed differ.

The steps, in this fixed order (the order of SimCLR, Chen et al. 2020, appendix A, and BYOL, Grill et al. 2020,
appendix B, Table 6), each applied to a sample with its own probability:

1. random resized crop (torchvision's ``RandomResizedCrop`` semantics: area fraction uniform in ``crop_scale``,
   log aspect ratio uniform in ``log(crop_ratio)``, ten tries, then the central crop with the ratio clamped;
   integer boxes), resized to ``s × s`` by two batched matrix products with per-sample resampling matrices
   that hold torchvision's antialiased bilinear filter, the crop and the horizontal flip (so up- and
   down-scaling both equal ``F.resized_crop(..., antialias=True)``);
2. colour jitter with probability ``p_jitter``: brightness, contrast, saturation and hue with torchvision's
   formulas (factors uniform in [max(0, 1 − b), 1 + b] …, hue shift uniform in [−h, h]) in a random order per
   sample, as ``ColorJitter`` (``jitter_order="sample"``) or always brightness, contrast, saturation, hue
   (``"fixed"``, about 4× cheaper on a GPU, where the per-sample order evaluates every operation at every step);
3. grayscale (ITU-R 601-2 luma, 0.2989 R + 0.587 G + 0.114 B, as torchvision) with probability ``p_gray``;
4. Gaussian blur with probability ``p_blur``, σ uniform in ``blur_sigma`` per sample, an odd kernel of
   2·⌊⌊s/10⌋/2⌋ + 1 taps (≈ 10 % of the side: 23 at 224, 3 at 32, as SimCLR/BYOL), reflect padding;
5. solarisation (x ↦ 1 − x where x ≥ 0.5) with probability ``p_solarize``;
6. normalisation (x − mean) / std per channel.

Presets (:data:`AUGMENTATIONS`) hold one :class:`ViewConfig` per view; a two-view preset is asymmetric (BYOL:
view 1 always blurred and never solarised, view 2 blurred with p = 0.1 and solarised with p = 0.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as TF

from ..errors import ReprscopeError
from ..registry import Registry

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``.
LUMA = (0.2989, 0.587, 0.114)
#: Tries of the random resized crop before the central fallback (torchvision's 10).
_N_CROP_TRIES = 10
#: Uniforms per sample for one view besides the crop: a fixed number, so the stream never depends on the config.
_N_OTHER = 14
#: Up to this many bytes of float32 canvas are resampled at once (large decoded images are done in chunks).
_CHUNK_BYTES = 1 << 28


# -- configuration ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewConfig:
    """The distribution of one augmented view.

    Attributes:
        crop_scale: (lo, hi) area fraction of the random resized crop; None: no crop, the whole image is resized.
        crop_ratio: (lo, hi) aspect ratio (width / height) of the crop.
        p_flip: probability of a horizontal flip.
        p_jitter: probability of the colour jitter.
        brightness, contrast, saturation: jitter strengths b (factor uniform in [max(0, 1 − b), 1 + b]).
        hue: hue jitter h ∈ [0, 0.5] (shift uniform in [−h, h], in turns).
        jitter_order: ``"sample"`` (random per sample, as ColorJitter) or ``"fixed"`` (b, c, s, h).
        p_gray: probability of grayscale.
        p_blur: probability of the Gaussian blur; blur_sigma: (lo, hi) σ in output pixels.
        p_solarize: probability of solarisation; solarize_threshold: pixels ≥ it are inverted.
    """

    crop_scale: Optional[Tuple[float, float]] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_order: str = "sample"
    p_gray: float = 0.2
    p_blur: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    p_solarize: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        owner = "augmentation view"
        for name in ("p_flip", "p_jitter", "p_gray", "p_blur", "p_solarize"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ReprscopeError(f"The '{name}' parameter of {owner} must be a float in [0, 1]. Got {v!r} instead.")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ReprscopeError(f"The '{name}' parameter of {owner} must be a float >= 0. "
                                     f"Got {getattr(self, name)!r} instead.")
        if not 0.0 <= self.hue <= 0.5:
            raise ReprscopeError(f"The 'hue' parameter of {owner} must be a float in [0, 0.5]. "
                                 f"Got {self.hue!r} instead.")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ReprscopeError(f"The 'crop_scale' parameter of {owner} must be (lo, hi) with 0 < lo <= hi <= 1. "
                                 f"Got {self.crop_scale!r} instead.")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ReprscopeError(f"The 'crop_ratio' parameter of {owner} must be (lo, hi) with 0 < lo <= hi. "
                                 f"Got {self.crop_ratio!r} instead.")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ReprscopeError(f"The 'blur_sigma' parameter of {owner} must be (lo, hi) with 0 < lo <= hi. "
                                 f"Got {self.blur_sigma!r} instead.")
        if self.jitter_order not in ("sample", "fixed"):
            raise ReprscopeError(f"The 'jitter_order' parameter of {owner} must be one of 'sample', 'fixed'. "
                                 f"Got {self.jitter_order!r} instead.")

    def to_dict(self) -> dict:
        """JSON-able form (tuples as lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class AugmentationPreset:
    """A named augmentation recipe.

    Attributes:
        name: registry name (``--set data.augment=NAME``).
        summary: one line for listings.
        source: the paper / table the values come from.
        views: one :class:`ViewConfig` (symmetric) or one per view (asymmetric; view k uses ``views[k % len]``).
        clean: the positive "view" is the data set's clean (evaluation) view itself; ``views`` is unused.
    """

    name: str
    summary: str
    source: str
    views: Tuple[ViewConfig, ...] = field(default_factory=lambda: (ViewConfig(),))
    clean: bool = False

    def view(self, k: int = 0) -> ViewConfig:
        """The configuration of view ``k`` (0-based; cycles through ``views``)."""
        return self.views[k % len(self.views)]

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "clean": self.clean,
                "views": [v.to_dict() for v in self.views]}


AUGMENTATIONS: Registry[AugmentationPreset] = Registry("augmentation")


def _register(preset: AugmentationPreset) -> AugmentationPreset:
    return AUGMENTATIONS.register(preset.name)(preset)


def _cosentino(strength: str, s: float, flip: bool, scale: Tuple[float, float]) -> AugmentationPreset:
    """Paper 002 (Cosentino et al.), Table 2: jitter strength s gives brightness = contrast = saturation = 0.8 s
    and hue = 0.2 s (p = 0.8); grayscale p = 0.2; crop scale and flip per column."""
    j = round(0.8 * s, 10)
    return AugmentationPreset(
        strength, f"Cosentino et al. 2022, arXiv:2205.06926 Table 2, {strength}: crop scale {scale[0]:g}-{scale[1]:g}, jitter s = {s:g}, "
                  f"{'flip, ' if flip else 'no flip, '}grayscale 0.2",
        "Cosentino et al., Cosentino et al. 2022, Table 2",
        (ViewConfig(crop_scale=scale, p_flip=0.5 if flip else 0.0, p_jitter=0.8, brightness=j, contrast=j,
                    saturation=j, hue=round(0.2 * s, 10), p_gray=0.2),))


_register(AugmentationPreset(
    "simclr", "SimCLR, CIFAR recipe: crop 0.08-1, flip, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, no blur",
    "Chen et al. 2020 (SimCLR), appendix A and B.9 (CIFAR-10: colour strength s = 0.5, no Gaussian blur)",
    (ViewConfig(crop_scale=(0.08, 1.0), p_flip=0.5, p_jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.4,
                hue=0.1, p_gray=0.2),)))
_register(AugmentationPreset(
    "simclr_imagenet", "SimCLR, ImageNet recipe: the CIFAR recipe plus Gaussian blur p=0.5, sigma 0.1-2",
    "Chen et al. 2020 (SimCLR), appendix A (blur kernel 10% of the side, sigma uniform in [0.1, 2.0])",
    (ViewConfig(crop_scale=(0.08, 1.0), p_flip=0.5, p_jitter=0.8, brightness=0.8, contrast=0.8, saturation=0.8,
                hue=0.2, p_gray=0.2, p_blur=0.5),)))
_register(AugmentationPreset(
    "byol", "BYOL, asymmetric: crop 0.08-1, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2; "
            "blur p=1.0 / 0.1, solarize p=0 / 0.2",
    "Grill et al. 2020 (BYOL), appendix B, Table 6",
    tuple(ViewConfig(crop_scale=(0.08, 1.0), p_flip=0.5, p_jitter=0.8, brightness=0.4, contrast=0.4,
                     saturation=0.2, hue=0.1, p_gray=0.2, p_blur=pb, p_solarize=ps)
          for pb, ps in ((1.0, 0.0), (0.1, 0.2)))))
_register(AugmentationPreset(
    "vicreg", "VICReg, symmetrised BYOL: crop 0.2-1, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, "
              "blur p=0.5, solarize p=0.1",
    "Bardes et al. 2022 (VICReg), Bardes et al. 2022, arXiv:2105.04906, appendix B.2 (its 'scale=(0.2, 0.1)' is a typo for the (0.2, 1.0) "
    "of its text; blur sigma 0.1-2 as BYOL)",
    (ViewConfig(crop_scale=(0.2, 1.0), p_flip=0.5, p_jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.2,
                hue=0.1, p_gray=0.2, p_blur=0.5, p_solarize=0.1),)))
_register(_cosentino("small", 0.05, False, (0.9, 1.0)))
_register(_cosentino("moderate", 0.25, True, (0.5, 1.0)))
_register(_cosentino("large", 0.5, True, (0.08, 1.0)))
_register(AugmentationPreset("none", "no augmentation: the positive view is the clean view", "-",
                             (ViewConfig(crop_scale=None, p_flip=0.0, p_jitter=0.0, p_gray=0.0),), clean=True))


def get_preset(name: str) -> AugmentationPreset:
    """The preset registered as ``name`` (an unknown name raises ReprscopeError listing the valid ones)."""
    return AUGMENTATIONS.get(name)


# -- randomness -------------------------------------------------------------------------------------------------


def torch_generator(rng: np.random.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from one draw of ``rng`` (one per batch)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return g


@dataclass
class ViewParams:
    """The per-sample random parameters of one batch of views (all tensors on the images' device).

    Attributes:
        boxes: (n, 4) float64 crop boxes ``(top, left, height, width)`` in source pixels (integers, as torchvision).
        flip: (n,) bool horizontal flips.
        jitter: (n,) bool, whether the colour jitter applies; factors: (n, 4) float32 brightness, contrast,
            saturation factors and hue shift; order: (n, 4) int64 permutation of (0 b, 1 c, 2 s, 3 h) per sample,
            or None for the fixed order b, c, s, h.
        gray, blur, solarize: (n,) bool; sigma: (n,) float32 blur σ.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: Optional[torch.Tensor]
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def select(self, sl: slice) -> "ViewParams":
        """The parameters of the samples ``sl``."""
        return ViewParams(**{k: (None if v is None else v[sl]) for k, v in vars(self).items()})


def crop_boxes(u_scale: torch.Tensor, u_ratio: torch.Tensor, u_pos: torch.Tensor, height: torch.Tensor,
               width: torch.Tensor, scale: Tuple[float, float], ratio: Tuple[float, float]) -> torch.Tensor:
    """Random resized crop boxes, torchvision's ``RandomResizedCrop.get_params`` vectorised over samples.

    Args:
        u_scale, u_ratio: (n, T) uniforms in [0, 1) for T tries of area fraction and log aspect ratio.
        u_pos: (n, 2) uniforms for the top and left offsets.
        height, width: (n,) float64 source sizes.
    Returns:
        (n, 4) float64 ``(top, left, h, w)``: the first try that fits, else the central crop with the ratio
        clamped into ``ratio``.
    """
    area = (height * width)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # index of the first fitting try
    found = ok.any(dim=1)
    wf, hf = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = torch.floor(u_pos[:, 0] * (height - hf + 1)).clamp(max=height - hf)
    left = torch.floor(u_pos[:, 1] * (width - wf + 1)).clamp(max=width - wf)
    # fallback: the whole image with the aspect ratio clamped into range, centred
    in_ratio = width / height
    too_tall, too_wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fw = torch.where(too_wide, torch.round(height * ratio[1]), width)
    fh = torch.where(too_tall, torch.round(width / ratio[0]), height)
    ftop, fleft = torch.div(height - fh, 2, rounding_mode="floor"), torch.div(width - fw, 2, rounding_mode="floor")
    return torch.stack([torch.where(found, top, ftop), torch.where(found, left, fleft),
                        torch.where(found, hf, fh), torch.where(found, wf, fw)], dim=1)


def sample_view_params(n: int, cfg: ViewConfig, generator: torch.Generator, height: torch.Tensor | int,
                       width: torch.Tensor | int) -> ViewParams:
    """Draw the per-sample parameters of ``n`` views from ``generator`` (one ``torch.rand`` call).

    Args:
        height, width: source sizes, ints or (n,) tensors (images of different sizes padded into one canvas).
    """
    dev = generator.device
    u = torch.rand(n, 2 * _N_CROP_TRIES + 2 + _N_OTHER, generator=generator, device=dev, dtype=torch.float64)
    t = _N_CROP_TRIES
    hh = torch.as_tensor(height, dtype=torch.float64, device=dev).expand(n)
    ww = torch.as_tensor(width, dtype=torch.float64, device=dev).expand(n)
    if cfg.crop_scale is None:
        boxes = torch.stack([torch.zeros_like(hh), torch.zeros_like(ww), hh, ww], dim=1)
    else:
        boxes = crop_boxes(u[:, :t], u[:, t:2 * t], u[:, 2 * t:2 * t + 2], hh, ww, cfg.crop_scale, cfg.crop_ratio)
    v = u[:, 2 * t + 2:].float()
    lo = lambda s: max(0.0, 1.0 - s)  # noqa: E731
    factors = torch.stack([lo(cfg.brightness) + (1 + cfg.brightness - lo(cfg.brightness)) * v[:, 2],
                           lo(cfg.contrast) + (1 + cfg.contrast - lo(cfg.contrast)) * v[:, 3],
                           lo(cfg.saturation) + (1 + cfg.saturation - lo(cfg.saturation)) * v[:, 4],
                           cfg.hue * (2 * v[:, 5] - 1)], dim=1)
    order = torch.argsort(v[:, 6:10], dim=1) if cfg.jitter_order == "sample" else None
    sig = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * v[:, 12]
    return ViewParams(boxes=boxes, flip=v[:, 0] < cfg.p_flip, jitter=v[:, 1] < cfg.p_jitter, factors=factors,
                      order=order, gray=v[:, 10] < cfg.p_gray, blur=v[:, 11] < cfg.p_blur, sigma=sig,
                      solarize=v[:, 13] < cfg.p_solarize)


# -- the operations, batched with per-sample parameters --------------------------------------------------------


def resample_matrix(start: torch.Tensor, length: torch.Tensor, out: int, total: int,
                    flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample 1-D resampling matrices of torchvision's antialiased bilinear resize of a crop.

    Output pixel i of a crop ``[start, start + length)`` resized to ``out`` reads input pixel j with weight
    max(0, 1 − |j − start + ½ − c_i| / σ), c_i = σ (i + ½), σ = length / out, normalised over the crop's
    pixels (for σ < 1 the filter keeps width 1: plain bilinear with the border clamped). This is
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` (PyTorch's ``_upsample_bilinear2d_aa``)
    applied after the crop, as ``torchvision.transforms.v2.functional.resized_crop``.

    Args:
        start, length: (n,) crop offset and extent along the axis, in input pixels (integers).
        out: output length; total: input length (the canvas).
        flip: (n,) bool, reverse the output (a mirror of the resized crop).
    Returns:
        (n, out, total) float32.
    """
    dev = start.device
    length = length.to(torch.float32)
    scale = (length / out)[:, None, None]
    inv = torch.where(scale >= 1, 1.0 / scale, torch.ones_like(scale))
    i = torch.arange(out, device=dev, dtype=torch.float32)
    if flip is not None:
        i = torch.where(flip.to(dev)[:, None], out - 1 - i, i)  # (n, out)
    center = scale * (i + 0.5).view(-1, out, 1)
    j = torch.arange(total, device=dev, dtype=torch.float32).view(1, 1, total) - start.to(torch.float32)[:, None, None]
    w = (1.0 - (j + 0.5 - center).abs_().mul_(inv)).clamp_(min=0.0)
    w = w.masked_fill_((j < 0) | (j >= length[:, None, None]), 0.0)
    return w.div_(w.sum(dim=-1, keepdim=True))


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop ``boxes`` out of each image, resize to ``size × size`` (antialiased bilinear), optionally mirror.

    Two batched matrix products per batch, Y = R_y · X · R_xᵀ with the per-sample resampling matrices of
    :func:`resample_matrix` (the crop and the flip are folded into them), so the result is torchvision's
    ``resized_crop(..., antialias=True)`` (then ``horizontal_flip``) for every sample, up- or down-scaled.

    Args:
        images: (n, C, H, W) uint8 or float.
        boxes: (n, 4) ``(top, left, h, w)`` in pixels of each image.
        flip: (n,) bool, mirror the output horizontally.
    Returns:
        (n, C, size, size) float32 in the input's value range (uint8 input: 0..255 as float, not rounded).
    """
    n, c, H, W = images.shape
    dev = images.device
    x = images if images.dtype == torch.float32 else images.float()
    b = boxes.to(device=dev)
    ry = resample_matrix(b[:, 0], b[:, 2], size, H)  # (n, s, H)
    rx = resample_matrix(b[:, 1], b[:, 3], size, W, flip)  # (n, s, W)
    if H <= W:  # n·C·s·(H·W + min(H, W)·s) multiply-adds
        return ry[:, None] @ (x @ rx.transpose(1, 2)[:, None])
    return (ry[:, None] @ x) @ rx.transpose(1, 2)[:, None]


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) → (n, 1, h, w) luma 0.2989 R + 0.587 G + 0.114 B (torchvision's weights)."""
    r, g, b = x.unbind(1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.to(torch.float32).view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(f · x) clamped to [0, 1], f per sample (torchvision ``adjust_brightness``); x (n, 3, h, w) in [0, 1]."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """f · x + (1 − f) · mean(gray(x)) clamped, the mean over each image (torchvision ``adjust_contrast``)."""
    f = _per_sample(factor)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (x * f + (1 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """f · x + (1 − f) · gray(x) clamped, per pixel (torchvision ``adjust_saturation``)."""
    f = _per_sample(factor)
    return (x * f + (1 - f) * rgb_to_grayscale(x)).clamp_(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) RGB in [0, 1] → HSV with hue in turns [0, 1) (the hexcone model, as torchvision/PIL)."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.stack([_hue6(r, g, b, maxc, delta).div_(6.0).remainder_(1.0), s, maxc], dim=1)


def _hue6(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, maxc: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """6 × hue in [−1, 5) from the channel that holds the maximum (0 for gray pixels)."""
    inv = 1.0 / torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b), torch.where(maxc == g, (b - r) + 2.0 * delta, (r - g) + 4.0 * delta))
    return h.mul_(inv)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: (n, 3, h, w) HSV (hue in turns) → RGB in [0, 1]."""
    h, s, v = hsv.unbind(1)
    return _from_hue6(h * 6.0, v, v * s)


def _from_hue6(h6: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """RGB = v − Δ · w(k), w(k) = clamp(min(k, 4 − k), 0, 1), k = (m + 6h) mod 6 with m = 5, 3, 1 for R, G, B
    (the closed form of the hexcone's piecewise-linear channels; Δ = v · s = max − min)."""
    k = torch.stack([h6 + 5.0, h6 + 3.0, h6 + 1.0], dim=1).remainder_(6.0)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) - delta.unsqueeze(1) * w).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns per sample (torchvision ``adjust_hue``: RGB → HSV, h + shift mod 1, back).

    Value and saturation are kept, so max and min of the channels are kept; only the 6·hue sector changes.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    h6 = _hue6(r, g, b, maxc, delta).add_(6.0 * shift.to(x.dtype).view(-1, 1, 1))
    return _from_hue6(h6, maxc, delta)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: Optional[torch.Tensor],
                 apply: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-sample factors in per-sample order (as ColorJitter).

    Args:
        x: (n, 3, h, w) float in [0, 1].
        factors: (n, 4) brightness, contrast, saturation factors and hue shift.
        order: (n, 4) a permutation of 0..3 per sample (0 brightness, 1 contrast, 2 saturation, 3 hue), or None
            for brightness, contrast, saturation, hue.
        apply: (n,) bool; the other samples are returned unchanged.

    On the CPU each step applies each operation to the samples whose step it is (index subsets); elsewhere,
    where an index subset would need a device sync, each step evaluates all four operations and keeps each
    sample's own (``torch.where``), 4× the arithmetic and no sync. Both give the same result.
    """
    n = x.shape[0]
    if n == 0:
        return x
    if order is None:
        out = x
        for op, fn in enumerate(_JITTER_OPS):
            out = fn(out, factors[:, op])
        return torch.where(apply.view(-1, 1, 1, 1), out, x)
    if x.device.type == "cpu":
        return _jitter_subsets(x, factors, order, apply)
    return _jitter_where(x, factors, order, apply)


def _jitter_subsets(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Per-sample order by index subsets: step k applies each operation to the samples whose k-th it is."""
    sel = apply.nonzero()[:, 0]
    cur = x.index_select(0, sel)
    ordr, fac = order.index_select(0, sel), factors.index_select(0, sel)
    for step in range(4):
        for op, fn in enumerate(_JITTER_OPS):
            idx = (ordr[:, step] == op).nonzero()[:, 0]
            if idx.numel():
                cur.index_copy_(0, idx, fn(cur.index_select(0, idx), fac.index_select(0, idx)[:, op]))
    return x.clone().index_copy_(0, sel, cur)


def _jitter_where(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Per-sample order without a device sync: every operation at every step, each sample keeps its own."""
    out = x
    for step in range(4):
        which = order[:, step].view(-1, 1, 1, 1)
        new = out
        for op, fn in enumerate(_JITTER_OPS):
            new = torch.where(which == op, fn(out, factors[:, op]), new)
        out = new
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10 % of the side: 2·⌊⌊size/10⌋/2⌋ + 1 (23 at 224, 9 at 96, 3 at 32; SimCLR/BYOL)."""
    return 2 * ((size // 10) // 2) + 1


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample σ, reflect padding (torchvision ``gaussian_blur``).

    Args:
        x: (n, C, h, w) float; sigma: (n,) > 0; kernel_size: odd.
    """
    n, c, h, w = x.shape
    if kernel_size <= 1 or n == 0:
        return x
    half = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - half
    ker = torch.softmax(-(t[None, :] ** 2) / (2 * sigma.to(torch.float32)[:, None] ** 2), dim=1)  # (n, k)
    ker = ker.repeat_interleave(c, dim=0)  # (n·C, k)
    y = TF.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = TF.conv2d(y, ker.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = TF.conv2d(y, ker.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x ↦ 1 − x where x ≥ threshold, for the samples in ``apply`` (torchvision ``solarize`` on [0, 1])."""
    return torch.where(apply.view(-1, 1, 1, 1) & (x >= threshold), 1.0 - x, x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(n, C, h, w) in [0, 1] → (x − mean) / std per channel, float32, on x's device."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() - m) / s


# -- the pipeline ---------------------------------------------------------------------------------------------


def apply_view(images: torch.Tensor, params: ViewParams, cfg: ViewConfig, size: int,
               mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Apply drawn parameters: crop + flip → jitter → grayscale → blur → solarize → normalise.

    Args:
        images: (n, 3, H, W) uint8 (0..255) or float in [0, 1], any device.
    Returns:
        (n, 3, size, size) float32 on the images' device.
    """
    x = resized_crop(images, params.boxes, size, params.flip)
    if images.dtype == torch.uint8:
        x = x.mul_(1.0 / 255.0)
    x = x.clamp_(0.0, 1.0)
    if cfg.p_jitter > 0:
        x = color_jitter(x, params.factors, params.order, params.jitter)
    if cfg.p_gray > 0:
        x = torch.where(params.gray.view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)
    if cfg.p_blur > 0:
        blurred = gaussian_blur(x, params.sigma, blur_kernel_size(size))
        x = blurred if cfg.p_blur >= 1 else torch.where(params.blur.view(-1, 1, 1, 1), blurred, x)
    if cfg.p_solarize > 0:
        x = solarize(x, params.solarize, cfg.solarize_threshold)
    if mean is not None:
        x = normalize(x, mean, std if std is not None else [1.0] * len(mean))
    return x


def augment_images(images: torch.Tensor, cfg: ViewConfig, size: int, generator: torch.Generator,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One augmented view per image, every random parameter drawn per sample from ``generator``.

    Args:
        images: (n, 3, H, W) uint8 or float in [0, 1] on the generator's device.
        cfg: the view's distribution.
        size: side s of the output.
        generator: a ``torch.Generator`` on the images' device (see :func:`torch_generator`).
        mean, std: per-channel normalisation (None: the output stays in [0, 1]).
        sizes: (n, 2) valid (height, width) of each image inside a padded canvas (None: all H × W).
    Returns:
        (n, 3, s, s) float32 on the images' device.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ReprscopeError(f"augmentation expects images of shape (n, 3, H, W). Got {tuple(images.shape)} instead.")
    if generator.device.type != images.device.type:
        raise ReprscopeError(f"the augmentation generator is on {generator.device} but the images are on "
                             f"{images.device}; seed it with torch_generator(rng, images.device)")
    n, _, H, W = images.shape
    if sizes is None:
        hh, ww = H, W
    else:
        sz = sizes.to(device=images.device, dtype=torch.float64)
        hh, ww = sz[:, 0], sz[:, 1]
    params = sample_view_params(n, cfg, generator, hh, ww)
    chunk = max(1, _CHUNK_BYTES // (3 * H * W * 4))
    if n <= chunk:
        return apply_view(images, params, cfg, size, mean, std)
    # bounded memory for large canvases: the parameters are drawn above, so the result does not depend on it
    return torch.cat([apply_view(images[i:i + chunk], params.select(slice(i, i + chunk)), cfg, size, mean, std)
                      for i in range(0, n, chunk)])


def pad_to_canvas(images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack images of different sizes into one zero-padded canvas.

    Args:
        images: n tensors (3, H_i, W_i) of one dtype.
    Returns:
        ``(canvas (n, 3, max H, max W), sizes (n, 2) int64 (H_i, W_i))``, both on the first image's device.
    """
    if not len(images):
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 2, dtype=torch.int64)
    H = max(int(im.shape[-2]) for im in images)
    W = max(int(im.shape[-1]) for im in images)
    canvas = images[0].new_zeros((len(images), 3, H, W))
    for i, im in enumerate(images):  # copying into the canvas, not augmenting: the per-sample work is batched
        canvas[i, :, : im.shape[-2], : im.shape[-1]] = im
    sizes = torch.tensor([[int(im.shape[-2]), int(im.shape[-1])] for im in images], dtype=torch.int64,
                         device=canvas.device)
    return canvas, sizes
