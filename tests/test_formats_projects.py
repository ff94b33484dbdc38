"""Checkpoints in the layouts the original projects' own code writes: I-JEPA, iBOT, solo-learn's MoCo v3 ViT and
lightly's MAE example. Each reference module is written here after the project's model definition (not timm's),
so an equal output shows the format rebuilds the project's function, not just a ViT with the same names."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    err = float((ours - ref).abs().max())
    assert err <= 1e-5 * max(float(ref.abs().max()), 1.0), err


# -- an I-JEPA ViT as facebookresearch/ijepa src/models/vision_transformer.py writes it -------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """I-JEPA's get_2d_sincos_pos_embed (no class token): half the channels encode w, half h."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)
    gh, gw = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="xy")
    return torch.cat([one(dim // 2, gh), one(dim // 2, gw)], dim=1).float()[None]


class IJepaViT(nn.Module):
    def __init__(self, img: int = 32, patch: int = 8, dim: int = 192, depth: int = 3, heads: int = 3):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.pos_embed = nn.Parameter(_sincos_2d(dim, img // patch), requires_grad=False)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, upto=None):
        x = self.patch_embed(x) + self.pos_embed
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if upto == i:
                return x
        return self.norm(x)


class IJepaPredictor(nn.Module):
    def __init__(self, dim: int = 192, pdim: int = 96, depth: int = 2, heads: int = 3, grid: int = 4):
        super().__init__()
        self.predictor_embed = nn.Linear(dim, pdim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pdim))
        self.predictor_pos_embed = nn.Parameter(_sincos_2d(pdim, grid), requires_grad=False)
        self.predictor_blocks = nn.ModuleList(_Block(pdim, heads) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(pdim, eps=1e-6)
        self.predictor_proj = nn.Linear(pdim, dim)


def _ddp(sd):
    return {f"module.{k}": v for k, v in sd.items()}


def _ijepa_case(tmp_path):
    torch.manual_seed(0)
    enc, target = IJepaViT().eval(), IJepaViT().eval()  # the target differs: training moved it (EMA)
    pred = IJepaPredictor()
    payload = {"encoder": _ddp(enc.state_dict()), "predictor": _ddp(pred.state_dict()),
               "target_encoder": _ddp(target.state_dict()), "opt": {"state": {}, "param_groups": []},
               "scaler": None, "epoch": 3, "loss": 0.41, "batch_size": 64, "world_size": 8, "lr": 1e-3}
    path = tmp_path / "jepa-latest.pth.tar"
    torch.save(payload, path)
    return enc, target, path


def test_ijepa_training_checkpoint_is_its_own_format_and_equals_the_target_encoder(tmp_path):
    enc, target, path = _ijepa_case(tmp_path)
    model = load_checkpoint(path)
    assert model.format == "ijepa" and model.branch == "teacher" and model.method == "ijepa"
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(torch.load(path, weights_only=True))] == ["ijepa"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = target(x).mean(dim=1)  # I-JEPA's evaluation: average pool of the target encoder's output
        out = model.bundle.forward_layers(x, ["encoder", "encoder.model.blocks.1"])
        _close(out["encoder"], ref)
        _close(out["encoder.model.blocks.1"], target(x, upto=1).mean(dim=1))
        assert not torch.allclose(out["encoder"], enc(x).mean(dim=1), atol=1e-3)
    assert any(k.startswith("predictor.") and "predictor" in k for k in model.unused_keys)
    student = load_checkpoint(path, options=LoadOptions(branch="student"))
    with torch.no_grad():
        _close(student.bundle.encoder.forward_features(x), enc(x).mean(dim=1))


def test_a_plain_vit_reading_of_an_ijepa_file_is_refused(tmp_path):
    _, _, path = _ijepa_case(tmp_path)
    with pytest.raises(ReprscopeError, match="several networks"):
        load_checkpoint(path, "vit")


# -- iBOT (Zhou et al. 2022): DINO's layout plus a patch head, the masked embedding and its loss state ----------


class _IBOTHead(nn.Module):
    """iBOT's head.py iBOTHead (not shared): mlp → ℓ2 → weight-normed last_layer; last_layer2 for patch tokens."""

    def __init__(self, dim: int, out: int = 40, patch_out: int = 30, hidden: int = 48, bottleneck: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out, bias=False))
            self.last_layer2 = nn.utils.weight_norm(nn.Linear(bottleneck, patch_out, bias=False))

    def forward(self, cls):
        return self.last_layer(F.normalize(self.mlp(cls), dim=-1))


def _ibot_case(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    kw = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0)  # head_dim 64, as iBOT
    nets = {}
    for b in ("student", "teacher"):
        vit, head = VisionTransformer(**kw).eval(), _IBOTHead(128).eval()
        with torch.no_grad():
            for p in list(vit.parameters()) + list(head.parameters()):
                p.add_(0.05 * torch.randn_like(p))
        sd = {**{f"backbone.{k}": v for k, v in vit.state_dict().items()},
              **{f"head.{k}": v for k, v in head.state_dict().items()}}
        if b == "student":  # masked_im_modeling: only the student embeds masked patches
            sd = {f"module.{k}": v for k, v in sd.items()}
            sd["module.backbone.masked_embed"] = torch.zeros(1, 128)
        nets[b] = (vit, head, sd)
    payload = {"student": nets["student"][2], "teacher": nets["teacher"][2], "optimizer": {}, "epoch": 5,
               "ibot_loss": {"center": torch.zeros(1, 40), "center2": torch.zeros(1, 1, 30)}}
    path = tmp_path / "checkpoint.pth"
    torch.save(payload, path)
    return payload, nets, path


def test_an_ibot_checkpoint_reads_the_teacher_with_its_image_head_and_leaves_the_patch_head(tmp_path):
    _, nets, path = _ibot_case(tmp_path)
    model = load_checkpoint(path)
    assert model.format == "ibot" and model.method == "ibot" and model.branch == "teacher"
    assert any("last_layer2" in u and "patch-token head" in u for u in model.unused_keys)
    assert any(u.startswith("ibot_loss.center2") for u in model.unused_keys)
    vit, head, _ = nets["teacher"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cls = vit.forward_features(x)[:, 0]
        out = model.bundle(x)
        _close(out["h"], cls)
        _close(out["z"], head(cls))
    student = load_checkpoint(path, options=LoadOptions(branch="student"))
    assert any("masked_embed" in u for u in student.unused_keys)
    vit, head, _ = nets["student"]
    with torch.no_grad():
        _close(student.bundle(x)["h"], vit.forward_features(x)[:, 0])
