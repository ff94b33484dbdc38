"""Tests of the ``tangent`` analyzer (Cosentino et al. 2022, arXiv:2205.06926 Prop. 3.1, Eq. 3–10) against naive per-sample loops."""
import math

import numpy as np
import pytest
import torch

import reprscope.analyzers  # noqa: F401  (registers the analyzers)
from reprscope.analyzers.base import HeadModule, LayerData, run_analyzer
from reprscope.metrics.tangent import contrastive_batch, contrastive_batch_np, normalise
from reprscope.errors import ReprscopeError
from reprscope.models.heads import build_head

VIEW = "aug1|aug2"


# -- helpers -------------------------------------------------------------------------------------------------


def linear_module(w, b=None):
    """A stored linear projector with torch weight ``w`` (d_proj, d_enc): g(h) = w h (+ b) = Wᵀh, W = wᵀ."""
    w = np.asarray(w, dtype=np.float64)
    spec = [{"type": "linear", "in": w.shape[1], "out": w.shape[0], "bias": b is not None}]
    params = {"0.weight": w}
    if b is not None:
        params["0.bias"] = np.asarray(b, dtype=np.float64)
    return HeadModule(spec=spec, params=params)


def module_of(head, spec):
    return HeadModule(spec=spec, params={k: v.detach().double().numpy().copy() for k, v in head.state_dict().items()
                                         if not k.endswith("num_batches_tracked")})


def mlp_module(d, hidden, p, seed=0, act="relu", l2=False):
    """A tiny non-linear projector with random BN running statistics (eval mode)."""
    spec = [{"type": "linear", "in": d, "out": hidden, "bias": False}, {"type": "batchnorm", "in": hidden, "affine": True},
            {"type": act}, {"type": "linear", "in": hidden, "out": p, "bias": True}]
    if l2:
        spec.append({"type": "l2norm"})
    torch.manual_seed(seed)
    head = build_head(spec).double()
    with torch.no_grad():
        head[1].running_mean.normal_()
        head[1].running_var.uniform_(0.5, 2.0)
        head[1].weight.uniform_(0.5, 1.5)
        head[1].bias.normal_()
    return module_of(head, spec)


def make(h1, h2, module, labels=None, coarse=None, clean=None, space="encoder"):
    h1, h2 = np.asarray(h1), np.asarray(h2)
    clean = h1 * 0 + 1 if clean is None else clean
    return LayerData(layer="encoder", space=space, views=["clean", "aug1", "aug2"], embeddings=np.stack([clean, h1, h2]),
                     modules={"projector": module}, labels=labels, labels_coarse=coarse)


def rows(res):
    out = {}
    for r in res.rows:
        assert r["view"] == VIEW
        out[(r["metric"], r["index"])] = r["value"]
    return out


def apply_head(module, x):
    head = build_head(module.spec).double().eval()
    state = {k: torch.as_tensor(v) for k, v in module.params.items()}
    for k, v in head.state_dict().items():
        state.setdefault(k, v)
    head.load_state_dict(state)
    with torch.no_grad():
        return head(torch.as_tensor(x, dtype=torch.float64)).numpy(), head


def naive(h1, h2, module, batch_size=512, temperature=0.5, labels=None, jac_subset=None, linear=True):
    """Per-sample double loops: hardest negatives, Eq. 1 symmetrised, Eq. 3–5 and Eq. 10 by lstsq."""
    h1, h2 = np.asarray(h1, dtype=np.float64), np.asarray(h2, dtype=np.float64)
    n = h1.shape[0]
    beta = 1.0 / temperature
    f1, head = apply_head(module, h1)
    f2, _ = apply_head(module, h2)

    def unit(x):
        nx = math.sqrt(sum(t * t for t in x))
        return x / nx if nx > 0 else x * 0

    z = [np.array([unit(r) for r in f1]), np.array([unit(r) for r in f2])]
    per_batch = {k: [] for k in ("infonce", "invariance", "repulsion", "upper_bound")}
    num = den = dist = norm1 = 0.0
    agree = 0
    used = 0
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        b = len(idx)
        if b < 2:
            break
        losses, pos_sims, hard_sims = [], [], []
        for k in (0, 1):
            for i in idx:
                anchor = z[k][i]
                pos = float(anchor @ z[1 - k][i])
                best, best_sim, terms = None, -np.inf, []
                for v in (0, 1):  # candidate order: view 1 of the batch, then view 2
                    for j in idx:
                        if j == i:
                            continue
                        sim = float(anchor @ z[v][j])
                        terms.append(math.exp(beta * sim))
                        if sim > best_sim:
                            best, best_sim = (v, j), sim
                losses.append(math.log(sum(terms)) - beta * pos)
                pos_sims.append(pos)
                hard_sims.append(best_sim)
                if k == 0:
                    v, j = best
                    h_star = (h1, h2)[v][j]
                    dh = h2[i] - h_star
                    dist += np.linalg.norm(h1[i] - h_star)
                    norm1 += np.linalg.norm(h1[i])
                    if labels is not None:
                        agree += int(labels[j] == labels[i])
                    if linear:
                        wmat = module.params["0.weight"].T  # W = weightᵀ, (d_enc, d_proj)
                    elif jac_subset is None or i in jac_subset:
                        wmat = torch.autograd.functional.jacobian(
                            lambda x: head(x.unsqueeze(0)).squeeze(0), torch.as_tensor(h1[i])).numpy().T
                    else:
                        continue
                    t = np.linalg.lstsq(wmat, dh, rcond=None)[0]
                    num += float(np.sum((dh - wmat @ t) ** 2))
                    den += float(dh @ dh)
        inv = -float(np.mean(pos_sims))
        rep = float(np.mean(hard_sims))
        per_batch["infonce"].append(float(np.mean(losses)))
        per_batch["invariance"].append(inv)
        per_batch["repulsion"].append(rep)
        per_batch["upper_bound"].append(beta * inv + beta * rep + math.log(2 * (b - 1)))
        used += b
    out = {(k, ""): float(np.mean(v)) for k, v in per_batch.items()}
    out[("fvu", "")] = num / den
    out[("hardest_negative_distance", "")] = dist / norm1
    if labels is not None:
        out[("hardest_negative_label_agreement", "fine")] = agree / used
    return out


def assert_close(got, want, rel=1e-9, abs_=1e-11):
    assert set(want) <= set(got), (set(want) - set(got))
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rel, abs=abs_), (k, got[k], v)


def views(n, d, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    return base + noise * rng.normal(size=(n, d)), base + noise * rng.normal(size=(n, d))


# -- against the naive reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [16, 40, 512])
def test_linear_matches_naive(batch_size):
    rng = np.random.default_rng(1)
    h1, h2 = views(40, 6)
    module = linear_module(rng.normal(size=(3, 6)), rng.normal(size=3))
    labels = rng.integers(0, 3, 40)
    got = rows(run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": batch_size}))
    want = naive(h1, h2, module, batch_size=batch_size, labels=labels)
    assert_close(got, want)
    assert got[("infonce", "")] <= got[("upper_bound", "")]


@pytest.mark.parametrize("group", [2, 3, 8])
def test_linear_batches_side_by_side_equal_one_after_another(monkeypatch, group):
    """The numpy path's batches computed side by side (groups of ``group``, four workers) add up to exactly the
    values of one batch after another: contributions are summed in batch order."""
    import reprscope.metrics.stats as stats
    import reprscope.metrics.tangent as tangent

    rng = np.random.default_rng(5)
    h1, h2 = views(203, 7, seed=5)
    module = linear_module(rng.normal(size=(4, 7)))
    labels = rng.integers(0, 4, 203)
    monkeypatch.setattr(tangent, "_SIDE_BY_SIDE_BATCHES", 1)
    one = run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": 20})
    monkeypatch.setattr(tangent, "_SIDE_BY_SIDE_BATCHES", group)
    monkeypatch.setattr(stats, "cores", lambda: 4)
    side = run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": 20})
    assert side.rows == one.rows and side.notes == one.notes


def test_temperature_and_float32():
    rng = np.random.default_rng(2)
    h1, h2 = views(30, 5, seed=2)
    h1, h2 = h1.astype(np.float32), h2.astype(np.float32)
    module = linear_module(rng.normal(size=(4, 5)).astype(np.float32))
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"temperature": 0.1, "batch_size": 12}))
    assert_close(got, naive(h1, h2, module, batch_size=12, temperature=0.1))


@pytest.mark.parametrize("impl", ["torch", "numpy"])
def test_contrastive_batch_hardest_negative_against_double_loop(impl):
    rng = np.random.default_rng(3)
    b = 9
    z1, z2 = (normalise(torch.as_tensor(rng.normal(size=(b, 4)))) for _ in range(2))
    z = torch.cat([z1, z2]).numpy()
    # "torch": the accelerator path's torch exp, forced on the CPU (the CPU default hands the exp to numpy)
    out = contrastive_batch(z1, z2, beta=2.0, use_numpy=False) if impl == "torch" else contrastive_batch_np(z.copy(), beta=2.0)
    other = contrastive_batch_np(z.copy(), beta=2.0) if impl == "torch" else contrastive_batch(z1, z2, beta=2.0)
    for k in ("infonce", "invariance", "repulsion", "upper_bound"):
        assert float(out[k]) == pytest.approx(float(other[k]), rel=1e-13)
    beta = 2.0
    want = np.mean([np.log(sum(np.exp(beta * (z[a] @ z[c])) for c in range(2 * b) if c not in (a, (a + b) % (2 * b))))
                    - beta * (z[a] @ z[(a + b) % (2 * b)]) for a in range(2 * b)])
    assert float(out["infonce"]) == pytest.approx(want, rel=1e-12)
    for a in range(2 * b):
        best, best_sim = None, -np.inf
        for c in range(2 * b):
            if c == a or c == (a + b) % (2 * b):
                continue
            if z[a] @ z[c] > best_sim:
                best, best_sim = c, z[a] @ z[c]
        assert int(out["hardest"][a]) == best


def test_fvu_zero_when_dh_in_column_space_and_one_when_orthogonal():
    rng = np.random.default_rng(4)
    n, d = 30, 5
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    w = rng.normal(size=(2, 2)) @ np.eye(d)[:2] @ rot.T  # row space = rot · span(e1, e2)
    inside = np.zeros((n, d))
    inside[:, :2] = rng.normal(size=(n, 2))
    other = np.zeros((n, d))
    other[:, 2:] = rng.normal(size=(n, d - 2))
    const_in, const_out = np.r_[0, 0, 1.0, -2.0, 0.5], np.r_[1.0, 2.0, 0, 0, 0]
    # h = varying part in col(W) + constant orthogonal part: every δh lies in col(W)
    h1 = (inside + const_in) @ rot.T
    h2 = (inside + 0.1 * rng.normal(size=(n, d)) * np.r_[1, 1, 0, 0, 0] + const_in) @ rot.T
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(w)), {"batch_size": 8}))
    assert got[("fvu", "")] == pytest.approx(0.0, abs=1e-24)
    # h = constant part in col(W) + varying orthogonal part: every δh is orthogonal to col(W)
    h1 = (other + const_out) @ rot.T
    h2 = (other + 0.1 * rng.normal(size=(n, d)) * np.r_[0, 0, 1, 1, 1] + const_out) @ rot.T
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(w)), {"batch_size": 8}))
    assert got[("fvu", "")] == pytest.approx(1.0, rel=1e-12)


def test_full_rank_projector_explains_everything():
    h1, h2 = views(20, 4, seed=5)
    w = np.random.default_rng(5).normal(size=(6, 4))  # d_proj > d_enc: col(W) = ℝ^4
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(w))))
    assert got[("fvu", "")] == pytest.approx(0.0, abs=1e-24)


def test_rank_deficient_projector_uses_its_rank():
    rng = np.random.default_rng(6)
    h1, h2 = views(25, 6, seed=6)
    w = rng.normal(size=(4, 2)) @ rng.normal(size=(2, 6))  # rank 2 although d_proj = 4
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(w))))
    assert_close(got, naive(h1, h2, linear_module(w)), rel=1e-8)


def test_product_of_linear_layers_and_weightnorm():
    h1, h2 = views(24, 6, seed=7)
    spec = [{"type": "linear", "in": 6, "out": 3, "bias": False}, {"type": "weightnorm_linear", "in": 3, "out": 5, "bias": False}]
    torch.manual_seed(7)
    head = build_head(spec).double()
    module = module_of(head, spec)
    w_eff = (head[1].weight @ head[0].weight).detach().numpy()  # (5, 6) of rank 3
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 10}))
    want = naive(h1, h2, linear_module(w_eff), batch_size=10)
    assert_close(got, want, rel=1e-8)


def test_label_agreement_hand_made():
    # two tight pairs of samples: 0, 1 along +x and 2, 3 along +y; the hardest negative of each is its partner
    h1 = np.array([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0], [-0.05, 1.0]])
    h2 = h1 * 1.01
    module = linear_module(np.eye(2))
    fine = np.array([0, 0, 1, 1])
    coarse = np.array([0, 1, 0, 1])
    got = rows(run_analyzer("tangent", make(h1, h2, module, labels=fine, coarse=coarse)))
    assert got[("hardest_negative_label_agreement", "fine")] == 1.0
    assert got[("hardest_negative_label_agreement", "coarse")] == 0.0
    got = rows(run_analyzer("tangent", make(h1, h2, module, labels=np.array([5, 5, 5, 7]))))
    assert got[("hardest_negative_label_agreement", "fine")] == 0.5  # samples 2 and 3 pick each other
    assert ("hardest_negative_label_agreement", "coarse") not in got
    res = run_analyzer("tangent", make(h1, h2, module))
    assert not any(r["metric"] == "hardest_negative_label_agreement" for r in res.rows)
    assert any("no labels" in n for n in res.notes)


def test_hardest_negative_distance_hand_made():
    h1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    h2 = np.array([[1.0, 0.1], [0.1, 2.0]])
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(np.eye(2)))))
    # B = 2: the hardest negative of sample 0 is sample 1's view 1 (cos 0) or view 2 (cos 0.0499): view 2
    d0 = np.linalg.norm(h1[0] - h2[1])
    d1 = np.linalg.norm(h1[1] - h2[0])
    assert got[("hardest_negative_distance", "")] == pytest.approx((d0 + d1) / 3.0, rel=1e-14)
    assert got[("upper_bound", "")] >= got[("infonce", "")]


@pytest.mark.parametrize("act, l2", [("relu", False), ("gelu", True), ("leaky_relu", False)])
def test_jacobian_fvu_matches_autograd_loops(act, l2):
    h1, h2 = views(20, 5, seed=8)
    module = mlp_module(5, 7, 3, seed=8, act=act, l2=l2)
    labels = np.arange(20) % 3
    got = rows(run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": 8}))
    want = naive(h1, h2, module, batch_size=8, labels=labels, linear=False)
    assert_close(got, want, rel=1e-8)


def test_jacobian_fvu_over_several_blocks_matches_autograd_loops():
    """70 samples: the Jacobian residuals run in blocks of 32 side by side (and gathered over batches); each
    block must use its own samples."""
    from reprscope.analyzers import tangent as tangent_mod

    h1, h2 = views(70, 5, seed=18)
    module = mlp_module(5, 7, 3, seed=18)
    assert 70 > 2 * tangent_mod._JAC_SIDE_BLOCK
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 16}))
    want = naive(h1, h2, module, batch_size=16, linear=False)
    assert_close(got, want, rel=1e-8)


def test_jacobian_subset_is_seeded():
    h1, h2 = views(30, 4, seed=9)
    module = mlp_module(4, 6, 3, seed=9)
    params = {"batch_size": 8, "max_jacobian_samples": 7, "seed": 3}
    res = run_analyzer("tangent", make(h1, h2, module), params)
    subset = set(np.random.default_rng(3).choice(30, 7, replace=False).tolist())
    want = naive(h1, h2, module, batch_size=8, jac_subset=subset, linear=False)
    assert rows(res)[("fvu", "")] == pytest.approx(want[("fvu", "")], rel=1e-8)
    assert any("7 of 30" in n for n in res.notes)
    again = run_analyzer("tangent", make(h1, h2, module), params)
    assert again.rows == res.rows
    other = run_analyzer("tangent", make(h1, h2, module), {**params, "seed": 4})
    assert rows(other)[("fvu", "")] != rows(res)[("fvu", "")]
    # everything else does not depend on the subset
    assert {k: v for k, v in rows(other).items() if k[0] != "fvu"} == {k: v for k, v in rows(res).items() if k[0] != "fvu"}


def test_jacobian_of_linear_head_equals_its_weights():
    """An affine head with BatchNorm goes through the Jacobian path and agrees with its explicit matrix."""
    spec = [{"type": "linear", "in": 5, "out": 4, "bias": True}, {"type": "batchnorm", "in": 4, "affine": True}]
    torch.manual_seed(10)
    head = build_head(spec).double()
    with torch.no_grad():
        head[1].running_var.uniform_(0.5, 2.0)
    module = module_of(head, spec)
    scale = (head[1].weight / torch.sqrt(head[1].running_var + head[1].eps)).detach().numpy()
    w_eff = scale[:, None] * head[0].weight.detach().numpy()
    h1, h2 = views(18, 5, seed=10)
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 6}))
    assert_close(got, naive(h1, h2, linear_module(w_eff, head[0].bias.detach().numpy() * scale
                                                  + (head[1].bias - head[1].running_mean * torch.as_tensor(scale)).detach().numpy()),
                            batch_size=6), rel=1e-8)


# -- the bound of Prop. 3.1 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "trained_like", "mlp"])
@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0])
def test_infonce_below_upper_bound(kind, temperature):
    rng = np.random.default_rng(11)
    n, d = 64, 8
    if kind == "random":
        h1, h2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    else:  # clustered samples, views close to each other: a small, tight loss
        centers = rng.normal(size=(4, d)) * 3
        base = centers[np.arange(n) % 4] + 0.3 * rng.normal(size=(n, d))
        h1, h2 = base + 0.02 * rng.normal(size=(n, d)), base + 0.02 * rng.normal(size=(n, d))
    module = mlp_module(d, 16, 4, seed=11) if kind == "mlp" else linear_module(rng.normal(size=(4, d)))
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 20, "temperature": temperature}))
    assert got[("infonce", "")] <= got[("upper_bound", "")] + 1e-12
    beta = 1 / temperature
    # the bound is exactly β·inv + β·rep + mean over batches of log(2(B − 1)) (batches 20, 20, 20, 4)
    logs = np.mean([math.log(38)] * 3 + [math.log(6)])
    assert got[("upper_bound", "")] == pytest.approx(beta * got[("invariance", "")] + beta * got[("repulsion", "")] + logs, rel=1e-12)
    assert -1 - 1e-12 <= got[("invariance", "")] <= 1 + 1e-12 and -1 - 1e-12 <= got[("repulsion", "")] <= 1 + 1e-12


def test_infonce_relation_to_nt_xent():
    """Eq. 1 leaves the positive out of the denominator: NT-Xent (the training loss) = mean log(1 + e^{βs⁺}/Z) + Eq. 1."""
    from reprscope.methods.losses import info_nce

    rng = np.random.default_rng(12)
    h1, h2 = views(16, 6, seed=12)
    w = rng.normal(size=(4, 6))
    got = rows(run_analyzer("tangent", make(h1, h2, linear_module(w))))
    z1 = normalise(torch.as_tensor(h1 @ w.T))
    z2 = normalise(torch.as_tensor(h2 @ w.T))
    nt = float(info_nce(z1, z2, temperature=0.5))
    assert nt > got[("infonce", "")]
    z = torch.cat([z1, z2])
    s = (z @ z.T).numpy()
    corr = []
    for a in range(32):
        p = (a + 16) % 32
        neg = sum(math.exp(2 * s[a, c]) for c in range(32) if c not in (a, p))
        corr.append(math.log(1 + math.exp(2 * s[a, p]) / neg))
    assert nt == pytest.approx(got[("infonce", "")] + np.mean(corr), rel=1e-9)


# -- streaming, layers, degenerate input ---------------------------------------------------------------------


def test_masked_samples_do_not_shift_batches():
    rng = np.random.default_rng(13)
    h1, h2 = views(33, 5, seed=13)
    module = linear_module(rng.normal(size=(3, 5)))
    labels = np.arange(33) % 4
    full = make(h1, h2, module, labels=labels)
    keep = np.ones(33, dtype=bool)
    keep[[2, 17]] = False
    masked = full.take(keep)
    direct = make(h1[keep], h2[keep], module, labels=labels[keep])
    a = run_analyzer("tangent", masked, {"batch_size": 8})
    b = run_analyzer("tangent", direct, {"batch_size": 8})
    assert a.rows == b.rows


def test_left_over_sample_is_noted():
    h1, h2 = views(17, 4, seed=14)
    labels = np.arange(17) % 3
    module = linear_module(np.random.default_rng(14).normal(size=(3, 4)))
    res = run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": 8})
    assert any("one sample left over" in n for n in res.notes)
    want = naive(h1[:16], h2[:16], module, batch_size=8, labels=labels[:16])  # agreement over the 16 used
    assert_close(rows(res), want)


@pytest.mark.parametrize("space", ["intermediate", "projector", "predictor"])
def test_non_encoder_layers_are_skipped_with_the_reason(space):
    from reprscope.analyzers.base import ENCODER_ONLY

    h1, h2 = views(10, 4)
    res = run_analyzer("tangent", make(h1, h2, linear_module(np.eye(4)), space=space))
    assert res.rows == [] and len(res.notes) == 1 and res.notes[0].endswith(ENCODER_ONLY)


def test_non_finite_projector_weights_are_a_note():
    h1, h2 = views(10, 4)
    w = np.eye(4)
    w[1, 2] = np.inf
    res = run_analyzer("tangent", make(h1, h2, linear_module(w)))
    assert res.rows == [] and any("non-finite entries in 0.weight" in n for n in res.notes), res.notes


def _degenerate(case):
    rng = np.random.default_rng(15)
    n, d = 12, 6
    h1, h2 = views(n, d, seed=15)
    if case == "identical_rows":
        h1 = h2 = np.broadcast_to(rng.normal(size=d), (n, d)).copy()
    elif case == "zero_rows":
        h1[::3] = 0.0
        h2[::2] = 0.0
    elif case == "all_zero":
        h1 = h2 = np.zeros((n, d))
    elif case == "n_lt_d":
        h1, h2 = views(3, 10, seed=15)
    elif case == "batch_of_two":
        h1, h2 = h1[:2], h2[:2]
    elif case == "tiny":
        h1, h2 = h1 * 1e-30, h2 * 1e-30
    elif case == "huge":
        h1, h2 = h1 * 1e30, h2 * 1e30
    return h1, h2


@pytest.mark.parametrize("case", ["identical_rows", "zero_rows", "all_zero", "n_lt_d", "batch_of_two", "tiny", "huge"])
@pytest.mark.parametrize("proj", ["linear", "mlp", "zero"])
def test_degenerate_input_is_finite(case, proj):
    h1, h2 = _degenerate(case)
    d = h1.shape[1]
    module = {"linear": linear_module(np.random.default_rng(16).normal(size=(3, d))),
              "mlp": mlp_module(d, 5, 3, seed=16),
              "zero": linear_module(np.zeros((3, d)))}[proj]
    labels = np.arange(h1.shape[0]) % 2
    with np.errstate(all="ignore"):
        res = run_analyzer("tangent", make(h1, h2, module, labels=labels), {"batch_size": 5})
    assert res.rows or res.notes
    for r in res.rows:
        assert math.isfinite(r["value"])
    got = rows(res)
    if case in ("identical_rows", "all_zero"):
        assert ("fvu", "") not in got and any("fvu is undefined" in n for n in res.notes)
    if ("infonce", "") in got:
        assert got[("infonce", "")] <= got[("upper_bound", "")] + 1e-9
    if case in ("tiny", "huge") and proj == "linear":  # scale-free metrics do not depend on the scale
        ref = rows(run_analyzer("tangent", make(*_degenerate("none"), module, labels=labels), {"batch_size": 5}))
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-9), k


def test_batch_of_two_matches_naive():
    h1, h2 = views(6, 3, seed=17)
    module = linear_module(np.random.default_rng(17).normal(size=(2, 3)))
    got = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 2}))
    assert_close(got, naive(h1, h2, module, batch_size=2))


def test_deterministic():
    h1, h2 = views(40, 5, seed=18)
    module = mlp_module(5, 6, 3, seed=18)
    a = run_analyzer("tangent", make(h1, h2, module), {"batch_size": 16, "max_jacobian_samples": 10})
    b = run_analyzer("tangent", make(h1, h2, module), {"batch_size": 16, "max_jacobian_samples": 10})
    assert a.rows == b.rows and a.notes == b.notes


def test_strict_loading_lists_keys():
    module = linear_module(np.eye(3))
    module.params["0.bias"] = np.zeros(3)  # the spec says no bias
    h1, h2 = views(6, 3)
    with pytest.raises(ReprscopeError, match="unexpected keys \\['0.bias'\\]"):
        run_analyzer("tangent", make(h1, h2, module))
    spec = [{"type": "linear", "in": 3, "out": 3, "bias": True}]
    with pytest.raises(ReprscopeError, match="missing keys \\['0.bias'\\]"):
        run_analyzer("tangent", make(h1, h2, HeadModule(spec, {"0.weight": np.eye(3)})))


def test_projector_of_other_width_is_a_note():
    h1, h2 = views(6, 3)
    res = run_analyzer("tangent", make(h1, h2, linear_module(np.eye(4))))
    assert res.rows == [] and any("cannot take" in n for n in res.notes)


def test_missing_needs_are_skips():
    h1, h2 = views(6, 3)
    data = make(h1, h2, linear_module(np.eye(3)))
    data.modules = {}
    assert any("skipped" in n for n in run_analyzer("tangent", data).notes)
    one_view = LayerData(layer="encoder", space="encoder", views=["clean", "aug1"], embeddings=np.stack([h1, h2]),
                         modules={"projector": linear_module(np.eye(3))})
    res = run_analyzer("tangent", one_view)
    assert res.rows == [] and any("two augmented views" in n for n in res.notes)


CHAIN_SPECS = [
    [{"type": "linear", "in": 6, "out": 12, "bias": False}, {"type": "batchnorm", "in": 12, "affine": True},
     {"type": "relu"}, {"type": "linear", "in": 12, "out": 4, "bias": True}],
    [{"type": "linear", "in": 6, "out": 12}, {"type": "gelu"}, {"type": "linear", "in": 12, "out": 12},
     {"type": "leaky_relu", "slope": 0.1}, {"type": "linear", "in": 12, "out": 5}, {"type": "batchnorm", "in": 5, "affine": False}],
    [{"type": "linear", "in": 6, "out": 12}, {"type": "gelu"}, {"type": "linear", "in": 12, "out": 8}, {"type": "l2norm"},
     {"type": "weightnorm_linear", "in": 8, "out": 30, "bias": False}],
    [{"type": "batchnorm", "in": 6, "affine": True}, {"type": "relu"}],
    [{"type": "linear", "in": 6, "out": 3}, {"type": "l2norm"}],
    [],
]


@pytest.mark.parametrize("spec", CHAIN_SPECS, ids=lambda s: "-".join(x["type"] for x in s) or "identity")
def test_chain_jacobian_equals_autograd(spec, monkeypatch):
    """The product of the layers' derivatives equals jacrev's per-sample Jacobians, in blocks of a few samples."""
    import reprscope.metrics.tangent as tangent_mod

    torch.manual_seed(12)
    head = build_head(spec).double().eval()
    with torch.no_grad():
        for mod in head:
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                if mod.weight is not None:
                    mod.weight.normal_()
    for p in head.parameters():
        p.requires_grad_(False)
    h = torch.randn(37, 6, dtype=torch.float64)
    h[0, :] = 0.0  # ReLU kinks: derivative 0 at 0, as autograd has it
    want = torch.func.jacrev(lambda x: head(x).sum(0))(h).transpose(0, 1)
    monkeypatch.setattr(tangent_mod, "_CHAIN_BLOCK_BYTES", 8 * 30 * 12 * 5)  # blocks of 5 samples
    got = tangent_mod.chain_jacobian(head, h)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


def test_chain_jacobian_declines_other_layers_and_the_analyzer_falls_back(monkeypatch):
    """A layer the product does not know gives None (autograd is used); forcing autograd for an MLP head
    gives the same rows as the product."""
    import reprscope.metrics.tangent as tangent_mod

    class Square(torch.nn.Module):
        def forward(self, x):
            return x * x.sum(dim=1, keepdim=True)

    head = torch.nn.Sequential(torch.nn.Linear(4, 3).double(), Square())
    h = torch.randn(5, 4, dtype=torch.float64)
    assert tangent_mod.chain_jacobian(head, h) is None
    torch.testing.assert_close(tangent_mod.head_jacobian(head, h),
                               torch.func.jacrev(lambda x: head(x).sum(0))(h).transpose(0, 1))
    h1, h2 = views(20, 5, seed=13)
    module = mlp_module(5, 7, 3, seed=13, act="gelu", l2=True)
    fast = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 8}))
    monkeypatch.setattr(tangent_mod, "chain_jacobian", lambda head, h: None)
    slow = rows(run_analyzer("tangent", make(h1, h2, module), {"batch_size": 8}))
    assert_close(fast, slow, rel=1e-10)
