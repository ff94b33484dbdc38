"""Barlow Twins, VICReg, SwAV, SimCLR (sthalles) and BYOL (lucidrains) ResNet checkpoints: fixtures built at test
time in each project's layout (resnet18, scaled heads), saved as each project saves them, loaded back through
``load_checkpoint`` and compared with the original modules in eval mode."""
from __future__ import annotations

import copy
from typing import Callable, Dict, Tuple

import pytest
import torch
import torchvision
from torch import nn

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, load_checkpoint
from reprscope.formats.common import find_state_dict

from test_formats import CASES as OLD_CASES, OPTIMIZER, TOL, _ddp, _features, _randomise_bn, _resnet


# -- the projects' models, as their training code builds them ------------------------------------------------


def _mlp(sizes, bias: bool, last_bias: bool) -> nn.Sequential:
    """barlowtwins main.py BarlowTwins.projector (no bias) / vicreg main_vicreg.py Projector (bias except last)."""
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=bias), nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=last_bias))
    return nn.Sequential(*layers)


class BarlowTwins(nn.Module):
    def __init__(self, sizes=(512, 64, 64, 48)):
        super().__init__()
        self.backbone = torchvision.models.resnet18(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = _mlp(sizes, bias=False, last_bias=False)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)


class VICReg(nn.Module):
    def __init__(self, sizes=(512, 64, 64, 48)):
        super().__init__()
        self.backbone = torchvision.models.resnet18(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = _mlp(sizes, bias=True, last_bias=False)


def _swav_model(hidden=64, out=16, K=30) -> nn.Module:
    """swav src/resnet50.py: torchvision names, no fc, projection_head {0,1,3}, prototypes Linear(out, K, bias=False)."""
    m = _resnet(18)
    del m.fc
    m.fc = nn.Identity()
    m.projection_head = nn.Sequential(nn.Linear(512, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, out))
    m.prototypes = nn.Linear(out, K, bias=False)
    return m


class SimCLRSthalles(nn.Module):
    """sthalles/SimCLR ResNetSimCLR: backbone.fc = Sequential(Linear(d, d), ReLU, Linear(d, out_dim))."""

    def __init__(self, out_dim=32):
        super().__init__()
        self.backbone = torchvision.models.resnet18(num_classes=out_dim)
        d = self.backbone.fc.in_features
        self.backbone.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), self.backbone.fc)


class _MLPNet(nn.Module):
    """old byol-pytorch ``class MLP`` (``self.net``)."""

    def __init__(self, dim, out, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, out))

    def forward(self, x):
        return self.net(x)


def _byol_mlp(dim, out, hidden, old):
    if old:
        return _MLPNet(dim, out, hidden)
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, out))


class _NetWrapper(nn.Module):
    def __init__(self, net, projector):
        super().__init__()
        self.net = net
        self.projector = projector


class BYOL(nn.Module):
    """byol-pytorch BYOL learner after a forward (projector and target encoder are created lazily)."""

    def __init__(self, old=False, proj=24, hidden=48):
        super().__init__()
        self.online_encoder = _NetWrapper(_resnet(18), _byol_mlp(512, proj, hidden, old))
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.online_predictor = _byol_mlp(proj, proj, hidden, old)


# -- cases: (model, payload, encoder-with-torchvision-children, projector, predictor) ------------------------


def _barlow_case():
    torch.manual_seed(10)
    m = _randomise_bn(BarlowTwins())
    payload = {"epoch": 5, "model": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    return m, payload, m.backbone, nn.Sequential(m.projector, m.bn).eval(), None


def _vicreg_case():
    torch.manual_seed(11)
    m = _randomise_bn(VICReg())
    payload = {"epoch": 5, "model": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    return m, payload, m.backbone, m.projector, None


class _L2(nn.Module):
    def forward(self, x):
        return nn.functional.normalize(x, dim=1, p=2)


def _swav_trunk(m: nn.Module) -> nn.Module:
    """conv1 … avgpool, fc (children order), so ``_features`` (all children but the last) is the pooled trunk."""
    return nn.Sequential(*list(m.children())[:10])


def _swav_released_case():
    torch.manual_seed(12)
    m = _randomise_bn(_swav_model())
    return m, _ddp(m.state_dict()), _swav_trunk(m), nn.Sequential(m.projection_head, _L2()).eval(), None


def _swav_training_case():
    torch.manual_seed(13)
    m = _randomise_bn(_swav_model())
    payload = {"epoch": 2, "state_dict": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    return m, payload, _swav_trunk(m), nn.Sequential(m.projection_head, _L2()).eval(), None


def _sthalles_case():
    torch.manual_seed(14)
    m = _randomise_bn(SimCLRSthalles())
    payload = {"epoch": 100, "arch": "resnet18", "state_dict": m.state_dict(), "optimizer": OPTIMIZER}
    return m, payload, m.backbone, m.backbone.fc, None


def _byol_case(old=False):
    torch.manual_seed(15)
    m = _randomise_bn(BYOL(old=old))
    return m, m.state_dict(), m.online_encoder.net, m.online_encoder.projector, m.online_predictor


CASES: Dict[str, Tuple[Callable, str, str]] = {
    "barlowtwins": (_barlow_case, "barlowtwins", "barlowtwins"),
    "vicreg": (_vicreg_case, "vicreg", "vicreg"),
    "swav_released": (_swav_released_case, "swav", "swav"),
    "swav_training": (_swav_training_case, "swav", "swav"),
    "simclr_sthalles": (_sthalles_case, "simclr_sthalles", "simclr"),
    "byol": (_byol_case, "byol", "byol"),
    "byol_old_mlp": (lambda: _byol_case(old=True), "byol", "byol"),
}


def _save(tmp_path, payload, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(payload, p)
    return p


@pytest.mark.parametrize("case", list(CASES))
def test_roundtrip_matches_original(tmp_path, case):
    make, fmt, method = CASES[case]
    _, payload, encoder, projector, predictor = make()
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.format == fmt and loaded.method == method
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        h_ref = _features(encoder, x)
        out = loaded.bundle(x)
        assert (out["h"] - h_ref).abs().max().item() <= TOL
        z_ref = projector(h_ref)
        assert out["z"].shape == z_ref.shape and (out["z"] - z_ref).abs().max().item() <= TOL
        if predictor is not None:
            assert (out["p"] - predictor(z_ref)).abs().max().item() <= TOL
        else:
            assert not loaded.bundle.has("predictor")
    state, _ = find_state_dict(torch.load(p, weights_only=True))
    assert all(": " in u for u in loaded.unused_keys)
    assert len(loaded.bundle.state_dict()) + len(loaded.unused_keys) == len(state)
    if isinstance(payload.get("epoch"), int):
        assert loaded.epoch == payload["epoch"]


# -- heads and unused keys ----------------------------------------------------------------------------------


def test_barlow_bn_is_last_projector_layer(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, _barlow_case()[1]))
    proj = loaded.config["heads"]["projector"]
    assert [s["type"] for s in proj] == ["linear", "batchnorm", "relu"] * 2 + ["linear", "batchnorm"]
    assert not any(s.get("bias") for s in proj if s["type"] == "linear")
    assert proj[-1] == {"type": "batchnorm", "in": 48, "affine": False}
    assert loaded.config["projector_last_bn"] == "bn" and loaded.config["container"] == "model"
    assert loaded.unused_keys == []


def test_vicreg_bias_except_last(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, _vicreg_case()[1]))
    lin = [s for s in loaded.config["heads"]["projector"] if s["type"] == "linear"]
    assert [s["bias"] for s in lin] == [True, True, False] and loaded.unused_keys == []


def test_swav_prototypes_unused_and_l2norm(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, _swav_released_case()[1]))
    assert loaded.unused_keys and [u.split(":")[0] for u in loaded.unused_keys] == ["module.prototypes.weight"]
    assert loaded.config["heads"]["projector"][-1] == {"type": "l2norm"}
    assert loaded.config["n_prototypes"] == [30] and loaded.config["container"] is None
    with torch.no_grad():
        z = loaded.bundle(torch.randn(2, 3, 64, 64))["z"]
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_sthalles_projector(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, _sthalles_case()[1]))
    assert [s["type"] for s in loaded.config["heads"]["projector"]] == ["linear", "relu", "linear"]
    assert loaded.config["arch_saved"] == "resnet18" and loaded.unused_keys == []


@pytest.mark.parametrize("old", [False, True])
def test_byol_unused(tmp_path, old):
    loaded = load_checkpoint(_save(tmp_path, _byol_case(old)[1]))
    fc = sorted(u.split(":")[0] for u in loaded.unused_keys if ".fc." in u and u.startswith("online_encoder."))
    assert fc == ["online_encoder.net.fc.bias", "online_encoder.net.fc.weight"]
    assert "never trained" in next(u for u in loaded.unused_keys if u.startswith("online_encoder.net.fc."))
    rest = [u for u in loaded.unused_keys if not u.startswith("online_encoder.net.fc.")]
    assert rest and all(u.startswith("target_encoder.") for u in rest)
    assert any(u.startswith("target_encoder.projector.") for u in rest)
    assert [s["type"] for s in loaded.config["heads"]["predictor"]] == ["linear", "batchnorm", "relu", "linear"]


# -- detection ----------------------------------------------------------------------------------------------

ALL = {**{f"old:{k}": v for k, v in OLD_CASES.items()}, **CASES}


@pytest.mark.parametrize("case", list(ALL))
def test_detection_is_unique(case):
    make, fmt, _ = ALL[case]
    payload = make()[1]
    hits = [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]
    assert hits == [fmt]


def test_near_misses_are_not_detected():
    """Layouts these rules must leave alone (solo-learn-like extra roots; a backbone-only save)."""
    _, payload, *_ = _vicreg_case()
    solo = {"state_dict": {**{k[len("module."):]: v for k, v in payload["model"].items()},
                           "classifier.weight": torch.zeros(10, 512)}}
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(solo)] == []
    _, payload, *_ = _barlow_case()
    backbone_only = {k[len("module.backbone."):]: v for k, v in payload["model"].items()
                     if k.startswith("module.backbone.")}
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(backbone_only)] == ["torchvision"]
    _, payload, *_ = _sthalles_case()
    payload["state_dict"]["projector.0.weight"] = torch.zeros(3, 3)
    assert not FORMATS.get("simclr_sthalles").detect(payload) and not FORMATS.get("vicreg").detect(payload)


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,key", [
    ("barlowtwins", "module.projector.1.running_var"),
    ("vicreg", "module.projector.4.weight"),
    ("swav_released", "module.layer2.0.conv1.weight"),
    ("swav_training", "module.projection_head.1.bias"),
    ("simclr_sthalles", "backbone.layer2.0.conv1.weight"),
    ("byol", "online_predictor.1.running_var"),
    ("byol_old_mlp", "online_encoder.projector.net.1.weight"),
])
def test_shape_mismatch_names_key(tmp_path, case, key):
    _, payload, *_ = CASES[case][0]()
    container = find_state_dict(payload)[1]
    state = payload if container is None else payload[container]
    shape = list(state[key].shape)
    state[key] = torch.zeros(*[s + 1 for s in shape])
    want = key.replace(".", r"\.") + r" \[" + ", ".join(str(s + 1) for s in shape) + r"\] \(model expects \[" + ", ".join(map(str, shape))
    with pytest.raises(ReprscopeError, match="shape mismatch: .*" + want):
        load_checkpoint(_save(tmp_path, payload))


def test_barlow_bn_shape_mismatch_names_file_key(tmp_path):
    _, payload, *_ = _barlow_case()
    payload["model"]["module.bn.running_var"] = torch.zeros(47)
    with pytest.raises(ReprscopeError, match=r"module\.bn\.running_var \[47\] \(model expects \[48\]\)"):
        load_checkpoint(_save(tmp_path, payload))


def test_byol_stray_tensor_is_an_error(tmp_path):
    _, payload, *_ = _byol_case()
    payload["online_encoder.extra.weight"] = torch.zeros(2, 2)
    with pytest.raises(ReprscopeError, match=r"online_encoder\.extra\.weight"):
        load_checkpoint(_save(tmp_path, payload))
