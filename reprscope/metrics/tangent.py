"""Hardest negatives, the InfoNCE upper bound and the projector's alignment with δh (Cosentino et al. 2022, arXiv:2205.06926 §3–5, Eq. 3–10).

Paper 002 bounds the InfoNCE loss of a batch of N pairs by its hardest negatives (Prop. 3.1, Eq. 3–5):

    L_Upper = β L_invariance + β L_repulsion + log(2(N − 1)),
    L_invariance = −(1/N) Σ_i Sim(g(h_i⁽¹⁾), g(h_i⁽²⁾)),
    L_repulsion  =  (1/N) Σ_i Sim(g(h_i⁽¹⁾), g(h̃*_i)),  h̃*_i = argmax_{l ∈ B₋ᵢ} Sim(g(h_i⁽¹⁾), g(h̃_l)),

where B₋ᵢ are both views of the other N − 1 samples (2N − 2 candidates). The bound follows from
Σ_{l ∈ B₋ᵢ} exp(β s_il) ≤ 2(N − 1)·exp(β max_l s_il), so it holds for the loss of Cosentino et al. 2022 Eq. 1, whose
denominator runs over the 2N − 2 *negatives only* (not over the positive, as the NT-Xent cross-entropy of
:func:`reprscope.methods.losses.info_nce` does; with the positive in the denominator the bound can fail).
Symmetrised over the two view orders (each anchor with its own hardest negative), the per-anchor bounds
average to the symmetric bound reported here.

With normalised projector outputs the bound becomes −β/N Σ_i δh_iᵀ Proj(h_i⁽¹⁾) + log(2(N − 1)) with
δh_i = h_i⁽²⁾ − h̃*_i (Eq. 8–9), so a linear projector g(h) = Wᵀh should span S = Span{δh_i}; Eq. 10 measures
what it misses, the fraction of variance unexplained

    FVU = Σ_i min_t ‖δh_i − W t‖² / Σ_i ‖δh_i‖²,

W ∈ ℝ^{d_enc×d_proj} (the transposed torch ``Linear`` weight: col(W) = row space of the weight). For a
non-linear projector W is replaced per sample by its local affine map, the Jacobian of g at h_i⁽¹⁾
(Fig. 8). Fig. 5–6 read the hardest negative itself: its distance to h_i⁽¹⁾ and whether it shares h_i's label.

The analyzer needs the projector and the *encoder* embeddings it was trained on, so it runs on the layer with
``space == "encoder"`` only (the ``encoder_layer`` need); the other layers (intermediate, projector, predictor
outputs) are skipped with a note the pipeline keeps only when a source has no encoder layer at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import ReprscopeError
from ..models.heads import L2Norm, build_head
from ..params import Param
from ._core import HeadModule, LayerData, Result, declare
from .stats import map_side_by_side, single_torch_thread
from .weights import is_linear_head

#: Elements of the largest (d_proj, m, width) float64 block of one Jacobian pass (128 MiB).
_JAC_BLOCK_ELEMS = 1 << 24

#: A batch's FVU numerator comes from ‖δh‖² − ‖P δh‖² (one product) when it is at least this fraction of
#: ‖δh‖² (a relative rounding error ≤ 1e3·eps), else from the explicit residual δh − P δh.
_PYTHAGORAS_MIN = 1e-3


def load_head(module: HeadModule, device: torch.device) -> nn.Sequential:
    """Rebuild a stored head as a float64 ``nn.Sequential`` in eval mode on ``device``.

    Strict loading: every parameter and buffer must be stored and nothing else may be, except BatchNorm's
    ``num_batches_tracked`` counters, which the store omits and which do not affect the eval-mode map.

    Raises:
        ReprscopeError: listing the missing and unexpected keys.
    """
    head = build_head(module.spec).to(torch.float64)
    state = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in module.params.items()}
    for k, v in head.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        want = set(head.state_dict())
        missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
        raise ReprscopeError(
            f"the stored head does not match its spec: missing keys {missing}, unexpected keys {unexpected}"
            + ("" if missing or unexpected else f" ({str(e).splitlines()[-1].strip()})")
        ) from None
    head = head.to(device).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def linear_map(head: nn.Sequential, d_in: int) -> torch.Tensor:
    """The (d_proj, d_enc) matrix W_L ⋯ W_1 of a head of linear layers (identity for an empty head)."""
    m = None
    for layer in head:
        m = layer.weight if m is None else layer.weight @ m
    return torch.eye(d_in, dtype=torch.float64) if m is None else m


def row_space_basis(m: torch.Tensor) -> torch.Tensor:
    """Orthonormal (d_enc, r) basis of the row space of (d_proj, d_enc) ``m`` = col(W) for W = mᵀ.

    Rank-aware: right singular vectors with σ > max(d_proj, d_enc)·eps₆₄·σ_1; a zero map gives r = 0.
    """
    with single_torch_thread(m.device):  # a chain of small steps: one thread is robust on a shared CPU
        _, s, vh = torch.linalg.svd(m, full_matrices=False)
    if s.numel() == 0:
        return m.new_zeros(m.shape[1], 0)
    r = int((s > max(m.shape) * torch.finfo(torch.float64).eps * s[0]).sum()) if s[0] > 0 else 0
    return vh[:r].T


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Row-wise x/‖x‖ (no ε floor, so tiny-scale rows stay unit); a zero row stays zero (cosine 0)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(n > 0, n, torch.ones_like(n))


def contrastive_batch(z1: torch.Tensor, z2: torch.Tensor, beta: float, use_numpy: Optional[bool] = None
                      ) -> Dict[str, torch.Tensor]:
    """InfoNCE (Cosentino et al. 2022 Eq. 1, symmetrised), its Prop. 3.1 terms and the hardest negatives of one batch.

    Args:
        z1, z2: (B, p) ℓ2-normalised projector outputs of the two views, B ≥ 2.
        beta: inverse temperature β.
        use_numpy: take the exponentials of the similarities with numpy (its float64 exp is several times
            faster than torch's); default: on the CPU.

    Returns:
        ``infonce`` mean over the 2B anchors a of log Σ_{l ∈ B₋ₐ} exp(β s_al) − β s_a,pos (2B − 2 negatives,
        the positive not in the denominator); ``invariance`` −mean_a s_a,pos; ``repulsion`` mean_a max_{l ∈ B₋ₐ}
        s_al; ``upper_bound`` β·invariance + β·repulsion + log(2(B − 1)) (Eq. 3, ≥ infonce); ``hardest``
        (2B,) int64 column of each anchor's hardest negative in [z1; z2] (ties: the first column).
    """
    b = z1.shape[0]
    if use_numpy is None:
        use_numpy = z1.device.type == "cpu"
    z = torch.cat([z1, z2])
    s = z @ z.T  # (2B, 2B) cosine similarities, a fresh tensor: modified in place below
    rows = torch.arange(2 * b, device=s.device)
    pos = (rows + b) % (2 * b)
    s_pos = s[rows, pos]  # advanced indexing copies
    s[rows, rows] = float("-inf")  # what is left are the 2B − 2 negatives of each anchor
    s[rows, pos] = float("-inf")
    s_hard, hardest = s.max(dim=1)  # ties: the first maximal column
    # log Σ_l exp(β s_al) around the row maximum (never overflows), in place on the similarities
    if use_numpy:
        a = s.numpy()
        a -= s_hard.numpy()[:, None]
        a *= beta
        np.exp(a, out=a)
        sums = torch.from_numpy(a.sum(axis=1))
    else:
        sums = s.sub_(s_hard[:, None]).mul_(beta).exp_().sum(dim=1)
    infonce = (torch.log(sums) + beta * (s_hard - s_pos)).mean()
    invariance = -s_pos.mean()
    repulsion = s_hard.mean()
    return {"infonce": infonce, "invariance": invariance, "repulsion": repulsion,
            "upper_bound": beta * invariance + beta * repulsion + math.log(2 * (b - 1)), "hardest": hardest}


def _unit_rows_np(x: np.ndarray) -> np.ndarray:
    """:func:`normalise` for a float64 numpy array, in place."""
    n = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.where(n > 0, n, 1.0)[:, None]
    return x


def _norm_sum(x) -> float:
    """Σ_i ‖x_i‖ over the rows of a numpy array or torch tensor."""
    if isinstance(x, torch.Tensor):
        return float(torch.linalg.vector_norm(x, dim=1).sum())
    return float(np.sqrt(np.einsum("ij,ij->i", x, x)).sum())


def contrastive_batch_np(z: np.ndarray, beta: float) -> Dict[str, object]:
    """:func:`contrastive_batch` in numpy for the (2B, p) float64 rows z = [z⁽¹⁾; z⁽²⁾] of one batch.

    The similarities are one symmetric product (a BLAS ``syrk``, half the flops of the general product torch
    uses); everything else as in the torch version, with the same ties (first maximal column).
    """
    b = z.shape[0] // 2
    s = z @ z.T
    rows = np.arange(2 * b)
    pos = (rows + b) % (2 * b)
    s_pos = s[rows, pos]
    s[rows, rows] = -np.inf
    s[rows, pos] = -np.inf
    hardest = s.argmax(axis=1)
    s_hard = s[rows, hardest]
    s -= s_hard[:, None]
    s *= beta
    np.exp(s, out=s)
    infonce = float(np.mean(np.log(s.sum(axis=1)) + beta * (s_hard - s_pos)))
    invariance, repulsion = -float(s_pos.mean()), float(s_hard.mean())
    return {"infonce": infonce, "invariance": invariance, "repulsion": repulsion,
            "upper_bound": beta * invariance + beta * repulsion + math.log(2 * (b - 1)), "hardest": hardest}


#: Bytes of the per-sample partial products held at once by :func:`chain_jacobian`.
_CHAIN_BLOCK_BYTES = 1 << 27


def _elementwise_derivative(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f'(x) of an elementwise activation: the gradient of Σ f(x), one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(layer(x).sum(), x)[0]


def chain_jacobian(head: nn.Sequential, h: torch.Tensor) -> Optional[torch.Tensor]:
    """(m, d_out, d_in) Jacobians J_i = ∂g/∂h at each row h_i of an eval-mode head built of linear maps and
    per-sample diagonal or sphere factors; None when the head has any other layer (the caller falls back to
    autograd).

    One forward pass records, per layer, its weight (``Linear``, weight-normed or not), the diagonal of its
    derivative (eval ``BatchNorm1d``: γ/√(running_var + ε); ReLU / GELU / LeakyReLU: the elementwise derivative
    at the pre-activation, by autograd — e.g. 0 at a ReLU's kink, as ``jacrev`` has it), or the derivative
    (I − x̂x̂ᵀ)/‖x‖ of ``L2Norm``. The product is taken from the output side as large matrix products over blocks
    of samples: J_i = W_L D_i ⋯ W_1 for the usual MLP head. It does the work of reverse mode (d_out cotangents)
    as a few large products instead of d_out backward passes.
    """
    steps = []
    x = h
    for layer in head:
        if isinstance(layer, nn.Linear):
            steps.append(("mat", layer.weight))
        elif isinstance(layer, nn.BatchNorm1d) and not layer.training and layer.running_var is not None:
            scale = torch.rsqrt(layer.running_var + layer.eps)
            steps.append(("diag", (scale if layer.weight is None else scale * layer.weight).expand(x.shape[0], -1)))
        elif isinstance(layer, (nn.ReLU, nn.GELU, nn.LeakyReLU)):
            steps.append(("diag", _elementwise_derivative(layer, x)))
        elif isinstance(layer, L2Norm):
            norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            if bool((norm <= 1e-12).any()):  # F.normalize's ε floor: not the sphere's derivative there
                return None
            steps.append(("sphere", (x / norm, 1.0 / norm)))
        else:
            return None
        x = layer(x)
    m, d_in, d_out = h.shape[0], h.shape[1], x.shape[1]
    widest = max([d_in, d_out] + [int(v.shape[-1]) for k, v in steps if k == "diag"])
    step = max(1, _CHAIN_BLOCK_BYTES // (8 * d_out * widest))
    out = h.new_empty(m, d_out, d_in)
    for s0 in range(0, m, step):
        sl = slice(s0, s0 + step)
        c = min(m, s0 + step) - s0
        acc = None  # ∂g/∂(input of the current layer): None = identity, 2-D = shared, 3-D = per sample
        for kind, val in reversed(steps):
            if kind == "mat":
                if acc is None or acc.dim() == 2:
                    acc = val if acc is None else acc @ val
                else:
                    acc = (acc.reshape(-1, acc.shape[-1]) @ val).reshape(c, d_out, -1)
                continue
            if acc is None:
                acc = torch.eye(x.shape[1], dtype=h.dtype, device=h.device)
            if acc.dim() == 2:
                acc = acc.expand(c, -1, -1)
            if kind == "diag":
                acc = acc * val[sl][:, None, :]
            else:
                xhat, inv = val[0][sl], val[1][sl]
                acc = (acc - (acc @ xhat[:, :, None]) * xhat[:, None, :]) * inv[:, :, None]
        if acc is None:
            acc = torch.eye(d_in, dtype=h.dtype, device=h.device)
        out[sl] = acc if acc.dim() == 3 else acc.expand(c, -1, -1)
    return out


def head_jacobian(head: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """(m, d_out, d_in) per-sample Jacobians of an eval-mode head: :func:`chain_jacobian` where it applies,
    else one ``jacrev`` of Σ_i g(h_i) (every layer acts on each row alone, so this is every J_i at once)."""
    with torch.no_grad():
        jac = chain_jacobian(head, h)
    if jac is not None:
        return jac
    with torch.enable_grad():
        return torch.func.jacrev(lambda x: head(x).sum(0))(h).transpose(0, 1)


def _jacobian_residual_block(head: nn.Sequential, h: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    """:func:`jacobian_residual` of one block of samples."""
    jac = head_jacobian(head, h)  # (m, d_proj, d_enc)
    q, r = torch.linalg.qr(jac.transpose(1, 2))  # Jᵀ = QR: q (m, d_enc, k), r (m, k, d_proj)
    u, s, _ = torch.linalg.svd(r, full_matrices=False)  # col(Jᵀ) = col(Q U) over the non-zero σ
    tol = max(jac.shape[1:]) * torch.finfo(torch.float64).eps * s[:, :1]
    keep = (s > tol) & (s[:, :1] > 0)
    basis = q @ u  # (m, d_enc, k) orthonormal columns
    coef = (basis.transpose(1, 2) @ dh.unsqueeze(-1)).squeeze(-1) * keep
    res = dh - (basis @ coef.unsqueeze(-1)).squeeze(-1)
    return (res * res).sum(dim=1)


#: Most samples per block of :func:`jacobian_residual` (blocks run side by side on the CPU cores).
_JAC_SIDE_BLOCK = 32

#: Samples of the Jacobian subset gathered over batches before their residuals are computed together.
_JAC_GATHER = 1024

#: Batches of a linear projector's numpy path read at once and computed side by side (see :func:`tangent`).
_SIDE_BY_SIDE_BATCHES = 8

#: The InfoNCE terms averaged over batches.
_TERMS = ("infonce", "invariance", "repulsion", "upper_bound")


def jacobian_residual(head: nn.Sequential, h: torch.Tensor, dh: torch.Tensor, block: int = _JAC_SIDE_BLOCK
                      ) -> torch.Tensor:
    """Squared residuals min_t ‖δh_i − J_iᵀ t‖² with J_i = ∂g/∂h at h_i (the local affine map W_ω = J_iᵀ).

    The Jacobians come from :func:`head_jacobian` (the product of the layers' derivatives for the usual heads,
    autograd otherwise). The projection on the row space of J_i uses Jᵀ = QR and the SVD of the small R,
    keeping σ > max(d_proj, d_enc)·eps₆₄·σ_1. Blocks of samples are independent and run side by side on the
    CPU, each on one thread (:func:`~reprscope.metrics.stats.map_side_by_side`; 1.8× faster than torch's
    two threads inside each batched QR and SVD here).

    Args:
        head: the projector g (eval mode), (·, d_enc) → (·, d_proj).
        h: (m, d_enc) points of linearisation h_i⁽¹⁾; dh: (m, d_enc) δh_i.
        block: samples per block (bounds the (block, d_proj, d_enc) Jacobians held by each worker).

    Returns:
        (m,) squared residuals of δh_i after projecting it on the row space of J_i (the column space of W_ω).
    """
    block = max(1, int(block))
    starts = list(range(0, h.shape[0], block))
    parts = map_side_by_side(lambda s0: _jacobian_residual_block(head, h[s0:s0 + block], dh[s0:s0 + block]),
                             starts, h.device)
    return torch.cat(parts) if parts else h.new_zeros(0)


@dataclass
class ProjectorMap:
    """The stored projector g as the tangent analysis uses it.

    Attributes:
        head: g as a float64 ``nn.Sequential`` in eval mode on ``device``; ``d``, ``d_proj``: its input and output
        widths; ``linear``: g is affine, with ``lin`` (d_proj, d) its linear part and ``basis`` (d, r) an
        orthonormal basis of the row space of ``lin`` (numpy when ``use_numpy``); ``use_numpy``: an affine g on
        the CPU runs in numpy as g(h) = M h + g(0), with ``m_np`` = M and ``g0`` = g(0).
    """

    head: nn.Sequential
    d: int
    d_proj: int
    linear: bool
    device: torch.device
    lin: Optional[torch.Tensor] = None
    basis: Any = None
    use_numpy: bool = False
    m_np: Optional[np.ndarray] = None
    g0: Optional[np.ndarray] = None


def projector_map(module: HeadModule, d: int, device: torch.device) -> "ProjectorMap | str":
    """The :class:`ProjectorMap` of a stored projector for d-dimensional encoder outputs, or the reason it cannot
    be used (non-finite weights, a head that does not take d inputs)."""
    bad = sorted(k for k, w in module.params.items() if not np.isfinite(np.asarray(w, dtype=np.float64)).all())
    if bad:
        return (f"skipped: the stored projector has non-finite entries in {', '.join(bad)}; "
                "its column space and hardest negatives are undefined")
    head = load_head(module, device)
    try:
        with torch.no_grad():
            d_proj = int(head(torch.zeros(2, d, dtype=torch.float64, device=device)).shape[1])
    except RuntimeError as e:
        return (f"the stored projector cannot take this layer's {d}-dimensional embeddings; skipped "
                f"({str(e).splitlines()[0]})")
    linear = is_linear_head(module.spec)
    pm = ProjectorMap(head, d, d_proj, linear, device)
    if linear:
        pm.lin = linear_map(head, d).to(device)
        pm.basis = row_space_basis(pm.lin)
    # A linear projector on the CPU runs in numpy: the head as its affine map g(h) = M h + g(0) (one product
    # per batch), the similarities as one symmetric product, numpy's fast float64 exp; torch (on one thread)
    # only built the map. Elsewhere (an accelerator, a non-linear projector's Jacobians) torch on the device.
    pm.use_numpy = linear and device.type == "cpu"
    if pm.use_numpy:
        with single_torch_thread(device):
            pm.m_np = pm.lin.numpy()  # (d_proj, d)
            pm.g0 = head(torch.zeros(1, d, dtype=torch.float64)).numpy()[0]
        pm.basis = pm.basis.numpy()
    return pm


def jacobian_subset(n_used: int, max_samples: int, seed: int) -> "tuple[np.ndarray, Optional[str]]":
    """(n_used,) bool: the samples whose Jacobian enters fvu for a non-linear projector (all, or a seeded subset
    of ``max_samples``), and a note when it is a subset."""
    mask = np.ones(n_used, dtype=bool)
    if n_used <= max_samples:
        return mask, None
    mask[:] = False
    mask[np.random.default_rng(seed).choice(n_used, max_samples, replace=False)] = True
    return mask, (f"fvu of the non-linear projector from its Jacobian at {max_samples} of {n_used} samples "
                  "(max_jacobian_samples)")


def linear_fvu_terms(dh: np.ndarray, basis: np.ndarray) -> "tuple[float, float]":
    """(Σ‖δh − P δh‖², Σ‖δh‖²) of a batch, P the projection onto the row space spanned by ``basis`` (d, r)."""
    den = float((dh * dh).sum())
    proj = dh @ basis  # coordinates of δh in the orthonormal basis of col(W)
    num = den - float((proj * proj).sum())  # Pythagoras: ‖δh‖² − ‖P δh‖²
    if num < _PYTHAGORAS_MIN * den:  # most of δh lies in col(W): subtract explicitly, no cancellation
        r = dh - proj @ basis.T
        num = float((r * r).sum())
    return num, den


def batch_contribution(pm: ProjectorMap, batch: np.ndarray, beta: float) -> dict:
    """What one batch (2, B, d) of two views contributes: its InfoNCE terms, hardest-negative columns and
    distance sums, and the FVU sums (linear projector) or its (h⁽¹⁾, δh) for the Jacobians."""
    b, d = batch.shape[1], pm.d
    if pm.use_numpy:
        hcat = np.ascontiguousarray(batch, dtype=np.float64).reshape(2 * b, d)  # [h⁽¹⁾; h⁽²⁾]
        g = hcat @ pm.m_np.T
        g += pm.g0
        out = contrastive_batch_np(_unit_rows_np(g), beta)
    else:
        hcat = torch.from_numpy(np.ascontiguousarray(batch)).to(pm.device).reshape(2 * b, d)
        z = normalise(pm.head(hcat))
        out = contrastive_batch(z[:b], z[b:], beta)
    h1, h2 = hcat[:b], hcat[b:]
    cols = out["hardest"][:b]  # view-1 anchors (the paper's h̃*_i)
    h_star = hcat[cols]
    dh = h2 - h_star
    part = {"b": b, "terms": {k: float(out[k]) for k in _TERMS}, "dist": (_norm_sum(h1 - h_star), _norm_sum(h1)),
            "src": np.asarray(cols.cpu() if isinstance(cols, torch.Tensor) else cols) % b}
    if pm.linear:
        part["fvu"] = linear_fvu_terms(dh, pm.basis)
    else:
        part["h1"], part["dh"] = h1, dh
    return part


def contributions(pm: ProjectorMap, data: LayerData, views: "tuple[int, int]", batch_size: int,
                  beta: float) -> Iterator[dict]:
    """:func:`batch_contribution` of every batch of ≥ 2 kept samples, in order. On the CPU a linear projector's
    batches are independent and run side by side, a few at a time, gathered in batch order (the same sums as
    one after another)."""
    batches = (bt for bt in data.batches(list(views), batch_size) if bt.shape[1] >= 2)
    part = lambda bt: batch_contribution(pm, bt, beta)  # noqa: E731
    if not pm.use_numpy:
        with torch.no_grad():
            yield from (part(bt) for bt in batches)
        return
    group: list = []
    for bt in batches:
        group.append(bt)
        if len(group) == _SIDE_BY_SIDE_BATCHES:
            yield from map_side_by_side(part, group, pm.device)
            group = []
    yield from map_side_by_side(part, group, pm.device)


@dataclass
class TangentSums:
    """Running sums over batches (the sufficient statistics of every tangent metric)."""

    terms: Dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in _TERMS})
    n_batches: int = 0
    fvu_num: float = 0.0
    fvu_den: float = 0.0
    dist_num: float = 0.0
    dist_den: float = 0.0
    agree: Dict[str, int] = field(default_factory=dict)
    samples: int = 0


class _JacobianFVU:
    """FVU sums of a non-linear projector: (h⁽¹⁾, δh) of the chosen samples gathered over batches, their
    Jacobian residuals computed in blocks of at most ``rows`` samples."""

    def __init__(self, pm: ProjectorMap, rows: int):
        self.pm, self.rows, self.gathered = pm, rows, []

    def add(self, h1: torch.Tensor, dh: torch.Tensor, sums: TangentSums) -> None:
        self.gathered.append((h1, dh))
        if sum(len(x) for x, _ in self.gathered) >= _JAC_GATHER:
            self.flush(sums)

    def flush(self, sums: TangentSums) -> None:
        if self.gathered:
            hs, dhs = torch.cat([x for x, _ in self.gathered]), torch.cat([y for _, y in self.gathered])
            self.gathered.clear()
            sums.fvu_num += float(jacobian_residual(self.pm.head, hs, dhs, block=min(_JAC_SIDE_BLOCK, self.rows)).sum())
            sums.fvu_den += float((dhs * dhs).sum())


@declare(
    "tangent",
    params=[
        Param("batch_size", 512, "int", "samples per batch for the hardest negatives and InfoNCE (2B−2 negatives)", low=2),
        Param("temperature", 0.5, "float", "InfoNCE temperature; β = 1/temperature", low=0, low_open=True),
        Param("max_jacobian_samples", 1024, "int", "samples (seeded subset) whose projector Jacobian enters fvu for a non-linear projector", low=1),
        Param("seed", 0, "int", "seed of the Jacobian subset", low=0),
    ],
    needs=("encoder_layer", "two_views", "projector"),
    summary="hardest negatives, InfoNCE and its Prop. 3.1 upper bound, FVU of δh by the projector's column space (encoder layer only)",
    paper="Cosentino et al. 2022, arXiv:2205.06926, Prop. 3.1, Eq. 3–10",
    no_bootstrap="a copy of a sample in its own batch is a hardest negative at distance 0",
)
def tangent(data: LayerData, batch_size: int = 512, temperature: float = 0.5, max_jacobian_samples: int = 1024,
            seed: int = 0) -> Result:
    """Hardest-negative geometry of the encoder output under the stored projector (Cosentino et al. 2022 §3–5).

    The kept samples are cut, in order, into batches of ``batch_size`` (a last batch of ≥ 2 is used, one
    left-over sample is not). In each batch, with h⁽¹⁾, h⁽²⁾ the (B, d_enc) first two augmented views and
    z = g(h)/‖g(h)‖ (g rebuilt from ``data.modules["projector"]``, float64, eval mode, on ``data.device``):
    the hardest negative of h_i⁽¹⁾ is h̃*_i = argmax over both views of the other samples of
    Sim(g(h_i⁽¹⁾), g(h̃_l)) (ties: view 1 before view 2, lower sample first), and δh_i = h_i⁽²⁾ − h̃*_i.

    Args:
        data: the encoder layer (``space == "encoder"``, the ``encoder_layer`` need).
        batch_size: B (≥ 2).
        temperature: β = 1/temperature (Cosentino et al. 2022 uses β = 2).
        max_jacobian_samples: for a non-linear projector, fvu uses the Jacobians at a subset of this many
            samples (drawn with ``seed``; all samples when there are fewer).
        seed: seed of that subset.

    Returns:
        Rows with ``view`` = ``<view1>|<view2>``:
        ``fvu`` Σ_i min_t ‖δh_i − W t‖² / Σ_i ‖δh_i‖² pooled over all batches (Eq. 10; W the product of a
        linear projector's weights, transposed, or per sample the transposed Jacobian of g at h_i⁽¹⁾);
        ``hardest_negative_label_agreement`` (``index`` ``fine``, and ``coarse`` when coarse labels exist) the
        fraction of i whose h̃*_i comes from a sample with i's label; ``hardest_negative_distance``
        mean_i ‖h_i⁽¹⁾ − h̃*_i‖ / mean_i ‖h_i⁽¹⁾‖; and, as means over batches, ``infonce`` (Cosentino et al. 2022 Eq. 1
        symmetrised over the 2B anchors, 2B − 2 negatives in the denominator), ``invariance`` −mean Sim of
        positive pairs, ``repulsion`` mean Sim of each anchor with its hardest negative (both view orders), and
        ``upper_bound`` = β·invariance + β·repulsion + log(2(B − 1)) ≥ infonce (Prop. 3.1, Eq. 3).
        Undefined values (all δh zero, all h⁽¹⁾ zero) become notes.
    """
    res = Result()
    i1, i2 = data.aug_view_ids()[:2]
    view = f"{data.views[i1]}|{data.views[i2]}"
    device = torch.device(data.device)
    pm = projector_map(data.modules["projector"], data.dim, device)
    if isinstance(pm, str):
        res.notes.append(pm)
        return res
    n = data.n
    n_used = n - 1 if n % batch_size == 1 else n
    if n_used < n:
        res.notes.append("one sample left over in a last batch of size 1 was not used")
    jac_mask = None
    if not pm.linear:
        jac_mask, note = jacobian_subset(n_used, max_jacobian_samples, seed)
        if note:
            res.notes.append(note)
    labels = {k: np.asarray(v) for k, v in {"fine": data.labels, "coarse": data.labels_coarse}.items() if v is not None}
    widths = [pm.d] + [int(x[k]) for x in data.modules["projector"].spec for k in ("in", "out") if k in x]
    jac = _JacobianFVU(pm, max(1, _JAC_BLOCK_ELEMS // max(1, pm.d_proj * max(widths))))
    sums = TangentSums(agree={k: 0 for k in labels})
    for part in contributions(pm, data, (i1, i2), batch_size, 1.0 / temperature):
        b, off = part["b"], sums.samples
        for k in _TERMS:
            sums.terms[k] += part["terms"][k]
        sums.n_batches += 1
        sums.dist_num += part["dist"][0]
        sums.dist_den += part["dist"][1]
        if pm.linear:
            sums.fvu_num += part["fvu"][0]
            sums.fvu_den += part["fvu"][1]
        else:
            sel = torch.from_numpy(np.flatnonzero(jac_mask[off:off + b])).to(device)
            jac.add(part["h1"][sel], part["dh"][sel], sums)
        for k, lab in labels.items():
            lb = lab[off:off + b]
            sums.agree[k] += int((lb[part["src"]] == lb).sum())
        sums.samples += b
    jac.flush(sums)
    return _rows(res, sums, view, labels)


def _rows(res: Result, sums: TangentSums, view: str, labels: Dict[str, np.ndarray]) -> Result:
    """The tangent rows (and notes for what is undefined) from the summed statistics."""
    if sums.fvu_den > 0:
        res.add("fvu", sums.fvu_num / sums.fvu_den, view=view)
    else:
        res.notes.append("every δh = h⁽²⁾ − h̃* is zero (collapsed or identical views); fvu is undefined")
    if labels:
        for k in ("fine", "coarse"):
            if k in labels:
                res.add("hardest_negative_label_agreement", sums.agree[k] / sums.samples, view=view, index=k)
    else:
        res.notes.append("no labels: hardest_negative_label_agreement skipped")
    if sums.dist_den > 0:
        res.add("hardest_negative_distance", sums.dist_num / sums.dist_den, view=view)
    else:
        res.notes.append("every h⁽¹⁾ is zero; hardest_negative_distance is undefined")
    for k in _TERMS:
        res.add(k, sums.terms[k] / sums.n_batches, view=view)
    return res
