"""Checkpoints from the wild (ViT): DINO training checkpoints, raw timm / DINO-released ViTs and MAE.

Fixtures are small timm ViTs built at test time in each project's own layout with random weights, saved as the
project saves them, loaded back through ``load_checkpoint`` and compared with the original modules in eval mode.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import Block, VisionTransformer

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint
from reprscope.formats.vit import infer_vit

TOL = 1e-5
# head_dim 64 (timm convention, which infer_vit assumes for the head count): 128 → 2 heads
VIT_KW = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2)
K, BOTTLENECK, HIDDEN = 96, 32, 64


def _perturb(m: nn.Module, seed: int) -> nn.Module:
    """Random non-trivial values everywhere (LayerNorm affine, cls token, …), so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
    return m.eval()


def _vit(seed: int, **kw: Any) -> VisionTransformer:
    torch.manual_seed(seed)
    args = {**VIT_KW, "num_classes": 0, **kw}
    return _perturb(VisionTransformer(**args), seed)


def _cls(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """DINO's ViT output: the CLS token after the final norm."""
    return vit.forward_features(x)[:, 0]


class DINOHead(nn.Module):
    """facebookresearch/dino vision_transformer.DINOHead (scaled down)."""

    def __init__(self, in_dim: int, use_bn: bool = False, new_weight_norm: bool = False):
        super().__init__()
        layers = [nn.Linear(in_dim, HIDDEN)]
        if use_bn:
            layers.append(nn.BatchNorm1d(HIDDEN))
        layers.append(nn.GELU())
        layers.append(nn.Linear(HIDDEN, HIDDEN))
        if use_bn:
            layers.append(nn.BatchNorm1d(HIDDEN))
        layers.append(nn.GELU())
        layers.append(nn.Linear(HIDDEN, BOTTLENECK))
        self.mlp = nn.Sequential(*layers)
        lin = nn.Linear(BOTTLENECK, K, bias=False)
        if new_weight_norm:
            self.last_layer = nn.utils.parametrizations.weight_norm(lin)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.last_layer = nn.utils.weight_norm(lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head


def _dino_case(use_bn: bool = False, new_weight_norm: bool = False):
    student = MultiCropWrapper(_vit(1), _perturb(DINOHead(128, use_bn, new_weight_norm), 2))
    teacher = MultiCropWrapper(_vit(3), _perturb(DINOHead(128, use_bn, new_weight_norm), 4))
    payload = {
        "student": {"module." + k: v for k, v in student.state_dict().items()},  # DDP
        "teacher": teacher.state_dict(),  # ViT teacher has no BN: not wrapped in DDP
        "optimizer": {},
        "epoch": 1,
        "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=K),
        "dino_loss": {"center": torch.zeros(1, K)},
    }
    return payload, student, teacher


def _mae_case():
    enc = _vit(5)
    state = dict(enc.state_dict())
    torch.manual_seed(6)
    dd = 48
    dec: Dict[str, torch.Tensor] = {"mask_token": torch.randn(1, 1, dd),
                                    "decoder_pos_embed": torch.randn(1, 17, dd)}
    for name, mod in {"decoder_embed": nn.Linear(128, dd), "decoder_blocks.0": Block(dd, 2),
                      "decoder_norm": nn.LayerNorm(dd), "decoder_pred": nn.Linear(dd, 8 * 8 * 3)}.items():
        dec.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    payload = {"model": {**state, **dec}, "optimizer": {}, "epoch": 7, "scaler": {},
               "args": argparse.Namespace(model="mae_vit_small", mask_ratio=0.75)}
    return payload, enc, len(dec)


def _save(tmp_path, payload, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(payload, p)
    return p


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def _maxdiff(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# -- DINO ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bn,new_wn", [(False, False), (True, True)])
def test_dino_teacher_roundtrip(tmp_path, use_bn, new_wn):
    payload, student, teacher = _dino_case(use_bn, new_wn)
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert loaded.format == "dino" and loaded.method == "dino"
    assert loaded.config["branch"] == "teacher" and loaded.epoch == 1
    assert loaded.config["timm_kwargs"]["global_pool"] == "token"
    assert loaded.bundle.encoder.feature_names == ["model.blocks.0", "model.blocks.1"]
    spec = loaded.bundle.head_specs["projector"]
    types = [s["type"] for s in spec]
    if use_bn:
        assert types == ["linear", "batchnorm", "gelu", "linear", "batchnorm", "gelu", "linear", "l2norm",
                         "weightnorm_linear"]
    else:
        assert types == ["linear", "gelu", "linear", "gelu", "linear", "l2norm", "weightnorm_linear"]
    with torch.no_grad():
        out = loaded.bundle(X)
        h_ref = _cls(teacher.backbone, X)
        assert _maxdiff(out["h"], h_ref) <= TOL
        assert _maxdiff(out["z"], teacher.head(h_ref)) <= TOL
        # the student is different, so the teacher really was the one loaded
        assert _maxdiff(out["h"], _cls(student.backbone, X)) > 1e-3
    # every tensor is loaded or listed with a reason
    n_teacher = len(payload["teacher"])
    assert len(loaded.bundle.state_dict()) == n_teacher
    assert all(": " in u for u in loaded.unused_keys)
    assert sum(u.startswith("student.module.") for u in loaded.unused_keys) == len(payload["student"])
    assert any(u.startswith("dino_loss.center: ") for u in loaded.unused_keys)
    assert any(u.startswith("optimizer: ") for u in loaded.unused_keys)
    assert loaded.config["args_saved"]["arch"] == "vit_small"


def test_dino_student_by_name(tmp_path):
    payload, student, _ = _dino_case()
    loaded = load_checkpoint(_save(tmp_path, payload), fmt="dino_student")
    assert loaded.config["branch"] == "student"
    with torch.no_grad():
        out = loaded.bundle(X)
        h_ref = _cls(student.backbone, X)
        assert _maxdiff(out["h"], h_ref) <= TOL
        assert _maxdiff(out["z"], student.head(h_ref)) <= TOL
    assert sum(u.startswith("teacher.") for u in loaded.unused_keys) == len(payload["teacher"])


def test_dino_layers_extract(tmp_path):
    payload, _, teacher = _dino_case()
    loaded = load_checkpoint(_save(tmp_path, payload))
    names = [i.name for i in loaded.bundle.layer_infos()]
    assert names[:3] == ["encoder.model.blocks.0", "encoder.model.blocks.1", "encoder"]
    assert "projector" in names
    with torch.no_grad():
        got = loaded.bundle.forward_layers(X, names)
    assert got["encoder.model.blocks.1"].shape == (3, 128)
    assert got["projector"].shape == (3, K)


def test_dino_shape_mismatch_names_key(tmp_path):
    payload, *_ = _dino_case()
    payload["teacher"]["backbone.blocks.1.attn.proj.weight"] = torch.zeros(128, 64)
    with pytest.raises(ReprscopeError, match=r"teacher\.backbone\.blocks\.1\.attn\.proj\.weight \[128, 64\]"):
        load_checkpoint(_save(tmp_path, payload))


def test_dino_stray_tensor_is_an_error(tmp_path):
    payload, *_ = _dino_case()
    payload["teacher"]["backbone.extra_proj.weight"] = torch.ones(4, 4)
    with pytest.raises(ReprscopeError, match=r"unexpected keys: teacher\.backbone\.extra_proj\.weight"):
        load_checkpoint(_save(tmp_path, payload))


# -- raw ViT ------------------------------------------------------------------------------------------------


def test_dino_released_backbone(tmp_path):
    vit = _vit(7)
    loaded = load_checkpoint(_save(tmp_path, vit.state_dict()))
    assert loaded.format == "vit" and loaded.unused_keys == []
    assert not loaded.bundle.has("projector")
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X)["h"], _cls(vit, X)) <= TOL


def test_timm_vit_with_classifier_and_fc_norm(tmp_path):
    vit = _vit(8, num_classes=10, global_pool="avg")  # fc_norm after average pooling, no final norm
    assert "fc_norm.weight" in vit.state_dict() and "norm.weight" not in vit.state_dict()
    payload = {"state_dict": vit.state_dict(), "epoch": 3, "arch": "vit_tiny"}
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert loaded.format == "vit" and loaded.config["timm_kwargs"]["global_pool"] == "avg"
    assert sorted(u.split(":")[0] for u in loaded.unused_keys) == ["head.bias", "head.weight"]
    with torch.no_grad():
        ref = vit.forward_head(vit.forward_features(X), pre_logits=True)
        assert _maxdiff(loaded.bundle(X)["h"], ref) <= TOL


# -- MAE ----------------------------------------------------------------------------------------------------


def test_mae_roundtrip(tmp_path):
    payload, enc, n_dec = _mae_case()
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert loaded.format == "mae" and loaded.method == "mae" and loaded.epoch == 7
    dec = [u for u in loaded.unused_keys if "MAE decoder" in u]
    assert len(dec) == n_dec and any(u.startswith("mask_token: ") for u in dec)
    assert len(loaded.bundle.state_dict()) + n_dec == len(payload["model"])
    with torch.no_grad():
        # MAE's fine-tuning pools the patch tokens; its linear probe reads the class token (--pool cls)
        tokens = enc.forward_features(X)
        assert _maxdiff(loaded.bundle(X)["h"], tokens[:, 1:].mean(dim=1)) <= TOL
        block = enc.blocks[:2](enc._pos_embed(enc.patch_embed(X)))
        assert _maxdiff(loaded.bundle.forward_layers(X, ["encoder.model.blocks.1"])["encoder.model.blocks.1"],
                        block[:, 1:].mean(dim=1)) <= TOL
        cls = load_checkpoint(tmp_path / "ckpt.pth", options=LoadOptions(pool="cls"))
        assert _maxdiff(cls.bundle(X)["h"], _cls(enc, X)) <= TOL
        assert _maxdiff(cls.bundle.forward_layers(X, ["encoder.model.blocks.1"])["encoder.model.blocks.1"],
                        block[:, 0]) <= TOL


def test_pool_cls_is_refused_where_there_is_no_trained_class_token(tmp_path):
    from reprscope.formats.vit import ViTArch, with_pool

    with pytest.raises(ReprscopeError, match="no class token"):
        with_pool(ViTArch("v", {"class_token": False}), "cls")
    with pytest.raises(ReprscopeError, match="fc_norm"):
        with_pool(ViTArch("v", {"class_token": True, "fc_norm": True}), "cls")
    with pytest.raises(ReprscopeError, match="pool must be"):
        LoadOptions(pool="max")
    assert with_pool(ViTArch("v", {"class_token": True}), "mean").kwargs["global_pool"] == "avg"


# -- detection and inference --------------------------------------------------------------------------------


def test_detection_is_unique():
    cases = {"dino": _dino_case()[0], "mae": _mae_case()[0], "vit": _vit(9).state_dict()}
    for fmt, payload in cases.items():
        hits = [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]
        assert hits == [fmt], (fmt, hits)


def test_infer_vit_released_shapes():
    def meta(*shape):
        return torch.empty(*shape, device="meta")

    def state(dim, p, T, depth, ratio=4):
        s = {"cls_token": meta(1, 1, dim), "pos_embed": meta(1, T, dim), "patch_embed.proj.weight": meta(dim, 3, p, p),
             "norm.weight": meta(dim)}
        for i in range(depth):
            s[f"blocks.{i}.mlp.fc1.weight"] = meta(dim * ratio, dim)
            s[f"blocks.{i}.attn.qkv.bias"] = meta(3 * dim)
        return s

    a = infer_vit(state(384, 16, 197, 12))
    assert a.name == "vit_small_patch16_224"
    assert (a.kwargs["img_size"], a.kwargs["num_heads"], a.kwargs["depth"], a.kwargs["mlp_ratio"]) == (224, 6, 12, 4)
    b = infer_vit(state(768, 8, 785, 12))
    assert (b.name, b.kwargs["num_heads"]) == ("vit_base_patch8_224", 12)
    c = infer_vit(state(1024, 14, 1370, 24))
    assert (c.kwargs["img_size"], c.kwargs["patch_size"], c.kwargs["num_heads"]) == (518, 14, 16)
    with pytest.raises(ReprscopeError, match="pos_embed"):
        infer_vit(state(384, 16, 200, 12))


def test_dino_resnet_teacher(tmp_path):
    import torchvision

    def net(seed):
        torch.manual_seed(seed)
        r = torchvision.models.resnet18()
        r.fc = nn.Identity()  # DINO replaces the classifier
        return MultiCropWrapper(_perturb(r, seed), _perturb(DINOHead(512, use_bn=True), seed + 1))

    student, teacher = net(11), net(13)
    payload = {"student": {"module." + k: v for k, v in student.state_dict().items()},
               "teacher": {"module." + k: v for k, v in teacher.state_dict().items()},  # BN → DDP-wrapped teacher
               "epoch": 2, "dino_loss": {"center": torch.zeros(1, K)}}
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert loaded.format == "dino" and loaded.config["arch"] == "resnet18"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = loaded.bundle(x)
        h_ref = teacher.backbone(x)
        assert _maxdiff(out["h"], h_ref) <= TOL
        assert _maxdiff(out["z"], teacher.head(h_ref)) <= TOL


@pytest.mark.parametrize("kwargs, says", [({}, "the class token after the final norm"),
                                          ({"global_pool": "avg", "fc_norm": True},
                                           "the avg pool of the patch tokens (prefix tokens left out), then fc_norm")])
def test_inspect_says_what_each_vit_layer_is(tmp_path, kwargs, says):
    import timm

    from reprscope.inspect import inspect_checkpoint

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, **kwargs)
    torch.save(m.state_dict(), tmp_path / "vit.pth")
    lines, err = inspect_checkpoint(tmp_path / "vit.pth")
    vit = [line for line in lines if line.startswith("ViT layers:")]
    assert err is None and len(vit) == 1 and says in vit[0] and "encoder.model.blocks.N" in vit[0]


def test_a_torchvision_vit_state_dict_loads_and_equals_the_torchvision_module(tmp_path):
    """torchvision's VisionTransformer (class_token, conv_proj, encoder.layers.encoder_layer_N …) is read as the
    same timm ViT: the encoder layer equals torchvision's class token after encoder.ln on the same input."""
    import torchvision

    from reprscope.formats import load_checkpoint

    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=192,
                                              mlp_dim=384, num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = load_checkpoint(tmp_path / "tv.pth")
    assert model.format == "torchvision_vit" and all("heads.head" in k for k in model.unused_keys)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        tokens = tv._process_input(x)
        tokens = torch.cat([tv.class_token.expand(4, -1, -1), tokens], dim=1)
        ref = tv.encoder(tokens)[:, 0]
        ours = model.bundle.encoder.forward_features(x)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_dino_position_embedding_interpolation_is_dinos_own():
    """At another resolution than its embedding's, a DINO/DINOv2 ViT resamples the position embedding as their
    interpolate_pos_encoding does — bicubic with scale factor (g + 0.1)/M, no antialiasing — not with timm's
    antialiased resize; at the embedding's own resolution nothing is resampled."""
    import torch.nn.functional as F

    from reprscope.formats.vit import dino_resample_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 8)
    got = dino_resample_pos_embed(pos, (16, 16), (37, 37), 1)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", align_corners=False)
    want = torch.cat([pos[:, :1], want.permute(0, 2, 3, 1).reshape(1, -1, 8)], dim=1)
    assert got.shape == (1, 257, 8) and torch.equal(got, want)
    timm_like = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)
    assert not torch.allclose(got[:, 1:], timm_like.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-3)
    assert dino_resample_pos_embed(pos, (37, 37), (37, 37), 1) is pos


def test_a_dino_vit_uses_that_interpolation_and_survives_a_copy(tmp_path):
    import copy

    from reprscope.formats.vit import ViTArch, ViTEncoder, _dino_pos_embed

    arch = ViTArch("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1,
                                            "num_heads": 2, "num_classes": 0, "dynamic_img_size": True})
    enc = ViTEncoder(arch)
    enc.interpolate_like_dino()
    assert enc.model._pos_embed.__func__ is _dino_pos_embed
    twin = copy.deepcopy(enc)
    assert twin.model._pos_embed.__self__ is twin.model  # bound to the copy, not to the original
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(enc(x), twin(x))
