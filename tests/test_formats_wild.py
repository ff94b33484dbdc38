"""DINOv2, MoCo v3 ViT, solo-learn, lightly, timm and safetensors checkpoints.

Each fixture is built at test time in its project's own module layout (the original code's module names,
written out here where the project is not installed: DINOv2's blocks, chunks, registers and SwiGLU; MoCo v3's
ViT heads; solo-learn's CIFAR stem; lightly's heads), with random weights, saved the way the project saves it,
loaded back through ``load_checkpoint`` and compared with the original modules in eval mode (≤ 1e-5).
"""
from __future__ import annotations

import argparse
import copy
import json
import warnings
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint

from test_formats import _features, _mocov3_mlp, _randomise_bn
from test_formats_vit import DINOHead, _perturb

TOL = 1e-5
LIGHTNING = {"pytorch-lightning_version": "2.1.0", "global_step": 120, "epoch": 3, "optimizer_states": [{}],
             "lr_schedulers": [{}], "callbacks": {}, "loops": {}}


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _save(tmp_path, payload, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(payload, p)
    return p


def detected(payload) -> List[str]:
    return [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]


# -- DINOv2 (facebookresearch/dinov2 models/vision_transformer.py, layers/*), written out -----------------


class SwiGLUFFN(nn.Module):
    """dinov2 layers/swiglu_ffn.py: w12 gives gate and value, silu(first) * second, w3 back."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class DinoBlock(nn.Module):
    """dinov2 layers/block.py: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, heads: int, swiglu: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias=True)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLUFFN(dim, 2 * dim) if swiglu else Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class BlockChunk(nn.ModuleList):
    def forward(self, x):
        for b in self:
            x = b(x)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, p: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, p, p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """dinov2 DinoVisionTransformer at a tiny width: cls + pos (class slot included), registers inserted after
    the class token without a position, LayerScale blocks (optionally chunked for FSDP), final norm, CLS out."""

    def __init__(self, dim=128, depth=3, heads=2, img=28, p=14, registers=0, swiglu=False, chunks=0):
        super().__init__()
        n = (img // p) ** 2
        self.patch_embed = PatchEmbed(dim, p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, dim))
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim)) if registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        blocks = [DinoBlock(dim, heads, swiglu) for _ in range(depth)]
        if chunks:
            size = depth // chunks
            self.blocks = nn.ModuleList(BlockChunk([nn.Identity()] * i + blocks[i:i + size]) for i in range(0, depth, size))
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def _dinov2(seed: int, **kw) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    m = DinoVisionTransformer(**kw)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LayerScale):
                mod.gamma.copy_(0.5 + torch.rand(mod.gamma.shape))
    return _perturb(m, seed)


X28 = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kw", [dict(), dict(registers=4), dict(swiglu=True), dict(chunks=3, registers=2, swiglu=True)],
                         ids=["plain", "reg4", "swiglu", "chunked_reg_swiglu"])
def test_dinov2_hub_roundtrip(tmp_path, kw):
    ref = _dinov2(1, **kw)
    p = _save(tmp_path, ref.state_dict(), "dinov2_vits14_pretrain.pth")
    loaded = load_checkpoint(p)
    assert loaded.format == "dinov2" and loaded.method == "dinov2" and loaded.branch == "teacher"
    assert [u.split(":")[0] for u in loaded.unused_keys] == ["mask_token"]
    assert loaded.config["registers"] == kw.get("registers", 0)
    assert "DINOv2 convention" in loaded.config["num_heads_source"]
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X28)["h"], ref(X28)) <= TOL
        # DINOv2 interpolates its position embedding: the evaluation crop (another size) runs too
        assert loaded.bundle(torch.randn(1, 3, 56, 56))["h"].shape == (1, 128)
    assert loaded.preprocess.resolution == 224 and loaded.preprocess.resize == 256
    assert loaded.bundle.encoder.fixed_input_size is None


def test_dinov2_swiglu_and_chunks_are_mapped():
    from reprscope.formats.dinov2 import convert_dinov2

    sd = _dinov2(2, chunks=3, swiglu=True, registers=2).state_dict()
    assert "blocks.1.1.mlp.w12.weight" in sd and "blocks.2.2.ls2.gamma" in sd
    out, where, skipped = convert_dinov2(sd, {k: k for k in sd})
    assert "blocks.1.mlp.fc1.weight" in out and "blocks.2.ls2.gamma" in out and skipped == ["mask_token"]
    assert where["blocks.1.mlp.fc1.weight"] == "blocks.1.1.mlp.w12.weight"
    assert out["pos_embed"].shape[1] == 4 and where["cls_token"] == "cls_token + pos_embed[:, 0]"
    assert torch.equal(out["reg_token"], sd["register_tokens"])


def test_dinov2_training_dump_teacher_and_student(tmp_path):
    """teacher_checkpoint.pth / a training dump: {teacher: {backbone.*, dino_head.*, ibot_head.*}, student: …}."""
    teacher, student = _dinov2(3, chunks=3), _dinov2(4, chunks=3)
    t_head, s_head = _perturb(DINOHead(128), 5), _perturb(DINOHead(128), 6)

    def dump(bb, head):
        sd = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
        sd.update({f"dino_head.{k}": v for k, v in head.state_dict().items()})
        sd["ibot_head.mlp.0.weight"] = torch.randn(8, 128)
        return sd

    payload = {"teacher": dump(teacher, t_head), "student": dump(student, s_head), "iteration": 10}
    assert detected(payload) == ["dinov2"]
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.branch == "teacher" and set(loaded.branches) == {"teacher", "student"}
    with torch.no_grad():
        out = loaded.bundle(X28)
        assert _maxdiff(out["h"], teacher(X28)) <= TOL
        assert _maxdiff(out["z"], t_head(teacher(X28))) <= TOL
    assert any(u.startswith("teacher.ibot_head.mlp.0.weight: DINOv2 iBOT head") for u in loaded.unused_keys)
    assert sum(u.startswith("student.") for u in loaded.unused_keys) == len(payload["student"])
    st = load_checkpoint(p, options=LoadOptions(branch="student"))
    with torch.no_grad():
        assert _maxdiff(st.bundle(X28)["h"], student(X28)) <= TOL
    # --branch online names the student (the online network of a teacher/student pair)
    assert load_checkpoint(p, options=LoadOptions(branch="online")).branch == "student"


def test_dinov2_inconsistent_chunks_name_both_keys(tmp_path):
    sd = _dinov2(7, chunks=3).state_dict()
    sd["blocks.0.1.norm1.bias"] = sd["blocks.1.1.norm1.bias"].clone()  # block 1 in two chunks
    with pytest.raises(ReprscopeError, match=r"blocks\.\d\.1\.norm1\.bias.*blocks\.\d\.1\.norm1\.bias.*same DINOv2 weight"):
        load_checkpoint(_save(tmp_path, sd))


# -- num_heads: inferred where the checkpoint shows it, a known default otherwise, --arch overrides ----------


def test_num_heads_override_with_arch(tmp_path):
    """A ViT whose head count breaks the convention: the default load is told, --arch vit:num_heads=N fixes it."""
    ref = _dinov2(8, heads=4)  # head_dim 32, not DINOv2's 64
    p = _save(tmp_path, ref.state_dict())
    wrong = load_checkpoint(p)
    assert wrong.config["timm_kwargs"]["num_heads"] == 2
    with torch.no_grad():
        assert _maxdiff(wrong.bundle(X28)["h"], ref(X28)) > 1e-4  # the weights do not show the head count
    right = load_checkpoint(p, options=LoadOptions(arch="vit:num_heads=4"))
    assert right.config["timm_kwargs"]["num_heads"] == 4 and right.config["num_heads_source"] == "given with --arch"
    with torch.no_grad():
        assert _maxdiff(right.bundle(X28)["h"], ref(X28)) <= TOL


def test_num_heads_from_qk_norm():
    from reprscope.formats.vit import infer_vit

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=96, depth=1, num_heads=4, qk_norm=True, num_classes=0)
    arch = infer_vit(vit.state_dict())
    assert arch.kwargs["num_heads"] == 4 and arch.kwargs["qk_norm"] and "q_norm" in arch.heads_source


def test_num_heads_unknown_width_is_said():
    from reprscope.formats.vit import infer_vit

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=160, depth=1, num_heads=5, num_classes=0)
    arch = infer_vit(vit.state_dict())
    assert arch.kwargs["num_heads"] == 2 and "assumed head_dim 64" in arch.heads_source
    assert "--arch" in arch.heads_source


# -- MoCo v3 ViT (facebookresearch/moco-v3 builder.MoCo_ViT, vits.py) ------------------------------------


class MoCoV3ViT(nn.Module):
    """base_encoder = ViT whose head is the 3-layer projector; momentum copy; 2-layer predictor. vits.py's
    vit_small is 384 wide with 12 heads (head_dim 32)."""

    def __init__(self, dim=384, heads=12, mlp_dim=64, out=32):
        super().__init__()
        self.base_encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=dim, depth=1, num_heads=heads,
                                              num_classes=mlp_dim)
        hidden = self.base_encoder.head.weight.shape[1]
        del self.base_encoder.head
        self.base_encoder.head = _mocov3_mlp(3, hidden, mlp_dim, out)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        self.predictor = _mocov3_mlp(2, out, mlp_dim, out, last_bn=False)


X32 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def test_moco_v3_vit_roundtrip(tmp_path):
    torch.manual_seed(20)
    m = _perturb(MoCoV3ViT(), 20)
    with torch.no_grad():  # a different momentum encoder, so the branch choice is visible
        for q in m.momentum_encoder.parameters():
            q.add_(0.1)
    payload = {"state_dict": {"module." + k: v for k, v in m.state_dict().items()}, "optimizer": {}, "scaler": {},
               "epoch": 5, "arch": "vit_small"}
    assert detected(payload) == ["moco_v3_vit"]
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.format == "moco_v3_vit" and loaded.method == "moco_v3" and loaded.branch == "online"
    assert loaded.config["timm_kwargs"]["num_heads"] == 12 and "MoCo v3" in loaded.config["num_heads_source"]
    enc = m.base_encoder
    with torch.no_grad():
        h_ref = enc.forward_head(enc.forward_features(X32), pre_logits=True)
        out = loaded.bundle(X32)
        assert _maxdiff(out["h"], h_ref) <= TOL
        assert _maxdiff(out["z"], enc.head(h_ref)) <= TOL
        assert _maxdiff(out["p"], m.predictor(enc.head(h_ref))) <= TOL
    assert all(u.startswith(("module.momentum_encoder.", "optimizer:", "scaler:")) for u in loaded.unused_keys)
    mom = load_checkpoint(p, options=LoadOptions(branch="momentum"))
    menc = m.momentum_encoder
    with torch.no_grad():
        h_ref = menc.forward_head(menc.forward_features(X32), pre_logits=True)
        out = mom.bundle(X32)
        assert _maxdiff(out["h"], h_ref) <= TOL and _maxdiff(out["z"], menc.head(h_ref)) <= TOL
    assert not mom.bundle.has("predictor") and mom.config["branch"] == "momentum_encoder"
    assert any(u.startswith("module.predictor.") and "online branch" in u for u in mom.unused_keys)


# -- solo-learn (vturrisi/solo-learn solo/methods/base.py, byol.py, dino.py) -----------------------------


def _solo_resnet() -> nn.Module:
    r = torchvision.models.resnet18()
    r.fc = nn.Identity()
    r.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)  # solo-learn's CIFAR stem
    r.maxpool = nn.Identity()
    return r


class SoloBYOL(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _solo_resnet()
        self.classifier = nn.Linear(512, 10)
        self.projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
        self.predictor = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
        self.momentum_backbone = _solo_resnet()
        self.momentum_projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))


def _solo_byol_case(tmp_path, args: Optional[Dict[str, Any]] = None):
    torch.manual_seed(30)
    m = _randomise_bn(SoloBYOL(), 30)
    d = tmp_path / "solo"
    d.mkdir()
    if args is not None:
        (d / "args.json").write_text(json.dumps(args))
    p = d / "byol-cifar10-abc-ep=3.ckpt"
    torch.save({"state_dict": m.state_dict(), **LIGHTNING}, p)
    return m, p


def test_solo_learn_byol_cifar(tmp_path):
    m, p = _solo_byol_case(tmp_path, {"method": "byol", "backbone": {"name": "resnet18"},
                                      "data": {"dataset": "cifar10"}, "augmentations": [{"crop_size": 32}]})
    assert detected(torch.load(p, weights_only=True)) == ["solo_learn"]
    loaded = load_checkpoint(p)
    assert loaded.format == "solo_learn" and loaded.method == "byol"
    assert loaded.branch == "momentum" and set(loaded.branches) == {"online", "momentum"}
    assert loaded.config["cifar_stem"] and loaded.config["cifar_padding"] == 2
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_ref = m.momentum_backbone(x)
        out = loaded.bundle(x)
        assert _maxdiff(out["h"], h_ref) <= TOL  # padding 2 rebuilt, not the usual 1
        assert _maxdiff(out["z"], m.momentum_projector(h_ref)) <= TOL
        assert not loaded.bundle.has("predictor")
    reasons = {u.split(":")[0].split(".")[1] for u in loaded.unused_keys if u.startswith("state_dict.")}
    assert reasons == {"backbone", "projector", "predictor", "classifier"}
    assert loaded.preprocess.resolution == 32 and loaded.preprocess.stats == "CIFAR-10"
    assert "args.json" in loaded.preprocess.reason and loaded.step == 120 and loaded.epoch == 3
    online = load_checkpoint(p, options=LoadOptions(branch="online"))
    with torch.no_grad():
        h_ref = m.backbone(x)
        out = online.bundle(x)
        assert _maxdiff(out["h"], h_ref) <= TOL
        assert _maxdiff(out["p"], m.predictor(m.projector(h_ref))) <= TOL


def test_solo_learn_without_args_json_reads_the_stem(tmp_path):
    _, p = _solo_byol_case(tmp_path)
    loaded = load_checkpoint(p)
    assert loaded.method == "unknown" and loaded.preprocess.resolution == 32
    assert "CIFAR stem" in loaded.preprocess.reason


def test_solo_learn_dino_vit(tmp_path):
    torch.manual_seed(31)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0)
    head = DINOHead(128)
    model = nn.Module()
    model.backbone, model.head = _perturb(vit, 31), _perturb(head, 32)
    model.momentum_backbone, model.momentum_head = _perturb(copy.deepcopy(vit), 33), _perturb(DINOHead(128), 34)
    model.classifier = nn.Linear(128, 10)
    sd = model.state_dict()
    sd["dino_loss_func.center"] = torch.zeros(1, 96)
    p = _save(tmp_path, {"state_dict": sd, **LIGHTNING}, "dino.ckpt")
    loaded = load_checkpoint(p)
    assert loaded.format == "solo_learn" and loaded.branch == "momentum"
    t = model.momentum_backbone
    with torch.no_grad():
        h_ref = t.forward_head(t.forward_features(X32), pre_logits=True)
        out = loaded.bundle(X32)
        assert _maxdiff(out["h"], h_ref) <= TOL and _maxdiff(out["z"], model.momentum_head(h_ref)) <= TOL
    assert any(u.startswith("state_dict.dino_loss_func.center: loss state") for u in loaded.unused_keys)


def test_solo_learn_stray_root_is_an_error(tmp_path):
    torch.manual_seed(32)
    sd = SoloBYOL().state_dict()
    sd["mystery.weight"] = torch.zeros(2, 2)
    with pytest.raises(ReprscopeError, match=r"state_dict\.mystery\.weight"):
        load_checkpoint(_save(tmp_path, {"state_dict": sd, **LIGHTNING}))


# -- lightly (benchmarks/imagenet/*, examples/pytorch/*) -------------------------------------------------


class _Head(nn.Module):
    """lightly.models.modules.heads.ProjectionHead: blocks flattened into ``layers``."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def _byol_head(i, h, o):
    return _Head(nn.Linear(i, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o))


class LightlyBYOL(nn.Module):
    """benchmarks/imagenet/resnet50/byol.py (resnet18, small heads)."""

    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet18()
        r.fc = nn.Identity()
        self.backbone = r
        self.projection_head = _byol_head(512, 64, 32)
        self.prediction_head = _byol_head(32, 64, 32)
        self.teacher_backbone = copy.deepcopy(self.backbone)
        self.teacher_projection_head = _byol_head(512, 64, 32)
        self.online_classifier = nn.Module()
        self.online_classifier.classification_head = nn.Linear(512, 10)


X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))


def test_lightly_benchmark_byol(tmp_path):
    torch.manual_seed(40)
    m = _randomise_bn(LightlyBYOL(), 40)
    payload = {"state_dict": m.state_dict(), "hyper_parameters": {"batch_size_per_device": 128, "num_classes": 10},
               **LIGHTNING}
    assert detected(payload) == ["lightly"]
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.format == "lightly" and loaded.branch == "online" and set(loaded.branches) == {"online", "teacher"}
    with torch.no_grad():
        h = m.backbone(X64)
        out = loaded.bundle(X64)
        assert _maxdiff(out["h"], h) <= TOL
        assert _maxdiff(out["z"], m.projection_head(h)) <= TOL
        assert _maxdiff(out["p"], m.prediction_head(m.projection_head(h))) <= TOL
    assert any("OnlineLinearClassifier" in u for u in loaded.unused_keys)
    assert loaded.config["hyper_parameters"] == {"batch_size_per_device": 128, "num_classes": 10}
    teacher = load_checkpoint(p, options=LoadOptions(branch="momentum"))
    assert teacher.branch == "teacher"
    with torch.no_grad():
        h = m.teacher_backbone(X64)
        assert _maxdiff(teacher.bundle(X64)["z"], m.teacher_projection_head(h)) <= TOL


def test_lightly_example_children_backbone(tmp_path):
    """examples/pytorch/simclr.py: backbone = nn.Sequential(*resnet.children()[:-1]); and a backbone-only save."""
    torch.manual_seed(41)
    resnet = torchvision.models.resnet18()
    model = nn.Module()
    model.backbone = nn.Sequential(*list(resnet.children())[:-1])
    model.projection_head = _Head(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 16))
    _randomise_bn(model, 41)
    loaded = load_checkpoint(_save(tmp_path, model.state_dict()))
    assert loaded.format == "lightly" and loaded.unused_keys == []
    with torch.no_grad():
        h = model.backbone(X64).flatten(1)
        out = loaded.bundle(X64)
        assert _maxdiff(out["h"], h) <= TOL and _maxdiff(out["z"], model.projection_head(h)) <= TOL
    only = {"resnet18_parameters": model.backbone.state_dict()}
    assert detected(only) == ["lightly"]
    loaded = load_checkpoint(_save(tmp_path, only, "r18.pth"))
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X64)["h"], h) <= TOL
    assert loaded.config["arch"] == "resnet18"


def test_lightly_dino_vit(tmp_path):
    """benchmarks/imagenet/vitb16/dino.py: backbone = MaskedVisionTransformerTIMM(vit) (teacher), student_*."""
    torch.manual_seed(42)

    def masked(seed):
        m = nn.Module()
        m.vit = _perturb(VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2,
                                           num_classes=0), seed)
        m.mask_token = nn.Parameter(torch.zeros(1, 1, 128))
        return m

    def dino_head(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            h = nn.Module()
            h.layers = nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
            h.last_layer = nn.utils.weight_norm(nn.Linear(32, 96, bias=False))
        return _perturb(h, seed)

    model = nn.Module()
    model.backbone, model.projection_head = masked(1), dino_head(2)
    model.student_backbone, model.student_projection_head = masked(3), dino_head(4)
    model.criterion = nn.Module()
    model.criterion.register_buffer("center", torch.zeros(1, 96))
    p = _save(tmp_path, {"state_dict": model.state_dict(), **LIGHTNING})
    loaded = load_checkpoint(p)
    assert loaded.format == "lightly" and loaded.method == "dino" and loaded.branch == "teacher"
    vit, head = model.backbone.vit, model.projection_head
    with torch.no_grad():
        h = vit.forward_features(X32)[:, 0]
        z = head.last_layer(F.normalize(head.layers(h), dim=-1))
        out = loaded.bundle(X32)
        assert _maxdiff(out["h"], h) <= TOL and _maxdiff(out["z"], z) <= TOL
    assert any(u.startswith("state_dict.backbone.mask_token: ") for u in loaded.unused_keys)
    assert any(u.startswith("state_dict.criterion.center: loss state") for u in loaded.unused_keys)
    assert load_checkpoint(p, options=LoadOptions(branch="student")).branch == "student"


# -- timm (train.py / CheckpointSaver) ---------------------------------------------------------------------


def _timm_case(name: str, seed: int, **kw):
    import timm

    torch.manual_seed(seed)
    m = _randomise_bn(timm.create_model(name, pretrained=False, num_classes=7, **kw), seed)
    ema = _randomise_bn(copy.deepcopy(m), seed + 1)
    args = argparse.Namespace(model=name, mean=None, std=None, input_size=None, img_size=None, crop_pct=None)
    payload = {"epoch": 9, "arch": name, "state_dict": m.state_dict(), "optimizer": {}, "version": 2, "args": args,
               "metric": 71.2, "state_dict_ema": ema.state_dict()}
    return m, ema, payload


@pytest.mark.parametrize("name", ["resnet18", "test_efficientnet", "test_vit"])
def test_timm_roundtrip_and_ema_branch(tmp_path, name):
    m, ema, payload = _timm_case(name, 50)
    assert detected(payload) == ["timm"]
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.format == "timm" and loaded.config["arch"] == name and loaded.branch == "online"
    x = torch.randn(2, 3, 64 if name != "test_vit" else 224, 64 if name != "test_vit" else 224,
                    generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m.forward_head(m.forward_features(x), pre_logits=True)
        assert _maxdiff(loaded.bundle(x)["h"], ref) <= TOL
        mom = load_checkpoint(p, options=LoadOptions(branch="momentum"))
        assert _maxdiff(mom.bundle(x)["h"], ema.forward_head(ema.forward_features(x), pre_logits=True)) <= TOL
    clf = [u for u in loaded.unused_keys if "classifier" in u]
    assert clf and all(u.split(":")[0].startswith(("fc.", "head.", "classifier.")) for u in clf)
    assert any(u.startswith("state_dict_ema: ") for u in loaded.unused_keys)
    assert "pretrained_cfg" in loaded.preprocess.reason


def test_timm_args_set_the_preprocessing(tmp_path):
    m, _, payload = _timm_case("resnet18", 51)
    payload["args"] = argparse.Namespace(model="resnet18", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                                         input_size=None, img_size=160, crop_pct=1.0)
    loaded = load_checkpoint(_save(tmp_path, payload))
    pre = loaded.preprocess
    assert (pre.resolution, pre.resize, pre.mean, pre.std) == (160, 160, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_timm_wrong_arch_names_keys(tmp_path):
    _, _, payload = _timm_case("resnet18", 52)
    with pytest.raises(ReprscopeError, match=r"architecture 'resnet34' given with --arch.*missing weights: .*layer1\.2\."):
        load_checkpoint(_save(tmp_path, payload), options=LoadOptions(arch="resnet34"))


# -- safetensors -------------------------------------------------------------------------------------------


def test_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    ref = _dinov2(60, registers=4)
    p = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(p))
    loaded = load_checkpoint(p)
    assert loaded.file_type == "safetensors" and loaded.format == "dinov2"
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X28)["h"], ref(X28)) <= TOL
    r = _randomise_bn(torchvision.models.resnet18(), 61)
    p2 = tmp_path / "resnet.safetensors"
    save_file(r.state_dict(), str(p2))
    loaded = load_checkpoint(p2)
    assert loaded.file_type == "safetensors" and loaded.format == "torchvision"
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X64)["h"], _features(r, X64)) <= TOL


def test_safetensors_truncated_and_unknown(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.zeros(64, 64), "b.weight": torch.zeros(3)}, str(p))
    with pytest.raises(ReprscopeError, match="safetensors file but not a checkpoint format reprscope knows"):
        load_checkpoint(p)
    data = p.read_bytes()
    t = tmp_path / "t.safetensors"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReprscopeError, match=r"t\.safetensors' is not a readable safetensors file"):
        load_checkpoint(t)


# -- the registry lists them ------------------------------------------------------------------------------


def test_formats_listed():
    for name in ("dinov2", "moco_v3_vit", "solo_learn", "lightly", "timm"):
        assert name in FORMATS.names() and FORMATS.get(name).summary


def test_solo_learn_mocov3_vit_small_has_moco_v3s_twelve_heads(tmp_path):
    """solo-learn builds MoCo v3's ViT for method mocov3 (ViT-S: 12 heads of 32, not timm's 6 of 64)."""
    torch.manual_seed(35)
    model = nn.Module()
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=384, depth=1, num_heads=12, num_classes=0)
    model.backbone = _perturb(vit, 35)
    model.projector = _mocov3_mlp(3, 384, 64, 32)
    model.predictor = _mocov3_mlp(2, 32, 64, 32, last_bn=False)
    model.momentum_backbone = _perturb(copy.deepcopy(vit), 36)
    model.momentum_projector = _mocov3_mlp(3, 384, 64, 32)
    model.classifier = nn.Linear(384, 10)
    d = tmp_path / "run"
    d.mkdir()
    (d / "args.json").write_text(json.dumps({"method": "mocov3", "backbone": {"name": "vit_small"},
                                             "data": {"dataset": "imagenet100"}}))
    p = _save(d, {"state_dict": model.eval().state_dict(), **LIGHTNING}, "mocov3.ckpt")
    loaded = load_checkpoint(p)
    assert loaded.method == "mocov3" and loaded.config["timm_kwargs"]["num_heads"] == 12
    t = model.momentum_backbone
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X32)["h"], t.forward_head(t.forward_features(X32), pre_logits=True)) <= TOL
    (d / "args.json").unlink()
    unknown = load_checkpoint(p)
    assert unknown.config["timm_kwargs"]["num_heads"] == 6 and "--arch vit:num_heads=12" in unknown.config["num_heads_source"]


def test_lightly_mae_example_reads_the_masked_vits_timm_vit(tmp_path):
    """lightly's examples/pytorch/mae.py: backbone = MaskedVisionTransformerTIMM(vit) (backbone.vit.*, its mask
    token), decoder = MAEDecoderTIMM (decoder.*), a mask_token; no projection head."""
    torch.manual_seed(37)
    mae = nn.Module()
    mae.backbone = nn.Module()
    mae.backbone.vit = _perturb(VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2,
                                                  num_classes=10), 37)
    mae.backbone.mask_token = nn.Parameter(torch.zeros(1, 1, 128))
    mae.decoder = nn.Module()
    mae.decoder.decoder_embed = nn.Linear(128, 64)
    mae.decoder.decoder_pred = nn.Linear(64, 8 * 8 * 3)
    mae.mask_token = nn.Parameter(torch.zeros(1, 1, 64))
    p = _save(tmp_path, mae.state_dict(), "mae.pth")
    assert detected(torch.load(p, weights_only=True)) == ["lightly"]
    loaded = load_checkpoint(p)
    assert loaded.format == "lightly" and loaded.method == "mae"
    assert any(u.startswith("decoder.") for u in loaded.unused_keys)
    assert any(u.startswith("backbone.vit.head.") for u in loaded.unused_keys)
    v = mae.backbone.vit.eval()
    with torch.no_grad():
        assert _maxdiff(loaded.bundle(X32)["h"], v.forward_features(X32)[:, 0]) <= TOL
