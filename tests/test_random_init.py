"""The random_init baseline: the same architecture at initialisation, seeded, the checkpoint untouched, and its
rows beside the checkpoint's."""
import numpy as np
import pytest
import torch
from torch import nn

import reprscope
from reprscope.formats import load_checkpoint
from reprscope.formats.base import TOKEN_INIT_STD, random_init


def test_every_parameter_is_redrawn_and_the_checkpoint_is_untouched(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt)
    before = {k: v.clone() for k, v in model.bundle.state_dict().items()}
    a, b = random_init(model, seed=123), random_init(model, seed=123)
    c = random_init(model, seed=124)
    for (name, p), (_, q), (_, r) in zip(a.bundle.named_parameters(), b.bundle.named_parameters(),
                                         c.bundle.named_parameters()):
        assert torch.equal(p, q), name  # seeded
        assert not torch.equal(p, r), name  # another seed, another draw
        assert not torch.equal(p, before[name]), name
    for k, v in model.bundle.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert a.sha256 != model.sha256 and a.step is None and a.source.endswith("#random_init")


def test_norm_statistics_are_reset_and_free_parameters_get_the_token_init():
    from reprscope.formats.base import LoadedModel

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)
            self.token = nn.Parameter(torch.full((1, 500), 5.0))

    net = Net()
    net.bn.running_mean.fill_(3.0)
    net.bn.weight.data.fill_(7.0)
    model = LoadedModel(bundle=net, format="x", method="m", config={}, source="s", sha256="0" * 64)
    out = random_init(model, seed=0).bundle
    assert torch.equal(out.bn.running_mean, torch.zeros(3)) and torch.equal(out.bn.weight.data, torch.ones(3))
    tok = out.token.detach()
    assert tok.abs().max() <= 2 * TOKEN_INIT_STD and abs(float(tok.std()) - TOKEN_INIT_STD) < 0.25 * TOKEN_INIT_STD


def test_rows_of_the_baseline_beside_the_checkpoint(tiny_run, tiny_h5):
    with pytest.warns(reprscope.ReprscopeWarning, match="no random_init baseline"):
        table = reprscope.analyze([tiny_run.run_dir, tiny_h5], analyzers=["center"], random_init=True, limit=200)
    base = table[table["source"].str.endswith("#random_init")]
    last = sorted(tiny_run.run_dir.glob("ckpt-*.pt"))[-1]
    assert set(base["source"]) == {f"{last}#random_init"}  # once for the run directory, none for the store
    assert base["step"].isna().all()
    trained = table[table["source"] == str(last)]
    assert set(base["layer"]) == set(trained["layer"])
    assert not np.allclose(base.sort_values(["layer", "metric"])["value"].to_numpy(),
                           trained.sort_values(["layer", "metric"])["value"].to_numpy())
