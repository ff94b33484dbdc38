"""Full-size architectures in their projects' layouts (marked ``slow``; about 5 s on 2 cores, so the default run
keeps them; ``pytest -m "not slow"`` leaves them out).

ResNet-50 as MoCo v2 saves it (query and key encoders with the 2048→2048→128 projector, the 128×65536 queue,
``module.`` prefixes) and ViT-S/16 as a DINO training checkpoint (student and teacher, the released head:
2048 hidden, 256 bottleneck, 65536 prototypes with weight norm), random weights, saved as those projects save,
loaded back through reprscope, and compared with the original modules at 224×224 (max abs difference ≤ 1e-5).
"""
from __future__ import annotations

import argparse
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from reprscope.formats import load_checkpoint

from test_formats import _features, _randomise_bn

pytestmark = pytest.mark.slow
TOL = 1e-5
X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_resnet50_moco_v2_full_size(tmp_path):
    torch.manual_seed(0)
    q = torchvision.models.resnet50()
    q.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))
    _randomise_bn(q, 0)
    k = _randomise_bn(copy.deepcopy(q), 1)
    model = nn.Module()
    model.encoder_q, model.encoder_k = q, k
    model.register_buffer("queue", F.normalize(torch.randn(128, 65536), dim=0))
    model.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    p = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": {"module." + n: v for n, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}}, p)
    loaded = load_checkpoint(p)
    assert loaded.format == "moco" and loaded.method == "moco_v2" and loaded.config["arch"] == "resnet50"
    with torch.no_grad():
        h = _features(q, X)
        out = loaded.bundle(X)
        assert (out["h"] - h).abs().max().item() <= TOL
        assert (out["z"] - q.fc(h)).abs().max().item() <= TOL
    assert loaded.preprocess.resolution == 224


class _DINOHead(nn.Module):
    """facebookresearch/dino DINOHead(384, 65536), the released configuration (no BN, norm_last_layer)."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(384, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(),
                                 nn.Linear(2048, 256))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.last_layer = nn.utils.weight_norm(nn.Linear(256, 65536, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def test_vit_s16_dino_full_size(tmp_path):
    def net(seed):
        torch.manual_seed(seed)
        w = nn.Module()
        w.backbone = VisionTransformer(patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=0).eval()
        w.head = _DINOHead().eval()
        return w

    student, teacher = net(1), net(2)
    p = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"student": {"module." + n: v for n, v in student.state_dict().items()},
                "teacher": teacher.state_dict(), "optimizer": {}, "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
                "dino_loss": {"center": torch.zeros(1, 65536)}}, p)
    loaded = load_checkpoint(p)
    assert loaded.format == "dino" and loaded.branch == "teacher"
    assert loaded.config["timm_kwargs"]["num_heads"] == 6 and "args.arch" in loaded.config["num_heads_source"]
    with torch.no_grad():
        h = teacher.backbone.forward_features(X)[:, 0]
        out = loaded.bundle(X)
        assert (out["h"] - h).abs().max().item() <= TOL
        assert (out["z"] - teacher.head(h)).abs().max().item() <= TOL
