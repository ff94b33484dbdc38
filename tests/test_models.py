"""Tests of the model parts: heads over the head registry, the MLP encoder, the ModelBundle layer contract
against a forward pass written out by hand, and the cl-ica sanity check (an encoder that is exactly g⁻¹
identifies every latent, a random one does not)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprscope.analyzers import LayerData, run_analyzer
from reprscope.data import build_dataset
from reprscope.errors import ReprscopeError
from reprscope.models import (BACKBONES, HEADS, ModelBundle, build_backbone, build_bundle, build_head, head_dims,
                              head_spec_from_config, pool_features)
from reprscope.models.encoders import MLPEncoder
from reprscope.models.heads import build_layer, head_out_dim

IN_DIM = 6


def _head_cfg(kind, out_dim=7):
    """A config for head ``kind`` that sets out_dim (and a small hidden width) where the kind declares them."""
    names = {p.name for p in HEADS.meta(kind)["params"]}
    cfg = {"kind": kind}
    if "out_dim" in names:
        cfg["out_dim"] = out_dim
    if "hidden_dim" in names:
        cfg["hidden_dim"] = 16
    return cfg


# -- heads -----------------------------------------------------------------------------------------------


def test_head_registry_has_builtin_kinds():
    assert {"none", "linear", "mlp"} <= set(HEADS.names())


@pytest.mark.parametrize("kind", HEADS.names())
def test_every_head_kind_builds_and_runs(kind):
    cfg = _head_cfg(kind)
    spec = head_spec_from_config(cfg, IN_DIM, "projector")
    assert isinstance(spec, list) and all(isinstance(s, dict) and "type" in s for s in spec)
    head = build_head(spec)
    assert isinstance(head, nn.Sequential) and len(head) == len(spec)
    x = torch.randn(5, IN_DIM)
    y = head(x)
    expected = cfg.get("out_dim", IN_DIM)
    assert y.shape == (5, expected)
    assert head_out_dim(spec, IN_DIM) == expected
    assert torch.isfinite(y).all()
    # the spec alone rebuilds the head: same parameter names and shapes
    again = build_head(spec)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}


def test_empty_head_config_is_identity():
    assert head_spec_from_config(None, IN_DIM, "projector") == []
    assert head_spec_from_config({}, IN_DIM, "projector") == []
    x = torch.randn(3, IN_DIM)
    assert torch.equal(build_head([])(x), x)


def test_linear_head_is_one_linear_map():
    spec = head_spec_from_config({"kind": "linear", "out_dim": 4, "bias": False}, IN_DIM, "projector")
    assert spec == [{"type": "linear", "in": IN_DIM, "out": 4, "bias": False}]
    head = build_head(spec)
    assert isinstance(head[0], nn.Linear) and head[0].bias is None
    x = torch.randn(3, IN_DIM)
    torch.testing.assert_close(head(x), x @ head[0].weight.T)


def test_explicit_spec_is_used_as_is():
    spec = [{"type": "linear", "in": IN_DIM, "out": 3, "bias": True}, {"type": "l2norm"}]
    assert head_spec_from_config({"spec": spec}, IN_DIM, "projector") == spec
    y = build_head(spec)(torch.randn(4, IN_DIM))
    torch.testing.assert_close(y.norm(dim=1), torch.ones(4))


def test_mlp_head_with_bn_and_last_bn():
    spec = head_spec_from_config({"kind": "mlp", "out_dim": 5, "hidden_dim": 12, "layers": 3, "bn": True,
                                  "last_bn": True}, IN_DIM, "projector")
    head = build_head(spec)
    types = [type(m) for m in head]
    assert types == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    # hidden BNs are affine, the linear layers before a BN carry no bias, the last BN is affine-free
    assert head[1].affine and head[4].affine
    assert not head[7].affine and head[7].weight is None and head[7].bias is None
    assert head[0].bias is None and head[3].bias is None and head[6].bias is None
    assert head[0].in_features == IN_DIM and head[0].out_features == 12 and head[6].out_features == 5
    head.train()
    y = head(torch.randn(64, IN_DIM))
    torch.testing.assert_close(y.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_mlp_head_without_bn():
    spec = head_spec_from_config({"kind": "mlp", "out_dim": 5, "hidden_dim": 12, "layers": 2, "bn": False,
                                  "activation": "leaky_relu", "slope": 0.3}, IN_DIM, "projector")
    head = build_head(spec)
    assert [type(m) for m in head] == [nn.Linear, nn.LeakyReLU, nn.Linear]
    assert head[0].bias is not None and head[2].bias is not None
    assert head[1].negative_slope == pytest.approx(0.3)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head)


def test_unknown_head_layer_type_and_kind():
    with pytest.raises(ReprscopeError, match="conv"):
        build_layer({"type": "conv"})
    with pytest.raises(ReprscopeError, match="conv"):
        build_head([{"type": "linear", "in": 2, "out": 2}, {"type": "conv"}])
    with pytest.raises(ReprscopeError, match="no-such-head"):
        head_spec_from_config({"kind": "no-such-head"}, IN_DIM, "projector")
    with pytest.raises(ReprscopeError, match="hidden_dimension"):
        head_spec_from_config({"kind": "mlp", "hidden_dimension": 3}, IN_DIM, "projector")
    with pytest.raises(ReprscopeError, match="'out_dim'"):
        head_spec_from_config({"kind": "linear", "out_dim": 0}, IN_DIM, "projector")


# -- the MLP encoder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth,out_dim", [(1, None), (3, None), (4, 5)])
def test_mlp_encoder_structure(depth, out_dim):
    enc = MLPEncoder(IN_DIM, width=8, depth=depth, out_dim=out_dim, slope=0.3)
    assert enc.depth == depth
    assert enc.feature_names == [f"layer{i}" for i in range(1, depth)]
    assert enc.num_features == (out_dim or 8)
    dims = [IN_DIM] + [8] * (depth - 1) + [out_dim or 8]
    for i in range(depth):
        layer = getattr(enc, f"layer{i + 1}")
        assert isinstance(layer, nn.Sequential) and len(layer) == 2
        assert isinstance(layer[0], nn.Linear) and isinstance(layer[1], nn.LeakyReLU)
        assert (layer[0].in_features, layer[0].out_features) == (dims[i], dims[i + 1])
        assert layer[1].negative_slope == pytest.approx(0.3)
    # forward, written out: Linear then LeakyReLU after every layer (including the last)
    x = torch.randn(4, IN_DIM)
    h = x
    for i in range(depth):
        lin = getattr(enc, f"layer{i + 1}")[0]
        h = F.leaky_relu(h @ lin.weight.T + lin.bias, 0.3)
    torch.testing.assert_close(enc.forward_features(x), h)
    torch.testing.assert_close(enc(x), h)


def test_mlp_encoder_bias_flag_and_registry():
    enc = MLPEncoder(IN_DIM, width=4, depth=2, bias=False)
    assert all(getattr(enc, f"layer{i}")[0].bias is None for i in (1, 2))
    assert "mlp" in BACKBONES.names()
    built = build_backbone("mlp", [IN_DIM], {"width": "9", "depth": "2"})  # strings as from --set
    assert isinstance(built, MLPEncoder) and built.num_features == 9 and built.depth == 2
    with pytest.raises(ReprscopeError, match="depth"):
        build_backbone("mlp", [IN_DIM], {"depth": 0})
    with pytest.raises(ReprscopeError, match="no-such-backbone"):
        build_backbone("no-such-backbone", [IN_DIM])


def test_mlp_encoder_flattens_inputs():
    enc = MLPEncoder(6, width=4, depth=2)
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(enc(x), enc(x.reshape(3, 6)))


# -- the bundle ------------------------------------------------------------------------------------------


def _bundle(seed=0, predictor=True, proj_layers=2):
    torch.manual_seed(seed)
    enc = MLPEncoder(IN_DIM, width=8, depth=3)
    heads = {"projector": head_spec_from_config({"kind": "mlp", "out_dim": 5, "hidden_dim": 10,
                                                 "layers": proj_layers}, 8, "projector")}
    if predictor:
        heads["predictor"] = head_spec_from_config({"kind": "mlp", "out_dim": 5, "hidden_dim": 7, "bn": False,
                                                    "activation": "gelu"}, 5, "predictor")
    b = ModelBundle(enc, heads)
    # non-trivial BN running statistics so eval mode is not the identity
    with torch.no_grad():
        for m in b.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return b


def test_layer_infos_order_and_spaces():
    b = _bundle(proj_layers=3)
    infos = b.layer_infos()
    got = [(i.name, i.space) for i in infos]
    assert got == [
        ("encoder.layer1", "intermediate"), ("encoder.layer2", "intermediate"), ("encoder", "encoder"),
        ("projector.2", "projector"), ("projector.5", "projector"), ("projector", "projector"),
        ("predictor.1", "predictor"), ("predictor", "predictor"),
    ]
    assert [i.order for i in infos] == list(range(len(infos)))


def test_layer_infos_without_heads():
    b = ModelBundle(MLPEncoder(IN_DIM, width=4, depth=2), {"projector": []})
    assert [(i.name, i.space) for i in b.layer_infos()] == [("encoder.layer1", "intermediate"), ("encoder", "encoder")]
    assert not b.has("predictor")
    out = b(torch.randn(3, IN_DIM))
    torch.testing.assert_close(out["z"], out["h"])


def _manual_layers(b, x):
    """Every layer of ``_bundle(proj_layers=3)`` computed by hand from the modules."""
    enc = b.encoder
    out = {}
    a1 = enc.layer1(x)
    a2 = enc.layer2(a1)
    h = enc.layer3(a2)
    out["encoder.layer1"], out["encoder.layer2"], out["encoder"] = a1, a2, h
    # the projector's hidden layers are the activations (positions 2 and 5 of linear, bn, relu, …)
    out["projector.2"] = b.projector[:3](h)
    out["projector.5"] = b.projector[:6](h)
    z = b.projector(h)
    out["projector"] = z
    out["predictor.1"] = b.predictor[:2](z)
    out["predictor"] = b.predictor(z)
    return out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_layers_equal_manual_forward(mode):
    b = _bundle(proj_layers=3)
    getattr(b, mode)()
    x = torch.randn(16, IN_DIM)
    with torch.no_grad():
        ref = _manual_layers(b, x)
        names = [i.name for i in b.layer_infos()]
        assert set(names) == set(ref)
        allout = b.forward_layers(x, names)
        assert list(allout) == names
        for name in names:
            torch.testing.assert_close(allout[name], ref[name], msg=name)
            one = b.forward_layers(x, [name])  # each layer alone, too
            assert list(one) == [name]
            torch.testing.assert_close(one[name], ref[name], msg=name)
        # the training forward agrees
        fwd = b(x)
        torch.testing.assert_close(fwd["h"], ref["encoder"])
        torch.testing.assert_close(fwd["z"], ref["projector"])
        torch.testing.assert_close(fwd["p"], ref["predictor"])
    # no hooks are left behind
    assert all(not m._forward_hooks for m in b.modules())


def test_forward_layers_shapes_and_head_dims():
    b = _bundle()
    out = b.forward_layers(torch.randn(4, IN_DIM), ["encoder.layer1", "encoder", "projector.2", "projector", "predictor"])
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "encoder.layer1": (4, 8), "encoder": (4, 8), "projector.2": (4, 10), "projector": (4, 5), "predictor": (4, 5)}
    assert head_dims(b) == {"encoder": 8, "projector": 5, "predictor": 5}


def test_unknown_layer_name_is_rejected():
    b = _bundle()
    with pytest.raises(ReprscopeError, match="encoder.layer9"):
        b.resolve_layers(["encoder", "encoder.layer9"])
    with pytest.raises(ReprscopeError, match="teacher"):
        b.resolve_layers(["teacher"])
    assert [i.name for i in b.resolve_layers(["projector", "encoder"])] == ["projector", "encoder"]
    assert [i.name for i in b.resolve_layers(None)] == [i.name for i in b.layer_infos()]


@pytest.mark.parametrize("bad", ["bogus", "encoder.layer9", "projector.9", "predictor"])
def test_forward_layers_unknown_name_is_reprscope_error(bad):
    b = _bundle(predictor=bad != "predictor")
    with pytest.raises(ReprscopeError, match=bad):
        b.forward_layers(torch.randn(2, IN_DIM), ["encoder.layer1", bad])
    assert all(not m._forward_hooks for m in b.modules())  # a failed call leaves no hooks behind


def test_pool_features():
    t4 = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(pool_features(t4), torch.stack([t4[i].reshape(3, -1).mean(1) for i in range(2)]))
    t3 = torch.randn(2, 7, 3)  # (B, tokens, d)
    torch.testing.assert_close(pool_features(t3), torch.stack([t3[i].sum(0) / 7 for i in range(2)]))
    t2 = torch.randn(2, 3)
    assert pool_features(t2) is t2
    assert pool_features(t4).shape == (2, 3) and pool_features(t3).shape == (2, 3)


def test_build_bundle_from_config():
    heads = {"projector": head_spec_from_config({"kind": "linear", "out_dim": 3}, 4, "projector")}
    b = build_bundle({"backbone": "mlp", "backbone_kwargs": {"width": 4, "depth": 2}, "heads": heads}, [IN_DIM])
    keys = set(b.state_dict())
    assert {"encoder.layer1.0.weight", "encoder.layer2.0.weight", "projector.0.weight"} <= keys
    assert all(k.split(".")[0] in ("encoder", "projector") for k in keys)
    assert b.head_specs == heads
    assert b(torch.randn(2, IN_DIM))["z"].shape == (2, 3)


# -- the cl-ica sanity check -----------------------------------------------------------------------------

D, L, SLOPE = 10, 3, 0.2


def _r2(ds, emb):
    ev = ds.eval_set()
    data = LayerData(layer="x", space="encoder", views=["clean"], embeddings=np.asarray(emb, dtype=np.float64)[None],
                     latents=ev.latents.numpy(), latent_names=list(ds.latent_names),
                     content_mask=np.asarray(ds.content_mask))
    res = run_analyzer("identifiability", data)
    r2 = {r["index"]: r["value"] for r in res.rows if r["metric"] == "r2"}
    assert set(r2) == set(ds.latent_names)
    return r2


def _inverse_bundle(ds):
    """g⁻¹ as a bundle: an encoder of L−1 (Linear W⁻¹ + LeakyReLU(1/a)) layers undoes W_L, …, W_2 and the
    LeakyReLUs between them; a bias-free linear projector applies the last inverse W_1⁻¹."""
    inv = [np.linalg.inv(w) for w in ds.mixing]  # mixing = [W_1, …, W_L], x = W_L lrelu(… lrelu(W_1 z))
    enc = MLPEncoder(in_dim=D, width=D, depth=L - 1, slope=1.0 / SLOPE, bias=False).double()
    with torch.no_grad():
        for i in range(L - 1):
            getattr(enc, f"layer{i + 1}")[0].weight.copy_(torch.from_numpy(inv[L - 1 - i]))
    b = ModelBundle(enc, {"projector": [{"type": "linear", "in": D, "out": D, "bias": False}]}).double()
    with torch.no_grad():
        b.projector[0].weight.copy_(torch.from_numpy(inv[0]))
    return b


@pytest.mark.parametrize("space", ["box", "sphere"])
def test_cl_ica_sanity_inverse_encoder_identifies_latents(space):
    ds = build_dataset("dgp", space=space, latent_dim=D, content_dims=5, mixing="mlp", mix_layers=L, slope=SLOPE,
                       eval_size=2000)
    ev = ds.eval_set()
    b = _inverse_bundle(ds).eval()
    with torch.no_grad():
        out = b.forward_layers(ev.x.double(), ["encoder", "projector"])
    # the bundle is g⁻¹ exactly (up to the float32 rounding of the observations)
    np.testing.assert_allclose(out["projector"].numpy(), ev.state, atol=1e-4)
    r2 = _r2(ds, out["projector"].numpy())
    assert min(r2.values()) >= 0.999, r2

    # …and a random untrained encoder of the same shape does not identify every latent
    torch.manual_seed(0)
    rand = MLPEncoder(in_dim=D, width=D, depth=L, slope=SLOPE)
    with torch.no_grad():
        r2_rand = _r2(ds, rand(ev.x).numpy())
    assert min(r2_rand.values()) < 0.9, r2_rand
    assert np.mean(list(r2_rand.values())) < np.mean(list(r2.values())) - 0.1


def test_cl_ica_sanity_full_depth_encoder_on_the_box():
    """On the box z ≥ 0, so the LeakyReLU after the last layer of a depth-L encoder is the identity and the
    plain encoder output is g⁻¹(x)."""
    ds = build_dataset("dgp", space="box", latent_dim=D, content_dims=5, mix_layers=L, slope=SLOPE, eval_size=2000)
    ev = ds.eval_set()
    inv = [np.linalg.inv(w) for w in ds.mixing]
    enc = MLPEncoder(in_dim=D, width=D, depth=L, slope=1.0 / SLOPE, bias=False).double()
    with torch.no_grad():
        for i in range(L):
            getattr(enc, f"layer{i + 1}")[0].weight.copy_(torch.from_numpy(inv[L - 1 - i]))
        h = enc(ev.x.double()).numpy()
    np.testing.assert_allclose(h, ev.state, atol=1e-4)
    assert min(_r2(ds, h).values()) >= 0.999


def test_cifar_stem_resnet():
    b = build_backbone("resnet18", [3, 32, 32], {"cifar_stem": True})
    assert b.model.conv1.kernel_size == (3, 3) and b.model.conv1.stride == (1, 1)
    assert isinstance(b.model.maxpool, torch.nn.Identity)
    assert b.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_cifar_stem_refused_for_a_vit():
    with pytest.raises(ReprscopeError, match="cifar_stem"):
        build_backbone("vit_tiny_patch16_224", [3, 32, 32], {"cifar_stem": True, "patch_size": 4})


def test_vit_takes_the_data_resolution():
    b = build_backbone("vit_tiny_patch16_224", [3, 32, 32], {"patch_size": 4, "depth": 1})
    assert b.model.patch_embed.num_patches == 64
    assert b.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_convnet_backbone():
    b = build_backbone("convnet", [3, 16, 16], {"width": 8, "blocks": 3})
    assert b.num_features == 32 and b.feature_names == ["block1", "block2"]
    assert b.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    with pytest.raises(ReprscopeError, match="takes images"):
        build_backbone("convnet", [10], {})


def test_cifar_stem_deep_stem_resnet():
    b = build_backbone("resnet10t", [3, 32, 32], {"cifar_stem": True})
    assert isinstance(b.model.maxpool, torch.nn.Identity)
    first = next(m for m in b.model.conv1.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.stride == (1, 1)
    assert b.forward_features(torch.randn(2, 3, 32, 32)).shape[0] == 2
