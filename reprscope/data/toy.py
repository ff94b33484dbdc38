"""Toy data sets of the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL"): blobs and moons (§3.2) and the 3-D Gaussian points (appendix B.1).

On blobs and moons "one class = augmentations of one sample": a positive view of a point is a fresh draw
from the same class. On ``points3d`` a fixed set of points is augmented by Gaussian jitter that is either
centred on the point (E[x_ω] = x) or shifted by a fixed vector k (E[x_ω] = x + k).
"""
from __future__ import annotations

import abc

import numpy as np
import torch

from ..params import Param
from .base import DATASETS, GeneratedDataset, Samples


class _ClassConditional2D(GeneratedDataset):
    """Three classes in 2-D; a positive view is another draw of the same class."""

    input_shape = (2,)
    num_classes = 3
    params = [
        Param("noise", 0.1, "float", "within-class spread", low=0),
        Param("epoch_size", 3000, "int", "nominal number of samples per epoch", low=1),
        Param("eval_size", 900, "int", "size of the fixed held-out set", low=3),
    ]

    @abc.abstractmethod
    def draw(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, 2) points of the given classes."""

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        y = rng.integers(0, self.num_classes, size=n)
        return self._samples(y, rng)

    def _samples(self, y: np.ndarray, rng: np.random.Generator) -> Samples:
        x = self.draw(y, rng)
        return Samples(x=torch.from_numpy(x.astype(np.float32)).to(self.device),
                       index=torch.full((len(y),), -1, dtype=torch.int64),
                       labels=torch.from_numpy(y.astype(np.int64)), state=y)

    def make_eval_set(self, n: int, rng: np.random.Generator) -> Samples:
        y = np.arange(n) % self.num_classes  # balanced classes
        s = self._samples(y, rng)
        s.index = torch.arange(n, dtype=torch.int64)
        return s

    def augment(self, samples: Samples, rng: np.random.Generator, view: int = 0) -> torch.Tensor:
        return torch.from_numpy(self.draw(np.asarray(samples.state), rng).astype(np.float32)).to(self.device)


@DATASETS.register("blobs")
class Blobs(_ClassConditional2D):
    """Three isotropic Gaussian blobs in 2-D (centres drawn from [-10, 10]² with the data seed, as make_blobs)."""

    name = "blobs"
    summary = "3 Gaussian blobs in 2-D; one class = augmentations of one sample (the center-vector paper §3.2)"
    params = [
        Param("noise", 1.0, "float", "std of each blob", low=0),
        Param("epoch_size", 3000, "int", "nominal number of samples per epoch", low=1),
        Param("eval_size", 900, "int", "size of the fixed held-out set", low=3),
    ]

    def __init__(self, **given):
        super().__init__(**given)
        self.centers = np.random.default_rng([self.seed, 2]).uniform(-10, 10, size=(3, 2))

    def draw(self, labels, rng):
        return self.centers[labels] + self.cfg["noise"] * rng.standard_normal((len(labels), 2))


@DATASETS.register("moons")
class Moons(_ClassConditional2D):
    """Three interleaved half-moons in 2-D (make_moons extended to a third class)."""

    name = "moons"
    summary = "3 interleaved half-moons in 2-D; one class = augmentations of one sample (the center-vector paper §3.2)"

    def draw(self, labels, rng):
        t = rng.uniform(0, np.pi, size=len(labels))
        # class 0: upper arc at 0; class 1: lower arc shifted (as make_moons); class 2: upper arc at x + 2.5,
        # interleaved with class 1 and clear of class 0's tip at (1, 0).
        x = np.where(labels == 1, 1 - np.cos(t), np.cos(t) + 2.5 * (labels == 2))
        y = np.where(labels == 1, 0.5 - np.sin(t), np.sin(t))
        pts = np.stack([x, y], axis=1)
        return pts + self.cfg["noise"] * rng.standard_normal(pts.shape)


@DATASETS.register("points3d")
class Points3D(GeneratedDataset):
    """Fixed 3-D Gaussian points with jitter augmentations, centred or shifted (the center-vector paper appendix B.1)."""

    name = "points3d"
    summary = "100 fixed 3-D Gaussian points, jitter augmentation centred or shifted (the center-vector paper B.1)"
    input_shape = (3,)
    params = [
        Param("n_points", 100, "int", "number of fixed points", low=1),
        Param("aug_std", 0.1, "float", "std of the Gaussian jitter", low=0),
        Param("shift", 0.0, "float", "length of the augmentation bias k (0: centred, E[x_ω] = x)", low=0),
        Param("epoch_size", 1000, "int", "nominal number of samples per epoch (10 augmentations x 100 points)", low=1),
        Param("eval_size", 100, "int", "held-out size (the points themselves, cycled)", low=1),
    ]

    def __init__(self, **given):
        super().__init__(**given)
        rng = np.random.default_rng([self.seed, 2])
        self.points = rng.standard_normal((self.cfg["n_points"], 3))
        self.k = np.ones(3) / np.sqrt(3) * self.cfg["shift"]
        self.num_classes = self.cfg["n_points"]

    def _samples(self, ids: np.ndarray) -> Samples:
        return Samples(x=torch.from_numpy(self.points[ids].astype(np.float32)).to(self.device),
                       index=torch.from_numpy(ids.astype(np.int64)),
                       labels=torch.from_numpy(ids.astype(np.int64)), state=ids)

    def sample(self, n, rng):
        return self._samples(rng.integers(0, self.cfg["n_points"], size=n))

    def make_eval_set(self, n, rng):
        s = self._samples(np.arange(n) % self.cfg["n_points"])
        s.index = torch.arange(n, dtype=torch.int64)
        return s

    def augment(self, samples, rng, view=0):
        ids = np.asarray(samples.state)
        x = self.points[ids] + self.k + self.cfg["aug_std"] * rng.standard_normal((len(ids), 3))
        return torch.from_numpy(x.astype(np.float32)).to(self.device)
