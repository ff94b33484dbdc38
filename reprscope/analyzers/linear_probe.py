"""Linear probe: multinomial logistic regression on frozen features (SPEC §6 *knn and linear_probe*).

The linear evaluation protocol (paper 003 §4.1, after Zhang et al. 2016 / SimCLR) reduced to its deterministic
core: standardised features of the reference view, a softmax classifier fitted full-batch by L-BFGS from a
zero initialisation, top-1 accuracy on the held-out split (the same seeded split as ``knn``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ReprscopeError
from ..params import Param
from .base import LayerData, Result, register_analyzer
from .knn import reference_features, split_indices

#: n_train·d above which the probe runs in float32 instead of float64 (memory and speed; the objective is
#: smooth and well conditioned after standardising, so float32 L-BFGS converges to the same accuracy).
FLOAT32_ABOVE = 2e7


#: n_train·d·C below which the CPU fit runs on one thread: L-BFGS on a small problem is a long chain of tiny
#: tensor ops whose thread hand-offs cost more than they save (tens of times slower on a loaded machine).
ONE_THREAD_BELOW = 1 << 20


@contextmanager
def _one_thread(active: bool) -> Iterator[None]:
    """Run the block on one intra-op thread when ``active``, restoring torch's thread count afterwards."""
    if not active:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def standardise(train: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scale (n_train, d) / (n_test, d) features by the train mean and population std, in place.

    The statistics are computed in float64 and applied in the arrays' own dtype (no float64 copy of a large
    float32 matrix). A feature constant on the train split (ptp = 0) is centred on its exact value and keeps
    scale 1, so it is exactly 0 on the train split (no rounding noise blown up by a tiny std).
    """
    const = np.ptp(train, axis=0) == 0
    mean = np.where(const, train[0], train.mean(axis=0, dtype=np.float64))
    std = np.where(const, 1.0, train.std(axis=0, dtype=np.float64))
    std = np.where(std > 0, std, 1.0)
    for a in (train, test):
        a -= mean.astype(a.dtype)
        a /= std.astype(a.dtype)
    return train, test


def objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean cross-entropy of softmax(xW + b) plus (l2/2)·‖W‖²_F (the bias is not penalised).

    Shapes: x (m, d), y (m,) class ids, w (d, C), b (C,).
    """
    return F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int
                 ) -> Tuple[torch.Tensor, torch.Tensor, float, int]:
    """Minimise :func:`objective` by full-batch L-BFGS (strong-Wolfe line search) from W = 0, b = 0.

    Returns:
        (W (d, C), b (C,), final objective, L-BFGS iterations used).
    """
    d = x.shape[1]
    w = torch.zeros(d, n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    tight = x.dtype == torch.float64
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2, history_size=20,
                            tolerance_grad=1e-10 if tight else 1e-6, tolerance_change=1e-14 if tight else 1e-9,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(x, y, w, b, l2)
        loss.backward()
        return loss

    small = x.device.type == "cpu" and x.shape[0] * d * n_classes < ONE_THREAD_BELOW
    with _one_thread(small):
        opt.step(closure)
    n_iter = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    with torch.no_grad():
        loss = float(objective(x, y, w, b, l2))
    return w.detach(), b.detach(), loss, n_iter


@register_analyzer(
    "linear_probe",
    params=[
        Param("l2", 1e-4, "float", "L2 penalty (l2/2)·‖W‖² added to the mean cross-entropy", low=0),
        Param("test_fraction", 0.2, "float", "held-out fraction of the samples, in (0, 1)", low=0, low_open=True, high=1),
        Param("seed", 0, "int", "seed of the train/test permutation (the same split as knn)", low=0),
        Param("max_iter", 100, "int", "L-BFGS iterations", low=1),
    ],
    needs=("labels",),
    summary="top-1 accuracy of an L2-regularised multinomial logistic regression on frozen, standardised features",
    paper="003 §4.1 (linear evaluation)",
)
def linear_probe(data: LayerData, l2: float = 1e-4, test_fraction: float = 0.2, seed: int = 0,
                 max_iter: int = 100) -> Result:
    """Linear probe on the reference view.

    Args:
        data: (V, n, d) embeddings (the reference view, ``clean`` when stored) and (n,) labels.
        l2: penalty weight: objective = mean CE + (l2/2)·‖W‖²_F (bias unpenalised).
        test_fraction, seed: the split of :func:`~reprscope.analyzers.knn.split_indices`.
        max_iter: L-BFGS iterations (one full-batch step); a fit stopped by it is noted.

    The features are standardised with the train split's mean and std; the fit runs in float64 on
    ``data.device``, or float32 when n_train·d > 2e7. Classes are those of the train split; a test sample of
    another class counts as an error.

    Returns:
        Rows (``view`` = reference view): ``top1`` test accuracy, ``train_top1``, ``loss`` the final objective.
        With a single class in the train split: no rows, a note.
    """
    if not 0 < test_fraction < 1:
        raise ReprscopeError(f"The 'test_fraction' parameter of analyzer linear_probe must be a float > 0, < 1. "
                             f"Got {test_fraction!r} instead.")
    res = Result()
    view = data.views[data.reference_view_id()]
    labels = np.asarray(data.labels).reshape(-1)
    tr, te = split_indices(data.n, test_fraction, seed)
    classes = np.unique(labels[tr])
    if classes.size < 2:
        res.notes.append(f"skipped: the train split has a single class ({classes[0].item()!r}); nothing to classify")
        return res
    dtype = np.float32 if tr.size * data.dim > FLOAT32_ABOVE else np.float64
    x = reference_features(data, dtype)
    xtr, xte = standardise(x[tr], x[te])
    del x
    pos = np.searchsorted(classes, labels)
    found = (pos < classes.size) & (classes[np.minimum(pos, classes.size - 1)] == labels)
    y = np.where(found, pos, -1)  # −1: a class the train split lacks, never predicted
    unseen = int((~found[te]).sum())
    if unseen:
        res.notes.append(f"{unseen} test samples have a class absent from the train split (counted as errors)")

    dev = torch.device(data.device)
    xtr_t, xte_t = torch.from_numpy(xtr).to(dev), torch.from_numpy(xte).to(dev)
    ytr_t, yte_t = torch.from_numpy(y[tr]).to(dev), torch.from_numpy(y[te]).to(dev)
    w, b, loss, n_iter = fit_logistic(xtr_t, ytr_t, int(classes.size), l2, max_iter)
    if n_iter >= max_iter:
        res.notes.append(f"L-BFGS stopped at max_iter={max_iter} before its tolerances were met")
    with torch.no_grad():
        train_acc = float(((xtr_t @ w + b).argmax(dim=1) == ytr_t).double().mean())
        test_acc = float(((xte_t @ w + b).argmax(dim=1) == yte_t).double().mean())
    res.add("top1", test_acc, view=view)
    res.add("train_top1", train_acc, view=view)
    res.add("loss", loss, view=view)
    return res
