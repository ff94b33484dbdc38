"""MAE, U-MAE and M-MAE (reprscope/methods/mae.py): masking, patch targets, the reconstruction loss and both
regularisers against naive computations written out independently; the analysis contract (the encoder's
full-image features are untouched); DDP-consistent masking; loss decrease on an easy problem."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from reprscope.distributed import DistInfo
from reprscope.errors import ReprscopeError
from reprscope.methods import METHODS, build_method
from reprscope.methods import mae as M
from reprscope.models.bundle import ModelBundle
from reprscope.models.encoders import build_backbone

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def vit_bundle(img: int = 16, patch: int = 4, **extra) -> ModelBundle:
    enc = build_backbone("vit_tiny_patch16_224", [3, img, img], {"img_size": img, "patch_size": patch, **TINY, **extra})
    return ModelBundle(enc, {})


def method(name: str = "mae", bundle: ModelBundle | None = None, **cfg):
    m = build_method(name, {**DECODER, **cfg})
    if bundle is not None:
        m.setup(bundle)
    return m


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random low-frequency images: a 3×3 random grid upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 3, 3, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def test_registered_with_docs():
    for name in ("mae", "umae", "mmae"):
        cls = METHODS.get(name)
        assert cls.summary and cls.paper and cls.default_heads == {}
        assert cls.smoke_sets["data"] == "shapes"


# -- masking ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,ratio,expected", [(64, 0.75, 16), (16, 0.75, 4), (196, 0.75, 49), (10, 0.9, 1),
                                                   (10, 0.7, 3), (16, 0.5, 8)])
def test_num_visible_is_rounded(length, ratio, expected):
    assert M.num_visible(length, ratio) == expected == round(length * (1 - ratio))


def test_random_masking_keeps_exactly_k_different_per_sample_and_restores_order():
    torch.manual_seed(0)
    n, length, keep = 6, 16, 4
    noise = torch.rand(n, length)
    ids_keep, mask, ids_restore = M.random_masking(noise, keep)
    assert ids_keep.shape == (n, keep) and mask.shape == (n, length) and ids_restore.shape == (n, length)
    for b in range(n):
        kept = set(ids_keep[b].tolist())
        assert len(kept) == keep
        assert kept == {i for i in range(length) if mask[b, i] == 0}
        assert mask[b].sum() == length - keep
        assert kept == set(torch.topk(-noise[b], keep).indices.tolist())  # the smallest noise stays
    assert len({tuple(sorted(r)) for r in ids_keep.tolist()}) > 1, "every sample got the same mask"
    # unshuffle(shuffle(x)) = x: the sequence [visible, removed] gathered with ids_restore is x again
    x = torch.randn(n, length, 5)
    ids_shuffle = torch.argsort(noise, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, 5))
    assert torch.equal(M.unshuffle(shuffled, ids_restore), x)
    assert torch.equal(shuffled[:, :keep], torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, 5)))


def test_method_masks_come_from_the_global_rng():
    bundle = vit_bundle()
    m = method("mae", bundle)
    torch.manual_seed(3)
    a = m.masks(5, torch.device("cpu"))
    b = m.masks(5, torch.device("cpu"))
    torch.manual_seed(3)
    again = m.masks(5, torch.device("cpu"))
    assert all(torch.equal(u, v) for u, v in zip(a, again))
    assert not torch.equal(a[1], b[1])
    assert a[0].shape == (5, 4)  # 16 patches, ratio 0.75


@pytest.mark.parametrize("blocks", [1, 2])
def test_ddp_ranks_mask_their_rows_of_the_global_batch(monkeypatch, blocks):
    """Rank r of 2 masks its rows of every block (view) exactly as one process masks the global batch."""
    bundle = vit_bundle()
    m = method("mae", bundle)
    torch.manual_seed(1)
    whole = m.masks(8, torch.device("cpu"), blocks)
    for rank in (0, 1):
        monkeypatch.setattr(M.dist, "info", lambda r=rank: DistInfo(rank=r, world_size=2))
        torch.manual_seed(1)
        part = m.masks(4, torch.device("cpu"), blocks)
        for w, p in zip(whole, part):
            rows = torch.cat([w[8 * k + 4 * rank:8 * k + 4 * rank + 4] for k in range(blocks)])
            assert torch.equal(rows, p)


# -- patches and targets ------------------------------------------------------------------------------------


def test_patchify_round_trip_and_layout():
    imgs = torch.randn(2, 3, 8, 12)
    p = M.patchify(imgs, (4, 4))
    assert p.shape == (2, 6, 48)
    assert torch.equal(M.unpatchify(p, (4, 4), (2, 3), 3), imgs)
    for b, i, j in itertools.product(range(2), range(2), range(3)):
        block = imgs[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)  # rows, cols, channel
        assert torch.equal(p[b, 3 * i + j], block)
    with pytest.raises(ReprscopeError, match="9×8"):
        M.patchify(torch.zeros(1, 3, 9, 8), (5, 4))


def test_patch_targets_are_in_the_vit_token_order():
    """Token l of the ViT's patch embedding is the linear map of patchify's patch l."""
    bundle = vit_bundle(img=16, patch=4)
    pe = bundle.encoder.model.patch_embed
    x = torch.randn(2, 3, 16, 16)
    w = pe.proj.weight.permute(0, 2, 3, 1).reshape(pe.proj.weight.shape[0], -1)  # (D, ph·pw·C)
    expected = M.patchify(x, (4, 4)) @ w.T + pe.proj.bias
    torch.testing.assert_close(pe(x), expected, atol=1e-5, rtol=1e-5)


def test_norm_pix_target_by_hand():
    t = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]])
    got = M.normalize_patches(t)
    var = (1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3  # unbiased
    hand = [(v - 2.5) / math.sqrt(var + 1e-6) for v in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(got[0, 0], torch.tensor(hand), atol=1e-6, rtol=1e-6)
    assert torch.equal(got[0, 1], torch.zeros(4))  # a flat patch: 0/sqrt(ε)


def _naive_masked_mse(pred, target, mask):
    total, count = 0.0, 0
    b, length, p = pred.shape
    for i in range(b):
        for j in range(length):
            if mask[i, j] == 1:
                total += sum((float(pred[i, j, k]) - float(target[i, j, k])) ** 2 for k in range(p)) / p
                count += 1
    return total / count


def test_masked_mse_against_a_loop():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.4).float()
    mask[0, 0] = 1
    assert M.masked_mse(pred, target, mask).item() == pytest.approx(_naive_masked_mse(pred, target, mask), rel=1e-5)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_only_removed_patches(norm_pix):
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 3, 8, 8, generator=g)
    pred = torch.randn(2, 4, 48, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    base = M.mae_loss(pred, imgs, mask, (4, 4), norm_pix)
    visible = imgs.clone()
    visible[0, :, 0:4, 4:8] += torch.rand(3, 4, 4, generator=g)  # patch 1 of sample 0: visible
    assert M.mae_loss(pred, visible, mask, (4, 4), norm_pix) == base
    removed = imgs.clone()
    removed[0, :, 4:8, 0:4] += torch.rand(3, 4, 4, generator=g)  # patch 2 of sample 0: removed
    assert M.mae_loss(pred, removed, mask, (4, 4), norm_pix) != base
    target = M.patchify(imgs, (4, 4))
    target = M.normalize_patches(target) if norm_pix else target
    assert base.item() == pytest.approx(_naive_masked_mse(pred, target, mask), rel=1e-5)


# -- regularisers -------------------------------------------------------------------------------------------


def _unit_rows(z):
    rows = []
    for r in z.tolist():
        norm = math.sqrt(sum(v * v for v in r))
        rows.append([v / norm for v in r])
    return rows


@pytest.mark.parametrize("n,d,tau", [(7, 5, 1.0), (5, 9, 1.0), (6, 6, 0.5)])
def test_uniformity_against_a_double_loop(n, d, tau):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d), dtype=torch.float64)
    u = _unit_rows(z)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (sum(a * b for a, b in zip(u[i], u[j])) / tau) ** 2
    assert M.uniformity_square(z, tau).item() == pytest.approx(total / (n * (n - 1)), rel=1e-10)


def _explicit_tcr(z, mu, scale, center):
    """log det of a I_d + c Σ_ij ẑ_i J_ij ẑ_jᵀ built entry by entry, through eigvalsh."""
    n, d = z.shape
    u = torch.tensor(_unit_rows(z), dtype=torch.float64)
    j = torch.eye(n, dtype=torch.float64) - (torch.ones(n, n, dtype=torch.float64) / n if center else 0)
    a, c = (mu, 1.0) if scale == "eq6" else (1.0, mu / d)
    mat = torch.zeros(d, d, dtype=torch.float64)
    for p in range(d):
        for q in range(d):
            mat[p, q] = a * (p == q) + c * sum(u[i, p] * j[i, k] * u[k, q] for i in range(n) for k in range(n))
    return float(torch.log(torch.linalg.eigvalsh(mat)).sum())


@pytest.mark.parametrize("n,d", [(9, 4), (4, 7)])
@pytest.mark.parametrize("scale", M.TCR_SCALES)
@pytest.mark.parametrize("center", [False, True])
def test_total_coding_rate_against_eigvalsh_of_the_explicit_matrix(n, d, scale, center):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    for mu in (1.0, 3.0):
        got = M.total_coding_rate(z, mu, scale, center).item()
        assert got == pytest.approx(_explicit_tcr(z, mu, scale, center), rel=1e-9, abs=1e-9)


def test_tcr_scale_is_validated():
    with pytest.raises(ReprscopeError, match="tcr_scale"):
        M.total_coding_rate(torch.randn(4, 3), 1.0, "paper")
    with pytest.raises(ReprscopeError, match="tcr_scale"):
        build_method("mmae", {"tcr_scale": "paper"})


def _step(name, bundle, x, seed=0, **cfg):
    m, b = method(name, **cfg), copy.deepcopy(bundle)
    torch.manual_seed(5)  # the same decoder initialisation for every method
    m.setup(b)
    torch.manual_seed(seed)
    loss, logs = m.training_step(b, [x, x.flip(-1)], 0, 10)
    return m, b, loss, logs


def test_lambda_zero_equals_plain_mae():
    bundle = vit_bundle()
    x = smooth_images(6, 16)
    _, b0, ref, _ = _step("mae", bundle, x)
    ref.backward()
    for name in ("umae", "mmae"):
        _, b1, loss, logs = _step(name, bundle, x, lam=0.0)
        assert torch.equal(loss, ref), name
        loss.backward()
        for (k, p0), (_, p1) in zip(b0.named_parameters(), b1.named_parameters()):
            if p0.grad is not None:
                assert torch.equal(p0.grad, p1.grad), f"{name}: gradient of {k} differs"


@pytest.mark.parametrize("name", ["umae", "mmae"])
def test_regularised_loss_is_reconstruction_plus_weighted_term_of_visible_features(name):
    bundle = vit_bundle()
    x = smooth_images(6, 16)
    m, b, loss, logs = _step(name, bundle, x, lam=0.3)
    torch.manual_seed(0)
    rec, pooled, _ = m.reconstruct(b, x)
    assert torch.equal(logs["reconstruction"], rec.detach())
    if name == "umae":
        expected = rec + 0.3 * M.uniformity_square(pooled)
        assert logs["uniformity"].item() == pytest.approx(M.uniformity_square(pooled).item(), rel=1e-6)
    else:
        expected = rec - 0.3 * M.total_coding_rate(pooled)
        assert logs["tcr"].item() == pytest.approx(M.total_coding_rate(pooled).item(), rel=1e-6)
    torch.testing.assert_close(loss, expected)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())


def test_vicreg_regularisers_apply_to_the_visible_features():
    from reprscope.methods.losses import covariance_term, variance_term

    bundle = vit_bundle()
    x = smooth_images(6, 16)
    m, b, loss, logs = _step("mae", bundle, x, var_reg=2.0, cov_reg=0.5)
    torch.manual_seed(0)
    rec, pooled, _ = m.reconstruct(b, x)
    torch.testing.assert_close(loss, rec + 2.0 * variance_term(pooled) + 0.5 * covariance_term(pooled))
    assert set(logs) == {"reconstruction", "var_reg", "cov_reg"}


@pytest.mark.parametrize("name", ["mae", "umae", "mmae"])
def test_step_under_bf16_autocast_keeps_losses_in_float32(name):
    bundle = vit_bundle()
    m = method(name, bundle)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, logs = m.training_step(bundle, [smooth_images(6, 16)] * 2, 0, 1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.decoder.parameters())


def test_views_both_reconstructs_both_views():
    bundle = vit_bundle()
    x, y = smooth_images(4, 16, 1), smooth_images(4, 16, 2)
    torch.manual_seed(5)
    m = method("mae", bundle, views="both")
    torch.manual_seed(0)
    loss, _ = m.training_step(bundle, [x, y], 0, 1)
    torch.manual_seed(0)
    rec, pooled, extra = m.reconstruct(bundle, torch.cat([x, y]), 2)
    assert torch.equal(loss, rec) and extra["mask"].shape[0] == 8


# -- the model ----------------------------------------------------------------------------------------------


def test_sincos_positional_embedding_by_hand():
    dim, gh, gw = 8, 2, 3
    table = M.sincos_pos_embed_2d(dim, gh, gw)
    assert table.shape == (gh * gw, dim)
    for r, c in itertools.product(range(gh), range(gw)):
        row = []
        for pos in (c, r):  # first half encodes the column, second half the row (MAE)
            omegas = [1.0 / 10000 ** (k / 2) for k in range(2)]
            row += [math.sin(pos * w) for w in omegas] + [math.cos(pos * w) for w in omegas]
        torch.testing.assert_close(table[r * gw + c], torch.tensor(row, dtype=torch.float32))
    with pytest.raises(ReprscopeError, match="divisible by 4"):
        M.sincos_pos_embed_2d(6, 2, 2)


def test_encoder_full_image_features_are_untouched():
    """Analysis contract: bundle.encoder.forward_features stays the backbone's pooled features of the full image."""
    torch.manual_seed(0)
    bundle = vit_bundle()
    before = copy.deepcopy(bundle.encoder)
    m = method("mae", bundle, fixed_pos_embed=False)
    x = smooth_images(3, 16)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), bundle.encoder.state_dict().values()))
    m.training_step(bundle, [x, x], 0, 1)[0].backward()
    bundle.eval()
    before.eval()
    with torch.no_grad():
        assert torch.equal(bundle.encoder.forward_features(x), before.forward_features(x))
        assert torch.equal(bundle(x)["h"], before.model(x))

    # fixed sin-cos positions: only pos_embed changes (and is frozen); the full-image path is still timm's
    torch.manual_seed(0)
    b2 = vit_bundle()
    ref = copy.deepcopy(b2.encoder)
    method("mae", b2)
    changed = [k for k, v in b2.encoder.state_dict().items() if not torch.equal(v, ref.state_dict()[k])]
    assert changed == ["model.pos_embed"] and not b2.encoder.model.pos_embed.requires_grad
    pos = b2.encoder.model.pos_embed[0]
    assert torch.equal(pos[0], torch.zeros(32)) and torch.equal(pos[1:], M.sincos_pos_embed_2d(32, 4, 4))
    ref.model.pos_embed.data.copy_(b2.encoder.model.pos_embed.data)
    b2.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.equal(b2.encoder.forward_features(x), ref.forward_features(x))


def test_forward_masked_with_all_tokens_equals_forward_features():
    torch.manual_seed(0)
    for extra in ({}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 2, "no_embed_class": True}):
        enc = vit_bundle(**extra).encoder.eval()
        x = smooth_images(3, 16)
        with torch.no_grad():
            full = enc.forward_features(x)
            torch.testing.assert_close(enc.forward_masked(x)[1], full, atol=1e-6, rtol=1e-6)
            # positions travel with the tokens: any order of all tokens gives the same representation
            perm = torch.stack([torch.randperm(16) for _ in range(3)])
            torch.testing.assert_close(enc.forward_masked(x, perm)[1], full, atol=1e-5, rtol=1e-5)
            tokens, pooled = enc.forward_masked(x, perm[:, :4])
            assert tokens.shape == (3, enc.model.num_prefix_tokens + 4, 32) and pooled.shape == (3, 32)


@pytest.mark.parametrize("extra", [{"class_token": False, "global_pool": "avg"}, {"reg_tokens": 2, "no_embed_class": True}])
def test_other_vit_layouts_train(extra):
    bundle = vit_bundle(**extra)
    m = method("umae", bundle)
    loss, logs = m.training_step(bundle, [smooth_images(4, 16)] * 2, 0, 1)
    loss.backward()
    assert torch.isfinite(loss) and m.num_prefix == bundle.encoder.model.num_prefix_tokens


def test_param_groups_carry_adam_betas_and_skip_the_frozen_positions():
    bundle = vit_bundle()
    m = method("mmae", bundle, beta2=0.9)
    (group,) = m.param_groups(bundle)
    assert group["betas"] == (0.9, 0.9)
    ids = {id(p) for p in group["params"]}
    assert id(bundle.encoder.model.pos_embed) not in ids
    assert {id(p) for p in m.decoder.parameters()} <= ids


def test_errors_name_the_problem():
    mlp = ModelBundle(build_backbone("mlp", [12], {"width": 8, "depth": 2}), {})
    with pytest.raises(ReprscopeError, match="ViT backbone"):
        method("mae", mlp)
    with pytest.raises(ReprscopeError, match="projector"):
        build_method("mae").check_model({"projector": [{"type": "linear", "in": 32, "out": 8}]}, 32)
    with pytest.raises(ReprscopeError, match="mask_ratio"):
        method("mae", vit_bundle(), mask_ratio=0.99)  # round(16 · 0.01) = 0 visible
    with pytest.raises(ReprscopeError, match="decoder_heads"):
        method("mae", vit_bundle(), decoder_dim=32, decoder_heads=3)


def _train(m, bundle, batches, steps, lr=3e-3):
    opt = torch.optim.AdamW([p for g in m.param_groups(bundle) for p in g["params"]], lr=lr)
    recs = []
    for step in range(steps):
        x = batches(step)
        loss, logs = m.training_step(bundle, [x, x], step, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recs.append(float(logs["reconstruction"]))
    return recs


@pytest.mark.parametrize("name", ["mae", "umae", "mmae"])
def test_learns_to_fill_in_single_colour_images(name):
    """Fresh single-colour images each step: the removed patches' colour can only come from the visible ones
    through encoder and decoder; predicting the average colour scores its variance, 1/12."""
    torch.manual_seed(0)
    bundle = vit_bundle()
    m = method(name, bundle, norm_pix_loss=False)
    g = torch.Generator().manual_seed(1)
    recs = _train(m, bundle, lambda _s: torch.rand(8, 3, 1, 1, generator=g).expand(8, 3, 16, 16).contiguous(), 150)
    assert sum(recs[-10:]) / 10 < 0.3 / 12, f"{name}: {recs[:3]} … {recs[-3:]}"


def test_normalised_pixel_loss_decreases_on_a_fixed_batch():
    """norm_pix_loss: predicting 0 scores (P − 1)/P = 47/48 on 4×4×3 patches; a few dozen steps on four
    smooth images get well below it."""
    torch.manual_seed(0)
    bundle = vit_bundle()
    m = method("mae", bundle)
    x = smooth_images(4, 16, seed=4)
    recs = _train(m, bundle, lambda _s: x, 100)
    assert sum(recs[-10:]) / 10 < 0.93 < 47 / 48 < sum(recs[:5]) / 5
