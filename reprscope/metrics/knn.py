"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, arXiv:1805.01978).

The protocol of Wu et al. 2018 (InstDisc, §3.4) used by DINO's ``eval_knn`` and by Bardes, Ponce & LeCun 2022, arXiv:2105.04906 (App. C.1, Table 5:
20-NN and 200-NN): features are ℓ2-normalised, the k training samples most cosine-similar to a query vote for
their class with weight exp(sim/T), and the class with the largest summed weight is predicted.

Samples of the reference view are split by a seeded permutation into a memory bank (train) and queries (test),
the same split as ``linear_probe``.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ReprscopeError
from ..params import Param
from ._core import LayerData, Result, declare
from ._ranks import gather_over_ranks, share
from .stats import single_torch_thread

#: Elements of one (queries × bank) similarity block (float32): bounds the memory of the search.
_BLOCK_ELEMS = 1 << 24


def parse_ks(value: str, owner: str = "analyzer knn", name: str = "ks") -> List[int]:
    """Parse a comma list of ints ≥ 1 ("20,200", "[20, 200]", "5"); duplicates dropped, order kept."""
    text = str(value).strip().strip("[]()")
    out: List[int] = []
    try:
        for part in text.split(","):
            x = float(part.strip())
            if not x.is_integer() or x < 1:
                raise ValueError
            if int(x) not in out:
                out.append(int(x))
    except ValueError:
        out = []
    if not out:
        raise ReprscopeError(f"The '{name}' parameter of {owner} must be a comma-separated list of ints >= 1 "
                             f"(e.g. '20,200'). Got {value!r} instead.")
    return out


def split_indices(n: int, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of n ≥ 2 samples (the convention of ``identifiability``).

    The first n_train = round(n·(1 − test_fraction)) entries of ``default_rng(seed).permutation(n)`` are train,
    the rest test; n_train is clamped to [1, n − 1] so both sides are non-empty. Returns sorted index arrays.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(round(n * (1 - test_fraction))), 1), n - 1)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def reference_features(data: LayerData, dtype=np.float32) -> np.ndarray:
    """(n, d) features of the reference view (``clean`` when stored)."""
    return data.view(data.reference_view_id(), dtype=dtype)


def _features(data: LayerData, idx: Optional[np.ndarray], similarity: str) -> torch.Tensor:
    """(len(idx), d) float32 features of the reference view at the sorted sample indices ``idx`` (None: every
    sample), ℓ2-normalised for ``cosine`` (a zero row stays zero)."""
    x = torch.from_numpy(reference_features(data if idx is None else data.take(idx), np.float32))
    if similarity == "cosine":
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        x /= torch.where(norms == 0, torch.ones_like(norms), norms)
    return x


def topk_lowest_index(sims: torch.Tensor, k: int) -> torch.Tensor:
    """(b, k) indices of the k largest entries of each row of (b, m) ``sims``; ties go to the lowest index.

    ``torch.topk`` picks among equal values arbitrarily; rows where the k-th value is tied with entries
    outside the chosen set are re-selected exactly: everything above the k-th value plus the lowest-index
    ties. (The order within the k does not matter for the vote.)
    """
    vals, idx = torch.topk(sims, k, dim=1)
    thr = vals[:, -1:]
    ambiguous = (sims >= thr).sum(dim=1) > k
    if bool(ambiguous.any()):
        rows = torch.nonzero(ambiguous).flatten()
        sub, t = sims[rows], thr[rows]
        gt = sub > t
        eq = sub == t
        need = k - gt.sum(dim=1, keepdim=True)
        sel = gt | (eq & (torch.cumsum(eq.to(torch.int32), dim=1) <= need))
        idx[rows] = torch.nonzero(sel)[:, 1].reshape(-1, k)
    return idx


def topk_lowest_index_np(sims: np.ndarray, k: int) -> np.ndarray:
    """:func:`topk_lowest_index` in numpy: (b, k) indices of the k largest entries of each row of (b, m)
    ``sims``, ascending; ties to the lowest index.

    ``np.partition`` finds each row's k-th largest value t in linear time; the entries ≥ t are the selection
    (read off in index order by one ``nonzero``) unless t is tied with entries outside it, in which case the
    row takes everything above t plus its lowest-index ties, as in the torch version.
    """
    b, m = sims.shape
    if k >= m:
        return np.broadcast_to(np.arange(m), sims.shape).copy()
    thr = np.partition(sims, m - k, axis=1)[:, m - k:m - k + 1]
    mask = sims >= thr
    ambiguous = np.count_nonzero(mask, axis=1) > k
    if ambiguous.any():
        rows = np.flatnonzero(ambiguous)
        sub, t = sims[rows], thr[rows]
        gt = sub > t
        eq = sub == t
        need = k - gt.sum(axis=1, keepdims=True)
        mask[rows] = gt | (eq & (np.cumsum(eq, axis=1) <= need))
    return np.nonzero(mask)[1].reshape(b, k)


#: ε of the Euclidean vote weights 1/(distance + ε) (solo-learn's ``WeightedKNNClassifier`` default).
EUCLIDEAN_EPS = 1e-5

#: Neighbour searches: ``cosine`` (ℓ2-normalised features, weights exp(sim/T)) and ``euclidean`` (raw features,
#: weights 1/(‖q − b‖ + ε)), as solo-learn's ``distance_fx``.
SIMILARITIES = ("cosine", "euclidean")


def _ranked_np(scores: np.ndarray, ranks: int) -> np.ndarray:
    """(q,) argmax (ties to the lowest class id) or (q, ranks) classes by descending score, ties lowest first."""
    if ranks == 1:
        return scores.argmax(axis=1)
    return np.argsort(-scores, axis=1, kind="stable")[:, :ranks]


def _knn_predict_numpy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, ks: List[int],
                       temperature: float, n_classes: int, block_elems: int, similarity: str = "cosine",
                       ranks: int = 1) -> Dict[int, np.ndarray]:
    """:func:`knn_predict` on the CPU with numpy (its float32 product ran 1.7× faster than torch's here, and the
    tie check counts with numpy instead of torch's slow boolean sums); the same neighbours, votes and tie
    rules."""
    kmax = max(ks)
    out: Dict[int, List[np.ndarray]] = {k: [] for k in ks}
    for q, cand, idx in _candidates_np(bank, queries, kmax, similarity, block_elems):
        for k, pred in _votes_np(q, cand, idx, bank_labels, ks, temperature, n_classes, similarity, ranks).items():
            out[k].append(pred)
    empty = np.zeros((0,) if ranks == 1 else (0, ranks), dtype=np.int64)
    return {k: np.concatenate(v) if v else empty for k, v in out.items()}


def _candidates_np(bank: np.ndarray, queries: np.ndarray, kmax: int, similarity: str, block_elems: int
                   ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block of queries: (queries, their top-min(kmax, m) scores, the bank indices of those, ascending);
    ties to the lowest bank index. The score is the cosine, or q·b − ‖b‖²/2 for ``euclidean`` (the order of
    −distance)."""
    m = bank.shape[0]
    k = min(kmax, m)
    step = max(1, block_elems // max(1, m))
    half_bsq = 0.5 * np.einsum("ij,ij->i", bank, bank) if similarity == "euclidean" else None
    for s in range(0, queries.shape[0], step):
        q = queries[s:s + step]
        sims = q @ bank.T
        if half_bsq is not None:  # q·b − ‖b‖²/2 = (‖q‖² − ‖q − b‖²)/2: the same order as −distance
            sims -= half_bsq[None, :]
        idx = topk_lowest_index_np(sims, k)  # candidates in bank-index order
        yield q, np.take_along_axis(sims, idx, axis=1), idx


def _votes_np(q: np.ndarray, cand: np.ndarray, idx: np.ndarray, bank_labels: np.ndarray, ks: List[int],
              temperature: float, n_classes: int, similarity: str, ranks: int) -> Dict[int, np.ndarray]:
    """k → predictions of the queries ``q`` from their top-max(ks) candidates (scores ``cand`` at bank indices
    ``idx``, ascending): each k takes its top k among them, ties to the lowest index, and votes."""
    kmax = max(ks)
    rows = np.arange(cand.shape[0])[:, None]
    qsq = np.einsum("ij,ij->i", q, q)[:, None] if similarity == "euclidean" else None
    out: Dict[int, np.ndarray] = {}
    for k in ks:
        pos = topk_lowest_index_np(cand, k) if k < kmax else None
        nb_idx = idx if pos is None else np.take_along_axis(idx, pos, axis=1)
        nb = cand if pos is None else np.take_along_axis(cand, pos, axis=1)
        if qsq is not None:
            w = 1.0 / (np.sqrt(np.maximum(qsq - 2.0 * nb, 0.0)) + np.float32(EUCLIDEAN_EPS))
        else:  # exp((sim − max sim)/T): the same argmax as exp(sim/T), without overflow for small T
            w = np.exp((nb - nb.max(axis=1, keepdims=True)) / np.float32(temperature))
        flat = (rows * n_classes + bank_labels[nb_idx]).ravel()
        scores = np.bincount(flat, weights=w.ravel(), minlength=cand.shape[0] * n_classes)
        out[k] = _ranked_np(scores.reshape(-1, n_classes), ranks)
    return out


def _share_candidates(bank: np.ndarray, offset: int, queries: np.ndarray, kmax: int, similarity: str
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """(q, kmax) scores and bank indices of every query's top-kmax candidates in the bank share ``bank`` (entries
    ``offset`` … of the whole bank), ascending index; a share with fewer than kmax entries is padded with −∞."""
    nq = queries.shape[0]
    cand = np.full((nq, kmax), -np.inf, dtype=np.float32)
    idx = np.full((nq, kmax), np.iinfo(np.int64).max, dtype=np.int64)
    s = 0
    for _q, c, i in _candidates_np(bank, queries, kmax, similarity, _BLOCK_ELEMS):
        cand[s:s + c.shape[0], :c.shape[1]] = c
        idx[s:s + c.shape[0], :c.shape[1]] = i + offset
        s += c.shape[0]
    return cand, idx


def _merge_candidates(parts: List[Tuple[np.ndarray, np.ndarray]], kmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """The top-kmax candidates over contiguous bank shares given in bank order, ties to the lowest bank index:
    the overall top kmax is among the union of the shares' own, so these are the candidates of the whole bank."""
    cand = np.concatenate([p[0] for p in parts], axis=1)  # ascending bank index, padding aside
    idx = np.concatenate([p[1] for p in parts], axis=1)
    pos = topk_lowest_index_np(cand, kmax)
    return np.take_along_axis(cand, pos, axis=1), np.take_along_axis(idx, pos, axis=1)


def _knn_predict_shared(bank: np.ndarray, offset: int, bank_labels: np.ndarray, queries: np.ndarray,
                        ks: List[int], temperature: float, n_classes: int, similarity: str, ranks: int
                        ) -> Dict[int, np.ndarray]:
    """:func:`knn_predict` in a torchrun job whose rank holds the bank entries ``offset`` … ``offset + len(bank)
    − 1`` (contiguous shares, in rank order) and every query; ``bank_labels`` are the labels of the whole bank.
    Each rank finds every query's candidates in its share; the lists are gathered and merged
    (:func:`_merge_candidates`), so the neighbours, votes and predictions are those of one process. With numpy,
    on the CPU."""
    kmax = max(ks)
    cand, idx = _merge_candidates(gather_over_ranks(_share_candidates(bank, offset, queries, kmax, similarity)), kmax)
    return _votes_np(queries, cand, idx, bank_labels, ks, temperature, n_classes, similarity, ranks)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, ks: List[int], temperature: float,
                n_classes: int, block_elems: Optional[int] = None, use_numpy: Optional[bool] = None,
                similarity: str = "cosine", ranks: int = 1) -> Dict[int, torch.Tensor]:
    """Weighted k-NN predictions (InstDisc / DINO): class scores Σ_{neighbours of class c} w, for every k in
    ``ks`` from one similarity computation per block; w = exp(sim/T) for ``cosine``, 1/(‖q − b‖ + ε) for
    ``euclidean`` (solo-learn's two ``distance_fx``, ε = EUCLIDEAN_EPS).

    The top max(ks) neighbours are found once (ties to the lowest bank index); each smaller k takes its top k
    among them — ordered by bank index first, so ties again go to the lowest index.

    Args:
        bank: (m, d) train features (ℓ2-normalised for ``cosine``); bank_labels: (m,) class ids in [0, n_classes).
        queries: (q, d) test features, normalised as the bank.
        ks: neighbour counts (each ≤ m); temperature: T (``cosine``).
        block_elems: queries per block = max(1, block_elems // m), bounding the (block, m) similarities
            (default ``_BLOCK_ELEMS``).
        use_numpy: compute with numpy (:func:`_knn_predict_numpy`) rather than torch; default: when both
            tensors are on the CPU.
        ranks: 1 for the predicted class, r for the r best classes by score (top-r accuracy).

    Returns:
        k → (q,) predicted class ids (ties in the class score to the lowest class id), or (q, ranks) classes by
        descending score (ties lowest first).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    block_elems = _BLOCK_ELEMS if block_elems is None else int(block_elems)
    if use_numpy is None:
        use_numpy = bank.device.type == "cpu" and queries.device.type == "cpu"
    if use_numpy:
        with single_torch_thread("cpu"):
            got = _knn_predict_numpy(bank.detach().cpu().numpy(), bank_labels.cpu().numpy(),
                                     queries.detach().cpu().numpy(), ks, temperature, n_classes, block_elems,
                                     similarity, ranks)
        return {k: torch.from_numpy(v.astype(np.int64, copy=False)).to(bank.device) for k, v in got.items()}
    m = bank.shape[0]
    kmax = max(ks)
    step = max(1, block_elems // max(1, m))
    euclid = similarity == "euclidean"
    half_bsq = 0.5 * (bank * bank).sum(dim=1) if euclid else None
    out: Dict[int, List[torch.Tensor]] = {k: [] for k in ks}
    for s in range(0, queries.shape[0], step):
        q = queries[s:s + step]
        sims = q @ bank.T
        if euclid:
            sims -= half_bsq[None, :]
        idx = torch.sort(topk_lowest_index(sims, kmax), dim=1).values  # candidates in bank-index order
        cand = torch.gather(sims, 1, idx)
        del sims
        qsq = (q * q).sum(dim=1, keepdim=True) if euclid else None
        for k in ks:
            pos = topk_lowest_index(cand, k) if k < kmax else None
            nb_idx = idx if pos is None else torch.gather(idx, 1, pos)
            nb = cand if pos is None else torch.gather(cand, 1, pos)
            if euclid:
                w = 1.0 / (torch.sqrt(torch.clamp(qsq - 2.0 * nb, min=0.0)) + EUCLIDEAN_EPS)
            else:  # exp((sim − max sim)/T): the same argmax as exp(sim/T), without overflow for small T
                w = torch.exp((nb - nb.max(dim=1, keepdim=True).values) / temperature)
            scores = torch.zeros(nb.shape[0], n_classes, dtype=w.dtype, device=w.device)
            scores.scatter_add_(1, bank_labels[nb_idx], w)
            out[k].append(scores.argmax(dim=1) if ranks == 1
                          else torch.argsort(-scores, dim=1, stable=True)[:, :ranks])
    empty = torch.zeros((0,) if ranks == 1 else (0, ranks), dtype=torch.long, device=bank.device)
    return {k: torch.cat(v) if v else empty for k, v in out.items()}


@declare(
    "knn",
    params=[
        Param("ks", "20,200", "ints", "comma list of neighbour counts k (ints >= 1); one row per k, in column k", low=1),
        Param("temperature", 0.07, "float", "T of the vote weights exp(sim/T)", low=0, low_open=True),
        Param("similarity", "cosine", "choice", "neighbour search: cosine (normalised features, votes exp(sim/T)) "
              "or euclidean (raw features, votes 1/(distance + 1e-5), as solo-learn)", choices=SIMILARITIES),
        Param("test_fraction", 0.2, "float", "held-out fraction of the samples (queries), in (0, 1)",
              low=0, low_open=True, high=1, high_open=True),
        Param("seed", 0, "int", "seed of the train/test permutation and the query subsample", low=0),
        Param("max_queries", 5000, "int", "at most this many test queries (seeded random subset; the standard error of top1 is at most 0.7 points at 5000)", low=1),
    ],
    needs=("labels",),
    summary="top-1 and top-5 accuracy of a weighted k-NN classifier (cosine or Euclidean) on frozen features",
    paper="Bardes, Ponce & LeCun 2022, arXiv:2105.04906, App. C.1; Wu et al. 2018, arXiv:1805.01978, §3.4",
    no_bootstrap="copies of a resampled sample land on both sides of the train/test split (a query finds itself)",
    headline=("top1", "top5"),
    split=True,
)
def knn(data: LayerData, ks: str = "20,200", temperature: float = 0.07, similarity: str = "cosine",
        test_fraction: float = 0.2, seed: int = 0, max_queries: int = 5000) -> Result:
    """Top-1 accuracy of weighted cosine k-NN on the reference view, one row per k.

    Args:
        data: (V, n, d) embeddings (the reference view is used, float32 on ``data.device``) and (n,) labels.
        ks: comma list of k; a k larger than the bank uses the whole bank (noted).
        temperature: T of the weights exp(sim/T).
        similarity: ``cosine`` (ℓ2-normalised features, weights exp(sim/T)) or ``euclidean`` (raw features, weights
            1/(‖q − b‖ + 1e-5), solo-learn's ``distance_fx="euclidean"``; T unused). A parameter cannot be called
            ``metric``, the table's metric-name column.
        test_fraction, seed: the split of :func:`split_indices`; test samples are the queries.
        max_queries: queries beyond this are subsampled (``default_rng(seed + 1)``) with a note.

    Returns:
        Rows ``top1`` and — with more than five classes — ``top5`` (the true class among the five best class
        scores, as solo-learn), ``view`` = reference view, ``index`` = str(k); each row's dict also carries ``k``
        (int) as a parameter column: the stamped ``ks`` holds the whole list, ``k`` the row's own.
    """
    if not 0 < test_fraction < 1:
        raise ReprscopeError(f"The 'test_fraction' parameter of analyzer knn must be a float > 0, < 1. "
                             f"Got {test_fraction!r} instead.")
    k_list = parse_ks(ks)
    res = Result()
    view = data.views[data.reference_view_id()]
    classes, y = np.unique(np.asarray(data.labels).reshape(-1), return_inverse=True)
    tr, te = split_indices(data.n, test_fraction, seed)
    if te.size > max_queries:
        te = np.sort(np.random.default_rng(seed + 1).choice(te, size=max_queries, replace=False))
        res.notes.append(f"{max_queries} of the {data.n - tr.size} test samples used as queries")

    used = {}
    for k in k_list:
        used[k] = min(k, tr.size)
        if used[k] < k:
            res.notes.append(f"k={k} exceeds the {tr.size} train samples; all {tr.size} used")
    ranks = 5 if len(classes) > 5 else 1
    rank, world = share()
    dev = torch.device(data.device if world == 1 else "cpu")
    with single_torch_thread(dev):  # the search goes through numpy on the CPU
        ytest = torch.from_numpy(y[te]).to(dev)
        if world > 1:  # a torchrun job: each rank reads and searches a contiguous share of the bank
            cut = np.linspace(0, tr.size, world + 1).astype(int)
            own = tr[cut[rank]:cut[rank + 1]]
            preds = _knn_predict_shared(_features(data, own, similarity).numpy(), int(cut[rank]), y[tr],
                                        _features(data, te, similarity).numpy(), sorted(set(used.values())),
                                        temperature, len(classes), similarity, ranks)
            preds = {k: torch.from_numpy(v.astype(np.int64, copy=False)) for k, v in preds.items()}
        else:
            x = _features(data, None, similarity).to(dev)
            bank, queries = x[torch.from_numpy(tr).to(dev)], x[torch.from_numpy(te).to(dev)]
            del x
            preds = knn_predict(bank, torch.from_numpy(y[tr]).to(dev), queries, sorted(set(used.values())),
                                temperature, len(classes), similarity=similarity, ranks=ranks)
        for k in k_list:
            ranked = preds[used[k]].reshape(len(te), ranks)
            res.add("top1", float((ranked[:, 0] == ytest).double().mean()), view=view, index=k)
            res.rows[-1]["k"] = k
            if ranks == 5:
                res.add("top5", float((ranked == ytest[:, None]).any(dim=1).double().mean()), view=view, index=k)
                res.rows[-1]["k"] = k
    return res
