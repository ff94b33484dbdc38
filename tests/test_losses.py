"""Tests of the losses against naive references (explicit loops over anchors and pairs) and of the method
units: SimCLR in detail and a contract test over every registered method."""
import math

import pytest
import torch

from reprscope.errors import ReprscopeError
from reprscope.methods import METHODS, build_method
from reprscope.methods.losses import info_nce, pairwise_similarity
from reprscope.models import ModelBundle, head_spec_from_config
from reprscope.models.bundle import HEAD_PARTS
from reprscope.models.encoders import MLPEncoder
from reprscope.models.heads import head_out_dim

# -- naive references ------------------------------------------------------------------------------------


def naive_sim(a, b, tau, similarity, p=2.0):
    """sim(a, b) for two vectors (python lists), τ a list with one entry per dimension."""
    d = len(a)
    if similarity == "cosine":
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(x * x for x in b))
        return sum(a[k] / na * b[k] / nb / tau[k] for k in range(d))
    if similarity == "dot":
        return sum(a[k] * b[k] / tau[k] for k in range(d))
    if similarity == "neg_lp":
        return -sum(abs(a[k] - b[k]) ** p / tau[k] for k in range(d))
    raise AssertionError(similarity)


def naive_info_nce(z1, z2, tau, similarity, p=2.0):
    """Mean over the 2N anchors of −log(exp(s_pos) / Σ_{k≠i} exp(s_ik)), in float64 python arithmetic."""
    z = [list(map(float, r)) for r in torch.cat([z1, z2]).detach().double()]
    n2, n = len(z), len(z) // 2
    d = len(z[0])
    tau = [float(tau)] * d if not isinstance(tau, (list, tuple)) else [float(t) for t in tau]
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        s = [naive_sim(z[i], z[k], tau, similarity, p) for k in range(n2)]
        denom = sum(math.exp(s[k]) for k in range(n2) if k != i)
        total += -math.log(math.exp(s[pos]) / denom)
    return total / n2


CASES = [("cosine", 2.0), ("dot", 2.0), ("neg_lp", 2.0), ("neg_lp", 1.0)]
DTYPES = [torch.float32, torch.float64]


def _views(n=5, d=4, dtype=torch.float64, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return z1.to(dtype), z2.to(dtype)


def _tol(dtype):
    return dict(rel=1e-5, abs=1e-5) if dtype == torch.float32 else dict(rel=1e-11, abs=1e-11)


@pytest.mark.parametrize("similarity,p", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.5, 1.3, [0.4, 0.9, 1.5, 0.7]], ids=["t0.5", "t1.3", "tvec"])
def test_info_nce_matches_naive_loop(similarity, p, dtype, temperature):
    z1, z2 = _views(dtype=dtype)
    loss = info_nce(z1, z2, temperature, similarity, p)
    assert loss.dim() == 0 and loss.dtype == dtype
    assert float(loss) == pytest.approx(naive_info_nce(z1, z2, temperature, similarity, p), **_tol(dtype))
    if isinstance(temperature, list):  # a tensor temperature is the same as a list
        t = torch.tensor(temperature, dtype=dtype)
        assert float(info_nce(z1, z2, t, similarity, p)) == pytest.approx(float(loss), **_tol(dtype))


@pytest.mark.parametrize("similarity,p", CASES)
def test_info_nce_symmetric_in_the_views(similarity, p):
    z1, z2 = _views(seed=1)
    a = info_nce(z1, z2, 0.7, similarity, p)
    b = info_nce(z2, z1, 0.7, similarity, p)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and invariant to permuting the samples (the same pairs in another order)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(info_nce(z1[perm], z2[perm], 0.7, similarity, p), a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("similarity,p", CASES)
def test_constant_temperature_vector_equals_scalar(similarity, p):
    z1, z2 = _views(d=6, seed=2)
    torch.testing.assert_close(info_nce(z1, z2, [0.3] * 6, similarity, p), info_nce(z1, z2, 0.3, similarity, p),
                               rtol=1e-12, atol=1e-12)


def test_per_dimension_temperature_changes_the_loss():
    z1, z2 = _views(d=4, seed=3)
    assert not torch.allclose(info_nce(z1, z2, [0.3, 0.3, 1.0, 1.0]), info_nce(z1, z2, 0.3))


def test_temperature_vector_of_wrong_length_is_rejected():
    z1, z2 = _views(d=4)
    with pytest.raises(ValueError, match="3"):
        info_nce(z1, z2, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("tau", [0.5, [0.2, 0.5, 1.0, 2.0, 0.7]], ids=["scalar", "vector"])
def test_pairwise_similarity_neg_l2_explicit(tau):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)
    s = pairwise_similarity(a, b, tau, "neg_lp", p=2.0)
    assert s.shape == (3, 4)
    t = [tau] * 5 if not isinstance(tau, list) else tau
    for i in range(3):
        for j in range(4):
            ref = -sum(abs(float(a[i, k]) - float(b[j, k])) ** 2 / t[k] for k in range(5))
            assert float(s[i, j]) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # a self-similarity has a (numerically) zero diagonal and is never positive
    self_sim = pairwise_similarity(a, a, tau, "neg_lp")
    assert torch.all(self_sim <= 0)
    torch.testing.assert_close(self_sim.diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("similarity,p", CASES)
def test_pairwise_similarity_matches_naive(similarity, p):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, 4, generator=g, dtype=torch.float64)
    tau = [0.5, 1.0, 2.0, 0.25]
    s = pairwise_similarity(a, b, tau, similarity, p)
    for i in range(3):
        for j in range(2):
            ref = naive_sim(a[i].tolist(), b[j].tolist(), tau, similarity, p)
            assert float(s[i, j]) == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_pairwise_similarity_unknown_similarity():
    with pytest.raises(ValueError, match="euclid"):
        pairwise_similarity(torch.ones(2, 2), torch.ones(2, 2), similarity="euclid")


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_perfect_alignment_with_orthogonal_negatives(tau):
    """z1 = z2 = one-hot rows: closed form log(1 + (2N−2)·e^{−1/τ}), below the loss of random embeddings."""
    n = 4
    z = torch.eye(n, dtype=torch.float64)
    loss = float(info_nce(z, z.clone(), tau, "cosine"))
    assert loss == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-12)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        r1, r2 = torch.randn(n, n, generator=g, dtype=torch.float64), torch.randn(n, n, generator=g, dtype=torch.float64)
        assert loss < float(info_nce(r1, r2, tau, "cosine"))


@pytest.mark.parametrize("similarity,p", CASES)
def test_gradients_flow(similarity, p):
    z1, z2 = _views(dtype=torch.float32, seed=6)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    tau = torch.tensor([0.5, 0.6, 0.7, 0.8], requires_grad=True)
    loss = info_nce(z1, z2, tau, similarity, p)
    loss.backward()
    for t in (z1, z2, tau):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # the gradient agrees with finite differences (float64)
    a, b = _views(seed=7)
    a.requires_grad_(True)
    torch.autograd.gradcheck(lambda x: info_nce(x, b, 0.6, similarity, p), (a,))


# -- methods ---------------------------------------------------------------------------------------------

IN_DIM = 4


def _tiny_bundle(method, seed=0, heads=None):
    """MLP backbone plus the method's default heads (small hidden widths), as the trainer composes them."""
    torch.manual_seed(seed)
    enc = MLPEncoder(IN_DIM, width=16, depth=2)
    specs = {}
    d = enc.num_features
    cfgs = heads if heads is not None else method.default_heads
    for part in HEAD_PARTS:
        if part not in cfgs:
            continue
        cfg = dict(cfgs[part])
        if "hidden_dim" in cfg:
            cfg["hidden_dim"] = 32
        spec = head_spec_from_config(cfg, d, part)
        if spec:
            specs[part] = spec
            d = head_out_dim(spec, d)
    return ModelBundle(enc, specs), d


def _two_views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    return [x + 0.1 * torch.randn(n, IN_DIM, generator=g), x + 0.1 * torch.randn(n, IN_DIM, generator=g)]


def test_method_registry_has_simclr():
    assert "simclr" in METHODS.names()


def test_unknown_method():
    with pytest.raises(ReprscopeError, match="simclr"):
        build_method("no-such-method")


@pytest.mark.parametrize("cfg", [{}, {"similarity": "dot", "temperature": 0.2},
                                 {"similarity": "neg_lp", "p": 1.0, "temperature": 1.0}])
def test_simclr_training_step(cfg):
    method = build_method("simclr", cfg)
    bundle, _ = _tiny_bundle(method)
    views = _two_views()
    loss, logs = method.training_step(bundle, views, 0, 10)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert float(logs["info_nce"]) == pytest.approx(float(loss.detach()))
    # the loss is InfoNCE on the projector outputs of one joint forward (BatchNorm sees both views)
    with torch.no_grad():
        z = bundle(torch.cat(views))["z"]
    c = method.cfg
    ref = naive_info_nce(z[:8], z[8:], c["temperature"], c["similarity"], c["p"])
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_simclr_per_dimension_temperature():
    heads = {"projector": {"kind": "mlp", "out_dim": 4, "hidden_dim": 32}}
    method = build_method("simclr", {"temperature": "[0.2, 0.2, 1.0, 1.0]"})  # a string, as from --set
    assert method.cfg["temperature"] == [0.2, 0.2, 1.0, 1.0]
    bundle, d = _tiny_bundle(method, heads=heads)
    method.check_output_dim(d)  # matching length: fine
    views = _two_views()
    loss, _ = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        z = bundle(torch.cat(views))["z"]
    assert float(loss.detach()) == pytest.approx(naive_info_nce(z[:8], z[8:], [0.2, 0.2, 1.0, 1.0], "cosine"), rel=1e-4)
    build_method("simclr", {"temperature": 0.3}).check_output_dim(d)  # a scalar fits any width
    with pytest.raises(ReprscopeError, match="temperature"):
        method.check_output_dim(5)
    with pytest.raises(ReprscopeError, match="temperature"):
        build_method("simclr", {"temperature": [0.5] * 3}).check_output_dim(128)


@pytest.mark.parametrize("key,value", [("similarity", "euclid"), ("temperature", 0), ("temperature", "[0.5, -1]"),
                                       ("p", 0), ("p", "abc")])
def test_simclr_bad_values_are_named(key, value):
    with pytest.raises(ReprscopeError, match=f"'{key}'"):
        build_method("simclr", {key: value})
