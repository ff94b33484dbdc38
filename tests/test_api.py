"""The Python API: analyze/extract on any nn.Module, a mapping of arrays or a path; the training monitor;
check and report as functions; errors in library terms."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import reprscope
import reprscope.metrics as M
from reprscope.extract.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::reprscope.metrics.ReprscopeWarning")

LAYERS = {"encoder": "backbone", "projector": "head"}


class SmallCNN(nn.Module):
    """A model class no registry knows: a conv backbone and an MLP head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 6))
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        h = self.backbone(x).mean(dim=(2, 3))
        return self.head(self.drop(h))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, 8, 8, generator=g)
    x2 = x1 + 0.2 * torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x1, x2, y


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def loader():
    ds = torch.utils.data.TensorDataset(*_data())
    return torch.utils.data.DataLoader(ds, batch_size=32)


def _hooked(model, x):
    with torch.no_grad():
        h = model.backbone(x).mean(dim=(2, 3))
        return h.numpy(), model.head(h).numpy()


def test_own_module_with_a_loader_equals_the_metric_functions_on_its_outputs(model, loader):
    table = reprscope.analyze(model, loader, layers=LAYERS, analyzers=["spectrum", "center", "knn", "weights"],
                              params={"knn": {"ks": "5"}}, progress=False)
    x1, x2, y = _data()
    h1, z1 = _hooked(model, x1)
    h2, z2 = _hooked(model, x2)
    assert model.training is False
    row = lambda layer, metric, view="view0", index="": table.query(  # noqa: E731
        "layer == @layer and metric == @metric and view == @view and index == @index")["value"].item()
    assert row("encoder", "rankme") == pytest.approx(M.rankme(h1), rel=1e-6)
    assert row("projector", "rankme", view="view1") == pytest.approx(M.rankme(z2), rel=1e-6)
    assert row("projector", "center_norm", view="view0|view1") == pytest.approx(M.center_norm(np.stack([z1, z2])),
                                                                                 rel=1e-6)
    assert row("encoder", "top1", index="5") == M.knn_accuracy(h1, y.numpy(), k=5)
    # the head made of supported layers is stored: weights reads the user's projector
    assert row("encoder", "rank_tau", view="all", index="projector.0") == M.weight_ranks(model.head)["0"]["rank_tau"]
    assert table["source"].iloc[0].endswith("SmallCNN")
    assert set(table["layer"]) == {"encoder", "projector"}


def test_extract_writes_the_cli_store_with_the_module_as_source(model, loader, tmp_path):
    out = reprscope.extract(model, loader, tmp_path / "e.h5", layers=LAYERS, progress=False)
    with Store(out) as st:
        assert st.n == 96 and st.views == ["view0", "view1"]
        assert st.attrs["source"].endswith("test_api.SmallCNN") and len(st.attrs["source_sha256"]) == 64
        assert [l["space"] for l in st.layers()] == ["encoder", "projector"]
        assert np.array_equal(st.labels, _data()[2].numpy())
        assert "projector" in st.modules()
        h1, _ = _hooked(model, _data()[0])
        assert np.allclose(st.embeddings("encoder")[0], h1, atol=1e-6)
    # the same parameters hash the same; changed ones do not
    other = SmallCNN()
    out2 = reprscope.extract(other, loader, tmp_path / "f.h5", layers=LAYERS, progress=False)
    with Store(out) as a, Store(out2) as b:
        assert a.attrs["source_sha256"] != b.attrs["source_sha256"]
    assert not list(tmp_path.glob(".*partial"))


def test_module_default_layers_pooling_and_dict_batches(model):
    x1, x2, y = _data(40)
    batches = [{"image": x1[:20], "label": y[:20]}, {"image": x1[20:], "label": y[20:]}]
    t = reprscope.analyze(model, batches, analyzers=["spectrum"], progress=False)
    assert set(t["layer"]) == {"backbone", "head", "drop"}
    t2 = reprscope.analyze(model, [x1], layers=["backbone.2"], analyzers=["spectrum"], pool="flatten", progress=False)
    assert t2.query("metric == 'sv'")["index"].astype(int).max() == 39  # flattened 12*8*8 > 40 samples
    with pytest.raises(ValueError, match="has no submodule 'neck'"):
        reprscope.analyze(model, [x1], layers={"encoder": "neck"})
    with pytest.raises(ValueError, match="takes no option 'pol'"):
        reprscope.analyze(model, [x1], pol="cls")


def test_module_on_a_registered_data_set():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Linear(10, 16), nn.ReLU()))
    net.add_module("projector", nn.Linear(16, 4))
    t = reprscope.analyze(net, "dgp", analyzers=["identifiability", "spectrum"], limit=300, progress=False)
    assert set(t.query("analyzer == 'identifiability'")["layer"]) == {"encoder", "projector"}
    assert set(t["view"]) >= {"clean", "aug1", "aug2"}


def test_arrays_equal_the_store_written_from_them(tmp_path):
    rng = np.random.default_rng(1)
    enc = rng.normal(size=(2, 150, 10)).astype(np.float32)
    proj = np.tanh(enc @ rng.normal(size=(10, 5))).astype(np.float32)
    labels = rng.integers(0, 4, 150)
    latents = rng.normal(size=(150, 3))
    arrays = {"encoder": enc, "projector": torch.from_numpy(proj)}
    kw = dict(labels=labels, latents=latents, latent_names=["a", "b", "c"], content_mask=[True, True, False])
    mem = reprscope.analyze(arrays, **kw)
    path = reprscope.extract(arrays, out=tmp_path / "a.h5", **kw)
    disk = reprscope.analyze(path, progress=False)
    assert len(mem) == len(disk) > 100
    assert set(mem["analyzer"]) >= {"spectrum", "center", "knn", "identifiability", "vicreg", "matrix_information"}
    pd.testing.assert_frame_equal(mem.drop(columns=["source"]).reset_index(drop=True),
                                  disk.drop(columns=["source"]).reset_index(drop=True))
    assert mem.attrs["notes"]
    with pytest.raises(ValueError, match="same views and samples"):
        reprscope.analyze({"a": enc, "b": enc[:, :100]})
    with pytest.raises(ValueError, match=r"labels of shape \(n,\) = \(150,\)"):
        reprscope.analyze(arrays, labels=labels[:10])


def _train(monitor_every=None, steps=12, tmp=None):
    torch.manual_seed(0)
    np.random.seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ds = torch.utils.data.TensorDataset(*_data(64))
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    probe_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_data(32, seed=5)), batch_size=16,
                                               shuffle=True)
    mon = None
    if monitor_every:
        mon = reprscope.Monitor(model, probe_loader, layers=LAYERS, analyzers=["spectrum", "center", "knn"],
                                params={"knn": {"ks": "3"}}, csv_path=None if tmp is None else tmp / "m.csv")
    step = 0
    while step < steps:
        for x1, x2, _ in loader:
            model.train()
            z1, z2 = model(x1), model(x2)
            loss = ((z1 - z2) ** 2).mean() - 0.1 * z1.std(0).mean() + 0.01 * torch.rand(()).item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if mon is not None and step % monitor_every == 0:
                mon(step)
                assert model.training and all(m.training for m in model.modules())
            if step == steps:
                break
    return model, mon, np.random.rand(), torch.rand(3)


def test_monitor_leaves_training_bit_identical(tmp_path):
    plain, _, np_next, torch_next = _train()
    watched, mon, np_next2, torch_next2 = _train(monitor_every=4, tmp=tmp_path)
    for (k, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), k
    assert np_next == np_next2 and torch.equal(torch_next, torch_next2)
    table = mon.table
    assert sorted(table["step"].unique()) == [4, 8, 12]
    keys = [set(zip(g["layer"], g["analyzer"], g["metric"])) for _, g in table.groupby("step")]
    assert all(k == keys[0] for k in keys) and len(keys[0]) > 10
    assert (pd.read_csv(tmp_path / "m.csv")["step"].value_counts().sort_index().index.tolist()) == [4, 8, 12]


def test_monitor_with_an_embedding_function():
    x1, x2, y = _data(50)
    w = torch.randn(3 * 64, 7)
    mon = reprscope.Monitor(lambda x: {"feat": x.flatten(1) @ w}, (x1, x2, y), analyzers=["spectrum", "knn"])
    rows = mon(0)
    assert rows.query("metric == 'rankme' and view == 'view0'")["value"].item() == pytest.approx(
        M.rankme((x1.flatten(1) @ w).numpy()), rel=1e-6)


def test_check_and_report_as_functions(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"encoder": rng.normal(size=(2, 80, 6)).astype(np.float32)}
    path = reprscope.extract(arrays, out=tmp_path / "s.h5")
    table = reprscope.analyze(path, analyzers=["spectrum", "center"], progress=False)
    table.to_csv(tmp_path / "t.csv", index=False)
    res = reprscope.check(path, tmp_path / "t.csv")
    assert res.ok and res.compared == len(table) and res.failures.empty
    bad = table.copy()
    bad.loc[bad["metric"] == "rankme", "value"] += 1.0
    res = reprscope.check(path, bad)
    assert not res.ok and set(res.failures["metric"]) == {"rankme"}
    paths = reprscope.report([tmp_path / "t.csv"], tmp_path / "fig", formats=["png"])
    assert paths and all(Path(p).is_file() for p in paths)


def test_library_errors_name_arguments_and_the_cli_adds_its_flag(tmp_path):
    with pytest.raises(ValueError) as e:
        reprscope.analyze(tmp_path / "missing.pt")
    assert "--" not in str(e.value)
    from reprscope.extract.extractor import extract as raw_extract

    with pytest.raises(reprscope.ReprscopeError) as e:
        raw_extract(None, None, tmp_path / "x.h5", views=0, clean=False)
    assert str(e.value).startswith("views must be") and e.value.arg == "views"
    from cli.main import CLI_FLAGS

    assert CLI_FLAGS[e.value.arg] == "--views"


def _readme_python_blocks():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_examples_run(tmp_path):
    blocks = _readme_python_blocks()
    assert len(blocks) >= 4
    code = "\n\n".join(blocks)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "REPRSCOPE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
