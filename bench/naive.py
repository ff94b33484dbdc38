"""Naive reference implementations of every analyzer, for Part A of ``bench/analyzers.py``.

Each reference is the straightforward textbook computation of the analyzer's definition (SPEC §6), written
the way a researcher would write it without thinking about speed: per-sample Python loops (with numpy inside)
where the definition is per sample, ``np.linalg.svd`` for singular values, eigendecompositions of the explicit
n×n (Gram) kernels for matrix entropies, one least-squares problem per latent, the full matrix of pairwise
distances, a generic scipy optimiser. No reference loops in Python over the entries of a vector where one numpy
call is what anyone would write. They use the same splits, seeds, subsets and batches as the fast analyzers, so
the values agree to rounding (float64); only the algorithm differs.

``REFERENCES`` maps an analyzer name to ``(fn, params)``: ``fn(data: LayerData, **params)`` returns
``{(metric, view, index, form): value}`` keyed exactly like the fast analyzer's rows (``index`` "" for scalars,
``form`` "" except for matrix_information), and ``params`` are the analyzer parameters used for both runs.

Where a test module already holds a clean naive reference it is imported rather than rewritten:
``test_weights.py`` (SVD per weight), ``test_matrix_information.py`` (explicit K, K₁ ⊙ K₂, eigvalsh/eigh,
slogdet), ``test_linear_probe.py`` (scipy L-BFGS-B) and ``test_tangent.py``'s ``apply_head`` (running the stored
projector). The test modules' references that loop in pure Python over n² pairs or n·d entries (center,
uniformity, vicreg, knn, tangent with one lstsq per sample) are there to be independent of numpy's vectorised
kernels and would take from seconds to hours at n = 8192; those are written here with the loop over samples
(or anchors, or queries) kept and numpy inside it.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from scipy.spatial.distance import pdist

_ROOT = Path(__file__).resolve().parent.parent
for _p in (_ROOT / "tests", _ROOT / "tests" / "analyzers"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import test_linear_probe  # noqa: E402
import test_matrix_information  # noqa: E402
import test_tangent  # noqa: E402
import test_weights  # noqa: E402

Key = Tuple[str, str, str, str]


def _aug_ids(data) -> List[int]:
    return [i for i, v in enumerate(data.views) if v != "clean"]


def _ref_id(data) -> int:
    return data.views.index("clean") if "clean" in data.views else 0


def _entropy_rank(p: np.ndarray) -> float:
    """exp(−Σ p log p) over the positive entries, summed term by term."""
    h = 0.0
    for x in p:
        if x > 0:
            h -= float(x) * math.log(float(x))
    return math.exp(h)


def _split(n: int, test_fraction: float, seed: int, clamp: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * (1 - test_fraction)))
    if clamp:
        n_train = min(max(n_train, 1), n - 1)
    return perm[:n_train], perm[n_train:]


# -- center ------------------------------------------------------------------------------------------------


def center(data) -> Dict[Key, float]:
    """Per-sample loop over µ_i with numpy inside (tests/analyzers/test_center.py::naive_center with its pure
    Python loop over the d entries of each norm replaced by ``np.linalg.norm``): ẑ per view, µ_i, s = mean µ_i,
    then ‖µ_i − s‖ per sample and the cosine of every view pair."""
    used = _aug_ids(data) or list(range(len(data.views)))
    view = "|".join(data.views[i] for i in used)
    zs = [data.view(i) for i in used]
    n = len(zs[0])
    mus = []
    cos_sum, cos_cnt = 0.0, 0
    for i in range(n):
        hats = []
        for z in zs:
            nz = np.linalg.norm(z[i])
            hats.append(z[i] / nz if nz > 0 else np.zeros_like(z[i]))
        mus.append(sum(hats) / len(hats))
        for a in range(len(hats)):
            for b in range(a + 1, len(hats)):
                cos_sum += float(np.dot(hats[a], hats[b]))
                cos_cnt += 1
    s = sum(mus) / n
    resid = np.array([np.linalg.norm(m - s) for m in mus])
    out = {"center_norm": float(np.linalg.norm(s)), "residual_norm_mean": float(resid.mean()),
           "residual_norm_std": float(resid.std())}
    if cos_cnt:
        out["alignment"] = cos_sum / cos_cnt
    return {(k, view, "", ""): float(v) for k, v in out.items()}


# -- spectrum ----------------------------------------------------------------------------------------------


def spectrum(data, tau: float = 0.01, tau_abs: float = 0.01, eps: float = 1e-7) -> Dict[Key, float]:
    """Centred singular values by ``np.linalg.svd`` of the column-centred Z, RankMe's uncentred ones by
    ``np.linalg.svd`` of Z; the analyzer's numerical-zero threshold sqrt(max(n, d)·eps)·σ_max(Z)."""
    out: Dict[Key, float] = {}
    for vi, name in enumerate(data.views):
        z = data.view(vi)
        n, d = z.shape
        zc = z - z.mean(axis=0)
        k = min(n, d)
        sv = np.linalg.svd(zc, compute_uv=False)[:k]
        unc = np.linalg.svd(z, compute_uv=False)[:k]
        tol = math.sqrt(max(n, d) * np.finfo(np.float64).eps) * unc[0]
        sv[sv <= tol] = 0.0
        unc[unc <= tol] = 0.0
        for i, s in enumerate(sv):
            out[("sv", name, str(i), "")] = float(s)
            if s > 0:
                out[("log_sv", name, str(i), "")] = math.log(s)
        if sv[0] > 0:
            out[("effective_rank", name, "", "")] = _entropy_rank(sv / sv.sum())
            out[("rank_tau", name, "", "")] = float(sum(1 for s in sv if s >= tau * sv[0]))
            out[("rank_abs", name, "", "")] = float(sum(1 for s in sv if s > 0 and s >= tau_abs))
        if unc.sum() > 0:
            out[("rankme", name, "", "")] = _entropy_rank(unc / unc.sum() + eps)
    return out


# -- identifiability ---------------------------------------------------------------------------------------


def identifiability(data, test_fraction: float = 0.2, ridge: float = 1e-3, seed: int = 0) -> Dict[Key, float]:
    """Per latent, ridge with an unpenalised intercept (α = ridge·n_train) on the train split's standardised
    features, as ordinary least squares (``np.linalg.lstsq``) on the augmented system
    [1, X; 0, √α I] w = [y; 0]; R² and adjusted R² (p = d) on the test split by explicit sums."""
    ref = _ref_id(data)
    view = data.views[ref]
    x = data.view(ref)
    y = np.asarray(data.latents, dtype=np.float64).reshape(len(x), -1)
    n, d = x.shape
    tr, te = _split(n, test_fraction, seed)
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0)
    std[std == 0] = 1.0
    xtr, xte = (x[tr] - mean) / std, (x[te] - mean) / std
    alpha = ridge * len(tr)
    design = np.hstack([np.ones((len(tr), 1)), xtr])
    penalty = np.hstack([np.zeros((d, 1)), math.sqrt(alpha) * np.eye(d)])  # the intercept is not penalised
    aug = np.vstack([design, penalty])
    names = [str(s) for s in data.latent_names] if len(data.latent_names) == y.shape[1] else [str(j) for j in range(y.shape[1])]
    n_test = len(te)
    out: Dict[Key, float] = {}
    r2, adj = {}, {}
    for j in range(y.shape[1]):
        w = np.linalg.lstsq(aug, np.concatenate([y[tr, j], np.zeros(d)]), rcond=None)[0]
        pred = w[0] + xte @ w[1:]
        yt = y[te, j]
        ybar = sum(yt) / n_test
        ss_res = sum((yt[i] - pred[i]) ** 2 for i in range(n_test))
        ss_tot = sum((v - ybar) ** 2 for v in yt)
        r2[j] = 1.0 - ss_res / ss_tot
        out[("r2", view, names[j], "")] = r2[j]
        if n_test - d - 1 > 0:
            adj[j] = 1.0 - (1.0 - r2[j]) * (n_test - 1) / (n_test - d - 1)
            out[("r2_adjusted", view, names[j], "")] = adj[j]
    mask = None if data.content_mask is None else np.asarray(data.content_mask, dtype=bool)
    for metric, vals in (("r2", r2), ("r2_adjusted", adj)):
        if not vals:
            continue
        if mask is None:
            out[(f"{metric}_mean", view, "", "")] = float(np.mean(list(vals.values())))
            continue
        for group, flag in (("content", True), ("style", False)):
            sel = [v for j, v in vals.items() if bool(mask[j]) == flag]
            if sel:
                out[(f"{metric}_{group}_mean", view, "", "")] = float(np.mean(sel))
    return out


# -- weights -----------------------------------------------------------------------------------------------


def weights(data, tau: float = 0.01, tau_abs: float = 0.01) -> Dict[Key, float]:
    """Full SVD of every stored weight (tests/analyzers/test_weights.py::naive); a purely linear head of ≥ 2
    layers also gets its product map."""
    out: Dict[Key, float] = {}
    if data.space != "encoder":
        return out

    def report(key: str, w: np.ndarray) -> None:
        sv, ranks = test_weights.naive(w, tau, tau_abs)
        for k, s in enumerate(sv):
            out[("sv", "all", f"{key}:{k}", "")] = float(s)
        for m, v in ranks.items():
            out[(m, "all", key, "")] = float(v)

    for part in sorted(data.modules):
        module = data.modules[part]
        mats = [(i, np.asarray(module.params[f"{i}.weight"], dtype=np.float64)) for i, layer in enumerate(module.spec)
                if layer.get("type") == "linear" and f"{i}.weight" in module.params]
        for i, w in mats:
            report(f"{part}.{i}", w)
        if len(mats) >= 2 and len(mats) == len(module.spec):
            prod = mats[0][1]
            for _, w in mats[1:]:
                prod = w @ prod
            report(f"{part}.product", prod)
    return out


# -- tangent -----------------------------------------------------------------------------------------------


def tangent(data, batch_size: int = 512, temperature: float = 0.5, max_jacobian_samples: int = 1024,
            seed: int = 0) -> Dict[Key, float]:
    """Per anchor (both view orders), its similarities to every other column of the batch, the hardest
    negative by ``argmax`` over the 2B − 2 candidates (first wins) and its InfoNCE term log Σ exp(β s) − β s_pos;
    δh_i = h_i⁽²⁾ − h̃*_i; fvu by ``np.linalg.lstsq`` of the batch's δh on W (the linear head's weights,
    transposed), or per sample on the autograd Jacobian of a non-linear head (its seeded subset).
    The projector is run by torch (tests/analyzers/test_tangent.py::apply_head)."""
    import torch

    if data.space != "encoder":
        return {}
    i1, i2 = _aug_ids(data)[:2]
    view = f"{data.views[i1]}|{data.views[i2]}"
    module = data.modules["projector"]
    h1, h2 = data.view(i1), data.view(i2)
    n = len(h1)
    if n % batch_size == 1:
        h1, h2, n = h1[:-1], h2[:-1], n - 1
    beta = 1.0 / temperature
    g1, head = test_tangent.apply_head(module, h1)
    g2, _ = test_tangent.apply_head(module, h2)

    def unit(x: np.ndarray) -> np.ndarray:
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(nrm == 0, 1.0, nrm)

    z1, z2 = unit(g1), unit(g2)
    linear = all(layer.get("type") == "linear" for layer in module.spec)
    if linear:
        w = np.eye(h1.shape[1])
        for i in range(len(module.spec)):
            w = np.asarray(module.params[f"{i}.weight"], dtype=np.float64) @ w
        wmat = w.T  # (d_enc, d_proj)
        jac_subset = None
    else:
        jac_subset = set(range(n))
        if n > max_jacobian_samples:
            jac_subset = set(int(i) for i in np.random.default_rng(seed).choice(n, max_jacobian_samples, replace=False))
    labels = {k: np.asarray(v) for k, v in (("fine", data.labels), ("coarse", data.labels_coarse)) if v is not None}
    per_batch: Dict[str, List[float]] = {k: [] for k in ("infonce", "invariance", "repulsion", "upper_bound")}
    num = den = dist = norm1 = 0.0
    agree = {k: 0 for k in labels}
    used = 0
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        b = e - s
        if b < 2:
            break
        z = np.concatenate([z1[s:e], z2[s:e]])
        hcat = np.concatenate([h1[s:e], h2[s:e]])
        losses, pos_sims, hard_sims, dhs = [], [], [], []
        for a in range(2 * b):
            sims = z @ z[a]
            pos = (a + b) % (2 * b)
            cand = np.delete(np.arange(2 * b), sorted((a, pos)))
            neg = sims[cand]
            hard = int(cand[int(np.argmax(neg))])
            losses.append(math.log(float(np.sum(np.exp(beta * neg)))) - beta * float(sims[pos]))
            pos_sims.append(float(sims[pos]))
            hard_sims.append(float(sims[hard]))
            if a < b:
                i = s + a
                h_star = hcat[hard]
                dh = h2[i] - h_star
                dist += float(np.linalg.norm(h1[i] - h_star))
                norm1 += float(np.linalg.norm(h1[i]))
                for k, lab in labels.items():
                    agree[k] += int(lab[s + hard % b] == lab[i])
                if linear:
                    dhs.append(dh)
                elif i in jac_subset:
                    jac = torch.autograd.functional.jacobian(lambda x: head(x.unsqueeze(0)).squeeze(0),
                                                             torch.as_tensor(h1[i])).numpy().T
                    t = np.linalg.lstsq(jac, dh, rcond=None)[0]
                    num += float(np.sum((dh - jac @ t) ** 2))
                    den += float(dh @ dh)
        if linear:
            dmat = np.array(dhs).T  # (d_enc, B): min_t ‖δh_i − W t‖² for every column at once
            t = np.linalg.lstsq(wmat, dmat, rcond=None)[0]
            num += float(np.sum((dmat - wmat @ t) ** 2))
            den += float(np.sum(dmat ** 2))
        inv = -float(np.mean(pos_sims))
        rep = float(np.mean(hard_sims))
        per_batch["infonce"].append(float(np.mean(losses)))
        per_batch["invariance"].append(inv)
        per_batch["repulsion"].append(rep)
        per_batch["upper_bound"].append(beta * inv + beta * rep + math.log(2 * (b - 1)))
        used += b
    out: Dict[Key, float] = {(k, view, "", ""): float(np.mean(v)) for k, v in per_batch.items()}
    out[("fvu", view, "", "")] = num / den
    out[("hardest_negative_distance", view, "", "")] = dist / norm1
    for k in labels:
        out[("hardest_negative_label_agreement", view, k, "")] = agree[k] / used
    return out


# -- matrix_information ------------------------------------------------------------------------------------


def matrix_information(data, batch_size=512, alpha: float = 1.0, mu: float = 1.0, center: bool = False,
                       max_batches=16, seed: int = 0, kl_eps: float = 1e-6) -> Dict[Key, float]:
    """Per batch, the explicit m×m Gram and d×d covariance-form matrices, their explicit Hadamard product,
    ``eigvalsh`` for every entropy, ``eigh`` matrix logarithms for the KL and ``slogdet`` of the explicit d×d
    matrices for the coding rates (tests/analyzers/test_matrix_information.py::naive_form, naive_tcr); mean and
    population std over the same (seeded) batches as the analyzer."""
    tm = test_matrix_information
    ids = _aug_ids(data)[:2]
    view = "|".join(data.views[i] for i in ids)
    z1, z2 = data.view(ids[0]), data.view(ids[1])
    n = len(z1)
    m = n if batch_size == "all" else int(batch_size)
    full = n // m
    if full == 0:
        chosen, m = [0], n
    else:
        chosen = list(range(full))
        if max_batches is not None and full > max_batches:
            chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(full, size=max_batches, replace=False))
    per: Dict[Tuple[str, str], List[float]] = {}
    for b in chosen:
        a1, a2 = z1[b * m:(b + 1) * m], z2[b * m:(b + 1) * m]
        tcr = tm.naive_tcr(a1, a2, mu, center)
        for form, extra in (("gram", ("tcr", "tcr_mcr2")), ("cov", ("tcr_joint",))):
            vals = tm.naive_form(a1, a2, form, alpha, kl_eps, center)
            vals.update({k: tcr[k] for k in extra})
            for k, v in vals.items():
                per.setdefault((form, k), []).append(float(v))
    out: Dict[Key, float] = {}
    for (form, k), v in per.items():
        arr = np.asarray(v)
        out[(k, view, "", form)] = float(arr.mean())
        out[(k + "_std", view, "", form)] = float(arr.std())
    for form in ("gram", "cov"):
        out[("n_batches", view, "", form)] = float(len(chosen))
    return out


# -- vicreg ------------------------------------------------------------------------------------------------


def vicreg(data, gamma: float = 1.0, eps: float = 1e-4, lam: float = 25.0, mu: float = 25.0,
           nu: float = 1.0) -> Dict[Key, float]:
    """Explicit covariance matrices (``np.cov``), correlation matrices (``np.corrcoef``), per-dimension loops for
    the hinge, a double loop over dimension pairs for the off-diagonal sums."""
    a, b = _aug_ids(data)[:2]
    names = [data.views[a], data.views[b]]
    pair = "|".join(names)
    out: Dict[Key, float] = {}
    zs = [data.view(a), data.view(b)]
    n, d = zs[0].shape
    var_sum = cov_sum = 0.0
    corr = []
    for z, name in zip(zs, names):
        cov = np.cov(z, rowvar=False, ddof=1)
        std = np.sqrt(np.diag(cov))
        zh = np.array([r / np.linalg.norm(r) if np.linalg.norm(r) > 0 else r for r in z])
        std_h = zh.std(axis=0, ddof=1)
        v_term = sum(max(0.0, gamma - math.sqrt(cov[j, j] + eps)) for j in range(d)) / d
        off = cov.copy()
        np.fill_diagonal(off, 0.0)
        c_term = float(np.sum(off ** 2)) / d
        cc = np.corrcoef(z, rowvar=False)
        np.fill_diagonal(cc, 0.0)
        ac = float(np.sum(cc ** 2)) / (d * (d - 1))
        out[("std_mean", name, "", "")] = float(std.mean())
        out[("collapsed_dims", name, "", "")] = float(sum(1 for s in std if s == 0 or s < 1e-4 * std.max()))
        out[("std_target_ratio", name, "", "")] = float(std_h.mean() * math.sqrt(d))
        out[("variance", name, "", "")] = v_term
        out[("covariance", name, "", "")] = c_term
        out[("avg_corr", name, "", "")] = ac
        var_sum += v_term
        cov_sum += c_term
        corr.append(ac)
    inv = float(np.mean((zs[0] - zs[1]) ** 2))
    out[("invariance", pair, "", "")] = inv
    out[("variance", pair, "", "")] = var_sum
    out[("covariance", pair, "", "")] = cov_sum
    out[("avg_corr", pair, "", "")] = (corr[0] + corr[1]) / 2
    out[("loss", pair, "", "")] = lam * inv + mu * var_sum + nu * cov_sum
    return out


# -- uniformity --------------------------------------------------------------------------------------------


def uniformity(data, t: float = 2.0, alpha: float = 2.0, max_samples: int = 8192) -> Dict[Key, float]:
    """Wang & Isola's reference: every pairwise squared distance at once (``pdist``, the n(n−1)/2 explicit
    differences), then log of the mean of exp(−t d²); on the analyzer's seeded subset when n > max_samples."""
    ids = _aug_ids(data)[:2]
    names = [data.views[i] for i in ids]
    pair = "|".join(names)

    def hat(z: np.ndarray) -> np.ndarray:
        nrm = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.where(nrm == 0, 1.0, nrm)

    x = [hat(data.view(i)) for i in ids]
    n = len(x[0])
    out: Dict[Key, float] = {("align", pair, "", ""): float(np.mean(np.linalg.norm(x[0] - x[1], axis=1) ** alpha))}
    if n > max_samples:
        sub = np.sort(np.random.default_rng(data.seed).choice(n, size=max_samples, replace=False))
        x = [v[sub] for v in x]
    u = [math.log(float(np.mean(np.exp(-t * pdist(v, "sqeuclidean"))))) for v in x]
    out[("uniform", names[0], "", "")] = u[0]
    out[("uniform", names[1], "", "")] = u[1]
    out[("uniform", pair, "", "")] = (u[0] + u[1]) / 2
    return out


# -- knn ---------------------------------------------------------------------------------------------------


def knn(data, ks: str = "20,200", temperature: float = 0.07, similarity: str = "cosine", test_fraction: float = 0.2,
        seed: int = 0, max_queries: int = 10000) -> Dict[Key, float]:
    """Per query: cosine similarity to every bank sample, a full stable sort (ties to the lowest bank index),
    the top k vote with exp(sim/T), the largest class score wins (ties to the lowest class); float64."""
    ref = _ref_id(data)
    view = data.views[ref]
    x = data.view(ref)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(nrm == 0, 1.0, nrm)
    classes, y = np.unique(np.asarray(data.labels).reshape(-1), return_inverse=True)
    tr, te = _split(len(x), test_fraction, seed, clamp=True)
    tr, te = np.sort(tr), np.sort(te)
    if te.size > max_queries:
        te = np.sort(np.random.default_rng(seed + 1).choice(te, size=max_queries, replace=False))
    k_list = [int(s) for s in str(ks).strip("[]() ").split(",")]
    bank, ybank = x[tr], y[tr]
    correct = {k: 0 for k in k_list}
    for q in te:
        sims = bank @ x[q]
        order = np.argsort(-sims, kind="stable")
        for k in k_list:
            scores = [0.0] * len(classes)
            for j in order[:min(k, len(tr))]:
                scores[ybank[j]] += math.exp(sims[j] / temperature)
            pred = max(range(len(classes)), key=lambda c: (scores[c], -c))
            correct[k] += int(pred == y[q])
    return {("top1", view, str(k), ""): correct[k] / len(te) for k in k_list}


# -- linear_probe ------------------------------------------------------------------------------------------


def linear_probe(data, l2: float = 1e-4, test_fraction: float = 0.2, seed: int = 0, max_iter: int = 100
                 ) -> Dict[Key, float]:
    """scipy L-BFGS-B on mean cross-entropy + (l2/2)‖W‖², converged to tight tolerances, on the same split and
    standardisation (tests/analyzers/test_linear_probe.py::reference; ``max_iter`` only bounds the fast fit)."""
    ref = _ref_id(data)
    view = data.views[ref]
    r = test_linear_probe.reference(data.view(ref), np.asarray(data.labels).reshape(-1), l2=l2,
                                    test_fraction=test_fraction, seed=seed)
    return {(m, view, "", ""): float(r[m]) for m in ("top1", "train_top1", "loss")}


# -- label_free --------------------------------------------------------------------------------------------


def label_free(data, fit_start: int = 1, fit_end=None, k: int = 20, max_samples: int = 5000,
               seed: int = 0) -> Dict[Key, float]:
    """Covariance eigenvalues by ``np.linalg.eigvalsh(np.cov(Z))`` and α by ``np.polyfit``; the stable rank by
    ``np.linalg.svd``; the neighbour distances of the seeded subset from scipy's full pairwise ``pdist`` matrix,
    TwoNN and Levina–Bickel with a loop over samples."""
    from scipy.spatial.distance import squareform

    out: Dict[Key, float] = {}
    n = data.n
    sub = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False)) if n > max_samples else None
    for vi, name in enumerate(data.views):
        z = data.view(vi)
        lam = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
        lam = lam[lam > 1e-12 * lam[0]]
        end = len(lam) if fit_end is None else min(fit_end, len(lam))
        ranks = np.arange(fit_start, end + 1)
        slope = np.polyfit(np.log(ranks), np.log(lam[fit_start - 1:end]), 1)[0]
        out[("alpha_req", name, "", "")] = -slope
        out[("nesum", name, "", "")] = lam.sum() / lam[0]
        sv = np.linalg.svd(z, compute_uv=False)
        out[("stable_rank", name, "", "")] = float(np.sum(sv ** 2) / sv[0] ** 2)
        x = z if sub is None else z[sub]
        dist = squareform(pdist(x))
        np.fill_diagonal(dist, np.inf)
        kk = min(k, len(x) - 1)
        logs, inv = [], []
        for i in range(len(x)):
            r = np.sort(dist[i])[:max(2, kk)]
            logs.append(np.log(r[1] / r[0]))
            inv.append(np.mean(np.log(r[kk - 1] / r[:kk - 1])))
        out[("id_twonn", name, "", "")] = len(logs) / float(np.sum(logs))
        out[("id_mle", name, "", "")] = 1.0 / float(np.mean(inv))
    return out


def lidar(data, delta: float = 1e-4, eps: float = 1e-7) -> Dict[Key, float]:
    """LiDAR with a loop over samples for Σ_b and Σ_w (numpy inside), and the eigenvalues of Σ_w⁻¹Σ_b from the
    general eigensolver (the same as those of the symmetric Σ_w^{-1/2}Σ_bΣ_w^{-1/2})."""
    ids = _aug_ids(data)
    z = np.stack([data.view(i) for i in ids])  # (V, n, d)
    v, n, d = z.shape
    mus = z.mean(axis=0)
    mu = mus.mean(axis=0)
    sb = np.zeros((d, d))
    sw = np.zeros((d, d))
    for i in range(n):
        dm = mus[i] - mu
        sb += np.outer(dm, dm)
        dw = z[:, i] - mus[i]
        sw += dw.T @ dw
    sb /= n
    sw /= n * v
    lam = np.clip(np.linalg.eigvals(np.linalg.solve(sw + delta * np.eye(d), sb)).real, 0, None)
    p = lam / lam.sum() + eps
    return {("lidar", "|".join(data.views[i] for i in ids), "", ""): float(np.exp(-np.sum(p * np.log(p))))}


REFERENCES: Dict[str, Tuple[Callable, Dict]] = {
    "label_free": (label_free, {"max_samples": 2000}),
    "lidar": (lidar, {}),
    "center": (center, {}),
    "spectrum": (spectrum, {}),
    "identifiability": (identifiability, {}),
    "weights": (weights, {}),
    "tangent": (tangent, {}),
    "matrix_information": (matrix_information, {"batch_size": 512, "max_batches": 4}),
    "vicreg": (vicreg, {}),
    "uniformity": (uniformity, {}),
    "knn": (knn, {}),
    "linear_probe": (linear_probe, {}),
}
