"""Checkpoints from the places comparison studies download released weights from: byol-pytorch learners (here),
VISSL and MMSelfSup / MMPretrain model-zoo files. Each fixture is built the way the project writes it and the
stored embeddings are compared with the project's own forward (the library itself where it installs)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint


def _close(ours, ref):
    err = float((ours - ref).abs().max())
    assert err <= 1e-5 * max(float(ref.abs().max()), 1.0), err


def _detected(path):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    """Move every weight and BatchNorm statistic off its initial value (eval-mode BN then matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(1 + 0.2 * torch.rand(mod.running_var.shape, generator=g))
    return m


# -- byol-pytorch ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sem", [True, False])
def test_a_byol_pytorch_learner_equals_the_librarys_own_forward(tmp_path, sem):
    byol_pytorch = pytest.importorskip("byol_pytorch")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    learner = byol_pytorch.BYOL(net, image_size=32, hidden_layer="avgpool", projection_size=32,
                                projection_hidden_size=64, use_simplicial_embeddings=sem)
    _randomise(learner, 1)
    learner.update_moving_average()  # a target that differs from the online network, as after training steps
    learner.eval()
    torch.save(learner.state_dict(), tmp_path / "byol.pt")
    assert _detected(tmp_path / "byol.pt") == ["byol"]
    model = load_checkpoint(tmp_path / "byol.pt")
    assert model.format == "byol" and model.branch == "online"
    assert any(u.startswith("net.") and "online_encoder.net" in u for u in model.unused_keys)
    assert ("simplicial" in [l["type"] for l in model.config["heads"]["projector"]]) == sem
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        projection, representation = learner(x, return_embedding=True)
        out = model.bundle(x)
        _close(out["h"], representation)
        _close(out["z"], projection)
        _close(out["p"], learner.online_predictor(projection))
        target = load_checkpoint(tmp_path / "byol.pt", options=LoadOptions(branch="momentum"))
        t_proj, t_rep = learner.target_encoder(x)
        t_out = target.bundle(x)
        _close(t_out["h"], t_rep)
        _close(t_out["z"], t_proj)
        assert not torch.allclose(t_out["h"], out["h"], atol=1e-4)
        if sem:  # the simplicial embedding is a layer of its own: groups of 8 that each sum to one
            layers = [i.name for i in model.bundle.layer_infos()]
            assert "projector.2" in layers
            s = model.bundle.forward_layers(x, ["projector.2"])["projector.2"]
            assert torch.allclose(s.reshape(4, -1, 8).sum(-1), torch.ones(4, s.shape[1] // 8), atol=1e-5)


def test_a_byol_net_alias_that_differs_from_the_online_net_is_refused(tmp_path):
    byol_pytorch = pytest.importorskip("byol_pytorch")
    torch.manual_seed(0)
    learner = byol_pytorch.BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool",
                                projection_size=32, projection_hidden_size=64)
    sd = learner.state_dict()
    sd["net.conv1.weight"] = sd["net.conv1.weight"] + 1
    torch.save(sd, tmp_path / "byol.pt")
    with pytest.raises(ReprscopeError, match="net.conv1.weight differ"):
        load_checkpoint(tmp_path / "byol.pt")


def test_a_byol_release_of_backbones_reads_online_or_target_and_plain_readings_refuse_it(tmp_path):
    torch.manual_seed(3)
    online, target = (_randomise(torchvision.models.resnet18(), s).eval() for s in (3, 4))
    for r in (online, target):
        r.fc = nn.Identity()
    ddp = lambda m: {f"module.{k}": v for k, v in m.state_dict().items()}  # noqa: E731
    torch.save({"online_backbone": ddp(online), "target_backbone": ddp(target), "epoch": 300}, tmp_path / "b.pth")
    assert _detected(tmp_path / "b.pth") == ["byol_backbones"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for branch, net in (("online", online), ("momentum", target)):
        model = load_checkpoint(tmp_path / "b.pth", options=LoadOptions(branch=branch))
        assert model.method == "byol" and model.branch == branch and model.epoch == 300
        with torch.no_grad():
            _close(model.bundle.encoder.forward_features(x), net(x))
    with pytest.raises(ReprscopeError, match="several networks"):
        load_checkpoint(tmp_path / "b.pth", "torchvision")


# -- VISSL (facebookresearch/vissl: models/trunks/resnext.py, models/heads, hooks/log_hooks.py) -------------


class _VisslResNeXt(nn.Module):
    """VISSL's ResNeXt trunk: torchvision's modules in a ModuleDict named _feature_blocks."""

    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet50()
        self._feature_blocks = nn.ModuleDict([("conv1", r.conv1), ("bn1", r.bn1), ("conv1_relu", r.relu),
                                              ("maxpool", r.maxpool), ("layer1", r.layer1), ("layer2", r.layer2),
                                              ("layer3", r.layer3), ("layer4", r.layer4), ("avgpool", r.avgpool),
                                              ("flatten", nn.Flatten(1))])

    def forward(self, x):
        for m in self._feature_blocks.values():
            x = m(x)
        return x


class _SwAVHead(nn.Module):
    """VISSL's SwAVPrototypesHead: projection_head (Linear, BN, ReLU, Linear), ℓ2, prototypes0."""

    def __init__(self):
        super().__init__()
        self.projection_head = nn.Sequential(nn.Linear(2048, 64), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                                             nn.Linear(64, 16))
        self.prototypes0 = nn.Linear(16, 30, bias=False)

    def forward(self, x):
        return nn.functional.normalize(self.projection_head(x), dim=1, p=2)


def _vissl_file(tmp_path, heads, loss):
    torch.manual_seed(7)
    trunk = _randomise(_VisslResNeXt(), 7).eval()
    for h in heads:
        _randomise(h, 8).eval()
    hsd = {f"{i}.{k}": v for i, h in enumerate(heads) for k, v in h.state_dict().items()}
    payload = {"phase_idx": 199, "iteration": 50000, "loss": loss, "iteration_num": 50000, "train_phase_idx": 199,
               "classy_state_dict": {"base_model": {"model": {"trunk": trunk.state_dict(), "heads": hsd},
                                                    "meta": {"trunk": {}}},
                                     "optimizer": {"state": {}, "param_groups": []}}}
    path = tmp_path / "model_final_checkpoint_phase199.torch"
    torch.save(payload, path)
    return trunk, path


def test_a_vissl_swav_file_reads_the_trunk_and_the_projection_head(tmp_path):
    head = _SwAVHead()
    trunk, path = _vissl_file(tmp_path, [head], {"swav_criterion.num_iteration": torch.zeros(1)})
    assert _detected(path) == ["vissl"]
    model = load_checkpoint(path)
    assert model.format == "vissl" and model.method == "swav" and model.epoch == 200 and model.step == 50000
    assert any("prototypes0" in u and "cluster centres" in u for u in model.unused_keys)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = trunk(x)
        out = model.bundle(x)
        _close(out["h"], h)
        _close(out["z"], head(h))


def test_vissl_chained_heads_and_numpy_zoo_files(tmp_path):
    from torchvision.models import resnet50

    h1 = nn.Module()
    h1.clf = nn.Sequential(nn.Linear(2048, 64), nn.ReLU(inplace=True))
    h2 = nn.Module()
    h2.clf = nn.Sequential(nn.Linear(64, 16))
    trunk, path = _vissl_file(tmp_path, [h1, h2], {"info_criterion.pos_mask": torch.zeros(2, 2)})
    model = load_checkpoint(path)
    assert model.method == "simclr" and not model.bundle.has("projector")
    assert sum("chained VISSL heads" in u for u in model.unused_keys) == 4
    # an older zoo file: {"model_state_dict": {"_feature_blocks.…": numpy array}} (NPID)
    sd = {k: v.numpy() for k, v in trunk.state_dict().items()}
    torch.save({"model_state_dict": sd}, tmp_path / "npid.pth")
    npid = load_checkpoint(tmp_path / "npid.pth")
    assert npid.format == "vissl"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(npid.bundle.encoder.forward_features(x), trunk(x))
    # what VISSL's convert_vissl_to_torchvision.py writes is torchvision's own layout
    tv = resnet50()
    tv.fc = nn.Identity()
    tv.load_state_dict({k[len("_feature_blocks."):]: v for k, v in trunk.state_dict().items()}, strict=False)
    torch.save({k[len("_feature_blocks."):]: v for k, v in trunk.state_dict().items()}, tmp_path / "conv.torch")
    conv = load_checkpoint(tmp_path / "conv.torch")
    assert conv.format == "torchvision"


def test_a_pickled_numpy_array_is_data_only_and_bounded(tmp_path):
    import pickle

    import numpy as np

    from reprscope.formats.base import _bounded_reconstruct

    with pytest.raises(pickle.UnpicklingError, match="declares shape"):
        _bounded_reconstruct(np.ndarray, (1 << 21,), np.dtype("f4"))
    with pytest.raises(pickle.UnpicklingError, match="only numpy.ndarray"):
        _bounded_reconstruct(np.matrix, (1,), np.dtype("f4"))
    torch.save({"model_state_dict": {"_feature_blocks.conv1.weight": np.zeros((2, 3), dtype=object)}}, tmp_path / "o.pth")
    with pytest.raises(ReprscopeError):
        load_checkpoint(tmp_path / "o.pth")


# -- MMSelfSup / MMPretrain (open-mmlab/mmpretrain: models/selfsup, necks, backbones) -------------------------


def _mm_resnet50(seed):
    r = _randomise(torchvision.models.resnet50(), seed).eval()
    r.fc = nn.Identity()
    return r


def test_an_mmselfsup_mocov2_resnet50_reads_both_encoders_with_the_neck_as_projector(tmp_path):
    """MoCo v2 in MMPretrain 1.x: backbone + MoCoV2Neck (mlp.0, ReLU, mlp.2), encoder_k = MMEngine's
    ExponentialMovingAverage(Sequential(backbone, neck)) → encoder_k.module.{0,1} and encoder_k.steps, queues."""
    torch.manual_seed(9)
    q, k = _mm_resnet50(9), _mm_resnet50(10)
    neck_q = _randomise(nn.Sequential(nn.Linear(2048, 64), nn.ReLU(inplace=True), nn.Linear(64, 16)), 11).eval()
    neck_k = _randomise(nn.Sequential(nn.Linear(2048, 64), nn.ReLU(inplace=True), nn.Linear(64, 16)), 12).eval()
    sd = {**{f"backbone.{n}": v for n, v in q.state_dict().items()},
          **{f"neck.mlp.{n}": v for n, v in neck_q.state_dict().items()},
          **{f"encoder_k.module.0.{n}": v for n, v in k.state_dict().items()},
          **{f"encoder_k.module.1.mlp.{n}": v for n, v in neck_k.state_dict().items()},
          "encoder_k.steps": torch.tensor(1000), "queue": torch.randn(16, 32), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path / "mocov2_resnet50_8xb32-coslr-200e_in1k.pth"
    torch.save({"meta": {"epoch": 200, "iter": 1000, "mmpretrain_version": "1.0.0"}, "state_dict": sd}, path)
    assert _detected(path) == ["mmpretrain"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for branch, net, neck in (("online", q, neck_q), ("momentum", k, neck_k)):
        model = load_checkpoint(path, options=LoadOptions(branch=branch))
        assert model.format == "mmpretrain" and model.method == "mocov2" and model.epoch == 200
        with torch.no_grad():
            out = model.bundle(x)
            _close(out["h"], net(x))
            _close(out["z"], neck(net(x)))
    assert any("queue" in u for u in model.unused_keys)


def test_an_mmselfsup_byol_with_nonlinear_necks_and_the_0x_aliases(tmp_path):
    """BYOL in MMSelfSup 0.x: online_net = Sequential(backbone, neck) saved again beside backbone/neck, the target
    as target_net.{0,1}; NonLinearNeck (fc0, bn0, ReLU, fc1) and head.predictor the same kind."""
    torch.manual_seed(13)
    net = _mm_resnet50(13)

    def nonlinear(d_in, seed):
        m = nn.Module()
        m.fc0, m.bn0, m.fc1 = nn.Linear(d_in, 64), nn.BatchNorm1d(64), nn.Linear(64, 16)
        _randomise(m, seed).eval()
        return m, lambda x: m.fc1(torch.relu(m.bn0(m.fc0(x))))

    neck, f_neck = nonlinear(2048, 14)
    pred, f_pred = nonlinear(16, 15)
    sd = {**{f"backbone.{n}": v for n, v in net.state_dict().items()},
          **{f"neck.{n}": v for n, v in neck.state_dict().items()},
          **{f"online_net.0.{n}": v for n, v in net.state_dict().items()},
          **{f"online_net.1.{n}": v for n, v in neck.state_dict().items()},
          **{f"target_net.0.{n}": v for n, v in net.state_dict().items()},
          **{f"target_net.1.{n}": v for n, v in neck.state_dict().items()},
          **{f"head.predictor.{n}": v for n, v in pred.state_dict().items()}}
    torch.save({"meta": {"epoch": 300}, "state_dict": sd}, tmp_path / "byol.pth")
    model = load_checkpoint(tmp_path / "byol.pth")
    assert model.method == "byol" and model.bundle.has("predictor")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model.bundle(x)
        _close(out["h"], net(x))
        _close(out["z"], f_neck(net(x)))
        _close(out["p"], f_pred(f_neck(net(x))))
    sd["online_net.0.conv1.weight"] = sd["online_net.0.conv1.weight"] + 1
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(ReprscopeError, match="should be the same module"):
        load_checkpoint(tmp_path / "bad.pth")


def _to_mmpretrain_vit(vit) -> dict:
    """timm ViT names → MMPretrain's (the inverse of its model converter's table)."""
    out = {}
    for k, v in vit.state_dict().items():
        k2 = (k.replace("patch_embed.proj.", "patch_embed.projection.").replace("blocks.", "layers.")
              .replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
              .replace(".mlp.fc2.", ".ffn.layers.1.").replace(".ls1.gamma", ".attn.gamma1.weight")
              .replace(".ls2.gamma", ".ffn.gamma2.weight"))
        k2 = "ln1." + k2[len("norm."):] if k2.startswith("norm.") else k2
        out[k2] = v
    return out


@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_an_mmpretrain_mae_vit_b16_equals_the_timm_vit_it_converts_to(tmp_path, layer_scale):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(16)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=2, num_heads=12, num_classes=0,
                            init_values=layer_scale)
    _randomise(vit, 16).eval()
    sd = {f"backbone.{k}": v for k, v in _to_mmpretrain_vit(vit).items()}
    sd.update({"neck.mask_token": torch.zeros(1, 1, 64), "neck.decoder_embed.weight": torch.randn(64, 768),
               "neck.decoder_pred.weight": torch.randn(768, 64),
               "data_preprocessor.mean": torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1),
               "data_preprocessor.std": torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)})
    torch.save({"meta": {"epoch": 400}, "state_dict": sd}, tmp_path / "mae.pth")
    model = load_checkpoint(tmp_path / "mae.pth")
    assert model.method == "masked_image_modelling" and not model.bundle.has("projector")
    assert model.preprocess.mean[0] == pytest.approx(0.485) and model.config["timm_kwargs"]["num_heads"] == 12
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), vit.forward_features(x)[:, 0])
    sd["backbone.layers.0.attn.mystery.weight"] = torch.zeros(10, 12)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "odd.pth")
    with pytest.raises(ReprscopeError, match="does not have: state_dict.backbone.layers.0.attn.mystery.weight"):
        load_checkpoint(tmp_path / "odd.pth")


def test_an_mmpretrain_beit_v2_backbone_equals_timms_beit(tmp_path):
    """MMPretrain's BEiTViT (layers.N.ln1 / attn.{qkv, q_bias, v_bias, proj} / ln2 / ffn / gamma_1/2, a shared
    rel_pos_bias) is timm's Beit under other names; its BEiTV2Neck is a masked-image-modelling head, unused."""
    from timm.models.beit import Beit

    torch.manual_seed(22)
    m = _randomise(Beit(img_size=32, patch_size=8, num_classes=0, embed_dim=64, depth=2, num_heads=2,
                        use_abs_pos_emb=False, use_shared_rel_pos_bias=True, init_values=0.1, global_pool="token"), 22)
    m.eval()
    sd = {}
    for k, v in m.state_dict().items():
        k2 = (k.replace("patch_embed.proj.", "patch_embed.projection.").replace("blocks.", "layers.")
              .replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
              .replace(".mlp.fc2.", ".ffn.layers.1."))
        k2 = "ln1." + k2[len("norm."):] if k2.startswith("norm.") else k2
        sd[f"backbone.{k2}"] = v
    sd["backbone.rel_pos_bias.relative_position_index"] = m.rel_pos_bias.relative_position_index.clone()
    sd["neck.cls_pt_layers.0.ln1.weight"] = torch.ones(64)
    sd["target_generator.tokenizer.weight"] = torch.zeros(4, 4)
    torch.save({"meta": {"epoch": 300}, "state_dict": sd}, tmp_path / "beitv2_mmpretrain.pth")
    model = load_checkpoint(tmp_path / "beitv2_mmpretrain.pth")
    assert model.format == "mmpretrain" and not model.bundle.has("projector")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), m.forward_head(m.forward_features(x), pre_logits=True))


# -- BEiT v2's own pre-training file (microsoft/unilm beit2: {"model": …}) --------------------------------------


def _beit_v2_file(tmp_path, seed=17):
    from timm.models.beit import Beit

    torch.manual_seed(seed)
    m = Beit(img_size=32, patch_size=8, num_classes=0, embed_dim=64, depth=2, num_heads=2, use_abs_pos_emb=False,
             use_shared_rel_pos_bias=True, init_values=0.1, global_pool="token")
    _randomise(m, seed).eval()
    sd = dict(m.state_dict())
    sd["rel_pos_bias.relative_position_index"] = m.rel_pos_bias.relative_position_index.clone()  # BEiT saves it
    sd.update({"mask_token": torch.zeros(1, 1, 64), "lm_head.weight": torch.randn(100, 64), "lm_head.bias": torch.zeros(100),
               "cls_pt_layers.0.norm1.weight": torch.ones(64), "cls_pt_layers.0.attn.qkv.weight": torch.randn(192, 64)})
    path = tmp_path / "beitv2_checkpoint-299.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 299, "scaler": {}}, path)
    return m, sd, path


def test_a_beit_v2_pretraining_file_equals_timms_beit_with_its_shared_relative_position_bias(tmp_path):
    m, sd, path = _beit_v2_file(tmp_path)
    assert _detected(path) == ["beit"]
    model = load_checkpoint(path)
    assert model.format == "beit" and model.config["timm_kwargs"]["num_heads"] == 2
    assert any(u.startswith("lm_head.") for u in model.unused_keys)
    assert any(u.startswith("cls_pt_layers.") for u in model.unused_keys)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), m.forward_head(m.forward_features(x), pre_logits=True))
        mean = load_checkpoint(path, options=LoadOptions(pool="mean"))
        _close(mean.bundle.encoder.forward_features(x), m.forward_features(x)[:, 1:].mean(dim=1))
    sd["rel_pos_bias.relative_position_index"] = sd["rel_pos_bias.relative_position_index"].flip(0)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(ReprscopeError, match="relative position index"):
        load_checkpoint(tmp_path / "bad.pth")


def test_a_vissl_vit_trunk_reads_as_dinos_vit_with_a_swav_style_head(tmp_path):
    """VISSL's vision_transformer trunk (timm names, no _feature_blocks) with a swav_head projection."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(18)
    vit = _randomise(VisionTransformer(img_size=32, patch_size=8, embed_dim=384, depth=2, num_heads=6,
                                       num_classes=0), 18).eval()
    head = _randomise(nn.Module(), 19)
    head.projection_head = nn.Sequential(nn.Linear(384, 64), nn.GELU(), nn.Linear(64, 16))
    _randomise(head, 19).eval()
    payload = {"phase_idx": 9, "iteration": 10, "loss": {"center": torch.zeros(1, 16)}, "train_phase_idx": 9,
               "classy_state_dict": {"base_model": {"model": {"trunk": vit.state_dict(),
                                                               "heads": {f"0.{k}": v for k, v in head.state_dict().items()}}}}}
    torch.save(payload, tmp_path / "dino_vissl.torch")
    model = load_checkpoint(tmp_path / "dino_vissl.torch")
    assert model.format == "vissl" and model.method == "dino" and "NUM_HEADS" in model.config["num_heads_source"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        h = vit.forward_features(x)[:, 0]
        out = model.bundle(x)
        _close(out["h"], h)
        _close(out["z"], nn.functional.normalize(head.projection_head(h), dim=1))  # DINO's VISSL heads use GELU


def test_resnext_trunks_are_read_with_their_cardinality(tmp_path):
    """VISSL's zoo has ResNeXt trunks (torchvision's resnext*, groups × width_per_group): rebuilt as timm's ResNet
    with cardinality and base_width read from the grouped conv2's shape."""
    torch.manual_seed(20)
    r = _randomise(torchvision.models.resnext50_32x4d(), 20).eval()
    r.fc = nn.Identity()
    sd = {f"_feature_blocks.{k}": v for k, v in r.state_dict().items()}
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": sd, "heads": {}}}}}, tmp_path / "x.torch")
    model = load_checkpoint(tmp_path / "x.torch")
    assert model.config["timm_kwargs"] == {"cardinality": 32, "base_width": 4}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), r(x))


def test_a_uniformly_widened_resnet_w2_reads_as_the_vissl_trunk_it_is(tmp_path):
    """VISSL's ResNet-50 w2 (SimCLR's x2): every channel count doubled, built as VISSL builds it."""
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(21)
    w = 2
    base = ResNet(block=Bottleneck, layers=(3, 4, 6, 3))
    base.inplanes = 64 * w
    trunk = nn.Sequential()
    trunk.conv1 = nn.Conv2d(3, 64 * w, kernel_size=7, stride=2, padding=3, bias=False)
    trunk.bn1, trunk.relu, trunk.maxpool = nn.BatchNorm2d(64 * w), nn.ReLU(inplace=True), base.maxpool
    trunk.layer1 = base._make_layer(Bottleneck, 64 * w, 3)
    trunk.layer2 = base._make_layer(Bottleneck, 128 * w, 4, stride=2)
    trunk.layer3 = base._make_layer(Bottleneck, 256 * w, 6, stride=2)
    trunk.layer4 = base._make_layer(Bottleneck, 512 * w, 3, stride=2)
    trunk.avgpool, trunk.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    _randomise(trunk, 21).eval()
    sd = {f"_feature_blocks.{k}": v for k, v in trunk.state_dict().items()}
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": sd, "heads": {}}}}}, tmp_path / "w2.torch")
    model = load_checkpoint(tmp_path / "w2.torch")
    assert model.bundle.num_features == 4096 and model.config["stem_width"] == 128
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), trunk(x))


def test_an_mmengine_checkpoint_with_pickled_extras_loads_through_the_inert_stand_ins(tmp_path, monkeypatch):
    """MMEngine's CheckpointHook pickles its MessageHub (and history buffers) beside the state dict: the names are
    replaced by inert stand-ins, never imported, and the model loads; inspect lists them."""
    import sys
    import types

    mod = types.ModuleType("mmengine.logging.message_hub")

    class MessageHub:  # what MMEngine pickles (a stand-in defined here only so that the file can be written)
        def __init__(self):
            self.log_scalars = {"train/loss": [0.5]}

    MessageHub.__module__ = "mmengine.logging.message_hub"
    MessageHub.__qualname__ = "MessageHub"
    mod.MessageHub = MessageHub
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.message_hub"):
        monkeypatch.setitem(sys.modules, name, mod if name.endswith("message_hub") else types.ModuleType(name))
    sd = {**{f"backbone.{k}": v for k, v in _mm_resnet50(23).state_dict().items()},
          "neck.mlp.0.weight": torch.randn(8, 2048), "neck.mlp.0.bias": torch.zeros(8),
          "neck.mlp.2.weight": torch.randn(4, 8), "neck.mlp.2.bias": torch.zeros(4)}
    torch.save({"meta": {"epoch": 1}, "state_dict": sd, "message_hub": MessageHub()}, tmp_path / "epoch_1.pth")
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.message_hub"):
        monkeypatch.delitem(sys.modules, name)
    model = load_checkpoint(tmp_path / "epoch_1.pth")
    assert model.format == "mmpretrain" and model.skipped_globals == ["mmengine.logging.message_hub.MessageHub"]
    assert "mmengine" not in sys.modules
