"""The content/style data-generating process of Rusak et al. 2022 §4.1 (after Zimmermann et al. 2021, cl-ica).

Latents z live in the hyperbox [0,1]^d or on the hypersphere S^{d-1} with a uniform marginal. The first
``content_dims`` coordinates are *content*: a positive pair shares them exactly (δ conditional). The other
coordinates are *style*: drawn from a Gaussian around the anchor (box, truncated to the box by resampling)
or from a von Mises–Fisher distribution around the anchor (sphere). Observations are x = g(z) with g an
invertible, well-conditioned MLP (d→d, LeakyReLU between layers, no bias) or a linear map.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from ..errors import ReprscopeError
from ..params import Param
from .base import DATASETS, GeneratedDataset, Samples


#: Most rounds of a rejection sampler (each accepts a fixed fraction of what is left, so this is never reached
#: within the parameters' ranges).
_MAX_ROUNDS = 100_000

def sample_vmf(mu: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """Draw one von Mises–Fisher sample around each row of ``mu`` (Wood 1994), vectorised.

    Args:
        mu: (n, m) unit vectors, m >= 2.
        kappa: concentration > 0.
    Returns:
        (n, m) unit vectors.
    """
    n, m = mu.shape
    # Stable form of b = (-2κ + sqrt(4κ² + (m-1)²)) / (m-1).
    b = (m - 1) / (2 * kappa + np.sqrt(4 * kappa**2 + (m - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (m - 1) * np.log(1 - x0**2)
    w = np.empty(n)
    todo = np.arange(n)
    for _ in range(_MAX_ROUNDS):
        if not todo.size:
            break
        z = rng.beta((m - 1) / 2, (m - 1) / 2, size=todo.size)
        cand = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = rng.uniform(size=todo.size)
        ok = kappa * cand + (m - 1) * np.log(1 - x0 * cand) - c >= np.log(u)
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    if todo.size:
        raise ReprscopeError(f"the von Mises-Fisher sampler did not converge for κ = {kappa}; use a style_spread in range")
    v = rng.standard_normal((n, m))
    v -= np.sum(v * mu, axis=1, keepdims=True) * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w[:, None] * mu + np.sqrt(np.clip(1 - w**2, 0, None))[:, None] * v


def _random_well_conditioned(d: int, rng: np.random.Generator, max_cond: float) -> np.ndarray:
    while True:
        w = rng.standard_normal((d, d)) / np.sqrt(d)
        if np.linalg.cond(w) <= max_cond:
            return w


@DATASETS.register("dgp")
class ContentStyleDGP(GeneratedDataset):
    """Content/style latent-variable model with an invertible mixing g (Rusak et al. 2022 §4.1)."""

    name = "dgp"
    summary = "content/style latents on a box or sphere through an invertible MLP (Rusak et al. 2022 §4.1)"
    pair_mode = "anchor"
    params = [
        Param("latent_dim", 10, "int", "d: number of latents = observation dimension", low=1),
        Param("content_dims", 5, "int", "d_c: the first d_c latents are content (shared within a pair)", low=0),
        Param("space", "box", "choice", "latent space: hyperbox [0,1]^d or hypersphere S^{d-1}", choices=("box", "sphere")),
        Param("style_spread", 0.1, "float", "std of the style conditional (box: Gaussian σ; sphere: vMF κ = 1/σ²), "
              "in [1e-4, 10] (beyond, the box's rejection sampler or the sphere's κ stop being finite work)",
              low=1e-4, high=10.0),
        Param("mixing", "mlp", "choice", "g: invertible MLP or a single linear map", choices=("mlp", "linear")),
        Param("mix_layers", 3, "int", "number of layers of the mixing MLP", low=1),
        Param("slope", 0.2, "float", "LeakyReLU slope between mixing layers", low=0, low_open=True, high=1),
        Param("cond_percentile", 25.0, "float", "reject mixing matrices whose condition number is above this "
              "percentile of random draws (cl-ica)", low=0, low_open=True, high=100),
        Param("epoch_size", 10000, "int", "nominal number of samples per epoch of the stream", low=1),
        Param("eval_size", 10000, "int", "size of the fixed held-out set", low=1),
    ]

    def __init__(self, **given):
        super().__init__(**given)
        d, dc = self.cfg["latent_dim"], self.cfg["content_dims"]
        if dc > d:
            from ..errors import ReprscopeError

            raise ReprscopeError(f"The 'content_dims' parameter of dataset dgp must be <= latent_dim ({d}). Got {dc} instead.")
        if self.cfg["space"] == "sphere" and d < 2:
            from ..errors import ReprscopeError

            raise ReprscopeError("The 'latent_dim' parameter of dataset dgp must be >= 2 on the sphere. Got 1 instead.")
        self.d, self.dc = d, dc
        self.input_shape = (d,)
        self.latent_names = [f"c{i}" for i in range(dc)] + [f"s{i}" for i in range(d - dc)]
        self.content_mask = [True] * dc + [False] * (d - dc)
        rng = np.random.default_rng([self.seed, 2])
        n_layers = 1 if self.cfg["mixing"] == "linear" else self.cfg["mix_layers"]
        probe = [np.linalg.cond(rng.standard_normal((d, d)) / np.sqrt(d)) for _ in range(1000)]
        self.max_condition = float(np.percentile(probe, self.cfg["cond_percentile"]))
        self.mixing: List[np.ndarray] = [_random_well_conditioned(d, rng, self.max_condition) for _ in range(n_layers)]

    # -- g and its inverse -------------------------------------------------------------------------------
    def g(self, z: np.ndarray) -> np.ndarray:
        """Mixing x = g(z) for (n, d) latents (float64)."""
        x = np.asarray(z, dtype=np.float64)
        a = self.cfg["slope"]
        for i, w in enumerate(self.mixing):
            x = x @ w.T
            if i < len(self.mixing) - 1:
                x = np.where(x >= 0, x, a * x)
        return x

    def g_inverse(self, x: np.ndarray) -> np.ndarray:
        """Exact inverse z = g⁻¹(x) (LeakyReLU is inverted with slope 1/a)."""
        z = np.asarray(x, dtype=np.float64)
        a = self.cfg["slope"]
        for i, w in reversed(list(enumerate(self.mixing))):
            if i < len(self.mixing) - 1:
                z = np.where(z >= 0, z, z / a)
            z = np.linalg.solve(w, z.T).T
        return z

    # -- latent distributions ----------------------------------------------------------------------------
    def sample_latents(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.cfg["space"] == "box":
            return rng.uniform(0.0, 1.0, size=(n, self.d))
        z = rng.standard_normal((n, self.d))
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    def sample_conditional(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """z̃ ~ p(z̃ | z): content copied exactly, style resampled around the anchor."""
        z = np.asarray(z, dtype=np.float64)
        out = z.copy()
        dc, sigma = self.dc, self.cfg["style_spread"]
        if dc == self.d:
            return out
        if self.cfg["space"] == "box":
            style = z[:, dc:]
            new = style + sigma * rng.standard_normal(style.shape)
            bad = (new < 0) | (new > 1)
            for _ in range(_MAX_ROUNDS):  # truncate to the box by resampling the offending entries
                if not bad.any():
                    break
                new[bad] = style[bad] + sigma * rng.standard_normal(int(bad.sum()))
                bad = (new < 0) | (new > 1)
            else:
                raise ReprscopeError(f"style_spread {sigma} leaves the box too often to sample; use a smaller one")
            out[:, dc:] = new
            return out
        kappa = 1.0 / sigma**2
        if dc == 0:
            return sample_vmf(z, kappa, rng)
        # Sphere with content: resample the style block's direction on its own sphere of radius ||z_s||, so
        # the content is exact and z̃ stays on S^{d-1}.
        style = z[:, dc:]
        r = np.linalg.norm(style, axis=1, keepdims=True)
        safe = np.where(r > 0, r, 1.0)
        u = style / safe
        if style.shape[1] == 1:  # vMF on S^0: keep the sign with probability e^κ / (e^κ + e^-κ)
            flip = rng.uniform(size=(len(z), 1)) < 1.0 / (1.0 + np.exp(2 * kappa))
            new_u = np.where(flip, -u, u)
        else:
            new_u = sample_vmf(u, kappa, rng)
        out[:, dc:] = np.where(r > 0, r * new_u, style)
        return out

    # -- contract ----------------------------------------------------------------------------------------
    def _observe(self, z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.g(z).astype(np.float32)).to(self.device)

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        z = self.sample_latents(n, rng)
        return Samples(x=self._observe(z), index=torch.full((n,), -1, dtype=torch.int64),
                       latents=torch.from_numpy(z.astype(np.float32)), state=z)

    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        return self._observe(self.sample_conditional(samples.state, rng))
