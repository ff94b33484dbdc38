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
