"""Matrix information quantities of two augmented views (Tan et al. 2024, arXiv:2309.17281 §3–4).

Two positive semi-definite matrices with unit diagonal are built from a batch of m samples of each view:

* **Gram form** (Tan et al. 2024 §4.1, the matrix of the spectral contrastive loss, Eq. 2): K = Ẑ Ẑᵀ (m×m), Ẑ the
  (m, d) batch with ℓ2-normalised rows.
* **Covariance form** (the matrix of the Barlow Twins loss, Eq. 3): the columns of the batch Z (optionally
  centred first) scaled to unit norm over the batch, Z̄_{·j} = Z_{·j}/‖Z_{·j}‖, and K = Z̄ᵀ Z̄ (d×d). As in
  the columns of the raw Z are scaled (Tan et al. 2024 §3.2 scales those of the ℓ2-normalised rows; the
  theorems only use the unit column norms, so both satisfy them).

Both are K = F Fᵀ for a factor F (p, q): F = Ẑ (p = m, q = d) or F = Z̄ᵀ (p = d, q = m). Everything below is
computed from F without forming the larger of the p×p and q×q Gram matrices:

* the nonzero eigenvalues of F Fᵀ and Fᵀ F coincide (the n×n ↔ d×d duality), so a single view's spectrum comes
  from the smaller side;
* K₁ ⊙ K₂ = (F₁ • F₂)(F₁ • F₂)ᵀ with F₁ • F₂ the face-splitting (row-wise Kronecker) product, row i =
  kron(f₁ᵢ, f₂ᵢ) (q₁q₂ columns): for the Gram form this is the row-wise Kronecker product of the embeddings, for
  the covariance form the column-wise Khatri–Rao product of Z̄₁ and Z̄₂ (m² rows of Cᵀ). When q₁q₂ < p the
  q₁q₂ × q₁q₂ side is used, otherwise K₁ ⊙ K₂ is formed and decomposed directly (then, for α ≠ 2, one p×p
  eigendecomposition per batch and form is unavoidable: K₁ ⊙ K₂ can have full rank);
* the Rényi entropy of order 2 needs no eigendecomposition (Tan et al. 2024 Prop. 4.1, 4.12):
  H₂(K) = 2 log tr K − log ‖K‖²_F, and ‖F Fᵀ‖_F = ‖Fᵀ F‖_F.

Eigenvalues are normalised by the trace: λ = eig(K)/tr K. The trace is m' (the size of K) whenever K has a
unit diagonal; a zero embedding row (Gram form) or a zero-norm column (covariance form: a constant column with
``center=True``, an all-zero feature) stays zero after normalisation and leaves a zero on the diagonal, and
normalising by the trace keeps the entropies defined (a note says so).

The linear algebra runs in float64 torch on ``data.device``; on the CPU each eigendecomposition on one thread
(:func:`~reprscope.metrics.stats.single_torch_thread`): a symmetric eigendecomposition is a long chain of
small steps that, split across threads, waits for a busy core at every step on a shared machine. The cores are
used instead by computing several batches side by side (:func:`~reprscope.metrics.stats.map_side_by_side`).
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..params import Param
from ._core import LayerData, Result, declare
from ._ranks import gather_over_ranks, interleave, mine
from .stats import eigh, eigvalsh, map_side_by_side

#: MCR² quantisation error ε² of Yu et al. (2020), used by ``tcr_mcr2`` = ½ log det(I + d/(m ε²) ẐᵀẐ).
MCR2_EPS_SQ = 0.5

#: The two matrix forms, in the order they are reported.
FORMS = ("gram", "cov")

#: Metrics reported for both forms, each as a batch mean (this name) and a batch std (name + "_std").
FORM_METRICS = ("entropy_1", "entropy_1_view2", "entropy_2", "entropy_alpha", "mutual_information",
                "joint_entropy", "effective_rank", "kl", "js", "eig_js")

#: Memory the batches computed side by side on the CPU may hold together.
SIDE_BY_SIDE_BYTES = 1 << 30

#: A kl value whose support check fails by more than this mass is undefined (kl_eps = 0 only).
_SUPPORT_TOL = 1e-8


# -- spectra of K = F Fᵀ ----------------------------------------------------------------------------------


def _threshold(e: torch.Tensor, big: int) -> torch.Tensor:
    """Eigenvalues with negatives and rounding noise (≤ big·eps₆₄·λ_max) set to exactly 0."""
    if e.numel() == 0:
        return e
    top = float(e.max())
    tol = big * float(np.finfo(np.float64).eps) * max(top, 0.0)
    return torch.where(e > tol, e, torch.zeros_like(e))


def self_product(f: torch.Tensor, outer: bool) -> torch.Tensor:
    """F Fᵀ (``outer``) or Fᵀ F of a float64 factor, exactly symmetric.

    On the CPU one BLAS ``syrk`` through numpy (half the flops of the general product, the mirrored triangle
    exact); elsewhere the product, symmetrised.
    """
    if f.device.type == "cpu":
        a = f.detach().numpy()
        return torch.from_numpy(a @ a.T if outer else a.T @ a)
    g = f @ f.T if outer else f.T @ f
    return (g + g.T) / 2


@dataclass
class PSD:
    """K = F Fᵀ (p×p) given by a factor F (p, q), or K itself; spectra from the smaller side.

    Attributes:
        factor: (p, q) F, or None when only the explicit matrix is known.
        matrix: (p, p) K when given or once formed.
        size: p, the size of K (m' of the paper's 1/m' normalisation).
        trace: tr K = ‖F‖²_F.
    """

    factor: Optional[torch.Tensor]
    matrix: Optional[torch.Tensor]
    size: int
    trace: float
    _small: Optional[torch.Tensor] = field(default=None, repr=False)
    _eigs: Optional[torch.Tensor] = field(default=None, repr=False)
    _eigh: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    @classmethod
    def of_factor(cls, f: torch.Tensor) -> "PSD":
        return cls(f, None, int(f.shape[0]), float((f * f).sum()))

    @classmethod
    def of_matrix(cls, k: torch.Tensor, symmetric: bool = False) -> "PSD":
        """K given explicitly; ``symmetric=True`` when it is exactly symmetric by construction (a Hadamard product
        of exactly symmetric matrices), which skips the p×p check and symmetrising."""
        if not symmetric and not torch.equal(k, k.T):
            k = (k + k.T) / 2
        return cls(None, k, int(k.shape[0]), float(torch.diagonal(k).sum()))

    @property
    def big(self) -> int:
        """The larger dimension of the factor (scale of the rounding noise)."""
        return max(self.factor.shape) if self.factor is not None else self.size

    @property
    def outer_side(self) -> bool:
        """Whether the smaller Gram matrix is F Fᵀ (p ≤ q) rather than Fᵀ F."""
        return self.factor is None or self.factor.shape[0] <= self.factor.shape[1]

    def outer(self) -> torch.Tensor:
        """K = F Fᵀ (p, p), formed once, exactly symmetric."""
        if self.matrix is None:
            self.matrix = self_product(self.factor, outer=True)
        return self.matrix

    def small(self) -> torch.Tensor:
        """The smaller of F Fᵀ (p×p) and Fᵀ F (q×q): same nonzero eigenvalues and Frobenius norm as K."""
        if self._small is None:
            self._small = self.outer() if self.outer_side else self_product(self.factor, outer=False)
        return self._small

    def fro2(self) -> float:
        """‖K‖²_F."""
        g = self.small()
        return float((g * g).sum())

    def eigh(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (thresholded, ascending) and eigenvectors of :meth:`small`."""
        if self._eigh is None:
            vals, vecs = eigh(self.small())
            self._eigh = (_threshold(vals, self.big), vecs)
            self._eigs = self._eigh[0]
        return self._eigh

    def eigs(self) -> torch.Tensor:
        """The min(p, q) eigenvalues of K that can be nonzero (the rest are exactly 0), thresholded."""
        if self._eigs is None:
            self._eigs = _threshold(eigvalsh(self.small()), self.big)
        return self._eigs

    def probs(self) -> np.ndarray:
        """λ = eig(K)/tr K, the positive ones, descending (numpy float64)."""
        e = self.eigs().detach().cpu().numpy() / self.trace
        e = e[e > 0]
        return np.sort(e)[::-1]


def renyi_entropy(lam: np.ndarray, alpha: float) -> float:
    """H_α = log(Σ λ^α)/(1 − α); H₁ = −Σ λ log λ (Tan et al. 2024 Def. 3.1), λ > 0 summing to 1."""
    if alpha == 1.0:
        return float(-np.sum(lam * np.log(lam)))
    return float(np.log(np.sum(lam ** alpha)) / (1.0 - alpha))


def renyi2(k: PSD) -> float:
    """H₂(K) = 2 log tr K − log ‖K‖²_F without an eigendecomposition (Tan et al. 2024 Prop. 4.1, 4.12)."""
    return 2.0 * math.log(k.trace) - math.log(k.fro2())


def entropy(k: PSD, alpha: float) -> float:
    return renyi2(k) if alpha == 2.0 else renyi_entropy(k.probs(), alpha)


def face_split(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker product (p, q₁q₂) of (p, q₁) and (p, q₂): row i = kron(f1[i], f2[i])."""
    return (f1[:, :, None] * f2[:, None, :]).reshape(f1.shape[0], -1)


def hadamard(k1: PSD, k2: PSD) -> PSD:
    """K₁ ⊙ K₂, by its face-splitting factor when q₁q₂ < p, else as the explicit p×p matrix."""
    p, q1, q2 = k1.size, k1.factor.shape[1], k2.factor.shape[1]
    if q1 * q2 < p:
        return PSD.of_factor(face_split(k1.factor, k2.factor))
    # outer() is exactly symmetric (a syrk, or symmetrised), so is the elementwise product of two of them
    return PSD.of_matrix(k1.outer() * k2.outer(), symmetric=True)


def mixture(k1: PSD, k2: PSD) -> PSD:
    """(ρ₁ + ρ₂)/2 with ρ = K/tr K, as the factor [F₁/√(2t₁), F₂/√(2t₂)] (p, q₁ + q₂).

    When both K are already formed as p×p matrices (p ≤ q₁, q₂) the p×p matrix (K₁/t₁ + K₂/t₂)/2 is given
    too, so its spectrum needs no product of the wider factor.
    """
    mix = PSD.of_factor(torch.cat([k1.factor / math.sqrt(2 * k1.trace), k2.factor / math.sqrt(2 * k2.trace)], dim=1))
    if k1.outer_side and k2.outer_side and k1.matrix is not None and k2.matrix is not None:
        mix.matrix = k1.matrix / (2 * k1.trace) + k2.matrix / (2 * k2.trace)
    return mix


def logdet_shift(k: PSD, mu: float) -> float:
    """log det(μ I_p + K) = (p − r) log μ + log det(μ I_r + G), G the smaller r×r Gram (Sylvester)."""
    e = k.eigs() if k._eigs is not None else None
    r = k.small().shape[0]
    if e is None:
        chol, info = torch.linalg.cholesky_ex(k.small() + mu * torch.eye(r, dtype=torch.float64, device=k.small().device))
        if int(info) == 0:
            return (k.size - r) * math.log(mu) + 2.0 * float(torch.log(torch.diagonal(chol)).sum())
        e = k.eigs()
    return (k.size - r) * math.log(mu) + float(torch.log(mu + e).sum())


def matrix_kl(k1: PSD, k2: PSD, eps: float) -> Optional[float]:
    """KL(K₁‖K₂) = tr[K₁(log K₁ − log K₂)] (Tan et al. 2024 Def. 4.9), the eigenvalues of each K clipped below at
    ``eps``·tr K.

    With ρ = K/tr K and t = tr K, log K = (log t) I + log ρ on the support, so KL(K₁‖K₂) =
    t₁·[KL(ρ₁‖ρ₂) + log(t₁/t₂)]: m'·KL(ρ₁‖ρ₂) for unit-diagonal K of size m' (Prop. 4.10: H₁(K) =
    log m' − KL(K‖I)/m'). With ρ₂ = Σ_j λ₂ⱼ uⱼuⱼᵀ, tr[ρ₁ log ρ₂] = log ε + Σ_{λ₂ⱼ > ε} (log λ₂ⱼ − log ε) uⱼᵀρ₁uⱼ,
    so only the eigenvectors of ρ₂ above the floor are needed; they come from the smaller side: uⱼ = F₂wⱼ/sⱼ
    and uⱼᵀρ₁uⱼ = ‖F₁ᵀF₂wⱼ‖²/(sⱼ² t₁).

    Returns:
        The divergence, or None when ``eps`` = 0 and K₁ has mass outside the support of K₂ (infinite).
    """
    f1, f2, t1, t2 = k1.factor, k2.factor, k1.trace, k2.trace
    vals, vecs = k2.eigh()
    keep = (vals / t2) > eps
    if k2.outer_side:  # vecs are eigenvectors u of K₂ (p×p)
        proj = ((f1.T @ vecs[:, keep]) ** 2).sum(dim=0) / t1
    else:  # vecs are right singular vectors w of F₂ (q₂×q₂)
        proj = ((f1.T @ (f2 @ vecs[:, keep])) ** 2).sum(dim=0) / (vals[keep] * t1)
    proj = proj.cpu().numpy()
    lam2 = (vals[keep] / t2).cpu().numpy()
    lam1 = k1.probs()
    if eps > 0:
        self_term = float(np.sum(lam1 * np.log(np.maximum(lam1, eps))))
        cross = math.log(eps) + float(np.sum((np.log(lam2) - math.log(eps)) * proj))
    else:
        if float(proj.sum()) < 1.0 - _SUPPORT_TOL:
            return None
        self_term = float(np.sum(lam1 * np.log(lam1)))
        cross = float(np.sum(np.log(lam2) * proj))
    return t1 * (self_term - cross + math.log(t1 / t2))


def eig_js(p1: np.ndarray, p2: np.ndarray) -> float:
    """Jensen–Shannon divergence of two descending eigenvalue distributions, the shorter padded with zeros."""
    n = max(p1.size, p2.size)
    a = np.zeros(n)
    b = np.zeros(n)
    a[:p1.size] = p1
    b[:p2.size] = p2
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        s = x > 0
        return float(np.sum(x[s] * np.log(x[s] / m[s])))

    return 0.5 * kl(a) + 0.5 * kl(b)


# -- one batch --------------------------------------------------------------------------------------------


def row_normalise(z: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Ẑ: (m, d) rows scaled to unit ℓ2 norm; a zero row stays zero. Returns (Ẑ, number of zero rows)."""
    norms = torch.linalg.vector_norm(z, dim=1)
    zero = norms == 0
    return z / torch.where(zero, torch.ones_like(norms), norms)[:, None], int(zero.sum())


def column_normalise(z: torch.Tensor, center: bool) -> Tuple[torch.Tensor, int]:
    """Z̄: (m, d) columns (centred first when ``center``) scaled to unit norm over the batch (Tan et al. 2024 §3.2);
    a zero-norm column stays zero. Returns (Z̄, number of zero-norm columns)."""
    if center:
        # an exactly constant column would keep the mean's rounding noise after centring: make it exactly 0
        const = z.max(dim=0, keepdim=True).values == z.min(dim=0, keepdim=True).values
        z = torch.where(const, torch.zeros_like(z), z - z.mean(dim=0, keepdim=True))
    norms = torch.linalg.vector_norm(z, dim=0)
    zero = norms == 0
    return z / torch.where(zero, torch.ones_like(norms), norms)[None, :], int(zero.sum())


def form_values(form: str, f1: torch.Tensor, f2: torch.Tensor, alpha: float, mu: float, kl_eps: float,
                perms: Sequence[np.ndarray] = (), only_alpha: bool = False
                ) -> Tuple[Dict[str, Optional[float]], List[str]]:
    """Every metric of one form for K₁ = F₁F₁ᵀ and K₂ = F₂F₂ᵀ (p×p each) of one batch.

    Args:
        form: ``gram`` (F = Ẑ, (m, d), K m×m) or ``cov`` (F = Z̄ᵀ, (d, m), K d×d).
        f1, f2: the two views' float64 factors, (p, q₁) and (p, q₂).
        alpha: Rényi order α > 0; mu: μ of the coding rates; kl_eps: eigenvalue floor of :func:`matrix_kl`.
        perms: permutations of the batch's samples for ``dime`` (form ``gram`` only: the covariance form's
            matrices do not change when the samples of one view are shuffled).
        only_alpha: only ``entropy_alpha``, ``mutual_information``, ``joint_entropy`` and
            ``conditional_entropy`` (the order-α quantities; at α = 2 no eigendecomposition at all).

    Returns:
        (values by metric name, None where undefined; notes). Besides FORM_METRICS, form ``gram`` gives
        ``tcr`` and ``tcr_mcr2`` of view 1 (:func:`coding_rates`), form ``cov`` gives ``tcr_joint`` =
        log det(μ I_d + K₁ ⊙ K₂) (Tan et al. 2024 Thm. 4.17). Both forms give ``conditional_entropy``
        H_α(K₁ ⊙ K₂) − H_α(K₂) (view 1 given view 2); form ``gram`` with ``perms`` gives ``dime``.
    """
    k1, k2 = PSD.of_factor(f1), PSD.of_factor(f2)
    out: Dict[str, Optional[float]] = {m: None for m in FORM_METRICS}
    if form == "gram" and not only_alpha:
        out.update(coding_rates(k1, mu))  # defined even for an all-zero view: log det(μ I_d) = d log μ
    if k1.trace == 0 or k2.trace == 0:
        if form == "cov" and not only_alpha:
            out["tcr_joint"] = k1.size * math.log(mu)  # K₁ ⊙ K₂ = 0
        return out, ["all embeddings are zero in a view of a batch: its matrix is 0 and the entropies are undefined"]
    notes: List[str] = []
    if only_alpha:
        ha, hb = entropy(k1, alpha), entropy(k2, alpha)
        hj = entropy(hadamard(k1, k2), alpha)
        return {"entropy_alpha": ha, "mutual_information": ha + hb - hj, "joint_entropy": hj,
                "conditional_entropy": hj - hb}, notes
    kl = matrix_kl(k1, k2, kl_eps)  # first: view 2's eigh serves its entropies too
    h1, h1b = renyi_entropy(k1.probs(), 1.0), renyi_entropy(k2.probs(), 1.0)
    ha, hb = entropy(k1, alpha), entropy(k2, alpha)
    joint = hadamard(k1, k2)
    hj = entropy(joint, alpha)
    out.update(
        entropy_1=h1, entropy_1_view2=h1b, entropy_2=renyi2(k1), entropy_alpha=ha,
        mutual_information=ha + hb - hj, joint_entropy=hj, effective_rank=math.exp(h1), kl=kl,
        js=renyi_entropy(mixture(k1, k2).probs(), 1.0) - (h1 + h1b) / 2, eig_js=eig_js(k1.probs(), k2.probs()),
    )
    out["conditional_entropy"] = hj - hb
    if form == "gram" and len(perms):
        shuffled = [entropy(hadamard(k1, PSD.of_factor(f2[torch.from_numpy(p).to(f2.device)])), alpha) for p in perms]
        out["dime"] = float(np.mean(shuffled)) - hj
    if kl is None:
        notes.append("kl is undefined with kl_eps = 0: view 1's matrix has mass outside the support of view 2's")
    if form == "cov":
        out["tcr_joint"] = logdet_shift(joint, mu)
    return out, notes


def coding_rates(k: PSD, mu: float) -> Dict[str, float]:
    """Total coding rates of a batch Ẑ (m, d) with ℓ2-normalised rows, K = ẐẐᵀ (Tan et al. 2024 Def. 4.8, Eq. 6).

    ``tcr`` = log det(μ I_d + ẐᵀẐ) = (d − r) log μ + Σ log(μ + eᵢ) over the r = min(m, d) eigenvalues of the
    smaller Gram (Sylvester: log det(μI_d + ẐᵀẐ) = (d − m) log μ + log det(μI_m + ẐẐᵀ)); ``tcr_mcr2`` =
    ½ log det(I + d/(m ε²) ẐᵀẐ), ε² = MCR2_EPS_SQ (Yu et al. 2020).
    """
    m, d = k.factor.shape
    e = k.eigs()
    r = e.numel()
    c = d / (m * MCR2_EPS_SQ)
    return {"tcr": (d - r) * math.log(mu) + float(torch.log(mu + e).sum()),
            "tcr_mcr2": 0.5 * float(torch.log1p(c * e).sum())}


# -- batches ----------------------------------------------------------------------------------------------


def _plan(n: int, m: int, max_batches: Optional[int], seed: int) -> Tuple[List[int], int, List[str]]:
    """Which batch indices to use: (chosen indices, number of full batches, notes)."""
    full = n // m
    notes: List[str] = []
    if full == 0:
        return [0], 0, ([f"only {n} samples, fewer than batch_size = {m}: one batch of {n}"])
    if n % m:
        notes.append(f"the last {n % m} sample(s) (a partial batch smaller than batch_size = {m}) were left out")
    chosen = list(range(full))
    if max_batches is not None and full > max_batches:
        chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(full, size=max_batches, replace=False))
        notes.append(f"used {max_batches} of {full} batches of {m} samples (a random subset, seed {seed})")
    return chosen, full, notes


@declare(
    "matrix_information",
    params=[
        Param("batch_size", 512, "int_or_all", "samples per batch (the Gram matrix is batch_size × batch_size); "
              "'all' = the whole set as one batch", low=2),
        Param("alpha", 1.0, "float", "Rényi order α of entropy_alpha, mutual_information and joint_entropy "
              "(1 = von Neumann)", low=0, low_open=True),
        Param("mu", 1.0, "float", "μ of the total coding rate log det(μI + ẐᵀẐ)", low=0, low_open=True),
        Param("center", False, "bool", "centre the columns before the covariance form's unit-norm scaling"),
        Param("max_batches", 16, "int", "most batches used: a seeded random subset of the full batches "
              "when there are more (none = all)", low=1, nullable=True),
        Param("seed", 0, "int", "seed of the random subset of batches"),
        Param("kl_eps", 1e-6, "float", "floor, relative to tr K, the eigenvalues of K are clipped at in the "
              "matrix KL divergence (0 = none)", low=0),
        Param("dime_permutations", 4, "int", "shuffles of view 2 per batch averaged in DiME (0 = no DiME)", low=0),
        Param("quantities", "all", "choice", "all, or only the order-α ones (entropy_alpha, mutual_information, "
              "joint_entropy, conditional_entropy: at alpha = 2 no eigendecomposition)", choices=("all", "alpha")),
    ],
    needs=("two_views",),
    summary="matrix Rényi entropies, mutual information, joint entropy, TCR and matrix KL/JS of two views "
            "(Gram and covariance forms)",
    paper="Tan et al. 2024, arXiv:2309.17281, §3–4",
    no_bootstrap="copies of a sample make the batch Gram matrices rank-deficient",
    headline=("mutual_information", "joint_entropy", "entropy_1", "effective_rank", "dime", "tcr"),
    split=True,
)
def matrix_information(data: LayerData, batch_size=512, alpha: float = 1.0, mu: float = 1.0, center: bool = False,
                       max_batches: Optional[int] = 16, seed: int = 0, kl_eps: float = 1e-6,
                       dime_permutations: int = 4, quantities: str = "all") -> Result:
    """Matrix information between the first two augmented views, per batch, averaged (Tan et al. 2024 §3–4).

    Args:
        data: (V, n, d) embeddings; the views ``data.aug_view_ids()[:2]`` are read in batches of m samples.
        batch_size: m, or ``"all"`` for one batch of all n samples. A last partial batch is left out when there
            are full batches (a note), and used when it is the only one.
        alpha: Rényi order α of ``entropy_alpha``, ``mutual_information`` and ``joint_entropy``.
        mu: μ of ``tcr`` and ``tcr_joint``.
        center: centre the columns before the covariance form's unit-norm scaling.
        max_batches: at most this many batches, a random subset (``seed``) of the full ones (None: all).
        seed: seed of that subset.
        kl_eps: eigenvalue floor of ``kl``, relative to tr K.
        dime_permutations: P shuffles of view 2's samples per batch (seeded by ``seed`` and the batch) for
            ``dime``.
        quantities: ``alpha`` computes only the order-α quantities (and ``n_batches``).

    Returns:
        Rows with ``view`` = "aug1|aug2" (the two view names) and a ``form`` column (``gram`` | ``cov``). For each
        form, the mean over batches (metric name) and the population std over batches (name + ``_std``) of:
        ``entropy_1`` H₁(K₁), ``entropy_1_view2`` H₁(K₂), ``entropy_2`` H₂(K₁), ``entropy_alpha`` H_α(K₁),
        ``mutual_information`` I_α = H_α(K₁) + H_α(K₂) − H_α(K₁ ⊙ K₂) (Def. 3.2), ``joint_entropy``
        H_α(K₁ ⊙ K₂) (Def. 3.3), ``effective_rank`` exp(H₁(K₁)), ``kl`` KL(K₁‖K₂) = tr[K₁(log K₁ − log K₂)] (Def. 4.9),
        ``js`` H₁((ρ₁+ρ₂)/2) − (H₁(K₁) + H₁(K₂))/2, ``eig_js`` the JS divergence of the two eigenvalue
        distributions; plus ``n_batches``. Form ``gram`` also has ``tcr`` log det(μI_d + Ẑ₁ᵀẐ₁) (Def. 4.8) and
        ``tcr_mcr2``; form ``cov`` has ``tcr_joint`` log det(μI_d + K₁ ⊙ K₂) (Thm. 4.17). Both forms have
        ``conditional_entropy`` H_α(K₁|K₂) = H_α(K₁ ⊙ K₂) − H_α(K₂) (Sanchez Giraldo, Rao & Principe 2014,
        arXiv:1211.2459); form ``gram`` has ``dime`` = mean over P shuffles π of H_α(K₁ ⊙ K₂^π) − H_α(K₁ ⊙ K₂)
        (Skean et al. 2023, arXiv:2301.08164: the joint entropy of unpaired views minus that of paired ones,
        ≥ 0 in expectation, bounded by log m). Every batch has at
        least 2 samples (batch_size ≥ 2, and a layer analysed has n ≥ 2); undefined values (all-zero views, kl with kl_eps = 0 off-support) become notes.
    """
    res = Result()
    ids = data.aug_view_ids()[:2]
    view = "|".join(data.views[i] for i in ids)
    n, d = data.n, data.dim
    m = n if batch_size == "all" else int(batch_size)
    chosen, _, plan_notes = _plan(n, m, max_batches, seed)
    res.notes.extend(plan_notes)
    dev = torch.device(data.device)

    per: Dict[Tuple[str, str], List[Optional[float]]] = {}
    notes: Counter = Counter()
    zero_rows = [0, 0]
    zero_cols = [0, 0]
    used = 0
    lock = threading.Lock()

    def one_batch(b: int):
        """Read batch b and compute both forms: ([(form, values, notes)], zero rows, zero columns)."""
        with lock:  # one reader at a time (h5py serialises its calls anyway)
            batch = data.sample_range(ids, b * m, min(n, (b + 1) * m))
        z = torch.from_numpy(np.ascontiguousarray(batch)).to(dev, torch.float64)
        hats, bars, zr, zc = [], [], [0, 0], [0, 0]
        for v in range(2):
            zh, zr[v] = row_normalise(z[v])
            zb, zc[v] = column_normalise(z[v], center)
            hats.append(zh)
            bars.append(zb)
        rng = np.random.default_rng([seed, b])
        perms = [rng.permutation(z.shape[1]) for _ in range(dime_permutations if quantities == "all" else 0)]
        forms = [(form, *form_values(form, f1, f2, alpha, mu, kl_eps, perms if form == "gram" else (),
                                     only_alpha=quantities == "alpha"))
                 for form, f1, f2 in (("gram", hats[0], hats[1]), ("cov", bars[0].T, bars[1].T))]
        return forms, zr, zc

    # Batches are independent: on the CPU they run side by side, gathered in batch order (see the module
    # docstring), as many as fit in SIDE_BY_SIDE_BYTES (a batch holds about six p×p float64 matrices,
    # p = max(m, d): 200 MiB at d = 2048, 3 GiB at d = 8192, which then runs alone).
    per_batch = 6 * 8 * max(min(m, n), d) ** 2
    # In a torchrun job rank r computes the chosen batches j with j mod world = r; the results come back in
    # batch order, so the means and stds are those of one process.
    results = map_side_by_side(one_batch, mine(chosen), dev, max_workers=max(1, SIDE_BY_SIDE_BYTES // per_batch))
    results = interleave(gather_over_ranks(results))
    for forms, zr, zc in results:
        used += 1
        for v in range(2):
            zero_rows[v] += zr[v]
            zero_cols[v] += zc[v]
        for form, vals, ns in forms:
            for k, v in vals.items():
                per.setdefault((form, k), []).append(v)
            for s in ns:
                notes[f"{form} form: {s}"] += 1

    for v in range(2):
        if zero_rows[v]:
            res.notes.append(f"{zero_rows[v]} zero embedding row(s) in view {data.views[ids[v]]} stay zero after "
                             "ℓ2 normalisation; the Gram matrix has a zero diagonal entry there and its eigenvalues "
                             "are normalised by its trace instead of m")
        if zero_cols[v]:
            what = "constant or zero" if center else "all-zero"
            res.notes.append(f"{zero_cols[v]} {what} column(s) (feature × batch) in view {data.views[ids[v]]} have zero "
                             "norm and stay zero in the covariance form; its matrix has a zero diagonal entry there "
                             "and its eigenvalues are normalised by its trace instead of d")
    res.notes.extend(f"{s} ({c} batch{'es' if c > 1 else ''})" for s, c in notes.items())

    order = {"gram": FORM_METRICS + ("conditional_entropy",) + (("dime",) if dime_permutations else ())
             + ("tcr", "tcr_mcr2"), "cov": FORM_METRICS + ("conditional_entropy", "tcr_joint")}
    if quantities == "alpha":
        order = {f: ("entropy_alpha", "mutual_information", "joint_entropy", "conditional_entropy") for f in FORMS}
    for form in FORMS:
        _add(res, "n_batches", float(used), view, form)
        for metric in order[form]:
            vals = [x for x in per.get((form, metric), []) if x is not None and math.isfinite(x)]
            if not vals:
                res.notes.append(f"{metric} ({form} form) is undefined on every batch")
                continue
            if len(vals) < used:
                res.notes.append(f"{metric} ({form} form) is defined on {len(vals)} of {used} batches; "
                                 "mean and std are over those")
            arr = np.asarray(vals)
            _add(res, metric, float(arr.mean()), view, form)
            _add(res, metric + "_std", float(arr.std()), view, form)
    return res


def _add(res: Result, metric: str, value: float, view: str, form: str) -> None:
    """Result.add with the ``form`` column; a non-finite value becomes a note, never a row."""
    before = len(res.rows)
    res.add(metric, value, view=view)
    if len(res.rows) > before:
        res.rows[-1]["form"] = form
