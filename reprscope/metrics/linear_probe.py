"""Linear probe: multinomial logistic regression on frozen features (the linear evaluation of Bardes, Ponce & LeCun
2022, arXiv:2105.04906, §4.1).

The linear evaluation protocol (Bardes, Ponce & LeCun 2022, arXiv:2105.04906 §4.1, after Zhang et al. 2016 / SimCLR) reduced to its deterministic
core: standardised features of the reference view, a softmax classifier fitted full-batch by L-BFGS from a
zero initialisation, top-1 accuracy on the held-out split (the same seeded split as ``knn``).

On the CPU the fit is scipy's L-BFGS-B on a blockwise numpy objective (:class:`LogisticObjective`); on an
accelerator it is torch's L-BFGS with autograd (:func:`fit_logistic`). Both minimise the same function.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ReprscopeError
from ..params import Param
from ._core import LayerData, Result, declare
from .knn import reference_features, split_indices
from .stats import single_torch_thread

#: n_train·d above which the probe runs in float32 instead of float64 (memory and speed; the objective is
#: smooth and well conditioned after standardising, so float32 L-BFGS converges to the same accuracy).
FLOAT32_ABOVE = 2e7


#: n_train·d·C below which the CPU fit runs on one thread: L-BFGS on a small problem is a long chain of tiny
#: tensor ops whose thread hand-offs cost more than they save (tens of times slower on a loaded machine).
ONE_THREAD_BELOW = 1 << 20


#: Rows per block of the train split's variance pass (bounds its float64 temporary).
_STD_BLOCK_ELEMS = 1 << 22


def standardise(train: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scale (n_train, d) / (n_test, d) features by the train mean and population std, in place.

    The statistics are computed in float64 and applied in the arrays' own dtype (no float64 copy of a large
    float32 matrix): the mean by one float64 reduction, the variance as the mean of (x − mean)² over blocks
    of rows (two passes, no cancellation, a float64 temporary of one block only). A feature constant on the
    train split (ptp = 0) is centred on its exact value and keeps scale 1, so it is exactly 0 on the train
    split (no rounding noise blown up by a tiny std).
    """
    const = np.ptp(train, axis=0) == 0
    mean = np.where(const, train[0], train.mean(axis=0, dtype=np.float64))
    sq = np.zeros(train.shape[1])
    step = max(1, _STD_BLOCK_ELEMS // max(1, train.shape[1]))
    for s in range(0, train.shape[0], step):
        c = train[s:s + step] - mean
        sq += np.einsum("ij,ij->j", c, c)
    std = np.where(const, 1.0, np.sqrt(sq / max(1, train.shape[0])))
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
    with single_torch_thread("cpu") if small else nullcontext():
        opt.step(closure)
    n_iter = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    with torch.no_grad():
        loss = float(objective(x, y, w, b, l2))
    return w.detach(), b.detach(), loss, n_iter


#: Most multiply-adds of one block product of :class:`LogisticObjective` (rows·d·C). OpenBLAS runs a product
#: of up to about 6.5e5 of them on one thread and splits larger ones across its threads; on a CPU shared
#: with other work every split product then waits for a busy core, and a (128 × 2048)·(2048 × 10) float32
#: product took 100× longer than two (32 × 2048) ones. Blocks under this size never wait.
BLOCK_MACS = 1 << 19


def _block_rows(d: int, n_classes: int, itemsize: int) -> int:
    """Rows of X per block of :class:`LogisticObjective`: at most 512 KiB of X, so the block read for the
    logits is still in cache for the gradient product, and at most BLOCK_MACS multiply-adds per product;
    at least 16 rows, so that the dozen numpy calls per block stay cheap next to its products."""
    return max(16, min((1 << 19) // max(1, d * itemsize), BLOCK_MACS // max(1, d * n_classes)))


class LogisticObjective:
    """Mean cross-entropy of softmax(XW + b) plus (l2/2)·‖W‖²_F, and its gradient, as a function of the flat
    parameter vector θ = [vec(W) (d·C, row-major), b (C)] (the :func:`objective` of the torch path).

    X is visited block by block: each block's logits, softmax and gradient contribution are formed while the
    block is in cache, so X is read from memory once per evaluation instead of twice (about twice as fast as
    two whole-matrix products with C columns). The products run in X's dtype; the softmax, the loss and the
    sums are float64.

    Args:
        x: (m, d) standardised features; y: (m,) class ids in [0, C); n_classes: C; l2: the penalty.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, l2: float):
        self.x, self.y, self.c, self.l2 = x, np.asarray(y, dtype=np.int64), int(n_classes), float(l2)
        self.block = _block_rows(x.shape[1], self.c, x.dtype.itemsize)
        self.evals = 0

    def __call__(self, theta: np.ndarray) -> Tuple[float, np.ndarray]:
        x, y, c = self.x, self.y, self.c
        m, d = x.shape
        w64 = theta[: d * c].reshape(d, c)
        w = w64.astype(x.dtype, copy=False)
        b = theta[d * c:]
        gw = np.zeros((d, c))
        gb = np.zeros(c)
        ce = 0.0
        for s in range(0, m, self.block):
            xb, yb = x[s:s + self.block], y[s:s + self.block]
            rows = np.arange(len(yb))
            z = (xb @ w).astype(np.float64, copy=False)
            z += b
            z -= z.max(axis=1, keepdims=True)
            ce -= float(z[rows, yb].sum())
            np.exp(z, out=z)
            se = z.sum(axis=1)
            ce += float(np.log(se).sum())
            z /= se[:, None]  # softmax
            z[rows, yb] -= 1.0  # ∂CE_i/∂logits = p_i − onehot(y_i)
            gw += xb.T @ z.astype(x.dtype, copy=False)
            gb += z.sum(axis=0)
        self.evals += 1
        loss = ce / m + 0.5 * self.l2 * float(np.einsum("ij,ij->", w64, w64))
        return loss, np.concatenate([(gw / m + self.l2 * w64).ravel(), gb / m])


#: L-BFGS-B settings of the float64 fit: stop when max|∂f| ≤ GTOL or the relative decrease of f per
#: iteration is ≤ FTOL (f is then within ~1e-9 relative of the optimum), keeping 20 correction pairs.
GTOL, FTOL, HISTORY = 1e-10, 1e-13, 20


def fit_logistic_np(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int
                    ) -> Tuple[np.ndarray, np.ndarray, float, int, bool]:
    """Minimise :func:`objective` (the function of the torch path) by scipy's L-BFGS-B from W = 0, b = 0, with
    the blockwise :class:`LogisticObjective`.

    A float64 ``x`` is fitted to f within ~1e-9 relative of the optimum (GTOL, FTOL); a float32 ``x`` (large
    problems, see FLOAT32_ABOVE) with the looser tolerances of the torch path's float32 fit.

    Returns:
        (W (d, C), b (C,), final objective, iterations, whether it stopped on its tolerances rather than on
        ``max_iter``).
    """
    from scipy.optimize import minimize

    d = x.shape[1]
    gtol, ftol = (1e-6, 1e-9) if x.dtype == np.float32 else (GTOL, FTOL)
    opt = minimize(LogisticObjective(x, y, n_classes, l2), np.zeros(d * n_classes + n_classes), jac=True,
                   method="L-BFGS-B", options={"maxiter": max_iter, "maxcor": HISTORY, "gtol": gtol, "ftol": ftol})
    w = opt.x[: d * n_classes].reshape(d, n_classes)
    return w, opt.x[d * n_classes:], float(opt.fun), int(opt.nit), opt.nit < max_iter


@declare(
    "linear_probe",
    params=[
        Param("l2", 1e-4, "float", "L2 penalty (l2/2)·‖W‖² added to the mean cross-entropy", low=0),
        Param("test_fraction", 0.2, "float", "held-out fraction of the samples, in (0, 1)", low=0, low_open=True, high=1,
              high_open=True),
        Param("seed", 0, "int", "seed of the train/test permutation (the same split as knn)", low=0),
        Param("max_iter", 100, "int", "L-BFGS iterations", low=1),
    ],
    needs=("labels",),
    summary="top-1 accuracy of an L2-regularised multinomial logistic regression on frozen, standardised features",
    paper="Bardes, Ponce & LeCun 2022, arXiv:2105.04906, §4.1 (linear evaluation)",
    no_bootstrap="copies of a resampled sample land on both sides of the train/test split",
)
def linear_probe(data: LayerData, l2: float = 1e-4, test_fraction: float = 0.2, seed: int = 0,
                 max_iter: int = 100) -> Result:
    """Linear probe on the reference view.

    Args:
        data: (V, n, d) embeddings (the reference view, ``clean`` when stored) and (n,) labels.
        l2: penalty weight: objective = mean CE + (l2/2)·‖W‖²_F (bias unpenalised).
        test_fraction, seed: the split of :func:`~reprscope.metrics.knn.split_indices`.
        max_iter: most L-BFGS iterations (each one full-batch step); a fit stopped by it is noted.

    The features are standardised with the train split's mean and std; the fit runs in float64 on
    ``data.device`` (on the CPU: scipy L-BFGS-B to a gradient of 1e-10, :func:`fit_logistic_np`), or in
    float32 when n_train·d > 2e7. Classes are those of the train split; a test sample of
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
    if dev.type == "cpu":
        w, b, loss, n_iter, converged = fit_logistic_np(xtr, y[tr], int(classes.size), l2, max_iter)
        train_acc = float(np.mean((xtr @ w.astype(xtr.dtype) + b).argmax(axis=1) == y[tr]))
        test_acc = float(np.mean((xte @ w.astype(xte.dtype) + b).argmax(axis=1) == y[te]))
    else:
        xtr_t, xte_t = torch.from_numpy(xtr).to(dev), torch.from_numpy(xte).to(dev)
        ytr_t, yte_t = torch.from_numpy(y[tr]).to(dev), torch.from_numpy(y[te]).to(dev)
        w, b, loss, n_iter = fit_logistic(xtr_t, ytr_t, int(classes.size), l2, max_iter)
        converged = n_iter < max_iter
        with torch.no_grad():
            train_acc = float(((xtr_t @ w + b).argmax(dim=1) == ytr_t).double().mean())
            test_acc = float(((xte_t @ w + b).argmax(dim=1) == yte_t).double().mean())
    if not converged:
        res.notes.append(f"L-BFGS stopped at max_iter={max_iter} before its tolerances were met (the accuracies "
                         "are those of that fit; --param linear_probe.max_iter=N fits tighter)")
    res.add("top1", test_acc, view=view)
    res.add("train_top1", train_acc, view=view)
    res.add("loss", loss, view=view)
    return res
