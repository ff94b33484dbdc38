"""Tests of the procedural shapes data set (``reprscope.data.shapes``): determinism from the seed, the latents
against what was rendered (mask centroid = position, mask area ∝ scale², principal axis of the ellipse = its
rotation latent, k-fold symmetry of the polygons, object and background colours = their hue / brightness
latents), labels, both pair modes, the device-agnostic renderer and its speed. The registry contract
(shapes, dtypes, spec round trip, parameter validation) runs over every data set in tests/test_data.py."""
import json
import math

import numpy as np
import pytest
import torch

from reprscope.data import DATASETS, build_dataset
from reprscope.data import shapes as S
from reprscope.data.augment import rgb_to_hsv
from reprscope.errors import ReprscopeError

#: area of each class at unit circumradius: ellipse π·1·½, triangle 3√3/4, square 2, star 5·R·r·sin(π/5)
AREA = [math.pi / 2, 3 * math.sqrt(3) / 4, 2.0, 5 * 0.5 * math.sin(math.pi / 5)]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _raw(ds, n, seed=0):
    return ds.sample_raw(n, _rng(seed), classes=np.arange(n) % 4)


def test_registered_with_latents_and_labels():
    assert "shapes" in DATASETS and not DATASETS.meta("shapes").get("on_disk")
    ds = build_dataset("shapes", eval_size=40)
    assert ds.latent_names == S.LATENT_NAMES and ds.has_latents and ds.input_shape == (3, 32, 32)
    assert ds.num_classes == 24 and ds.pair_mode == "two_aug" and ds.content_mask is None
    assert ds.cfg["augment"] == "simclr"  # auto → simclr for pair=augment, recorded in the spec
    assert build_dataset("shapes", eval_size=4, hue_bins=1).num_classes == 4


def test_deterministic_from_the_seed():
    a = build_dataset("shapes", seed=5, eval_size=64).eval_set()
    b = build_dataset("shapes", seed=5, eval_size=64).eval_set()
    c = build_dataset("shapes", seed=6, eval_size=64).eval_set()
    for name in ("x", "latents", "labels", "labels_coarse", "index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.state["images"], b.state["images"])
    assert not torch.equal(a.x, c.x) and not torch.equal(a.latents, c.latents)
    ds = build_dataset("shapes", eval_size=8)
    s1, s2, s3 = ds.sample(32, _rng(1)), ds.sample(32, _rng(1)), ds.sample(32, _rng(2))
    assert torch.equal(s1.x, s2.x) and torch.equal(s1.latents, s2.latents) and not torch.equal(s1.x, s3.x)
    v1, v2 = ds.train_views(16, _rng(3)), ds.train_views(16, _rng(3))
    assert all(torch.equal(p, q) for p, q in zip(v1, v2))


def test_shapes_dtypes_and_fixed_balanced_eval_set():
    ds = build_dataset("shapes", resolution=24, eval_size=50)
    ev = ds.eval_set()
    assert ev.x.shape == (50, 3, 24, 24) and ev.x.dtype == torch.float32 and torch.isfinite(ev.x).all()
    assert ev.latents.shape == (50, 10) and ev.latents.dtype == torch.float32
    assert ev.labels.dtype == torch.int64 and ev.labels_coarse.dtype == torch.int64
    assert ev.state["images"].dtype == torch.uint8 and ev.state["images"].shape == (50, 3, 24, 24)
    assert torch.equal(ev.index, torch.arange(50)) and ds.eval_set() is ev
    assert ev.labels_coarse.tolist() == [i % 4 for i in range(50)]
    # the clean view is the normalised uint8 image
    torch.testing.assert_close(ev.x, (ev.state["images"].float() / 255 - 0.34) / 0.16)
    lat = ev.latents.double()
    for j in (3, 5, 7):  # cos/sin pairs lie on the unit circle
        torch.testing.assert_close(lat[:, j] ** 2 + lat[:, j + 1] ** 2, torch.ones(50, dtype=torch.float64))
    s = ds.sample(20, _rng())
    assert torch.equal(s.index, torch.full((20,), -1)) and s.select(slice(0, 5)).state["z"].shape == (5, 8)


def test_labels_are_class_times_hue_bin():
    ds = build_dataset("shapes", eval_size=4)
    z = _raw(ds, 400)
    fine, coarse = ds.labels_of(z)
    np.testing.assert_array_equal(coarse, z[:, 0].astype(int))
    np.testing.assert_array_equal(fine // 6, coarse)
    # hue bins centred on red, yellow, green, cyan, blue, magenta
    hb = fine % 6
    dist = np.abs(((z[:, 5] - hb / 6) + 0.5) % 1.0 - 0.5)
    assert dist.max() <= 1 / 12 + 1e-12
    z2 = z.copy()
    z2[:4, 5] = [0.0, 0.97, 0.16, 0.5]
    assert ds.labels_of(z2)[0][:4].tolist() == [0, 6 + 0, 12 + 1, 18 + 3]


def _moments(alpha, r):
    grid = (torch.arange(r, dtype=torch.float64) + 0.5) / r
    a = alpha.double()
    m = a.sum((1, 2))
    cx = (a * grid.view(1, 1, r)).sum((1, 2)) / m
    cy = (a * grid.view(1, r, 1)).sum((1, 2)) / m
    dx, dy = grid.view(1, 1, r) - cx.view(-1, 1, 1), grid.view(1, r, 1) - cy.view(-1, 1, 1)
    mu20, mu02, mu11 = [(a * t).sum((1, 2)) / m for t in (dx * dx, dy * dy, dx * dy)]
    return m / r**2, cx, cy, mu20, mu02, mu11


def test_rendered_mask_matches_position_and_scale():
    r = 64
    ds = build_dataset("shapes", resolution=r, eval_size=4)
    z = _raw(ds, 400, seed=1)
    _, alpha = S.render(torch.from_numpy(z), r)
    area, cx, cy, *_ = _moments(alpha, r)
    # the centroid of the coverage is the centre (x, y): every shape is centrally symmetric or a regular polygon
    assert (cx - torch.from_numpy(z[:, 1])).abs().max() < 0.25 / r
    assert (cy - torch.from_numpy(z[:, 2])).abs().max() < 0.25 / r
    # the area scales with scale² with the class's unit-circumradius area
    expect = torch.tensor([AREA[int(c)] for c in z[:, 0]], dtype=torch.float64) * torch.from_numpy(z[:, 3]) ** 2
    assert ((area - expect) / expect).abs().max() < 0.03
    assert ((area - expect) / expect).abs().mean() < 0.01


def test_rendered_rotation_matches_the_rotation_latent():
    r = 64
    ds = build_dataset("shapes", resolution=r, eval_size=4)
    z = _raw(ds, 200, seed=2)
    z[:, 0] = 0  # ellipses: the principal axis angle ψ (mod π) of the mask is θ, so (cos 2ψ, sin 2ψ) = rot latents
    _, alpha = S.render(torch.from_numpy(z), r)
    _, _, _, mu20, mu02, mu11 = _moments(alpha, r)
    psi2 = torch.atan2(2 * mu11, mu20 - mu02)
    lat = torch.from_numpy(S.latents_from_raw(z))
    assert (torch.cos(psi2) - lat[:, 3]).abs().max() < 0.03 and (torch.sin(psi2) - lat[:, 4]).abs().max() < 0.03
    # a k-fold symmetric polygon looks the same at θ and θ + 2π/k (hence the latent cos kθ, sin kθ), not at θ + π/k
    for c in (1, 2, 3):
        zc = _raw(ds, 8, seed=c)
        zc[:, 0] = c
        k = S.SYMMETRY[c]
        turned, half = zc.copy(), zc.copy()
        turned[:, 4] += 2 * math.pi / k
        half[:, 4] += math.pi / k
        base = S.render(torch.from_numpy(zc), r)[1]
        torch.testing.assert_close(S.render(torch.from_numpy(turned), r)[1], base, atol=1e-3, rtol=0)
        assert (S.render(torch.from_numpy(half), r)[1] - base).abs().amax((1, 2)).min() > 0.5
        np.testing.assert_allclose(S.latents_from_raw(turned)[:, 3:5], S.latents_from_raw(zc)[:, 3:5], atol=1e-9)


def _circ(a, b):
    return (a - b + 0.5) % 1.0 - 0.5


def test_rendered_colours_match_hue_and_brightness_latents():
    r = 32
    ds = build_dataset("shapes", resolution=r, eval_size=4)
    z = _raw(ds, 300, seed=3)
    img, alpha = S.render(torch.from_numpy(z), r)
    hsv = rgb_to_hsv(img).double()
    inside, outside = (alpha == 1).unsqueeze(1), (alpha == 0).unsqueeze(1)
    mean_in = (hsv * inside).sum((2, 3)) / inside.sum((2, 3))
    mean_rgb_in = (img.double() * inside).sum((2, 3)) / inside.sum((2, 3))
    hue_of_mean = rgb_to_hsv(mean_rgb_in.float()[:, :, None, None])[:, 0, 0, 0].double()
    assert np.abs(_circ(hue_of_mean.numpy(), z[:, 5])).max() < 1e-3  # the mean object colour has the hue latent
    np.testing.assert_allclose(mean_in[:, 1].numpy(), 0.9, atol=1e-3)
    np.testing.assert_allclose(mean_in[:, 2].numpy(), 0.95, atol=1e-3)
    mean_out = (hsv * outside).sum((2, 3)) / outside.sum((2, 3))
    bg_rgb = (img.double() * outside).sum((2, 3)) / outside.sum((2, 3))
    bg_hue = rgb_to_hsv(bg_rgb.float()[:, :, None, None])[:, 0, 0, 0].double().numpy()
    assert np.abs(_circ(bg_hue, z[:, 6])).max() < 1e-3
    np.testing.assert_allclose(mean_out[:, 2].numpy(), z[:, 7], atol=1e-5)  # value = bg_brightness
    # and the stored uint8 images are these renders, quantised
    ds8 = ds.render_images(z)
    assert (ds8.float() / 255 - img).abs().max() <= 0.5 / 255 + 1e-6


def test_pair_augment_views_are_augmentations_of_the_same_image():
    ds = build_dataset("shapes", eval_size=8)
    s = ds.sample(16, _rng(4))
    v0, v1 = ds.train_views(16, _rng(4))
    assert v0.shape == v1.shape == (16, 3, 32, 32) and not torch.equal(v0, v1) and not torch.equal(v0, s.x)
    none = build_dataset("shapes", eval_size=8, augment="none")
    ev = none.eval_set()
    assert torch.equal(none.augment(ev, _rng()), ev.x)


def test_pair_latent_rerenders_with_style_perturbed_content_kept():
    ds = build_dataset("shapes", pair="latent", eval_size=8, latent_spread=0.05)
    assert ds.pair_mode == "anchor" and ds.cfg["augment"] == "none" and ds.content_mask == S.CONTENT
    z = _raw(ds, 2000, seed=5)
    zt = ds.perturb(z, _rng(6))
    np.testing.assert_array_equal(zt[:, [0, 3, 5]], z[:, [0, 3, 5]])  # class, scale, object hue: exact
    lat, latt = S.latents_from_raw(z), S.latents_from_raw(zt)
    content = np.asarray(S.CONTENT)
    np.testing.assert_allclose(latt[:, content], lat[:, content])
    assert np.all(np.abs(latt[:, ~content] - lat[:, ~content]).max(axis=0) > 1e-3)
    lo, hi = ds.position_range
    assert zt[:, 1:3].min() >= lo and zt[:, 1:3].max() <= hi
    assert ds.bg_range[0] <= zt[:, 7].min() and zt[:, 7].max() <= ds.bg_range[1]
    # the style noise: std = spread x range width (position), 2π·spread in kθ, spread turns in the background hue
    mid = (np.abs(z[:, 1] - 0.5) < 0.1)
    assert np.std((zt - z)[mid, 1]) == pytest.approx(0.05 * (hi - lo), rel=0.15)
    k = np.asarray(S.SYMMETRY)[z[:, 0].astype(int)]
    dphi = np.angle(np.exp(1j * k * (zt[:, 4] - z[:, 4])))
    assert np.std(dphi) == pytest.approx(2 * math.pi * 0.05, rel=0.1)
    assert np.std(_circ(zt[:, 6], z[:, 6])) == pytest.approx(0.05, rel=0.1)
    # training pairs: the clean anchor and a re-rendering of the perturbed latents
    v0, v1 = ds.train_views(12, _rng(7))
    s = ds.sample(12, _rng(7))
    assert torch.equal(v0, s.x) and v1.shape == v0.shape and not torch.equal(v0, v1)
    aug = build_dataset("shapes", pair="latent", augment="simclr", eval_size=8)  # an explicit preset goes on top
    assert aug.cfg["augment"] == "simclr" and aug.augment(aug.eval_set(), _rng()).shape == (8, 3, 32, 32)


def test_parameter_errors():
    with pytest.raises(ReprscopeError, match="'position'.*inside the image"):
        build_dataset("shapes", position=[0.1, 0.9])
    with pytest.raises(ReprscopeError, match="'scale'"):
        build_dataset("shapes", scale=[0.3, 0.2])
    with pytest.raises(ReprscopeError, match="'scale'"):
        build_dataset("shapes", scale=0.2)
    with pytest.raises(ReprscopeError, match="'pair'"):
        build_dataset("shapes", pair="both")
    with pytest.raises(ReprscopeError, match="'mean'"):
        build_dataset("shapes", mean=[0.1, 0.2])


def test_renderer_is_device_agnostic_and_its_paths_agree():
    ds = build_dataset("shapes", eval_size=4)
    z = torch.from_numpy(_raw(ds, 64, seed=8)).float()
    torch.testing.assert_close(S.coverage(z, 20, subsets=True), S.coverage(z, 20, subsets=False), atol=0, rtol=0)
    img, alpha = S.render(z.to("meta"), 20)  # no host sync: the meta device holds no data
    assert img.shape == (64, 3, 20, 20) and alpha.shape == (64, 20, 20) and img.device.type == "meta"


def test_sd_star_and_ellipse_against_closed_forms():
    # along the axis of a star tip (+y): at t = ½ the distance to the edge from the tip V = (0, 1) to the inner
    # vertex W (radius ½, angle π/5) is ½·|V × W| / |W − V|; the centre is nearest to the inner vertices (½);
    # outside, the tip is nearest
    an = math.pi / 5
    wx, wy = 0.5 * math.cos(an), 0.5 * math.sin(an)
    k = wy / math.hypot(1 - wx, wy)
    t = torch.tensor([0.0, 0.5, 1.0, 1.5])
    torch.testing.assert_close(S.sd_star(torch.zeros(4), t, 5, 0.5), torch.tensor([-0.5, -0.5 * k, 0.0, 0.5]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(S.sd_ellipse(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 0.5])),
                               torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    # the square at θ = 0 has a vertex along +y: the diamond |x| + |y| <= 1
    square = S.signed_distance(2, torch.tensor([0.0, 0.5, 0.5, 2.0]), torch.tensor([0.0, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(square, torch.tensor([-1 / math.sqrt(2), -0.5 / math.sqrt(2), 0.0, 1.0]),
                               atol=1e-6, rtol=0)


def test_listed_by_reprscope_list():
    from reprscope.catalog import catalog

    (line,) = [ln for ln in catalog("datasets") if ln.startswith("shapes ")]
    assert "ground-truth latents" in line and "resolution=32" in line and "pair='augment'" in line


def test_extract_stores_latents_and_both_label_levels(tmp_path):
    import h5py

    from reprscope.extract import extract
    from reprscope.formats.base import LoadedModel
    from reprscope.models.bundle import ModelBundle
    from reprscope.models.encoders import build_backbone

    torch.manual_seed(0)
    ds = build_dataset("shapes", eval_size=12)
    bundle = ModelBundle(build_backbone("resnet18", (3, 32, 32)), {})
    model = LoadedModel(bundle=bundle, format="test", method="test", config={}, source="x", sha256="0")
    out = extract(model, ds, tmp_path / "shapes.h5", views=2, batch_size=5, progress=False, seed=1)
    with h5py.File(out, "r") as f:
        assert f["latents"].shape == (12, 10)
        assert json.loads(f["latents"].attrs["names"]) == S.LATENT_NAMES
        np.testing.assert_array_equal(f["labels_coarse"][:], np.arange(12) % 4)
        np.testing.assert_array_equal(f["labels"][:] // 6, f["labels_coarse"][:])
        emb = f["embeddings/encoder"][:]
        assert emb.shape == (3, 12, 512) and np.isfinite(emb).all() and not np.allclose(emb[1], emb[2])
