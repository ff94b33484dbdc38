"""Tests of the ``matrix_information`` analyzer (Tan et al. 2024 (ICML) §3–4) against a naive computation.

The reference builds the explicit m×m Gram matrix (or d×d covariance-form matrix) and its Hadamard product in
plain numpy and takes ``np.linalg.eigvalsh`` of it — no duality, no face-splitting product, no Frobenius
shortcut — so every fast path of the analyzer is checked against the definition.
"""
import math

import numpy as np
import pytest

import reprscope.analyzers  # noqa: F401  (registers the analyzers)
from reprscope.analyzers.base import LayerData, run_analyzer
from reprscope.errors import ReprscopeError

VIEWS = ["clean", "aug1", "aug2"]
PAIR = "aug1|aug2"
MCR2_EPS_SQ = 0.5
SCALAR_KEYS = ("entropy_1", "entropy_1_view2", "entropy_2", "entropy_alpha", "mutual_information",
               "joint_entropy", "effective_rank", "kl", "js", "eig_js")


# -- helpers -----------------------------------------------------------------------------------------------


def _data(z1, z2, clean=None, mask=None):
    """LayerData with views clean/aug1/aug2, embeddings (3, n, d)."""
    z1 = np.asarray(z1)
    clean = np.zeros_like(z1) if clean is None else clean
    return LayerData(layer="enc", space="encoder", views=list(VIEWS), embeddings=np.stack([clean, z1, np.asarray(z2)]),
                     mask=mask)


def _run(z1, z2, **params):
    return run_analyzer("matrix_information", _data(z1, z2), {"batch_size": "all", **params})


def _rows(res, form):
    """{metric: value} of one form."""
    return {r["metric"]: r["value"] for r in res.rows if r["form"] == form}


def _views(n, d, seed=0, noise=0.5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d)) * np.linspace(0.3, 2.0, d) + 0.4
    return ((base + noise * rng.normal(size=(n, d))).astype(dtype), (base + noise * rng.normal(size=(n, d))).astype(dtype))


# -- the naive reference -----------------------------------------------------------------------------------


def naive_matrix(z, form, center=False):
    """Explicit K: the m×m Gram of ℓ2-normalised rows, or the d×d matrix of unit-norm (optionally centred) columns."""
    z = np.asarray(z, dtype=np.float64)
    if form == "gram":
        nrm = np.sqrt((z ** 2).sum(axis=1, keepdims=True))
        zh = np.divide(z, nrm, out=np.zeros_like(z), where=nrm > 0)
        return zh @ zh.T
    if center:
        z = z - z.mean(axis=0)
        z[:, np.ptp(np.asarray(z), axis=0) < 1e-12] = 0.0
    nrm = np.sqrt((z ** 2).sum(axis=0, keepdims=True))
    zb = np.divide(z, nrm, out=np.zeros_like(z), where=nrm > 0)
    return zb.T @ zb


def naive_probs(k):
    """Normalised eigenvalues of the explicit matrix (numerical zeros below 1e-10·λ_max dropped)."""
    ev = np.linalg.eigvalsh(k)
    ev = ev[ev > 1e-10 * ev.max()]
    return ev / np.trace(k)


def naive_entropy(k, alpha):
    lam = naive_probs(k)
    if alpha == 1:
        return float(-np.sum(lam * np.log(lam)))
    return float(np.log(np.sum(lam ** alpha)) / (1 - alpha))


def naive_logm(k, eps):
    """Matrix logarithm of K with its eigenvalues clipped below at eps·tr K."""
    w, v = np.linalg.eigh(k)
    return (v * np.log(np.maximum(w, eps * np.trace(k)))) @ v.T


def naive_kl(k1, k2, eps):
    """Paper 004 Def. 4.9 as written: tr[K₁(log K₁ − log K₂)]."""
    return float(np.trace(k1 @ (naive_logm(k1, eps) - naive_logm(k2, eps))))


def naive_jsd(p, q):
    n = max(p.size, q.size)
    a, b = np.zeros(n), np.zeros(n)
    a[:p.size], b[:q.size] = np.sort(p)[::-1], np.sort(q)[::-1]
    m = (a + b) / 2
    kl = lambda x: float(np.sum(x[x > 0] * np.log(x[x > 0] / m[x > 0])))  # noqa: E731
    return 0.5 * kl(a) + 0.5 * kl(b)


def naive_form(z1, z2, form, alpha, kl_eps=1e-6, center=False):
    k1, k2 = naive_matrix(z1, form, center), naive_matrix(z2, form, center)
    k12 = k1 * k2
    h = lambda k, a=alpha: naive_entropy(k, a)  # noqa: E731
    mix = (k1 / np.trace(k1) + k2 / np.trace(k2)) / 2
    return {
        "entropy_1": h(k1, 1), "entropy_1_view2": h(k2, 1), "entropy_2": h(k1, 2), "entropy_alpha": h(k1),
        "mutual_information": h(k1) + h(k2) - h(k12), "joint_entropy": h(k12),
        "effective_rank": math.exp(h(k1, 1)), "kl": naive_kl(k1, k2, kl_eps),
        "js": h(mix, 1) - (h(k1, 1) + h(k2, 1)) / 2, "eig_js": naive_jsd(naive_probs(k1), naive_probs(k2)),
    }


def naive_tcr(z1, z2, mu, center=False):
    """TCRs from the explicit d×d matrices (Def. 4.8; MCR² convention; Thm. 4.17's joint)."""
    z = np.asarray(z1, dtype=np.float64)
    m, d = z.shape
    zh = z / np.linalg.norm(z, axis=1, keepdims=True)
    cov = zh.T @ zh
    joint = naive_matrix(z1, "cov", center) * naive_matrix(z2, "cov", center)
    return {
        "tcr": np.linalg.slogdet(mu * np.eye(d) + cov)[1],
        "tcr_mcr2": 0.5 * np.linalg.slogdet(np.eye(d) + d / (m * MCR2_EPS_SQ) * cov)[1],
        "tcr_joint": np.linalg.slogdet(mu * np.eye(d) + joint)[1],
    }


def assert_matches(got, want, rtol=1e-7, atol=1e-9):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rtol, abs=atol), key


# -- against the naive computation ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("shape", [(64, 3), (40, 7), (7, 40), (5, 40), (12, 12)],
                         ids=["facesplit-gram", "n>d", "n<d", "khatri-rao-cov", "n=d"])
def test_matches_naive(shape, alpha, dtype):
    """Both sides of the duality, the face-splitting side (d²=9 < m=64) and the Khatri–Rao side (m²=25 < d=40)."""
    n, d = shape
    z1, z2 = _views(n, d, seed=n + d, dtype=dtype)
    res = _run(z1, z2, alpha=alpha, mu=0.7)
    for form in ("gram", "cov"):
        got = _rows(res, form)
        assert_matches(got, naive_form(z1, z2, form, alpha))
        for key in SCALAR_KEYS:
            assert got[key + "_std"] == 0.0
        assert got["n_batches"] == 1.0
    tcr = naive_tcr(z1, z2, 0.7)
    assert_matches(_rows(res, "gram"), {k: tcr[k] for k in ("tcr", "tcr_mcr2")})
    assert_matches(_rows(res, "cov"), {"tcr_joint": tcr["tcr_joint"]})


@pytest.mark.parametrize("shape", [(30, 6), (6, 30)])
def test_center_matches_naive(shape):
    z1, z2 = _views(*shape, seed=3)
    res = _run(z1, z2, center=True, alpha=1.5, mu=2.0)
    assert_matches(_rows(res, "cov"), naive_form(z1, z2, "cov", 1.5, center=True))
    assert _rows(res, "cov")["tcr_joint"] == pytest.approx(naive_tcr(z1, z2, 2.0, center=True)["tcr_joint"], rel=1e-9)
    # the Gram form does not centre
    assert_matches(_rows(res, "gram"), naive_form(z1, z2, "gram", 1.5))


@pytest.mark.parametrize("kl_eps", [1e-3, 1e-9])
def test_kl_eps_matches_naive(kl_eps):
    z1, z2 = _views(50, 6, seed=11)
    res = _run(z1, z2, kl_eps=kl_eps)
    for form in ("gram", "cov"):
        want = naive_kl(naive_matrix(z1, form), naive_matrix(z2, form), kl_eps)
        assert _rows(res, form)["kl"] == pytest.approx(want, rel=1e-7)


def test_kl_without_floor():
    """kl_eps = 0: finite when K₂ has full rank, a note (no row) when K₁ reaches outside K₂'s support."""
    z1, z2 = _views(6, 20, seed=2)  # Gram form 6×6 of rank 6; covariance form 20×20 of rank 6
    res = _run(z1, z2, kl_eps=0.0)
    want = naive_kl(naive_matrix(z1, "gram"), naive_matrix(z2, "gram"), 0.0)
    assert _rows(res, "gram")["kl"] == pytest.approx(want, rel=1e-7)
    assert "kl" not in _rows(res, "cov")
    assert any("kl" in n and "undefined" in n and "cov" in n for n in res.notes), res.notes


# -- the paper's identities and bounds ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["gram", "cov"])
def test_frobenius_identities(form):
    """Prop. 4.1 and 4.12: H₂(K) = 2 log m − log‖K‖²_F, I₂ = 2 log m − log(‖K₁‖²‖K₂‖²/‖K₁⊙K₂‖²)."""
    z1, z2 = _views(30, 9, seed=7)
    got = _rows(_run(z1, z2, alpha=2.0), form)
    k1, k2 = naive_matrix(z1, form), naive_matrix(z2, form)
    m = k1.shape[0]
    fro2 = lambda k: float(np.sum(k * k))  # noqa: E731
    assert got["entropy_2"] == pytest.approx(2 * math.log(m) - math.log(fro2(k1)), rel=1e-10)
    assert got["entropy_alpha"] == pytest.approx(got["entropy_2"], rel=1e-12)
    want_mi = 2 * math.log(m) - math.log(fro2(k1) * fro2(k2) / fro2(k1 * k2))
    assert got["mutual_information"] == pytest.approx(want_mi, rel=1e-10)
    assert got["joint_entropy"] == pytest.approx(2 * math.log(m) - math.log(fro2(k1 * k2)), rel=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_joint_entropy_bounds(alpha, seed):
    """Prop. 4.7: max(H(K₁), H(K₂)) ≤ H(K₁, K₂) ≤ H(K₁) + H(K₂); and every entropy ≤ log of the size."""
    rng = np.random.default_rng(seed)
    n, d = [(40, 6), (6, 40), (20, 20), (64, 3)][seed]
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
    res = _run(z1, z2, alpha=alpha)
    for form, size in (("gram", n), ("cov", d)):
        got = _rows(res, form)
        h1 = got["entropy_alpha"]
        hj = got["joint_entropy"]
        h2 = got["mutual_information"] + hj - h1  # I = H₁ + H₂ − H₁₂
        assert h2 == pytest.approx(naive_entropy(naive_matrix(z2, form), alpha), rel=1e-8)
        assert max(h1, h2) <= hj + 1e-10
        assert hj <= h1 + h2 + 1e-10
        for h in (h1, h2, hj, got["entropy_1"], got["entropy_2"]):
            assert h <= math.log(size) + 1e-10


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_entropy_of_identity_is_log_m(alpha):
    """H_α(I) = log m for every α: orthonormal rows give K = I (Gram), orthonormal columns give K = I (cov)."""
    rng = np.random.default_rng(1)
    rows = np.linalg.qr(rng.normal(size=(16, 8)))[0].T  # (8, 16), orthonormal rows
    rows2 = np.linalg.qr(rng.normal(size=(16, 8)))[0].T
    got = _rows(_run(rows, rows2, alpha=alpha), "gram")
    for key in ("entropy_alpha", "entropy_1", "entropy_2", "joint_entropy", "mutual_information"):
        assert got[key] == pytest.approx(math.log(8), rel=1e-10), key
    assert got["effective_rank"] == pytest.approx(8.0, rel=1e-10)
    cols = np.linalg.qr(rng.normal(size=(32, 5)))[0]  # (32, 5), orthonormal columns
    got = _rows(_run(cols, cols, alpha=alpha), "cov")
    for key in ("entropy_alpha", "entropy_1", "joint_entropy", "mutual_information"):
        assert got[key] == pytest.approx(math.log(5), rel=1e-10), key
    assert got["kl"] == pytest.approx(0.0, abs=1e-10)
    assert got["js"] == pytest.approx(0.0, abs=1e-10)
    assert got["tcr_joint"] == pytest.approx(5 * math.log(1.0 + 1.0), rel=1e-10)  # Prop. 4.15: I_d maximises TCR


def test_kl_against_identity_gives_the_entropy():
    """Prop. 4.10: H₁(K) = log m − KL(K‖I_m)/m. View 2 of orthonormal rows has Gram matrix I_m, so the analyzer's
    kl of the Gram form is KL(K₁‖I) (the unnormalised Def. 4.9: m times the divergence of K/m)."""
    rng = np.random.default_rng(4)
    m, d = 7, 12
    z1 = rng.normal(size=(m, d)) + 0.3
    eye_rows = np.linalg.qr(rng.normal(size=(d, m)))[0].T  # (m, d), orthonormal rows
    got = _rows(_run(z1, eye_rows, kl_eps=0.0), "gram")
    assert got["kl"] == pytest.approx(m * (math.log(m) - got["entropy_1"]), rel=1e-10)
    assert got["kl"] == pytest.approx(naive_kl(naive_matrix(z1, "gram"), np.eye(m), 0.0), rel=1e-10)
    assert got["kl"] > 1.0  # not the normalised divergence, which is m times smaller


@pytest.mark.parametrize("mu", [0.5, 1.0, 3.0])
def test_tcr_is_a_kl_divergence_from_the_identity(mu):
    """Prop. 4.10, second equality: TCR_μ(K) = d log(1 + μ) − KL(I_d ‖ (μI_d + K)/(1 + μ)), K unit-diagonal."""
    import torch

    from reprscope.metrics.matrix_information import PSD, matrix_kl

    rng = np.random.default_rng(5)
    d, m = 6, 9
    z = rng.normal(size=(d, m))
    f = z / np.linalg.norm(z, axis=1, keepdims=True)  # K = F Fᵀ, unit diagonal
    k = f @ f.T
    mix = np.hstack([math.sqrt(mu) * np.eye(d), f]) / math.sqrt(1.0 + mu)  # its Gram is (μI + K)/(1 + μ)
    kl = matrix_kl(PSD.of_factor(torch.eye(d, dtype=torch.float64)), PSD.of_factor(torch.from_numpy(mix)), 0.0)
    tcr = float(np.linalg.slogdet(mu * np.eye(d) + k)[1])
    assert d * math.log(1.0 + mu) - kl == pytest.approx(tcr, rel=1e-10)


def spectral_contrastive_loss(z1, z2, lam):
    """Paper 004 Eq. 2: Σᵢ‖z⁽¹⁾ᵢ − z⁽²⁾ᵢ‖² + λ Σ_{i≠j} (z⁽¹⁾ᵢᵀ z⁽²⁾ⱼ)², rows ℓ2-normalised."""
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    cross = z1 @ z2.T
    off = cross ** 2
    np.fill_diagonal(off, 0.0)
    return float(np.sum((z1 - z2) ** 2) + lam * np.sum(off))


def barlow_twins_loss(z1, z2, lam):
    """Paper 004 Eq. 3: Σᵢ(1 − Cᵢᵢ)² + λ Σᵢ Σ_{j≠i} Cᵢⱼ², C = Z̄₁ᵀZ̄₂ of unit-norm columns (cross-correlation)."""
    zb1 = z1 / np.linalg.norm(z1, axis=0, keepdims=True)
    zb2 = z2 / np.linalg.norm(z2, axis=0, keepdims=True)
    c = zb1.T @ zb2
    off = c ** 2
    np.fill_diagonal(off, 0.0)
    return float(np.sum((1 - np.diag(c)) ** 2) + lam * np.sum(off))


def test_theorems_4_3_and_4_13_lower_bounds():
    """Thm. 4.3 (I₂) and 4.13 (H₂ joint) lower bounds by the spectral contrastive and Barlow Twins losses."""
    informative = {"sc": 0, "bt": 0}
    for seed in range(3):
        for noise in (0.02, 0.2, 1.0):
            rng = np.random.default_rng(seed)
            # spectral contrastive: Gram form of a batch of B samples in a wide space
            b, d = 16, 256
            z1 = rng.normal(size=(b, d))
            z2 = z1 + noise * rng.normal(size=(b, d))
            got = _rows(_run(z1, z2, alpha=2.0), "gram")
            for lam in (0.1, 1.0, 10.0):
                loss = spectral_contrastive_loss(z1, z2, lam)
                c = 1 + (2 + 2 / (b * lam)) * loss
                bound_i = math.log(b) - 2 * math.log(c)
                assert got["mutual_information"] >= bound_i - 1e-10
                assert got["joint_entropy"] >= math.log(b) - math.log(c) - 1e-10
                informative["sc"] += bound_i > 0
            # Barlow Twins: covariance form of d nearly decorrelated features over a batch of m samples
            m, d = 256, 4
            z1 = rng.normal(size=(m, d))
            z2 = z1 + noise * rng.normal(size=(m, d))
            got = _rows(_run(z1, z2, alpha=2.0), "cov")
            for lam in (0.005, 0.1, 1.0):
                loss = barlow_twins_loss(z1, z2, lam)
                c = 1 + 2 / (d * lam) * loss + 4 * math.sqrt(d * loss)
                bound_i = math.log(d) - 2 * math.log(c)
                assert got["mutual_information"] >= bound_i - 1e-10
                assert got["joint_entropy"] >= math.log(d) - math.log(c) - 1e-10
                informative["bt"] += bound_i > 0
    assert informative["sc"] > 0 and informative["bt"] > 0, informative  # the bounds were not all vacuous


@pytest.mark.parametrize("shape", [(6, 20), (20, 6)])
@pytest.mark.parametrize("mu", [0.3, 1.0, 4.0])
def test_tcr_sylvester_equals_explicit_logdet(shape, mu):
    """log det(μI_d + ẐᵀẐ) from the smaller side equals the explicit d×d log det (also when m < d)."""
    z1, z2 = _views(*shape, seed=5)
    got = _rows(_run(z1, z2, mu=mu), "gram")
    zh = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    d = shape[1]
    assert got["tcr"] == pytest.approx(np.linalg.slogdet(mu * np.eye(d) + zh.T @ zh)[1], rel=1e-10)


# -- batches ---------------------------------------------------------------------------------------------


def test_whole_set_equals_naive_and_streaming_over_two_batches():
    """batch_size = all equals the naive whole-set value; two batches give the mean and std of two naive values."""
    z1, z2 = _views(64, 5, seed=9)
    whole = _run(z1, z2, alpha=3.0)
    for form in ("gram", "cov"):
        assert_matches(_rows(whole, form), naive_form(z1, z2, form, 3.0))
    res = run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 32, "alpha": 3.0})
    assert not any("left out" in n for n in res.notes)
    for form in ("gram", "cov"):
        got = _rows(res, form)
        parts = [naive_form(z1[s], z2[s], form, 3.0) for s in (slice(0, 32), slice(32, 64))]
        assert got["n_batches"] == 2.0
        for key in SCALAR_KEYS:
            vals = np.array([p[key] for p in parts])
            assert got[key] == pytest.approx(vals.mean(), rel=1e-7, abs=1e-9), key
            assert got[key + "_std"] == pytest.approx(vals.std(), rel=1e-6, abs=1e-9), key
    tcrs = [naive_tcr(z1[s], z2[s], 1.0)["tcr"] for s in (slice(0, 32), slice(32, 64))]
    assert _rows(res, "gram")["tcr"] == pytest.approx(np.mean(tcrs), rel=1e-9)


def test_partial_batch_is_dropped_with_note_and_masked_samples_rebatched():
    z1, z2 = _views(70, 4, seed=4)
    res = run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 32})
    assert any("last 6 sample(s)" in n for n in res.notes), res.notes
    assert _rows(res, "gram")["n_batches"] == 2.0
    # a NaN sample is removed before batching: batches are cut from the kept samples
    bad1 = z1.copy()
    bad1[3] = np.nan
    masked = run_analyzer("matrix_information", _data(bad1, z2), {"batch_size": 32})
    keep = np.arange(70) != 3
    want = run_analyzer("matrix_information", _data(z1[keep], z2[keep]), {"batch_size": 32})
    assert masked.rows == want.rows
    assert any("NaN/Inf" in n for n in masked.notes)


def test_max_batches_takes_a_seeded_subset():
    z1, z2 = _views(80, 4, seed=6)
    params = {"batch_size": 10, "max_batches": 3, "seed": 4}
    res = run_analyzer("matrix_information", _data(z1, z2), params)
    assert any("used 3 of 8 batches" in n for n in res.notes), res.notes
    chosen = sorted(np.random.default_rng(4).choice(8, size=3, replace=False))
    parts = [naive_form(z1[10 * i:10 * i + 10], z2[10 * i:10 * i + 10], "cov", 1.0) for i in chosen]
    got = _rows(res, "cov")
    assert got["n_batches"] == 3.0
    assert got["entropy_1"] == pytest.approx(np.mean([p["entropy_1"] for p in parts]), rel=1e-9)
    assert all(r["max_batches"] == 3 and r["seed"] == 4 for r in res.rows)
    other = run_analyzer("matrix_information", _data(z1, z2), {**params, "seed": 5})
    assert _rows(other, "cov")["entropy_1"] != got["entropy_1"]
    everything = run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 10, "max_batches": None})
    assert _rows(everything, "cov")["n_batches"] == 8.0


def test_deterministic_and_form_column():
    z1, z2 = _views(50, 6, seed=8, dtype=np.float32)
    a = run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 16})
    b = run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 16})
    assert a.rows == b.rows and a.notes == b.notes
    assert {r["form"] for r in a.rows} == {"gram", "cov"}
    assert all(r["view"] == PAIR and r["analyzer"] == "matrix_information" for r in a.rows)
    assert all(np.isfinite(r["value"]) for r in a.rows)
    assert {"tcr", "tcr_mcr2"} <= set(_rows(a, "gram")) and "tcr_joint" in _rows(a, "cov")


# -- degenerate input -------------------------------------------------------------------------------------


def _finite(res):
    assert all(np.isfinite(r["value"]) for r in res.rows)
    return res


def test_identical_rows_have_zero_entropy():
    row = np.random.default_rng(0).normal(size=6)
    z = np.tile(row, (20, 1))
    res = _finite(_run(z, z, alpha=0.5))
    for form in ("gram", "cov"):
        got = _rows(res, form)
        for key in ("entropy_1", "entropy_2", "entropy_alpha", "joint_entropy", "mutual_information", "js", "eig_js"):
            assert got[key] == pytest.approx(0.0, abs=1e-12), (form, key)
        assert got["effective_rank"] == pytest.approx(1.0, abs=1e-12)
        assert got["kl"] == pytest.approx(0.0, abs=1e-9)
    # centred, every column is constant: the covariance form is undefined, said in notes
    res = _finite(_run(z, z, center=True))
    assert "entropy_1" not in _rows(res, "cov") and "entropy_1" in _rows(res, "gram")
    assert any("constant or zero column" in n for n in res.notes), res.notes
    assert any("undefined" in n and "cov" in n for n in res.notes), res.notes


def test_zero_rows_are_kept_and_normalised_by_trace():
    z1, z2 = _views(30, 5, seed=12)
    z1[::4] = 0.0
    res = _finite(_run(z1, z2, alpha=2.0))
    assert any("zero embedding row" in n and "trace" in n for n in res.notes), res.notes
    assert_matches(_rows(res, "gram"), naive_form(z1, z2, "gram", 2.0))
    assert_matches(_rows(res, "cov"), naive_form(z1, z2, "cov", 2.0))


def test_constant_column_in_covariance_form():
    z1, z2 = _views(30, 5, seed=13)
    z1[:, 0] = 7.0
    res = _finite(_run(z1, z2, center=True, alpha=3.0))
    assert any("constant or zero column" in n for n in res.notes), res.notes
    assert_matches(_rows(res, "cov"), naive_form(z1, z2, "cov", 3.0, center=True))


def test_all_zero_view_and_single_samples():
    z1, z2 = _views(12, 4, seed=14)
    res = _finite(_run(np.zeros_like(z1), z2))
    assert any("all embeddings are zero" in n for n in res.notes), res.notes
    assert _rows(res, "gram")["tcr"] == pytest.approx(4 * math.log(1.0))
    assert "entropy_1" not in _rows(res, "gram")
    with pytest.raises(ReprscopeError, match="'batch_size' parameter of analyzer matrix_information must be an int or 'all' >= 2"):
        run_analyzer("matrix_information", _data(z1, z2), {"batch_size": 1})  # its matrices would be 1×1


def test_n_smaller_than_d_and_two_samples():
    for n, d in [(3, 50), (2, 8)]:
        z1, z2 = _views(n, d, seed=n)
        res = _finite(_run(z1, z2, alpha=0.5))
        for form in ("gram", "cov"):
            assert_matches(_rows(res, form), naive_form(z1, z2, form, 0.5))


def test_batches_side_by_side_equal_one_after_another(monkeypatch):
    """On the CPU the batches run on several worker threads; gathered in batch order, the rows and notes are
    exactly those of the sequential run."""
    import reprscope.metrics.stats as stats

    rng = np.random.default_rng(11)
    z1 = rng.normal(size=(70, 9))
    z2 = z1 + 0.3 * rng.normal(size=(70, 9))
    z2[3] = 0.0  # a zero row: its note is counted over the batches
    params = {"batch_size": 8, "max_batches": 6}
    monkeypatch.setattr(stats, "cores", lambda: 4)
    monkeypatch.setattr(stats, "MAX_WORKERS", 1)
    one = run_analyzer("matrix_information", _data(z1, z2), params)
    monkeypatch.setattr(stats, "MAX_WORKERS", 4)
    four = run_analyzer("matrix_information", _data(z1, z2), params)
    assert one.rows == four.rows and one.notes == four.notes
    assert any("zero embedding row" in n for n in four.notes)


# -- conditional entropy and DiME ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_conditional_entropy_and_dime_equal_explicit_matrices(alpha):
    z1, z2 = _views(60, 5, seed=3)
    res = _run(z1, z2, alpha=alpha, seed=4, dime_permutations=3)
    for form in ("gram", "cov"):
        k1, k2 = naive_matrix(z1, form), naive_matrix(z2, form)
        want = naive_entropy(k1 * k2, alpha) - naive_entropy(k2, alpha)
        assert _rows(res, form)["conditional_entropy"] == pytest.approx(want, rel=1e-7, abs=1e-9)
    # DiME: the joint entropy with view 2's samples shuffled (the documented seeded permutations of batch 0),
    # minus the paired one
    rng = np.random.default_rng([4, 0])
    k1, k2 = naive_matrix(z1, "gram"), naive_matrix(z2, "gram")
    shuffled = []
    for _ in range(3):
        p = rng.permutation(60)
        shuffled.append(naive_entropy(k1 * naive_matrix(z2[p], "gram"), alpha))
    want = np.mean(shuffled) - naive_entropy(k1 * k2, alpha)
    assert _rows(res, "gram")["dime"] == pytest.approx(want, rel=1e-7, abs=1e-9)
    assert "dime" not in _rows(res, "cov")


def test_dime_is_large_for_paired_views_and_near_zero_for_independent_ones():
    z1, z2 = _views(200, 8, seed=5, noise=0.05)
    paired = _rows(_run(z1, z2), "gram")["dime"]
    other = np.random.default_rng(6).normal(size=z2.shape) * np.linspace(0.3, 2.0, 8) + 0.4
    unpaired = _rows(_run(z1, other), "gram")["dime"]
    assert paired > 0.5 and abs(unpaired) < 0.1 * paired
    assert "dime" not in _rows(_run(z1, z2, dime_permutations=0), "gram")


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_order_alpha_quantities_alone_equal_the_full_computation(alpha):
    z1, z2 = _views(80, 6, seed=9)
    full = _run(z1, z2, alpha=alpha)
    fast = _run(z1, z2, alpha=alpha, quantities="alpha")
    for form in ("gram", "cov"):
        f, q = _rows(full, form), _rows(fast, form)
        base = {"entropy_alpha", "mutual_information", "joint_entropy", "conditional_entropy"}
        assert set(q) == base | {b + "_std" for b in base} | {"n_batches"}
        for k, v in q.items():
            assert v == f[k], (form, k)


def test_mutual_information_function_at_alpha_2_is_the_frobenius_identity():
    import reprscope.metrics as M

    z1, z2 = _views(300, 40, seed=10)  # d² > n: K₁ ⊙ K₂ formed explicitly
    k1, k2 = naive_matrix(z1, "gram"), naive_matrix(z2, "gram")
    h2 = lambda k: 2 * np.log(np.trace(k)) - np.log(np.sum(k * k))  # noqa: E731
    want = h2(k1) + h2(k2) - h2(k1 * k2)
    assert M.matrix_mutual_information(z1, z2, alpha=2, batch_size="all") == pytest.approx(want, rel=1e-12)
