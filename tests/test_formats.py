"""Checkpoints from the wild (ResNet): fixtures are built at test time in each project's own layout with random
weights, saved as that project saves them, loaded back through ``load_checkpoint`` and compared with the
original modules in eval mode."""
from __future__ import annotations

import argparse
import copy
from typing import Callable, Dict, Tuple

import pytest
import torch
import torchvision
from torch import nn

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, load_checkpoint
from reprscope.formats.common import (allowlisted_load, find_state_dict, head_spec_from_state, infer_resnet,
                                      strip_prefix, strip_state)

TOL = 1e-5


def _randomise_bn(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is really tested."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
            if mod.affine:
                mod.weight.data.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.data.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return m.eval()


def _features(resnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet pooled features: everything before ``fc``."""
    return nn.Sequential(*list(resnet.children())[:-1])(x).flatten(1)


def _resnet(depth: int, cifar: bool = False) -> nn.Module:
    m = getattr(torchvision.models, f"resnet{depth}")()
    if cifar:  # solo-learn / CIFAR ResNets: 3×3 stride-1 stem, no max-pool
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    return m


def _ddp(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {"module." + k: v for k, v in state.items()}


# -- the projects' models, as their training code builds them ------------------------------------------------


class SimSiam(nn.Module):
    """facebookresearch/simsiam builder.SimSiam (dim=2048 / pred_dim=512 for ResNet-50; scaled for ResNet-18)."""

    def __init__(self, depth: int = 18, dim: int = 128, pred_dim: int = 32):
        super().__init__()
        self.encoder = _resnet(depth)
        prev = self.encoder.fc.in_features
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
            nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
            nn.Linear(prev, dim), nn.BatchNorm1d(dim, affine=False))
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))


class MoCo(nn.Module):
    """facebookresearch/moco builder.MoCo: v1 fc = Linear, v2 (mlp=True) fc = Linear, ReLU, Linear."""

    def __init__(self, depth: int = 18, dim: int = 32, K: int = 64, mlp: bool = True):
        super().__init__()
        self.encoder_q = _resnet(depth)
        d = self.encoder_q.fc.in_features
        self.encoder_q.fc = nn.Linear(d, dim)
        if mlp:
            self.encoder_q.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), self.encoder_q.fc)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def _mocov3_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """moco-v3 builder.MoCo._build_mlp."""
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


class MoCoV3(nn.Module):
    """moco-v3 MoCo_ResNet: fc → 2-layer projector with affine-free last BN, 2-layer predictor."""

    def __init__(self, depth: int = 18, dim: int = 32, mlp_dim: int = 64):
        super().__init__()
        self.base_encoder = _resnet(depth)
        hidden = self.base_encoder.fc.in_features
        self.base_encoder.fc = _mocov3_mlp(2, hidden, mlp_dim, dim)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        self.predictor = _mocov3_mlp(2, dim, mlp_dim, dim, last_bn=False)


OPTIMIZER = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "params": [0, 1]}]}


def _simsiam_case(depth=18):
    torch.manual_seed(0)
    m = _randomise_bn(SimSiam(depth))
    payload = {"epoch": 3, "arch": f"resnet{depth}", "state_dict": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    return m, payload, m.encoder, m.encoder.fc, m.predictor


def _mocov2_case():
    torch.manual_seed(1)
    m = _randomise_bn(MoCo(mlp=True))
    payload = {"epoch": 3, "arch": "resnet18", "state_dict": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    return m, payload, m.encoder_q, m.encoder_q.fc, None


def _mocov1_case():
    """Non-DDP run of v1, released without optimizer: no ``module.`` prefix."""
    torch.manual_seed(2)
    m = _randomise_bn(MoCo(mlp=False))
    payload = {"epoch": 3, "arch": "resnet18", "state_dict": m.state_dict()}
    return m, payload, m.encoder_q, m.encoder_q.fc, None


def _mocov3_case():
    torch.manual_seed(3)
    m = _randomise_bn(MoCoV3())
    payload = {"state_dict": _ddp(m.state_dict()), "optimizer": OPTIMIZER, "scaler": {"scale": 65536.0},
               "epoch": 3, "arch": "resnet18"}
    return m, payload, m.base_encoder, m.base_encoder.fc, m.predictor


def _torchvision_case():
    torch.manual_seed(4)
    m = _randomise_bn(_resnet(18))
    return m, m.state_dict(), m, None, None


def _cifar_case():
    torch.manual_seed(5)
    m = _randomise_bn(_resnet(18, cifar=True))
    return m, {"state_dict": m.state_dict(), "epoch": 7}, m, None, None


CASES: Dict[str, Tuple[Callable, str, str]] = {
    "simsiam": (_simsiam_case, "simsiam", "simsiam"),
    "moco_v1": (_mocov1_case, "moco", "moco_v1"),
    "moco_v2": (_mocov2_case, "moco", "moco_v2"),
    "moco_v3": (_mocov3_case, "moco", "moco_v3"),
    "torchvision": (_torchvision_case, "torchvision", "unknown"),
    "torchvision_cifar": (_cifar_case, "torchvision", "unknown"),
}


def _save(tmp_path, payload, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(payload, p)
    return p


def _check_outputs(loaded, encoder, projector, predictor, x):
    with torch.no_grad():
        h_ref = _features(encoder, x)
        out = loaded.bundle(x)
        assert out["h"].shape == h_ref.shape
        assert (out["h"] - h_ref).abs().max().item() <= TOL
        if projector is not None:
            z_ref = projector(h_ref)
            assert (out["z"] - z_ref).abs().max().item() <= TOL
            if predictor is not None:
                assert (out["p"] - predictor(z_ref)).abs().max().item() <= TOL
        else:
            assert not loaded.bundle.has("projector")


@pytest.mark.parametrize("case", list(CASES))
def test_roundtrip_matches_original(tmp_path, case):
    make, fmt, method = CASES[case]
    model, payload, encoder, projector, predictor = make()
    p = _save(tmp_path, payload)
    loaded = load_checkpoint(p)
    assert loaded.format == fmt and loaded.method == method
    assert loaded.bundle.encoder.feature_names == [f"model.layer{i}" for i in range(1, 5)]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    _check_outputs(loaded, encoder, projector, predictor, x)
    # strictness: every tensor of the file is loaded or listed with a reason
    state, _ = find_state_dict(torch.load(p, weights_only=True))
    n_loaded = len(loaded.bundle.state_dict())
    assert all(": " in u for u in loaded.unused_keys)
    assert n_loaded + len(loaded.unused_keys) == len(state)
    if isinstance(payload.get("epoch"), int):
        assert loaded.epoch == payload["epoch"]


def test_moco_v2_unused_and_heads(tmp_path):
    _, payload, *_ = _mocov2_case()
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert any(u.startswith("module.queue:") for u in loaded.unused_keys)
    assert any(u.startswith("module.queue_ptr:") for u in loaded.unused_keys)
    assert all(u.startswith(("module.encoder_k.", "module.queue")) for u in loaded.unused_keys)
    assert [s["type"] for s in loaded.config["heads"]["projector"]] == ["linear", "relu", "linear"]
    assert loaded.config["branch"] == "encoder_q" and loaded.config["container"] == "state_dict"
    assert loaded.config["arch"] == "resnet18" and loaded.config["arch_saved"] == "resnet18"


def test_moco_v3_and_simsiam_head_specs(tmp_path):
    _, payload, *_ = _mocov3_case()
    loaded = load_checkpoint(_save(tmp_path, payload))
    proj = loaded.config["heads"]["projector"]
    assert [s["type"] for s in proj] == ["linear", "batchnorm", "relu", "linear", "batchnorm"]
    assert proj[-1]["affine"] is False and proj[0]["bias"] is False
    assert all(u.startswith("module.momentum_encoder.") for u in loaded.unused_keys)
    _, payload, *_ = _simsiam_case()
    loaded = load_checkpoint(_save(tmp_path, payload, "s.pth"))
    proj = loaded.config["heads"]["projector"]
    assert [s["type"] for s in proj] == ["linear", "batchnorm", "relu"] * 2 + ["linear", "batchnorm"]
    assert proj[6]["bias"] is True and proj[7]["affine"] is False and loaded.unused_keys == []
    assert [s["type"] for s in loaded.config["heads"]["predictor"]] == ["linear", "batchnorm", "relu", "linear"]


def test_torchvision_fc_is_unused_classifier(tmp_path):
    _, payload, *_ = _torchvision_case()
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert sorted(u.split(":")[0] for u in loaded.unused_keys) == ["fc.bias", "fc.weight"]
    assert "classifier" in loaded.unused_keys[0] and loaded.config["container"] is None


def test_simsiam_resnet50(tmp_path):
    """The released architecture (ResNet-50, dim 2048, pred_dim 512) once."""
    torch.manual_seed(0)
    m = _randomise_bn(SimSiam(50, dim=2048, pred_dim=512))
    payload = {"epoch": 3, "arch": "resnet50", "state_dict": _ddp(m.state_dict()), "optimizer": OPTIMIZER}
    loaded = load_checkpoint(_save(tmp_path, payload))
    assert loaded.config["arch"] == "resnet50" and loaded.bundle.num_features == 2048
    _check_outputs(loaded, m.encoder, m.encoder.fc, m.predictor, torch.randn(2, 3, 64, 64))


# -- detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_detection_is_unique(case):
    make, fmt, _ = CASES[case]
    payload = make()[1]
    hits = [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]
    assert hits == [fmt]


def test_prefix_stripping_keeps_encoder_q_apart():
    keys = ["module.encoder_q.conv1.weight", "module.encoder.conv1.weight", "module._orig_mod.fc.weight",
            "_orig_mod.module.x", "momentum_module.y", "modulex.z", "encoder.module.w"]
    assert strip_prefix(keys) == ["encoder_q.conv1.weight", "encoder.conv1.weight", "fc.weight", "x",
                                  "momentum_module.y", "modulex.z", "encoder.module.w"]
    with pytest.raises(ReprscopeError, match="module.a.*a|a.*module.a"):
        strip_state({"module.a": torch.zeros(1), "a": torch.zeros(1)})


def test_moco_detected_not_simsiam_with_both_prefixes():
    """A MoCo v2 file must not be read as SimSiam although 'module.encoder' prefixes 'module.encoder_q'."""
    _, payload, *_ = _mocov2_case()
    assert not FORMATS.get("simsiam").detect(payload)
    _, payload, *_ = _simsiam_case()
    assert not FORMATS.get("moco").detect(payload)


# -- errors -------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_key(tmp_path):
    _, payload, *_ = _simsiam_case()
    sd = payload["state_dict"]
    sd["module.encoder.layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(ReprscopeError, match=r"module\.encoder\.layer2\.0\.conv1\.weight \[128, 64, 5, 5\]"):
        load_checkpoint(_save(tmp_path, payload))


def test_missing_weight_names_key(tmp_path):
    _, payload, *_ = _mocov2_case()
    del payload["state_dict"]["module.encoder_q.layer3.1.bn2.running_var"]
    with pytest.raises(ReprscopeError, match=r"missing weights: .*layer3\.1\.bn2\.running_var"):
        load_checkpoint(_save(tmp_path, payload))


def test_stray_tensor_is_an_error(tmp_path):
    _, payload, *_ = _mocov3_case()
    payload["state_dict"]["module.extra_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ReprscopeError, match=r"module\.extra_head\.weight"):
        load_checkpoint(_save(tmp_path, payload))


def test_unknown_layout_is_refused(tmp_path):
    payload = {"model": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "projector.0.weight": torch.zeros(4, 4)},
               "epoch": 1}
    with pytest.raises(ReprscopeError, match="not a checkpoint format reprscope knows"):
        load_checkpoint(_save(tmp_path, payload))


# -- the pieces ---------------------------------------------------------------------------------------------


def test_find_state_dict_rules():
    t = torch.zeros(1)
    assert find_state_dict({"state_dict": {"a": t}, "model": {"b": t}})[1] == "state_dict"
    assert find_state_dict({"teacher": {"a": t}, "student": {"b": t}})[1] == "teacher"
    assert find_state_dict({"a": t, "b": t}) == ({"a": t, "b": t}, None)
    sd, key = find_state_dict({"net": {"a": t, "b": t}, "other": {"c": t}, "epoch": 1})
    assert key == "net" and set(sd) == {"a", "b"}
    with pytest.raises(ReprscopeError, match="no dict of tensors"):
        find_state_dict({"epoch": 1, "args": {"lr": 0.1}})


def test_allowlisted_load_accepts_namespace_only(tmp_path, capsys):
    p = _save(tmp_path, {"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1, arch="vit_small")})
    with pytest.raises(ReprscopeError, match="not a checkpoint format reprscope knows"):
        load_checkpoint(p)  # read fine (Namespace allow-listed); the layout is just unknown
    payload = allowlisted_load(p)
    assert payload["args"].arch == "vit_small"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p2 = _save(tmp_path, {"args": argparse.Namespace(lr=0.1), "x": Evil()}, "evil.pth")
    # the reader replaces the global by an inert stand-in (print is never called) …
    from reprscope.formats.base import SkippedGlobal

    loaded = allowlisted_load(p2)
    assert isinstance(loaded["x"], SkippedGlobal) and loaded.skipped_globals == ["builtins.print"]
    assert "pwned" not in capsys.readouterr().out
    # … and a file whose tensors make no model is refused as before
    with pytest.raises(ReprscopeError, match="refuses"):
        load_checkpoint(p2)


@pytest.mark.parametrize("depth,name", [(18, "resnet18"), (34, "resnet34"), (50, "resnet50"), (101, "resnet101")])
def test_infer_resnet_depth(depth, name):
    with torch.device("meta"):
        sd = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    arch = infer_resnet(sd)
    assert arch.name == name and arch.depth == depth and not arch.cifar_stem


def test_infer_resnet_stems_and_widths():
    with torch.device("meta"):
        sd = _resnet(18, cifar=True).state_dict()
        wide = torchvision.models.wide_resnet50_2().state_dict()
    assert infer_resnet(sd).cifar_stem and infer_resnet(sd).name == "resnet18"
    assert infer_resnet(wide).name == "wide_resnet50_2"
    sd = dict(sd)
    sd["conv1.weight"] = torch.zeros(128, 3, 7, 7)
    with pytest.raises(ReprscopeError, match=r"\[128, 3, 7, 7\]: a 128-channel stem is read only for uniformly widened"):
        infer_resnet(sd)
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ReprscopeError, match="stem"):
        infer_resnet(sd)


def test_head_spec_from_state_keeps_indices():
    state = {"fc.0.weight": torch.randn(8, 4), "fc.0.bias": torch.randn(8), "fc.2.weight": torch.randn(3, 8)}
    spec, renamed = head_spec_from_state(state, "fc")
    assert spec == [{"type": "linear", "in": 4, "out": 8, "bias": True}, {"type": "relu"},
                    {"type": "linear", "in": 8, "out": 3, "bias": False}]
    assert set(renamed) == {"0.weight", "0.bias", "2.weight"}
    spec, renamed = head_spec_from_state({"enc.fc.weight": torch.randn(3, 4), "enc.fc.bias": torch.randn(3)}, "enc.fc")
    assert spec == [{"type": "linear", "in": 4, "out": 3, "bias": True}] and set(renamed) == {"0.weight", "0.bias"}
    with pytest.raises(ReprscopeError, match=r"indices \[1, 2\]"):
        head_spec_from_state({"h.0.weight": torch.randn(3, 4), "h.3.weight": torch.randn(3, 3)}, "h")
    with pytest.raises(ReprscopeError, match="no weights under 'h.'"):
        head_spec_from_state({"hx.0.weight": torch.randn(3, 4)}, "h")


def test_head_with_inconsistent_widths_names_the_layer():
    from reprscope.formats.common import head_spec_from_state

    state = {"p.0.weight": torch.zeros(64, 32), "p.2.weight": torch.zeros(16, 65)}
    with pytest.raises(ReprscopeError, match=r"'p\.2' takes 65 inputs but the layer before it gives 64"):
        head_spec_from_state(state, "p")
