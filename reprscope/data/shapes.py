"""Procedural coloured shapes with ground-truth latents (``shapes``), rendered on the fly in torch.

Each image is one shape on a plain background, drawn from analytic signed-distance functions on the pixel grid
with a one-pixel anti-aliased edge, batched over samples and on the data set's device (no download, no files).
It is a small image counterpart of the content/style model of Rusak et al. 2022 §4.1 (in the spirit of dSprites and of
3DIdent, von Kügelgen et al. 2021): every factor of variation is known, so the ``identifiability`` analyzer can
read each one out layer by layer, and the labels form a fine/coarse hierarchy for ``tangent`` (Cosentino et al. 2022, arXiv:2205.06926 Fig. 6).

**Generative process** (independent draws; coordinates are fractions of the image side, x to the right and y
downwards, pixel (i, j) centred at ((j + ½)/r, (i + ½)/r)):

- class c uniform over ``CLASSES`` = ellipse (semi-axes 1 : ½), triangle, square, star (five points, inner
  radius 0.5); their rotational symmetry orders are k_c = 2, 3, 4, 5;
- centre (x, y) uniform in ``position``², size s uniform in ``scale`` (the circumradius, i.e. the distance from
  the centre to the farthest point of the shape; ``position`` must keep the whole shape inside the image);
- rotation θ uniform in [0, 2π) (θ = 0: the ellipse's long axis along x, a polygon's vertex along +y; positive
  θ turns x towards y, clockwise on screen);
- object colour HSV (h, ``object_saturation``, ``object_brightness``), h uniform in [0, 1);
- background colour HSV (h_b, ``background_saturation``, v_b), h_b uniform in [0, 1), v_b uniform in
  ``bg_brightness`` (the defaults keep v_b well below the object's value, so the shape always stands out).

**Latents** (``latent_names``, the continuous factors, float32): ``x``, ``y``, ``scale``, ``rot_cos``,
``rot_sin``, ``hue_cos``, ``hue_sin``, ``bg_hue_cos``, ``bg_hue_sin``, ``bg_brightness``. Circular factors are
given as cos/sin pairs so that a linear readout and its R² make sense. A shape with k-fold symmetry looks the
same at θ and θ + 2π/k, so only kθ mod 2π is a function of the image: the rotation latents are
(cos k_cθ, sin k_cθ), the identifiable orientation (a half-turn of the ellipse, a fifth of a turn of the star
each go once round the circle). Hues are in turns: (cos 2πh, sin 2πh).

**Labels**: ``labels`` (fine) = c · ``hue_bins`` + b(h) with b(h) = ⌊h · bins + ½⌋ mod bins the object-hue bin
centred on red, yellow, green, cyan, blue, magenta for 6 bins; ``labels_coarse`` = c, the shape. This is a
nested hierarchy like CIFAR-100's 100 fine / 20 coarse classes: the hardest negative of Cosentino et al. 2022 can agree on
the shape without agreeing on the colour, and colour augmentation (hue jitter ±0.1 turn, ~ a bin of 1/6) is
what erases the finer label. ``hue_bins=1`` makes both labels the shape.

**Positive pairs** (``pair``): ``augment`` (default): two augmented views of the same rendered image (preset
``augment``, default ``simclr``); ``latent``: like the content/style model (``pair_mode`` anchor), the anchor is
the clean image and the positive re-renders the same object with the *content* latents (class, scale, object
hue) copied exactly and the *style* latents perturbed: x, y, v_b by Gaussian noise of std ``latent_spread`` ×
(width of their range), truncated to the range by resampling; k_cθ by noise of std 2π·``latent_spread``;
h_b by noise of std ``latent_spread`` turns. In that mode ``content_mask`` marks scale and the object hue
(the class is in the labels); ``augment=auto`` (the default) then means no image augmentation on top, and an
explicit preset is applied to the re-rendered view.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ReprscopeError
from ..params import Param
from .augment import AUGMENTATIONS, augment_images, get_preset, hsv_to_rgb, normalize, torch_generator
from .base import DATASETS, GeneratedDataset, Samples

CLASSES = ("ellipse", "triangle", "square", "star")
SYMMETRY = (2, 3, 4, 5)
LATENT_NAMES = ["x", "y", "scale", "rot_cos", "rot_sin", "hue_cos", "hue_sin", "bg_hue_cos", "bg_hue_sin",
                "bg_brightness"]
#: content (copied exactly within a ``pair=latent`` positive pair): scale and the object hue
CONTENT = [False, False, True, False, False, True, True, False, False, False]
#: columns of the raw latent array ``state["z"]`` (float64, one row per sample)
RAW = ("class", "x", "y", "scale", "theta", "hue", "bg_hue", "bg_brightness")
_ELLIPSE_AXES = (1.0, 0.5)
_STAR_INNER = 0.5  # inner / outer radius of the star
_PIXELS_PER_CHUNK = 1 << 22  # pixels rendered at once (bounds the temporaries at large resolutions)


# -- signed distances (unit circumradius, object frame) ---------------------------------------------------------


def sd_ellipse(px: torch.Tensor, py: torch.Tensor, a: float = _ELLIPSE_AXES[0],
               b: float = _ELLIPSE_AXES[1]) -> torch.Tensor:
    """Approximate signed distance to the ellipse x²/a² + y²/b² = 1 (k₀(k₀ − 1)/k₁, exact to first order at the
    boundary, which is all the one-pixel anti-aliasing needs; negative inside)."""
    k0 = torch.sqrt((px / a) ** 2 + (py / b) ** 2)
    k1 = torch.sqrt((px / (a * a)) ** 2 + (py / (b * b)) ** 2)
    return torch.where(k1 > 1e-6, k0 * (k0 - 1.0) / k1.clamp(min=1e-6), torch.full_like(k0, -min(a, b)))


def sd_star(px: torch.Tensor, py: torch.Tensor, n: int, inner: float) -> torch.Tensor:
    """Exact signed distance to a regular n-pointed star (or n-gon) with outer radius 1 and inner radius
    ``inner`` (the inner vertices at angle π/n from the outer ones; inner = cos(π/n) gives the convex n-gon).

    Folds the plane into the half-sector between an outer vertex (along +y) and the next inner vertex, where the
    boundary is one segment, and takes the signed distance to that segment.
    """
    an = math.pi / n
    ang = torch.atan2(px, py)  # angle from the +y axis
    bn = torch.remainder(ang + an, 2 * an) - an  # in [−π/n, π/n), 0 on an outer vertex
    rad = torch.sqrt(px * px + py * py)
    qx, qy = rad * torch.cos(bn), rad * torch.sin(bn).abs()
    # segment from the outer vertex V = (1, 0) to the inner vertex W = inner·(cos an, sin an)
    wx, wy = inner * math.cos(an), inner * math.sin(an)
    ex, ey = wx - 1.0, wy
    t = (((qx - 1.0) * ex + qy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0)
    dx, dy = qx - 1.0 - t * ex, qy - t * ey
    dist = torch.sqrt(dx * dx + dy * dy)
    side = (qx - 1.0) * ey - qy * ex  # which side of the segment's line: < 0 towards the centre
    return torch.where(side < 0, -dist, dist)


def signed_distance(cls: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance of class ``cls`` (index into ``CLASSES``) at object-frame points of unit circumradius."""
    if cls == 0:
        return sd_ellipse(px, py)
    n = SYMMETRY[cls]
    inner = _STAR_INNER if CLASSES[cls] == "star" else math.cos(math.pi / n)
    return sd_star(px, py, n, inner)


# -- rendering ------------------------------------------------------------------------------------------------


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) HSV (hue in turns) → (n, 3) RGB."""
    return hsv_to_rgb(torch.stack([h, s, v], dim=1)[:, :, None, None])[:, :, 0, 0]


def coverage(z: torch.Tensor, r: int, subsets: bool = True) -> torch.Tensor:
    """(n, r, r) anti-aliased coverage α = clamp(½ − d·r, 0, 1) of each sample's shape (d the signed distance in
    image units), batched per class.

    Args:
        z: (n, 8) float32 raw latents (columns ``RAW``).
        subsets: one pass per class over that class's samples (index subsets; the CPU path), or every class's
            distance for every sample kept by ``torch.where`` (no device sync for the subsets' sizes). Both give
            the same result.
    """
    n, dev = int(z.shape[0]), z.device
    grid = (torch.arange(r, device=dev, dtype=torch.float32) + 0.5) / r
    cls = z[:, 0].round().long()

    def one_class(zc: torch.Tensor, c: int) -> torch.Tensor:
        cx, cy, s, th = (zc[:, k].view(-1, 1, 1) for k in (1, 2, 3, 4))
        dx, dy = grid.view(1, 1, r) - cx, grid.view(1, r, 1) - cy
        cos, sin = torch.cos(th), torch.sin(th)
        px, py = (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s  # rotate by −θ into the object frame
        return (0.5 - signed_distance(c, px, py) * s * r).clamp_(0.0, 1.0)  # distance in pixels

    alpha = torch.zeros(n, r, r, device=dev, dtype=torch.float32)
    for c in range(len(CLASSES)):
        if subsets:
            idx = (cls == c).nonzero()[:, 0]
            if idx.numel():
                alpha.index_copy_(0, idx, one_class(z.index_select(0, idx), c))
        else:
            alpha = torch.where((cls == c).view(-1, 1, 1), one_class(z, c), alpha)
    return alpha


def render(z: torch.Tensor, resolution: int, object_saturation: float = 0.9, object_brightness: float = 0.95,
           background_saturation: float = 0.35) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render shapes from raw latents, batched, on ``z``'s device.

    Args:
        z: (n, 8) raw latents, columns ``RAW`` = class, x, y, scale, θ, h, h_b, v_b (any float dtype).
        resolution: side r of the images.
    Returns:
        ``(images, alpha)``: (n, 3, r, r) float32 RGB in [0, 1] and (n, r, r) float32 coverage of the shape
        (1 inside, 0 outside, a linear ramp over one pixel across the edge: α = clamp(½ − d·r, 0, 1), d the
        signed distance in image units).
    """
    n, r = int(z.shape[0]), int(resolution)
    dev = z.device
    z = z.to(torch.float32)
    alpha = coverage(z, r, subsets=dev.type == "cpu")
    ones = torch.ones(n, device=dev, dtype=torch.float32)
    obj = _hsv(z[:, 5], ones * object_saturation, ones * object_brightness)
    bg = _hsv(z[:, 6], ones * background_saturation, z[:, 7])
    a = alpha[:, None]
    return bg[:, :, None, None] * (1.0 - a) + obj[:, :, None, None] * a, alpha


def latents_from_raw(z: np.ndarray) -> np.ndarray:
    """(n, 8) raw latents → (n, 10) the continuous latents of ``LATENT_NAMES`` (float64)."""
    k = np.asarray(SYMMETRY, dtype=np.float64)[z[:, 0].astype(np.int64)]
    phi, hue, bgh = k * z[:, 4], 2 * np.pi * z[:, 5], 2 * np.pi * z[:, 6]
    return np.stack([z[:, 1], z[:, 2], z[:, 3], np.cos(phi), np.sin(phi), np.cos(hue), np.sin(hue), np.cos(bgh),
                     np.sin(bgh), z[:, 7]], axis=1)


def _pair(name: str, v: Any, lo: float, hi: float) -> List[float]:
    vals = v if isinstance(v, list) else None
    if vals is None or len(vals) != 2 or not lo <= vals[0] <= vals[1] <= hi:
        raise ReprscopeError(f"The '{name}' parameter of dataset shapes must be [lo, hi] with {lo:g} <= lo <= hi <= "
                             f"{hi:g}. Got {v!r} instead.")
    return [float(vals[0]), float(vals[1])]


@DATASETS.register("shapes")
class Shapes(GeneratedDataset):
    """Coloured shapes on coloured backgrounds with ground-truth latents, rendered on the fly (module docstring)."""

    modality = "image"
    held_out_bytes_per_value = 5  # the float32 clean inputs and the uint8 pixels the views are drawn from

    name = "shapes"
    summary = "procedural coloured shapes with ground-truth latents (class, position, scale, rotation, hues), no files"
    num_classes = 0
    params = [
        Param("resolution", 32, "int", "side of the (square) images", low=8),
        Param("pair", "augment", "choice", "positive pairs: two augmented views of one image, or a re-rendering with "
              "the style latents perturbed (content/style model)", choices=("augment", "latent")),
        Param("augment", "auto", "choice", "augmentation preset of the views (auto: simclr with pair=augment, none "
              "with pair=latent)", choices=("auto",) + tuple(AUGMENTATIONS.names()), nullable=True),
        Param("scale", [0.15, 0.3], "floats", "[lo, hi] circumradius of the shape, fraction of the side", low=0.01,
              high=0.5),
        Param("position", [0.3, 0.7], "floats", "[lo, hi] range of the centre's x and y, fraction of the side",
              low=0, high=1),
        Param("bg_brightness", [0.2, 0.6], "floats", "[lo, hi] HSV value of the background", low=0, high=1),
        Param("object_brightness", 0.95, "float", "HSV value of the shape", low=0, high=1),
        Param("object_saturation", 0.9, "float", "HSV saturation of the shape", low=0, high=1),
        Param("background_saturation", 0.35, "float", "HSV saturation of the background", low=0, high=1),
        Param("hue_bins", 6, "int", "fine label = class x object-hue bin (1: fine = coarse = class)", low=1),
        Param("latent_spread", 0.1, "float", "pair=latent: std of the style perturbations (fraction of each range)",
              low=0, low_open=True),
        Param("mean", [0.34, 0.34, 0.34], "floats", "per-channel mean for normalisation (pixel mean of the defaults)"),
        Param("std", [0.16, 0.16, 0.16], "floats", "per-channel std for normalisation (pixel std of the defaults)",
              low=0, low_open=True),
        Param("epoch_size", 10000, "int", "nominal number of samples per epoch of the stream", low=1),
        Param("eval_size", 5000, "int", "size of the fixed held-out set", low=1),
    ]

    def __init__(self, **given: Any):
        super().__init__(**given)
        cfg = self.cfg
        self.scale_range = _pair("scale", cfg["scale"], 0.01, 0.5)
        self.position_range = _pair("position", cfg["position"], 0.0, 1.0)
        self.bg_range = _pair("bg_brightness", cfg["bg_brightness"], 0.0, 1.0)
        lo, hi = self.position_range
        if lo < self.scale_range[1] or hi > 1.0 - self.scale_range[1]:
            raise ReprscopeError(f"The 'position' parameter of dataset shapes must keep the shape inside the image: "
                                 f"[lo, hi] with lo >= scale hi and hi <= 1 - scale hi ({self.scale_range[1]:g}). "
                                 f"Got {cfg['position']!r} instead.")
        for name in ("mean", "std"):
            v = cfg[name] if isinstance(cfg[name], list) else [float(cfg[name])] * 3
            if len(v) != 3:
                raise ReprscopeError(f"The '{name}' parameter of dataset shapes must be 3 floats (one per RGB "
                                     f"channel). Got {cfg[name]!r} instead.")
            cfg[name] = [float(x) for x in v]
        if cfg["augment"] is None:  # the command line's "none" arrives as None
            cfg["augment"] = "none"
        if cfg["augment"] == "auto":
            cfg["augment"] = "simclr" if cfg["pair"] == "augment" else "none"
        r = int(cfg["resolution"])
        self.input_shape = (3, r, r)
        self.latent_names = list(LATENT_NAMES)
        self.pair_mode = "two_aug" if cfg["pair"] == "augment" else "anchor"
        self.content_mask = list(CONTENT) if cfg["pair"] == "latent" else None
        self.num_classes = len(CLASSES) * int(cfg["hue_bins"])
        self.preset = get_preset(cfg["augment"])

    # -- latents --------------------------------------------------------------------------------------------
    def sample_raw(self, n: int, rng: np.random.Generator, classes: Optional[np.ndarray] = None) -> np.ndarray:
        """(n, 8) raw latents (columns ``RAW``) from the marginal; ``classes`` fixes the class column."""
        c = rng.integers(0, len(CLASSES), size=n) if classes is None else np.asarray(classes)
        pos = rng.uniform(*self.position_range, size=(n, 2))
        return np.column_stack([c.astype(np.float64), pos[:, 0], pos[:, 1], rng.uniform(*self.scale_range, size=n),
                                rng.uniform(0.0, 2 * np.pi, size=n), rng.uniform(size=n), rng.uniform(size=n),
                                rng.uniform(*self.bg_range, size=n)])

    def perturb(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The ``pair=latent`` conditional: content (class, scale, hue) copied, style latents perturbed."""
        out = np.array(z, dtype=np.float64, copy=True)
        sp = float(self.cfg["latent_spread"])
        for col, (lo, hi) in ((1, self.position_range), (2, self.position_range), (7, self.bg_range)):
            out[:, col] = _truncated_normal(z[:, col], sp * (hi - lo), lo, hi, rng)
        k = np.asarray(SYMMETRY, dtype=np.float64)[z[:, 0].astype(np.int64)]
        out[:, 4] = np.mod(z[:, 4] + rng.normal(0.0, 2 * np.pi * sp, size=len(z)) / k, 2 * np.pi)
        out[:, 6] = np.mod(z[:, 6] + rng.normal(0.0, sp, size=len(z)), 1.0)
        return out

    def labels_of(self, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(fine, coarse) int64 labels of raw latents: class × hue bin, and the class."""
        bins = int(self.cfg["hue_bins"])
        coarse = z[:, 0].astype(np.int64)
        hue_bin = np.floor(z[:, 5] * bins + 0.5).astype(np.int64) % bins
        return coarse * bins + hue_bin, coarse

    # -- rendering --------------------------------------------------------------------------------------------
    def render_images(self, z: np.ndarray) -> torch.Tensor:
        """(n, 3, r, r) uint8 images of raw latents on ``self.device``, rendered in chunks of ~4 M pixels."""
        r = int(self.cfg["resolution"])
        zt = torch.from_numpy(np.asarray(z, dtype=np.float32)).to(self.device)
        out = torch.empty(len(zt), 3, r, r, dtype=torch.uint8, device=self.device)
        step = max(1, _PIXELS_PER_CHUNK // (r * r))
        for i in range(0, len(zt), step):
            img, _ = render(zt[i:i + step], r, self.cfg["object_saturation"], self.cfg["object_brightness"],
                            self.cfg["background_saturation"])
            out[i:i + step] = img.mul_(255.0).round_().to(torch.uint8)
        return out

    def _clean(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images.float().div_(255.0), self.cfg["mean"], self.cfg["std"])

    def _samples(self, z: np.ndarray, index: torch.Tensor) -> Samples:
        images = self.render_images(z)
        fine, coarse = self.labels_of(z)
        return Samples(x=self._clean(images), index=index,
                       latents=torch.from_numpy(latents_from_raw(z).astype(np.float32)),
                       labels=torch.from_numpy(fine), labels_coarse=torch.from_numpy(coarse),
                       state={"z": z, "images": images})

    # -- contract -------------------------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        return self._samples(self.sample_raw(n, rng), torch.full((n,), -1, dtype=torch.int64))

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        """``n`` samples with balanced classes (sample i has class i mod 4), the rest from the marginal."""
        z = self.sample_raw(n, rng, classes=np.arange(n) % len(CLASSES))
        return self._samples(z, torch.arange(n, dtype=torch.int64))

    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        if self.cfg["pair"] == "latent":
            images = self.render_images(self.perturb(samples.state["z"], rng))
            if self.preset.clean:
                return self._clean(images)
        elif self.preset.clean:
            return samples.x.to(self.device).clone()
        else:
            images = samples.state["images"].to(self.device)
        g = torch_generator(rng, images.device)
        return augment_images(images, self.preset.view(view), int(self.cfg["resolution"]), g, self.cfg["mean"],
                              self.cfg["std"])


def _truncated_normal(mu: np.ndarray, sigma: float, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """mu + N(0, σ²) per entry, redrawn where it leaves [lo, hi] (as the content/style model's box)."""
    out = mu + sigma * rng.standard_normal(mu.shape)
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = mu[bad] + sigma * rng.standard_normal(int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out
