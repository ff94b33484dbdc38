"""Tests of the batched per-sample augmentation (``reprscope.data.augment``): every operation with fixed
per-sample parameters against ``torchvision.transforms.v2.functional`` applied image by image; the random
parameters (torchvision's crop semantics, per-sample draws, determinism from the seed); the whole pipeline
against a per-image torchvision composition; the presets against their papers (Cosentino et al. 2022, arXiv:2205.06926 Table 2, Bardes et al. 2022, arXiv:2105.04906
appendix B.2, BYOL Table 6); and the device-agnostic path (run on the ``meta`` device, where any host sync
would fail)."""
import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from reprscope.data import augment as A
from reprscope.data.augment import AUGMENTATIONS, ViewConfig, ViewParams, get_preset
from reprscope.errors import ReprscopeError

ATOL = 2e-5  # float32 arithmetic in a different order than torchvision's


def _images(n=6, h=20, w=24, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# -- each operation against torchvision ------------------------------------------------------------------------

BOXES = [(0, 0, 20, 24), (3, 5, 9, 7), (2, 1, 17, 20), (10, 12, 10, 12), (0, 4, 20, 3), (5, 0, 1, 24)]


@pytest.mark.parametrize("size", [8, 16, 32])  # down-, mixed and up-scaling
def test_resized_crop_and_flip_match_torchvision(size):
    x = _images()
    boxes = torch.tensor(BOXES, dtype=torch.float64)
    flip = torch.tensor([False, True, False, True, True, False])
    out = A.resized_crop(x, boxes, size, flip)
    assert out.shape == (6, 3, size, size) and out.dtype == torch.float32
    for i, (t, l, h, w) in enumerate(BOXES):
        ref = F.resized_crop(x[i], t, l, h, w, [size, size], antialias=True)
        if flip[i]:
            ref = F.horizontal_flip(ref)
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_resized_crop_of_uint8_is_the_float_result_on_the_0_255_scale():
    x8 = (_images() * 255).round().to(torch.uint8)
    boxes = torch.tensor(BOXES, dtype=torch.float64)
    out = A.resized_crop(x8, boxes, 16)
    ref = A.resized_crop(x8.float() / 255, boxes, 16)
    torch.testing.assert_close(out / 255, ref, atol=ATOL, rtol=0)
    # torchvision's uint8 kernel works in fixed point and rounds to uint8: within one level
    ref8 = F.resized_crop(x8[1], 3, 5, 9, 7, [16, 16], antialias=True)
    assert (out[1] - ref8.float()).abs().max() <= 1.0


def _factors(n):
    return torch.linspace(0.3, 1.7, n)


@pytest.mark.parametrize("name,tv", [("adjust_brightness", F.adjust_brightness), ("adjust_contrast", F.adjust_contrast),
                                     ("adjust_saturation", F.adjust_saturation)])
def test_jitter_factor_ops_match_torchvision(name, tv):
    x = _images()
    f = _factors(6)
    out = getattr(A, name)(x.clone(), f)
    for i in range(6):
        torch.testing.assert_close(out[i], tv(x[i], float(f[i])), atol=ATOL, rtol=0)


def test_adjust_hue_matches_torchvision():
    x = _images(n=7)
    x[6] = 0.4  # a gray image: hue undefined, unchanged
    shifts = torch.tensor([-0.5, -0.3, -0.05, 0.0, 0.1, 0.37, 0.5])
    out = A.adjust_hue(x, shifts)
    for i in range(7):
        torch.testing.assert_close(out[i], F.adjust_hue(x[i], float(shifts[i])), atol=ATOL, rtol=0)
    hsv = A.rgb_to_hsv(x)
    torch.testing.assert_close(A.hsv_to_rgb(hsv), x, atol=ATOL, rtol=0)


def test_grayscale_matches_torchvision():
    x = _images()
    ref = torch.stack([F.rgb_to_grayscale(im, num_output_channels=3) for im in x])
    torch.testing.assert_close(A.rgb_to_grayscale(x).expand_as(x), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", [3, 9, 23])
def test_gaussian_blur_per_sample_sigma_matches_torchvision(kernel):
    x = _images(h=32, w=30)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0, 3.3])
    out = A.gaussian_blur(x, sigma, kernel)
    for i in range(6):
        ref = F.gaussian_blur(x[i], [kernel, kernel], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_blur_kernel_is_ten_percent_of_the_side():
    assert [A.blur_kernel_size(s) for s in (224, 96, 64, 32, 16, 8)] == [23, 9, 7, 3, 1, 1]


def test_solarize_matches_torchvision():
    x = _images()
    apply = torch.tensor([True, False, True, True, False, True])
    out = A.solarize(x, apply, 0.5)
    for i in range(6):
        torch.testing.assert_close(out[i], F.solarize(x[i], 0.5) if apply[i] else x[i], atol=0, rtol=0)


def test_normalize():
    x = _images()
    out = A.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    torch.testing.assert_close(out, F.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]), atol=ATOL, rtol=0)


_TV_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def _jitter_reference(x, factors, order, apply):
    out = []
    for i in range(len(x)):
        im = x[i]
        if apply[i]:
            for op in (range(4) if order is None else order[i].tolist()):
                im = _TV_JITTER[op](im, float(factors[i, op]))
        out.append(im)
    return torch.stack(out)


def test_color_jitter_per_sample_order_matches_torchvision_in_that_order():
    x = _images(n=24)
    g = _g(3)
    factors = torch.stack([0.5 + torch.rand(24, generator=g), 0.5 + torch.rand(24, generator=g),
                           0.5 + torch.rand(24, generator=g), 0.2 * (torch.rand(24, generator=g) - 0.5)], 1)
    order = torch.argsort(torch.rand(24, 4, generator=g), dim=1)
    apply = torch.rand(24, generator=g) < 0.8
    ref = _jitter_reference(x, factors, order, apply)
    torch.testing.assert_close(A.color_jitter(x, factors, order, apply), ref, atol=ATOL, rtol=0)
    # the sync-free path used on accelerators gives the same views
    torch.testing.assert_close(A._jitter_where(x, factors, order, apply), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(A.color_jitter(x, factors, None, apply), _jitter_reference(x, factors, None, apply),
                               atol=ATOL, rtol=0)


def test_whole_view_with_fixed_parameters_matches_a_torchvision_composition():
    x8 = (_images(n=8, h=28, w=26) * 255).round().to(torch.uint8)
    cfg = ViewConfig(p_blur=0.5, p_solarize=0.5)
    p = A.sample_view_params(8, cfg, _g(11), 28, 26)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    out = A.apply_view(x8, p, cfg, 16, mean, std)
    k = A.blur_kernel_size(16)
    for i in range(8):
        t, l, h, w = (int(v) for v in p.boxes[i])
        im = F.resized_crop(x8[i].float() / 255, t, l, h, w, [16, 16], antialias=True)
        if p.flip[i]:
            im = F.horizontal_flip(im)
        im = _jitter_reference(im[None], p.factors[i:i + 1], p.order[i:i + 1], p.jitter[i:i + 1])[0]
        if p.gray[i]:
            im = F.rgb_to_grayscale(im, num_output_channels=3)
        if p.blur[i] and k > 1:
            im = F.gaussian_blur(im, [k, k], [float(p.sigma[i])] * 2)
        if p.solarize[i]:
            im = F.solarize(im, 0.5)
        im = F.normalize(im, mean, std)
        torch.testing.assert_close(out[i], im, atol=1e-4, rtol=0)


# -- random parameters -------------------------------------------------------------------------------------------


def test_crop_boxes_follow_torchvision_semantics():
    n = 4000
    # 64 x 64, area <= 0.3, ratio <= 2: the longest side is <= sqrt(0.3 * 64² * 2) < 64, no try is ever rejected
    p = A.sample_view_params(n, ViewConfig(crop_scale=(0.1, 0.3), crop_ratio=(0.5, 2.0)), _g(5), 64, 64)
    t, l, h, w = p.boxes.unbind(1)
    assert torch.equal(p.boxes, p.boxes.round())
    assert bool(((t >= 0) & (l >= 0) & (t + h <= 64) & (l + w <= 64)).all())
    frac, ratio = h * w / 64**2, w / h
    # integer rounding of the sides moves area and ratio a little past the bounds
    assert frac.min() > 0.1 * 0.85 and frac.max() < 0.3 * 1.15
    assert ratio.min() > 0.5 * 0.85 and ratio.max() < 2.0 * 1.15
    assert abs(float(frac.mean()) - 0.2) < 0.01  # area fraction uniform in [0.1, 0.3]
    assert abs(float(torch.log(ratio).mean())) < 0.03  # log-ratio uniform in [log 0.5, log 2]
    assert float(torch.log(ratio).std()) == pytest.approx(2 * math.log(2) / math.sqrt(12), rel=0.05)
    # offsets uniform over the valid positions
    for off, ext in ((t, h), (l, w)):
        assert 0.47 < float((off / (64 - ext)).mean()) < 0.53
    # a tall narrow image (64 x 32) rejects the wide tries: torchvision's boxes are then taller on average
    q = A.sample_view_params(n, ViewConfig(crop_scale=(0.5, 1.0)), _g(6), 64, 32)
    assert float(torch.log(q.boxes[:, 3] / q.boxes[:, 2]).mean()) < -0.05


def test_crop_falls_back_to_the_central_crop_with_ratio_clamped():
    # a 4 x 400 strip: no try of ratio in [3/4, 4/3] fits, the fallback is the centred 4 x round(4 * 4/3) = 4 x 5 box
    p = A.sample_view_params(50, ViewConfig(), _g(), 4, 400)
    assert torch.equal(p.boxes, torch.tensor([[0.0, 197.0, 4.0, 5.0]], dtype=torch.float64).expand(50, 4))
    u = torch.zeros(1, 10, dtype=torch.float64)
    box = A.crop_boxes(u, u, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([300.0], dtype=torch.float64),
                       torch.tensor([10.0], dtype=torch.float64), (1.0, 1.0), (3 / 4, 4 / 3))
    assert box.tolist() == [[143.0, 0.0, 13.0, 10.0]]  # too tall: width kept, height = round(10 / (3/4)), centred


def test_every_sample_gets_its_own_parameters():
    n = 2000
    cfg = get_preset("byol").view(1)  # blur p = 0.1, solarize p = 0.2
    p = A.sample_view_params(n, cfg, _g(1), 32, 32)
    for mask, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.1), (p.solarize, 0.2)):
        assert abs(float(mask.float().mean()) - prob) < 4 * math.sqrt(prob * (1 - prob) / n)
    assert len(torch.unique(p.boxes, dim=0)) > n // 4
    lo = torch.tensor([0.6, 0.6, 0.8, -0.1])
    hi = torch.tensor([1.4, 1.4, 1.2, 0.1])
    assert bool(((p.factors >= lo) & (p.factors <= hi)).all())
    assert len(torch.unique(p.factors[:, 3])) == n
    assert len(torch.unique(p.order, dim=0)) == 24  # every order of the four jitter operations occurs
    assert float(p.sigma.min()) >= 0.1 and float(p.sigma.max()) <= 2.0
    # two copies of one image get different views within a batch
    x = _images(n=1).repeat(4, 1, 1, 1)
    v = A.augment_images(x, get_preset("simclr").view(0), 16, _g(2))
    assert all(not torch.equal(v[0], v[i]) for i in range(1, 4))


def test_views_are_deterministic_from_the_seed_and_shaped():
    x8 = (_images(n=5) * 255).to(torch.uint8)
    cfg = get_preset("vicreg").view(0)
    a = A.augment_images(x8, cfg, 12, A.torch_generator(np.random.default_rng(7)), [0.5] * 3, [0.25] * 3)
    b = A.augment_images(x8, cfg, 12, A.torch_generator(np.random.default_rng(7)), [0.5] * 3, [0.25] * 3)
    c = A.augment_images(x8, cfg, 12, A.torch_generator(np.random.default_rng(8)), [0.5] * 3, [0.25] * 3)
    assert a.shape == (5, 3, 12, 12) and a.dtype == torch.float32 and a.device == x8.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    raw = A.augment_images(x8.float() / 255, cfg, 12, _g(1))  # float input, no normalisation: stays in [0, 1]
    assert raw.min() >= 0 and raw.max() <= 1
    assert A.augment_images(x8[:0], cfg, 12, _g()).shape == (0, 3, 12, 12)
    with pytest.raises(ReprscopeError, match=r"\(n, 3, H, W\)"):
        A.augment_images(x8[:, :1], cfg, 12, _g())


def test_chunked_canvas_gives_the_same_views(monkeypatch):
    x = _images(n=7, h=30, w=30)
    cfg = get_preset("byol").view(0)
    whole = A.augment_images(x, cfg, 16, _g(4))
    monkeypatch.setattr(A, "_CHUNK_BYTES", 3 * 30 * 30 * 4 * 2)  # two images at a time
    torch.testing.assert_close(A.augment_images(x, cfg, 16, _g(4)), whole, atol=1e-6, rtol=0)


def test_padded_canvas_views_equal_views_of_each_image_alone():
    ims = [torch.rand(3, h, w, generator=_g(h)) for h, w in ((20, 30), (31, 12), (8, 8))]
    canvas, sizes = A.pad_to_canvas(ims)
    assert canvas.shape == (3, 3, 31, 30) and sizes.tolist() == [[20, 30], [31, 12], [8, 8]]
    cfg = get_preset("simclr").view(0)
    p = A.sample_view_params(3, cfg, _g(9), sizes[:, 0].double(), sizes[:, 1].double())
    out = A.apply_view(canvas, p, cfg, 10)
    for i, im in enumerate(ims):
        alone = A.apply_view(im[None], p.select(slice(i, i + 1)), cfg, 10)
        torch.testing.assert_close(out[i:i + 1], alone, atol=ATOL, rtol=0)


def test_hot_path_needs_no_host_sync_on_a_non_cpu_device():
    """The ``meta`` device has no data: any .item(), .cpu(), nonzero or numpy call in the pipeline would fail."""
    n, dev = 4, torch.device("meta")
    cfg = get_preset("byol").view(1)
    p = A.sample_view_params(n, cfg, _g(), 40, 36)
    pm = ViewParams(**{k: v.to(dev) for k, v in vars(p).items()})
    out = A.apply_view(torch.empty(n, 3, 40, 36, dtype=torch.uint8, device=dev), pm, cfg, 24, [0.5] * 3, [0.2] * 3)
    assert out.shape == (n, 3, 24, 24) and out.device.type == "meta" and out.dtype == torch.float32


# -- presets -----------------------------------------------------------------------------------------------------


def test_preset_registry():
    assert {"simclr", "byol", "vicreg", "small", "moderate", "large", "none"} <= set(AUGMENTATIONS.names())
    for name in AUGMENTATIONS.names():
        pre = get_preset(name)
        assert pre.name == name and pre.summary and pre.source and pre.views
        assert pre.to_dict()["name"] == name
    with pytest.raises(ReprscopeError, match="unknown augmentation 'nope'; available: .*byol"):
        get_preset("nope")
    assert get_preset("none").clean and not get_preset("simclr").clean


@pytest.mark.parametrize("name,s,flip,scale", [("large", 0.5, True, (0.08, 1.0)), ("moderate", 0.25, True, (0.5, 1.0)),
                                               ("small", 0.05, False, (0.9, 1.0))])
def test_paper_002_table_2(name, s, flip, scale):
    """Cosentino et al., Table 2: flip ✓/✓/✗, grayscale p = 0.2, resized-crop scale 0.08-1 / 0.5-1 / 0.9-1,
    colour jitter p = 0.8 with brightness = contrast = saturation = 0.8 s and hue = 0.2 s, s = 0.5 / 0.25 / 0.05."""
    v = get_preset(name).views
    assert len(v) == 1
    v = v[0]
    assert v.crop_scale == scale and v.p_flip == (0.5 if flip else 0.0) and v.p_gray == 0.2 and v.p_jitter == 0.8
    expect = {"large": (0.4, 0.1), "moderate": (0.2, 0.05), "small": (0.04, 0.01)}[name]
    assert (v.brightness, v.contrast, v.saturation, v.hue) == (expect[0], expect[0], expect[0], expect[1])
    assert v.brightness == pytest.approx(0.8 * s) and v.hue == pytest.approx(0.2 * s)
    assert v.p_blur == 0 and v.p_solarize == 0


def test_simclr_byol_vicreg_recipes():
    (s,) = get_preset("simclr").views  # CIFAR: no blur
    assert (s.crop_scale, s.brightness, s.contrast, s.saturation, s.hue, s.p_jitter, s.p_gray, s.p_blur) == \
        ((0.08, 1.0), 0.4, 0.4, 0.4, 0.1, 0.8, 0.2, 0.0)
    b1, b2 = get_preset("byol").views  # Grill et al. Table 6: asymmetric blur and solarisation
    assert (b1.p_blur, b1.p_solarize, b2.p_blur, b2.p_solarize) == (1.0, 0.0, 0.1, 0.2)
    assert (b1.brightness, b1.contrast, b1.saturation, b1.hue, b1.blur_sigma) == (0.4, 0.4, 0.2, 0.1, (0.1, 2.0))
    (v,) = get_preset("vicreg").views  # Bardes et al. 2022 appendix B.2, symmetric
    assert (v.crop_scale, v.p_flip, v.brightness, v.contrast, v.saturation, v.hue, v.p_jitter, v.p_gray, v.p_blur,
            v.p_solarize) == ((0.2, 1.0), 0.5, 0.4, 0.4, 0.2, 0.1, 0.8, 0.2, 0.5, 0.1)
    assert get_preset("byol").view(2) is b1 and get_preset("vicreg").view(1) is v


def test_byol_views_differ_in_blur_and_solarisation():
    x = _images(n=400, h=32, w=32)
    p0 = A.sample_view_params(400, get_preset("byol").view(0), _g(1), 32, 32)
    p1 = A.sample_view_params(400, get_preset("byol").view(1), _g(1), 32, 32)
    assert bool(p0.blur.all()) and not bool(p0.solarize.any())
    assert 0.04 < float(p1.blur.float().mean()) < 0.17 and 0.13 < float(p1.solarize.float().mean()) < 0.28
    assert A.apply_view(x, p0, get_preset("byol").view(0), 32).shape == (400, 3, 32, 32)


@pytest.mark.parametrize("bad,match", [
    ({"p_flip": 1.5}, "'p_flip'"), ({"hue": 0.7}, "'hue'"), ({"crop_scale": (0.5, 0.1)}, "'crop_scale'"),
    ({"jitter_order": "x"}, "'jitter_order'"), ({"brightness": -1}, "'brightness'"), ({"blur_sigma": (0, 1)}, "'blur_sigma'"),
])
def test_view_config_validation(bad, match):
    with pytest.raises(ReprscopeError, match=match):
        ViewConfig(**bad)
