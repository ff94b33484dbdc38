"""Tests of the data sets: the common contract over the registry, the content/style DGP of Rusak et al. 2022 against
closed forms (vMF mean resultant length, exact inverse of g), and the toy sets of the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL")."""
import json

import numpy as np
import pytest
import torch
from scipy.special import ive

from reprscope.data import DATASETS, Samples, build_dataset
from reprscope.data.dgp import sample_vmf
from reprscope.errors import ReprscopeError

ALL = [n for n in DATASETS.names() if not DATASETS.meta(n).get("on_disk")]  # on-disk sets: tests/test_images.py
SMALL = {"eval_size": 60}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _assert_same_samples(a: Samples, b: Samples):
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.index, b.index)
    for name in ("latents", "labels", "labels_coarse"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None), name
        if ta is not None:
            assert torch.equal(ta, tb), name


# -- the common contract, over every registered data set ----------------------------------------------------


def test_registry_has_the_builtin_sets():
    assert {"dgp", "blobs", "moons", "points3d"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_train_views_shapes_and_dtype(name):
    ds = build_dataset(name, **SMALL)
    views = ds.train_views(16, _rng())
    assert isinstance(views, list) and len(views) == 2
    for v in views:
        assert isinstance(v, torch.Tensor)
        assert v.shape == (16, *ds.input_shape)
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all()
    assert not torch.equal(views[0], views[1])  # a positive pair, not two copies


@pytest.mark.parametrize("name", ALL)
def test_eval_set_is_deterministic_and_depends_on_seed(name):
    a = build_dataset(name, seed=3, **SMALL).eval_set()
    b = build_dataset(name, seed=3, **SMALL).eval_set()
    _assert_same_samples(a, b)
    assert len(a) == SMALL["eval_size"]
    assert torch.equal(a.index, torch.arange(len(a)))
    assert a.x.dtype == torch.float32 and torch.isfinite(a.x).all()
    c = build_dataset(name, seed=4, **SMALL).eval_set()
    assert not torch.equal(a.x, c.x)
    # cached: the same object every call
    ds = build_dataset(name, seed=3, **SMALL)
    assert ds.eval_set() is ds.eval_set()


@pytest.mark.parametrize("name", ALL)
def test_sample_reproducible_from_rng_seed(name):
    ds = build_dataset(name, **SMALL)
    a, b = ds.sample(32, _rng(7)), ds.sample(32, _rng(7))
    _assert_same_samples(a, b)
    assert a.x.shape == (32, *ds.input_shape) and a.x.dtype == torch.float32
    c = ds.sample(32, _rng(8))
    assert not torch.equal(a.x, c.x)
    # the training stream as a whole is reproducible too
    v1, v2 = ds.train_views(8, _rng(5)), ds.train_views(8, _rng(5))
    assert all(torch.equal(p, q) for p, q in zip(v1, v2))


@pytest.mark.parametrize("name", ALL)
def test_augment_shape(name):
    ds = build_dataset(name, **SMALL)
    s = ds.sample(10, _rng())
    v = ds.augment(s, _rng(1))
    assert v.shape == (10, *ds.input_shape) and v.dtype == torch.float32
    assert torch.isfinite(v).all()
    assert not torch.equal(v, s.x)
    # augmenting a selection equals selecting from the augmentation with the same stream
    assert ds.augment(s.select(slice(0, 4)), _rng(2)).shape == (4, *ds.input_shape)


@pytest.mark.parametrize("name", ALL)
def test_spec_round_trip(name):
    ds = build_dataset(name, seed=2, **SMALL)
    spec = json.loads(json.dumps(ds.spec()))  # the spec is JSON-able, as stored in checkpoints and .h5 attrs
    assert spec["name"] == name
    again = build_dataset(spec)
    assert again.spec() == ds.spec()
    _assert_same_samples(again.eval_set(), ds.eval_set())


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_is_named(name):
    with pytest.raises(ReprscopeError, match="no_such_knob"):
        build_dataset(name, no_such_knob=1)


def _bad_values(param):
    """Values that violate the declaration of ``param``."""
    if param.kind == "choice":
        return ["definitely-not-a-choice"]
    out = []
    if param.kind in ("int", "float"):
        out.append("not-a-number")
        if param.low is not None:
            out.append(param.low if param.low_open else param.low - 1)
        if param.high is not None:
            out.append(param.high + 1)
    if param.kind == "int":
        out.append(1.5)
    return out


_BAD = [(name, p.name, v) for name in ALL for p in DATASETS.get(name).all_params() for v in _bad_values(p)]


@pytest.mark.parametrize("name,key,value", _BAD, ids=[f"{n}-{k}-{v}" for n, k, v in _BAD])
def test_bad_value_is_named(name, key, value):
    with pytest.raises(ReprscopeError, match=f"'{key}'"):
        build_dataset(name, **{key: value})


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ReprscopeError, match="dgp"):
        build_dataset("no-such-set")


# -- the content/style DGP -----------------------------------------------------------------------------------

DGP_CASES = [(space, dc) for space in ("box", "sphere") for dc in (0, 3, 10)]


@pytest.mark.parametrize("space,dc", DGP_CASES)
def test_dgp_positive_pair_content_exact_style_differs(space, dc):
    ds = build_dataset("dgp", space=space, content_dims=dc, latent_dim=10, eval_size=10)
    rng = _rng(0)
    z = ds.sample_latents(500, rng)
    zt = ds.sample_conditional(z, rng)
    assert zt.shape == z.shape
    np.testing.assert_array_equal(zt[:, :dc], z[:, :dc])
    if dc < 10:
        assert np.all(np.any(zt[:, dc:] != z[:, dc:], axis=1))
    else:
        np.testing.assert_array_equal(zt, z)
    for lat in (z, zt):
        if space == "box":
            assert lat.min() >= 0.0 and lat.max() <= 1.0
        else:
            np.testing.assert_allclose(np.linalg.norm(lat, axis=1), 1.0, atol=1e-12)
    assert ds.latent_names[:dc] == [f"c{i}" for i in range(dc)]
    assert ds.content_mask == [True] * dc + [False] * (10 - dc)


@pytest.mark.parametrize("space,dc", [("box", 3), ("sphere", 3), ("box", 0), ("sphere", 0)])
def test_dgp_train_views_are_anchor_and_conditional(space, dc):
    """pair_mode 'anchor': view 0 is g(z), view 1 is g(z̃); through g⁻¹ the content agrees (to float32)."""
    ds = build_dataset("dgp", space=space, content_dims=dc, eval_size=10)
    v0, v1 = ds.train_views(200, _rng(4))
    s = ds.sample(200, _rng(4))
    assert torch.equal(v0, s.x)
    z0, z1 = ds.g_inverse(v0.double().numpy()), ds.g_inverse(v1.double().numpy())
    np.testing.assert_allclose(z0, s.state, atol=1e-4)
    np.testing.assert_allclose(z1[:, :dc], z0[:, :dc], atol=2e-4)
    assert np.abs(z1[:, dc:] - z0[:, dc:]).max() > 1e-2


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_dgp_box_style_spread(sigma):
    ds = build_dataset("dgp", space="box", content_dims=3, style_spread=sigma, eval_size=10)
    rng = _rng(1)
    z = rng.uniform(0.4, 0.6, size=(20000, 10))  # away from the edges: the truncation never bites
    diff = ds.sample_conditional(z, rng)[:, 3:] - z[:, 3:]
    assert abs(diff.mean()) < 0.02 * sigma
    np.testing.assert_allclose(diff.std(axis=0), sigma, rtol=0.03)


def test_dgp_box_truncation_keeps_samples_in_box_near_edges():
    ds = build_dataset("dgp", space="box", content_dims=2, style_spread=0.5, eval_size=10)
    z = np.full((2000, 10), 0.01)
    z[:, 5:] = 0.99
    zt = ds.sample_conditional(z, _rng(2))
    assert zt.min() >= 0 and zt.max() <= 1
    np.testing.assert_array_equal(zt[:, :2], z[:, :2])


def _mean_resultant_length(d, kappa):
    """A_d(κ) = I_{d/2}(κ) / I_{d/2−1}(κ), E[μᵀx] for x ~ vMF(μ, κ) on S^{d−1}."""
    return ive(d / 2, kappa) / ive(d / 2 - 1, kappa)


@pytest.mark.parametrize("d,sigma", [(3, 0.3), (3, 1.0), (10, 0.5), (10, 0.2)])
def test_dgp_sphere_vmf_concentration(d, sigma):
    ds = build_dataset("dgp", space="sphere", content_dims=0, latent_dim=d, style_spread=sigma, eval_size=10)
    rng = _rng(3)
    z = ds.sample_latents(20000, rng)
    zt = ds.sample_conditional(z, rng)
    np.testing.assert_allclose(np.linalg.norm(zt, axis=1), 1.0, atol=1e-12)
    cos = np.sum(z * zt, axis=1)
    expected = _mean_resultant_length(d, 1.0 / sigma**2)
    assert cos.mean() == pytest.approx(expected, abs=5 * cos.std() / np.sqrt(len(cos)))
    assert cos.mean() == pytest.approx(expected, rel=0.03)


def test_dgp_sphere_with_content_keeps_style_norm():
    ds = build_dataset("dgp", space="sphere", content_dims=3, latent_dim=10, style_spread=0.5, eval_size=10)
    rng = _rng(5)
    z = ds.sample_latents(5000, rng)
    zt = ds.sample_conditional(z, rng)
    r, rt = np.linalg.norm(z[:, 3:], axis=1), np.linalg.norm(zt[:, 3:], axis=1)
    np.testing.assert_allclose(rt, r, atol=1e-12)
    # the style direction is vMF on its own sphere S^{6} around the anchor's style direction
    cos = np.sum(z[:, 3:] * zt[:, 3:], axis=1) / (r * rt)
    assert cos.mean() == pytest.approx(_mean_resultant_length(7, 4.0), abs=5 * cos.std() / np.sqrt(len(cos)))


def test_dgp_sphere_one_style_dim_flips_with_vmf_probability():
    kappa = 1.0  # sigma = 1
    ds = build_dataset("dgp", space="sphere", content_dims=2, latent_dim=3, style_spread=1.0, eval_size=10)
    rng = _rng(6)
    z = ds.sample_latents(40000, rng)
    zt = ds.sample_conditional(z, rng)
    np.testing.assert_array_equal(np.abs(zt), np.abs(z))
    flipped = np.mean(np.sign(zt[:, 2]) != np.sign(z[:, 2]))
    p = np.exp(-kappa) / (np.exp(kappa) + np.exp(-kappa))
    assert flipped == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / len(z)))


@pytest.mark.parametrize("space", ["box", "sphere"])
@pytest.mark.parametrize("mixing", ["mlp", "linear"])
def test_dgp_g_is_invertible(space, mixing):
    ds = build_dataset("dgp", space=space, mixing=mixing, eval_size=500)
    ev = ds.eval_set()
    z = np.asarray(ev.state, dtype=np.float64)
    np.testing.assert_allclose(ev.latents.numpy(), z.astype(np.float32))
    np.testing.assert_allclose(ds.g_inverse(ds.g(z)), z, atol=1e-8, rtol=0)
    np.testing.assert_allclose(ds.g_inverse(ev.x.double().numpy()), z, atol=1e-4, rtol=0)
    # the observations are g of the latents
    np.testing.assert_allclose(ev.x.numpy(), ds.g(z).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_dgp_mlp_mixing_is_leaky_relu_mlp():
    """g = W3 ∘ lrelu ∘ W2 ∘ lrelu ∘ W1 without bias, computed here independently."""
    ds = build_dataset("dgp", mix_layers=3, slope=0.2, eval_size=10)
    assert len(ds.mixing) == 3
    z = ds.sample_latents(50, _rng())
    x = z.copy()
    for i, w in enumerate(ds.mixing):
        x = x @ w.T
        if i < 2:
            x = np.maximum(x, 0) + 0.2 * np.minimum(x, 0)
    np.testing.assert_allclose(ds.g(z), x, rtol=1e-12, atol=1e-12)
    # g is not linear: g(-z) != -g(z)
    assert not np.allclose(ds.g(-z), -ds.g(z))


@pytest.mark.parametrize("mixing,layers", [("mlp", 1), ("mlp", 3), ("mlp", 5), ("linear", 3)])
def test_dgp_mixing_condition_numbers(mixing, layers):
    ds = build_dataset("dgp", mixing=mixing, mix_layers=layers, eval_size=10)
    assert len(ds.mixing) == (1 if mixing == "linear" else layers)
    for w in ds.mixing:
        assert w.shape == (10, 10)
        assert np.linalg.cond(w) <= ds.max_condition
    # the bound is the cond_percentile-th percentile of random draws: a small percentile gives a small bound
    tight = build_dataset("dgp", mixing=mixing, mix_layers=layers, cond_percentile=5.0, eval_size=10)
    assert tight.max_condition < ds.max_condition
    assert all(np.linalg.cond(w) <= tight.max_condition for w in tight.mixing)


def test_dgp_linear_mixing_is_one_matrix():
    ds = build_dataset("dgp", mixing="linear", mix_layers=4, eval_size=10)
    assert len(ds.mixing) == 1
    z = ds.sample_latents(40, _rng())
    np.testing.assert_allclose(ds.g(z), z @ ds.mixing[0].T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.g(-2.0 * z), -2.0 * ds.g(z), rtol=1e-12, atol=1e-12)


def test_dgp_mixing_deterministic_from_seed():
    a, b = build_dataset("dgp", seed=11, eval_size=10), build_dataset("dgp", seed=11, eval_size=10)
    c = build_dataset("dgp", seed=12, eval_size=10)
    for wa, wb in zip(a.mixing, b.mixing):
        np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(a.mixing[0], c.mixing[0])


def test_dgp_content_dims_above_latent_dim_rejected():
    with pytest.raises(ReprscopeError, match="content_dims"):
        build_dataset("dgp", latent_dim=4, content_dims=5)
    with pytest.raises(ReprscopeError, match="latent_dim"):
        build_dataset("dgp", latent_dim=1, content_dims=0, space="sphere")


@pytest.mark.parametrize("m,kappa", [(2, 5.0), (3, 2.0), (10, 20.0)])
def test_sample_vmf_unit_vectors_and_mean_direction(m, kappa):
    rng = _rng(9)
    mu = rng.standard_normal(m)
    mu /= np.linalg.norm(mu)
    n = 20000
    x = sample_vmf(np.tile(mu, (n, 1)), kappa, rng)
    assert x.shape == (n, m)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    mean = x.mean(axis=0)
    # the mean direction is mu, and the mean resultant length is A_m(κ)
    np.testing.assert_allclose(mean / np.linalg.norm(mean), mu, atol=0.02)
    cos = x @ mu
    assert cos.mean() == pytest.approx(_mean_resultant_length(m, kappa), abs=5 * cos.std() / np.sqrt(n))


def test_sample_vmf_per_row_directions():
    rng = _rng(10)
    mu = rng.standard_normal((6, 4))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x = sample_vmf(np.repeat(mu, 3000, axis=0), 50.0, rng).reshape(6, 3000, 4)
    mean = x.mean(axis=1)
    np.testing.assert_allclose(mean / np.linalg.norm(mean, axis=1, keepdims=True), mu, atol=0.02)


# -- toy sets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blobs", "moons"])
def test_toy_eval_set_has_three_balanced_classes(name):
    ds = build_dataset(name, eval_size=900)
    ev = ds.eval_set()
    assert ds.num_classes == 3 and ds.input_shape == (2,)
    assert ev.labels.dtype == torch.int64
    np.testing.assert_array_equal(np.bincount(ev.labels.numpy(), minlength=3), [300, 300, 300])


def test_blobs_augmented_view_is_nearest_to_its_own_centre():
    ds = build_dataset("blobs", noise=0.05, eval_size=30)
    s = ds.sample(600, _rng(1))
    v = ds.augment(s, _rng(2)).double().numpy()
    d2 = ((v[:, None, :] - ds.centers[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(d2.argmin(1), s.labels.numpy())
    assert not np.allclose(v, s.x.numpy())  # a fresh draw of the class, not the point itself
    # the blob std is the noise parameter
    np.testing.assert_allclose((v - ds.centers[s.labels.numpy()]).std(), 0.05, rtol=0.1)


def _moon_arcs():
    """Dense points on the three arcs of the moons set (class 0 upper at 0, class 1 lower shifted, class 2
    upper at x + 2.5), written down independently of the library."""
    t = np.linspace(0, np.pi, 2000)
    return [np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1),
            np.stack([np.cos(t) + 2.5, np.sin(t)], 1)]


def test_moons_augmented_view_lies_on_its_own_arc():
    ds = build_dataset("moons", noise=0.01, eval_size=30)
    s = ds.sample(600, _rng(3))
    v = ds.augment(s, _rng(4)).double().numpy()
    dist = np.stack([np.sqrt(((v[:, None, :] - arc[None]) ** 2).sum(-1)).min(1) for arc in _moon_arcs()], 1)
    np.testing.assert_array_equal(dist.argmin(1), s.labels.numpy())  # the three arcs do not touch
    assert dist[np.arange(len(v)), s.labels.numpy()].max() < 0.06


@pytest.mark.parametrize("name", ["blobs", "moons"])
def test_toy_augment_follows_the_class_of_each_sample(name):
    """1-NN against a labelled reference set: augmented views are classified as their anchor's class."""
    ds = build_dataset(name, noise=0.02, eval_size=900)
    ref = ds.eval_set()
    s = ds.sample(300, _rng(5))
    v = ds.augment(s, _rng(6))
    nn_label = ref.labels[torch.cdist(v.double(), ref.x.double()).argmin(1)]
    assert (nn_label == s.labels).float().mean() >= 0.99


@pytest.mark.parametrize("shift", [0.0, 2.0])
def test_points3d_augmentation_mean(shift):
    ds = build_dataset("points3d", shift=shift, aug_std=0.1, eval_size=100)
    ev = ds.eval_set()
    np.testing.assert_allclose(ev.x.numpy(), ds.points.astype(np.float32))
    rng = _rng(7)
    mean = np.mean([ds.augment(ev, rng).double().numpy() for _ in range(400)], axis=0)
    expected = ds.points + shift * np.ones(3) / np.sqrt(3)
    np.testing.assert_allclose(mean, expected, atol=0.025)  # 4 sigma: 0.1 / sqrt(400) = 0.005
    # labels name the point
    np.testing.assert_array_equal(ev.labels.numpy(), np.arange(100))


def test_points3d_fixed_points_and_eval_cycles():
    ds = build_dataset("points3d", n_points=7, eval_size=20)
    ev = ds.eval_set()
    np.testing.assert_array_equal(ev.labels.numpy(), np.arange(20) % 7)
    np.testing.assert_allclose(ev.x.numpy(), ds.points[np.arange(20) % 7].astype(np.float32))
    s = ds.sample(50, _rng())
    np.testing.assert_allclose(s.x.numpy(), ds.points[s.labels.numpy()].astype(np.float32))


def test_a_held_out_set_larger_than_the_memory_bound_is_refused_before_it_is_generated():
    from reprscope.data.base import MAX_HELD_OUT_BYTES

    ds = DATASETS.get("shapes")(resolution=518)  # 5000 × 3 × 518² × 5 bytes ≈ 18.7 GiB
    with pytest.raises(ReprscopeError, match=r"18\.7 GiB .* --set data\.eval_size="):
        ds.eval_set()
    assert ds._eval is None
    small = DATASETS.get("shapes")(resolution=518, eval_size=4)
    assert small.eval_set().x.shape == (4, 3, 518, 518) and 4 * 3 * 518 * 518 * 5 < MAX_HELD_OUT_BYTES
