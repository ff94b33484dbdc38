"""Singular values and ranks of the stored heads' weight matrices (Cosentino et al. 2022, arXiv:2205.06926 §2 Eq. 2, Fig. 1).

Paper 002 reads the dimensional collapse of a contrastive model off its *projector* rather than off the
embeddings: the number of singular values of the projector weights W above a threshold,

    Rank_τ(W) = Σ_j 1{|σ_j| ≥ τ}                                            (Cosentino et al. 2022, Eq. 2)

falls during training, the more so the stronger the augmentations. For every weight matrix of every stored
head (``/modules/<part>``: projector, predictor, teacher.projector …) this analyzer reports

* ``sv`` — the singular values, descending (vector, ``index`` = ``<part>.<i>:<k>``);
* ``rank_abs`` — #{σ_k ≥ tau_abs} (Eq. 2, absolute threshold; numerical zeros never count);
* ``rank_tau`` — #{σ_k ≥ tau·σ_1} (relative threshold);
* ``effective_rank`` — exp(H(p)), p_k = σ_k / Σ_j σ_j (Roy & Vetterli 2007);

and, for a purely linear head (only ``linear``/``weightnorm_linear`` layers, at least two of them), the same
for the product map W_L ⋯ W_1 (``index`` = ``<part>.product``): the map the head actually applies, whose
rank bounds that of the projector output.

The analyzer describes the stored heads, not a layer's embeddings, so it would give identical rows for every
layer of a source. It therefore emits them once per source, on the layer with ``space == "encoder"`` (the
encoder output, which every extraction stores: the ``encoder_layer`` need). The skip on the other layers is a
note the pipeline keeps only when a source has no encoder layer at all (then nothing is reported, and it
says why).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..params import Param
from ._core import HeadModule, LayerData, Result, declare
from .spectrum import entropy_rank, singular_values

#: Layer types that carry a weight matrix.
LINEAR_TYPES = ("linear", "weightnorm_linear")


def weightnorm_weight(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """W = g · v / ‖v‖ row-wise (``torch.nn.utils.parametrizations.weight_norm`` with dim = 0).

    Args:
        g: (out, 1) or (out,) magnitudes; v: (out, in) directions.

    Returns:
        (out, in) float64 weight; a zero row of ``v`` gives a zero row (torch would give NaN).
    """
    g = np.asarray(g, dtype=np.float64).reshape(-1, 1)
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return g * v / np.where(norm > 0, norm, 1.0)


def layer_weight(params: Dict[str, np.ndarray], i: int) -> Optional[np.ndarray]:
    """The (out, in) float64 weight of layer ``i`` of a stored head, or None when it has none.

    Accepts a plain ``"<i>.weight"``, the parametrisation keys of ``parametrizations.weight_norm``
    (``"<i>.parametrizations.weight.original0"`` = g, ``"…original1"`` = v) and the legacy
    ``"<i>.weight_g"`` / ``"<i>.weight_v"`` of ``nn.utils.weight_norm``.
    """
    p = f"{i}."
    if p + "weight" in params:
        return np.asarray(params[p + "weight"], dtype=np.float64)
    for g_key, v_key in ((p + "parametrizations.weight.original0", p + "parametrizations.weight.original1"),
                         (p + "weight_g", p + "weight_v")):
        if g_key in params and v_key in params:
            return weightnorm_weight(params[g_key], params[v_key])
    return None


def head_weights(module: HeadModule) -> Tuple[List[Tuple[int, np.ndarray]], List[str]]:
    """Every weight matrix of a stored head in layer order.

    Returns:
        ([(layer position i, (out, in) float64 W)], notes about linear layers whose weight is not stored).
    """
    out: List[Tuple[int, np.ndarray]] = []
    notes: List[str] = []
    for i, layer in enumerate(module.spec):
        if layer.get("type") not in LINEAR_TYPES:
            continue
        w = layer_weight(module.params, i)
        if w is None or w.ndim != 2:
            notes.append(f"layer {i} ({layer.get('type')}) has no usable stored weight; left out")
            continue
        out.append((i, w))
    return out, notes


def is_linear_head(spec: List[Dict]) -> bool:
    """True when every layer of the head is a (weight-normed) linear map: the head is affine, W_L ⋯ W_1 + b."""
    return all(layer.get("type") in LINEAR_TYPES for layer in spec)


def weight_spectrum(w: np.ndarray) -> np.ndarray:
    """Descending singular values of (out, in) ``w`` in float64, numerical zeros set to exactly 0.

    A singular value ≤ max(out, in)·eps₆₄·σ_1 is rounding noise of the SVD (as in :func:`spectra`), so a
    product of two weights through a narrow layer has exact zeros past its rank.
    """
    sv = singular_values(np.asarray(w, dtype=np.float64))
    if sv.size:
        sv[sv <= max(w.shape) * np.finfo(np.float64).eps * float(sv[0])] = 0.0
    return sv


def _report(res: Result, key: str, w: np.ndarray, tau: float, tau_abs: float) -> None:
    if not np.isfinite(w).all():
        res.notes.append(f"weight {key} has non-finite entries; left out")
        return
    sv = weight_spectrum(w)
    res.add_vector("sv", sv, index=[f"{key}:{k}" for k in range(sv.size)])
    if sv.size == 0 or sv[0] == 0:
        res.notes.append(f"weight {key} is zero: rank_abs, rank_tau and effective_rank are 0")
        for m in ("rank_abs", "rank_tau", "effective_rank"):
            res.add(m, 0.0, index=key)
        return
    res.add("rank_abs", float(np.count_nonzero((sv > 0) & (sv >= tau_abs))), index=key)
    res.add("rank_tau", float(np.count_nonzero(sv >= tau * sv[0])), index=key)
    res.add("effective_rank", entropy_rank(sv / sv.sum()), index=key)


@declare(
    "weights",
    params=[
        Param("tau", 0.01, "float", "relative threshold of rank_tau: count σ_k ≥ tau·σ_1", low=0, low_open=True,
              high=1),
        Param("tau_abs", 0.01, "float", "absolute threshold of rank_abs: count σ_k ≥ tau_abs (Cosentino et al. 2022 Eq. 2)", low=0),
    ],
    needs=("encoder_layer", "projector"),
    reads_embeddings=False,
    summary="singular values and ranks of every stored head weight (and a linear head's product map); once per source, on the encoder layer",
    paper="Cosentino et al. 2022, arXiv:2205.06926, Eq. 2; Roy & Vetterli 2007",
    no_bootstrap="the stored weights do not depend on the samples",
)
def weights(data: LayerData, tau: float = 0.01, tau_abs: float = 0.01) -> Result:
    """Spectra and ranks of the weight matrices of every stored head (Cosentino et al. 2022 Eq. 2).

    Args:
        data: a layer of a source with stored heads (``data.modules``: part → HeadModule); only the heads are
            read. Rows come only when ``data.space == "encoder"`` (once per source; other layers are
            skipped by the ``encoder_layer`` need). The embeddings are never read (``reads_embeddings=False``), so the
            layer is not scanned for NaN/Inf samples, which cannot change these rows.
        tau: relative threshold (> 0); ``rank_tau`` = #{σ_k ≥ tau·σ_1}.
        tau_abs: absolute threshold (≥ 0); ``rank_abs`` = #{σ_k > 0 and σ_k ≥ tau_abs} (Eq. 2), so
            tau_abs = 0 gives the numerical rank.

    Returns:
        ``view`` = ``all``. For each head part and each (out, in) weight W of layer i (``linear`` or
        ``weightnorm_linear``, W = g·v/‖v‖ reconstructed from the parametrisation): ``sv`` (min(out, in)
        values, descending, ``index`` = ``<part>.<i>:<k>``) and ``rank_abs``, ``rank_tau``, ``effective_rank``
        (``index`` = ``<part>.<i>``). For a purely linear head with ≥ 2 layers, the same for the product map
        W_L ⋯ W_1 (``index`` = ``<part>.product``). A zero weight has all three ranks 0, with a note.
    """
    res = Result()
    for part in sorted(data.modules):
        module = data.modules[part]
        mats, notes = head_weights(module)
        res.notes.extend(f"{part}: {n}" for n in notes)
        for i, w in mats:
            _report(res, f"{part}.{i}", w, tau, tau_abs)
        if is_linear_head(module.spec) and len(mats) >= 2 and len(mats) == len(module.spec):
            prod = mats[0][1]
            ok = True
            for i, w in mats[1:]:
                if w.shape[1] != prod.shape[0]:
                    res.notes.append(f"{part}: layer {i} takes {w.shape[1]} inputs but receives {prod.shape[0]}; no product map")
                    ok = False
                    break
                prod = w @ prod
            if ok:
                _report(res, f"{part}.product", prod, tau, tau_abs)
    return res
