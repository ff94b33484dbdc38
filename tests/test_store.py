"""The embedding store (SPEC §4): schema, round trip against the model, /modules, atomicity, options."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import reprscope
from reprscope.data import build_dataset
from reprscope.errors import ReprscopeError
from reprscope.extract import Store, StoreWriter, extract, view_names
from reprscope.formats import load_checkpoint
from reprscope.io_utils import sha256_file
from reprscope.models.heads import build_head

ROOT_ATTRS = ("reprscope_version", "created", "source", "source_sha256", "source_format", "method", "dataset", "n",
              "views", "augmentation", "seed", "step")


def _json(v):
    return json.loads(v.decode() if isinstance(v, bytes) else v)


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)


# -- schema ----------------------------------------------------------------------------------------------


def test_root_attrs(tiny_h5, tiny_ckpt, tiny_model):
    with h5py.File(tiny_h5, "r") as f:
        a = f.attrs
        missing = [k for k in ROOT_ATTRS if k not in a]
        assert not missing, f"root attrs missing: {missing}"
        assert a["reprscope_version"] == reprscope.__version__
        created = datetime.fromisoformat(str(a["created"]))
        assert created.tzinfo is not None
        assert a["source"] == str(tiny_ckpt)
        assert a["source_sha256"] == sha256_file(tiny_ckpt)
        assert a["source_format"] == "reprscope"
        assert a["method"] == "simclr"
        ds = _json(a["dataset"])
        assert ds["name"] == "dgp" and ds["eval_size"] == 400 and ds == tiny_model.dataset
        assert int(a["n"]) == 300
        assert _json(a["views"]) == ["clean", "aug1", "aug2"]
        assert isinstance(_json(a["augmentation"]), dict)
        assert int(a["seed"]) == 0
        assert int(a["step"]) == 20


def test_index_and_latents(tiny_h5):
    with h5py.File(tiny_h5, "r") as f:
        idx = f["index"]
        assert idx.shape == (300,) and idx.dtype == np.int64
        np.testing.assert_array_equal(idx[()], np.arange(300))
        lat = f["latents"]
        assert lat.dtype == np.float32 and lat.shape == (300, 10)
        names = _json(lat.attrs["names"])
        content = _json(lat.attrs["content"])
        assert isinstance(names, list) and len(names) == 10 and all(isinstance(x, str) for x in names)
        assert isinstance(content, list) and all(isinstance(c, bool) for c in content)
        assert sum(content) == 5  # dgp default: 5 content latents


def test_embeddings_layout(tiny_h5, tiny_model):
    expected = [i.name for i in tiny_model.bundle.layer_infos()]
    with h5py.File(tiny_h5, "r") as f:
        grp = f["embeddings"]
        assert sorted(grp) == sorted(expected)
        assert set(expected) >= {"encoder", "encoder.layer1", "encoder.layer2", "projector"}
        orders = {}
        for name in expected:
            ds = grp[name]
            d = 8 if name == "projector" else 16
            assert ds.shape == (3, 300, d), name
            assert ds.dtype == np.float32
            assert ds.chunks is not None and ds.chunks[0] == 1 and ds.chunks[2] == d  # chunked along n
            assert int(ds.attrs["dim"]) == d
            space = str(ds.attrs["space"])
            assert space in ("encoder", "projector", "predictor", "intermediate")
            orders[name] = int(ds.attrs["order"])
        assert str(grp["encoder"].attrs["space"]) == "encoder"
        assert str(grp["encoder.layer1"].attrs["space"]) == "intermediate"
        assert str(grp["projector"].attrs["space"]) == "projector"
        assert orders["encoder.layer1"] < orders["encoder.layer2"] < orders["encoder"] < orders["projector"]


def test_modules_group(tiny_h5, tiny_model):
    with h5py.File(tiny_h5, "r") as f:
        grp = f["modules/projector"]
        spec = _json(grp.attrs["spec"])
        assert spec == [{"type": "linear", "in": 16, "out": 8, "bias": False}]
        assert sorted(grp) == ["0.weight"]
        w = grp["0.weight"]
        assert w.dtype == np.float32 and w.shape == (8, 16)
        np.testing.assert_array_equal(w[()], tiny_model.bundle.projector.state_dict()["0.weight"].numpy())


def test_store_equals_direct_forward(tiny_h5, tiny_model):
    """The clean view of every stored layer equals ``bundle.forward_layers`` on the same held-out inputs."""
    ds = build_dataset(tiny_model.dataset)
    x = ds.eval_set().x[:300]
    names = [i.name for i in tiny_model.bundle.layer_infos()]
    with torch.inference_mode():
        direct = tiny_model.bundle.eval().forward_layers(x, names)
    with Store(tiny_h5) as st:
        assert st.views[0] == "clean"
        for name in names:
            got = st.embeddings(name)[0]
            np.testing.assert_allclose(got, direct[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        # the augmented views are different inputs: they must not equal the clean one
        assert not np.allclose(st.embeddings("encoder")[1], st.embeddings("encoder")[0])
        np.testing.assert_array_equal(st.latents, ds.eval_set().latents[:300].numpy())


def test_store_reader(tiny_h5):
    with Store(tiny_h5) as st:
        assert st.n == 300
        assert st.views == ["clean", "aug1", "aug2"]
        assert st.attrs["method"] == "simclr" and st.attrs["dataset"]["name"] == "dgp"
        assert [l["name"] for l in st.layers()][-1] == "projector"
        assert st.latent_names and st.content_mask.dtype == bool
        data = st.layer_data("encoder")
        assert data.embeddings.shape == (3, 300, 16)
        assert "projector" in data.modules
        with pytest.raises(ReprscopeError, match="layer 'nope'.*encoder"):
            st.embeddings("nope")


def test_modules_rebuild_projector(tiny_h5):
    """/modules alone rebuilds the projector, which maps the stored encoder layer onto the stored projector layer."""
    with Store(tiny_h5) as st:
        mods = st.modules()
        assert set(mods) == {"projector"}
        head = build_head(mods["projector"].spec)
        head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in mods["projector"].params.items()})
        head.eval()
        for v in range(len(st.views)):
            h = torch.from_numpy(st.embeddings("encoder")[v])
            with torch.inference_mode():
                z = head(h).numpy()
            np.testing.assert_allclose(z, st.embeddings("projector")[v], rtol=1e-5, atol=1e-5)


def test_modules_rebuild_mlp_projector_with_batchnorm(tmp_path, tiny_config_factory):
    """An MLP projector with BatchNorm: weights and running statistics are stored and reproduce eval mode."""
    from reprscope.train import train

    cfg = tiny_config_factory(**{"projector.kind": "mlp", "projector.hidden_dim": 12, "projector.out_dim": 6,
                                 "projector.layers": 2, "train.steps": 3, "train.save_every_steps": None})
    res = train(cfg, tmp_path / "run", progress=False)
    model = load_checkpoint(res.last)
    h5 = extract(model, build_dataset(model.dataset), tmp_path / "m.h5", limit=50, progress=False)
    with Store(h5) as st:
        mod = st.modules()["projector"]
        assert [s["type"] for s in mod.spec] == ["linear", "batchnorm", "relu", "linear"]
        assert {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "3.weight", "3.bias"} <= set(mod.params)
        assert all(np.asarray(v).dtype == np.float32 for v in mod.params.values())
        head = build_head(mod.spec)
        missing, unexpected = head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in mod.params.items()},
                                                   strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        head.eval()
        with torch.inference_mode():
            z = head(torch.from_numpy(st.embeddings("encoder")[1])).numpy()
        np.testing.assert_allclose(z, st.embeddings("projector")[1], rtol=1e-5, atol=1e-5)
        assert "projector.2" in [l["name"] for l in st.layers()]  # the hidden activation is extractable


# -- rejecting bad files ---------------------------------------------------------------------------------


def test_store_rejects_missing_file(tmp_path):
    with pytest.raises(ReprscopeError, match="does not exist"):
        Store(tmp_path / "nope.h5")


def test_store_rejects_non_hdf5(tmp_path):
    p = tmp_path / "fake.h5"
    p.write_text("this is not hdf5\n")
    with pytest.raises(ReprscopeError, match="not an HDF5 file"):
        Store(p)


def test_store_rejects_hdf5_without_schema(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
        f.attrs["foo"] = 1
    with pytest.raises(ReprscopeError, match="not a reprscope embedding store"):
        Store(p)


def test_store_rejects_store_without_layers(tmp_path, tiny_h5):
    p = tmp_path / "nolayers.h5"
    with h5py.File(tiny_h5, "r") as src, h5py.File(p, "w") as f:
        f.attrs.update(dict(src.attrs))
        f.create_dataset("index", data=src["index"][()])
        f.create_group("embeddings")
    with pytest.raises(ReprscopeError, match="no layers"):
        Store(p)


# -- atomicity -------------------------------------------------------------------------------------------


def _leftovers(d: Path):
    return sorted(p.name for p in d.iterdir())


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(out, 4, ["aug1", "aug2"], [("encoder", "encoder", 0, 3)], {"method": "m"}) as w:
            w.write_batch(0, {"encoder": np.zeros((2, 2, 3), np.float32)})
            assert w.tmp.exists() and w.tmp.name.endswith(".partial")
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_writer_success_renames(tmp_path):
    out = tmp_path / "x.h5"
    with StoreWriter(out, 2, ["aug1"], [("encoder", "encoder", 0, 3)], {"method": "m"}) as w:
        assert not out.exists()  # nothing at the final path until the store is complete
        w.write_meta(np.arange(2))
        w.write_batch(0, {"encoder": np.ones((1, 2, 3), np.float32)})
    assert _leftovers(tmp_path) == ["x.h5"]
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["embeddings/encoder"][()], np.ones((1, 2, 3)))


def test_extract_error_midway_leaves_nothing(tmp_path, tiny_model, monkeypatch):
    ds = build_dataset(tiny_model.dataset)
    calls = {"n": 0}
    real = type(ds).augment

    def flaky(self, samples, rng, view=0):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("augmentation failed")
        return real(self, samples, rng, view=view)

    monkeypatch.setattr(type(ds), "augment", flaky)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        extract(tiny_model, ds, tmp_path / "e.h5", limit=100, batch_size=20, progress=False)
    assert _leftovers(tmp_path) == []


def test_extract_killed_leaves_no_h5(tmp_path, tiny_ckpt):
    """SIGKILL during extraction: the .partial may stay, but nothing at the output path looks complete."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "big.h5"
    env = {**os.environ, "REPRSCOPE_CACHE": str(tmp_path / "cache")}
    exe = shutil.which("reprscope")
    cmd = ([exe] if exe else [sys.executable, "-m", "reprscope_cli.main"]) + ["extract", str(tiny_ckpt), "--out", str(out), "--limit", "10000",
           "--batch-size", "16", "--set", "data.eval_size=10000", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in out_dir.iterdir() if p.name.endswith(".partial")]
            if partial:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"extraction ended before it could be killed: {proc.communicate()}"
        assert partial, "no .partial file appeared"
        time.sleep(0.2)  # let it write a few batches
        assert proc.poll() is None, "extraction finished too fast to be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p for p in out_dir.iterdir() if p.suffix == ".h5"] == []


# -- options: views, clean, layers, limit -----------------------------------------------------------------


def test_view_names():
    assert view_names(2) == ["clean", "aug1", "aug2"]
    assert view_names(3, clean=False) == ["aug1", "aug2", "aug3"]
    assert view_names(0) == ["clean"]


def test_extract_no_clean_layers_limit(tmp_path, tiny_model):
    ds = build_dataset(tiny_model.dataset)
    out = extract(tiny_model, ds, tmp_path / "e.h5", views=3, clean=False, layers=["encoder.layer1", "projector"],
                  limit=37, batch_size=10, progress=False)
    with Store(out) as st:
        assert st.views == ["aug1", "aug2", "aug3"]
        assert st.n == 37
        assert [l["name"] for l in st.layers()] == ["encoder.layer1", "projector"]
        assert st.embeddings("projector").shape == (3, 37, 8)
        np.testing.assert_array_equal(st.f["index"][()], np.arange(37))
        assert st.latents.shape == (37, 10)
        # no view is the clean input
        x = ds.eval_set().x[:37]
        with torch.inference_mode():
            clean = tiny_model.bundle.forward_layers(x, ["projector"])["projector"].numpy()
        for v in range(3):
            assert not np.allclose(st.embeddings("projector")[v], clean)


def test_extract_limit_larger_than_set(tmp_path, tiny_model):
    out = extract(tiny_model, build_dataset(tiny_model.dataset), tmp_path / "e.h5", views=1, layers=["encoder"],
                  limit=10**6, progress=False)
    with Store(out) as st:
        assert st.n == 400 and st.views == ["clean", "aug1"]


def test_extract_batching_does_not_change_clean_view(tmp_path, tiny_model):
    ds = build_dataset(tiny_model.dataset)
    a = extract(tiny_model, ds, tmp_path / "a.h5", views=1, layers=["encoder"], limit=50, batch_size=7, progress=False)
    b = extract(tiny_model, ds, tmp_path / "b.h5", views=1, layers=["encoder"], limit=50, batch_size=50, progress=False)
    with Store(a) as sa, Store(b) as sb:
        np.testing.assert_allclose(sa.embeddings("encoder")[0], sb.embeddings("encoder")[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": ["encoder.nope"]}, "unknown layer 'encoder.nope'"),
    ({"views": 0, "clean": False}, "views must be >= 1"),
    ({"limit": 0}, "limit must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_extract_bad_options(tmp_path, tiny_model, kwargs, match):
    with pytest.raises(ReprscopeError, match=match):
        extract(tiny_model, build_dataset(tiny_model.dataset), tmp_path / "e.h5", progress=False, **kwargs)
    assert _leftovers(tmp_path) == []


def test_extract_cli_views_no_clean_layers_limit(tmp_path, tiny_ckpt):
    from typer.testing import CliRunner

    from reprscope_cli.main import app

    out = tmp_path / "c.h5"
    r = CliRunner().invoke(app, ["extract", str(tiny_ckpt), "--out", str(out), "--views", "1", "--no-clean",
                                 "--layers", "encoder,projector", "--limit", "25", "--quiet"])
    assert r.exit_code == 0, r.output
    with Store(out) as st:
        assert st.views == ["aug1"]
        assert st.n == 25
        assert [l["name"] for l in st.layers()] == ["encoder", "projector"]


@pytest.mark.parametrize("damage, match", [
    (lambda f: (f["embeddings"].__delitem__("encoder"), f["embeddings"].create_dataset("encoder", data=np.zeros((256, 4)))),
     r"/embeddings/encoder must be a \(views, n, d\) array"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(100, dtype=int))), "/labels has 100 entries"),
    (lambda f: f["latents"].attrs.__delitem__("names"), "lacks its 'names' attribute"),
    (lambda f: f.attrs.__setitem__("views", '["clean", "aug1"]'), "the attributes say 2 views"),
    (lambda f: f["modules"]["projector"].attrs.__setitem__("spec", "not json"), "JSON list of layer mappings"),
    (lambda f: f.attrs.__setitem__("n", "abc"), "the 'n' attribute must be a whole number"),
    (lambda f: f.attrs.__setitem__("views", 5), "'views' attribute must be a JSON list"),
    (lambda f: f["embeddings"]["encoder"].attrs.__setitem__("order", "deep"), "'order' must be a whole number"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros((256, 2), dtype=int))),
     "one label per sample"),
])
def test_damaged_stores_are_refused_on_open(tmp_path, damage, match):
    path = tmp_path / "s.h5"
    shutil.copy(Path(__file__).resolve().parent.parent / "fixtures" / "tiny_dgp.h5", path)
    with h5py.File(path, "r+") as f:
        if "labels" not in f:
            f.create_dataset("labels", data=np.zeros(int(f.attrs["n"]), dtype=int))
        damage(f)
    with pytest.raises(ReprscopeError, match=f"damaged embedding store: .*{match}"):
        Store(path)


def test_float16_and_bfloat16_storage_and_the_writer_thread(tmp_path, tiny_ckpt):
    """--storage float16 / bfloat16 store the float32 embeddings rounded to float16 (half the bytes) and analyze reads them
    back; writing in a thread while the next batch is computed changes nothing in the store."""
    import h5py

    import reprscope
    from reprscope.data import build_dataset
    from reprscope.extract import extract
    from reprscope.formats import load_checkpoint

    model = load_checkpoint(tiny_ckpt)
    ds = build_dataset(model.dataset)
    a = extract(model, ds, tmp_path / "a.h5", limit=200, batch_size=64, progress=False)
    b = extract(model, ds, tmp_path / "b.h5", limit=200, batch_size=64, progress=False, storage="float16")
    c = extract(model, ds, tmp_path / "c.h5", limit=200, batch_size=64, progress=False, overlap_writes=False)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb, h5py.File(c, "r") as fc:
        for name in fa["embeddings"]:
            x = fa["embeddings"][name][()]
            assert fb["embeddings"][name].dtype == np.float16
            assert np.array_equal(fb["embeddings"][name][()], x.astype(np.float16))
            assert np.array_equal(fc["embeddings"][name][()], x)
    ta = reprscope.analyze(str(a), analyzers=["spectrum", "center"], progress=False)
    tb = reprscope.analyze(str(b), analyzers=["spectrum", "center"], progress=False)
    # values a rounding of ~5e-4 barely moves agree (the centre, the leading singular values); ranks counted
    # against a threshold near the noise floor do not: float16 rounding adds small singular values
    def robust(t):
        keep = (t["analyzer"] == "center") | ((t["metric"] == "sv") & t["index"].astype(str).isin(["0", "1", "2"]))
        return t[keep].set_index(["layer", "view", "analyzer", "metric", "index"])["value"]

    ra, rb = robust(ta), robust(tb)
    assert ra.index.equals(rb.index) and len(ra) > 20
    assert np.allclose(rb, ra, rtol=5e-3, atol=1e-3)
    with pytest.raises(ReprscopeError, match="storage must be one of float32, float16, bfloat16"):
        extract(model, ds, tmp_path / "d.h5", limit=10, storage="int8", progress=False)
    # bfloat16: HDF5 has no such type; its bit patterns are stored (uint16, encoding = bfloat16) and read back as
    # float32 equal to torch's own rounding of the float32 embeddings
    import torch

    from reprscope.extract import Store

    e = extract(model, ds, tmp_path / "e.h5", limit=200, batch_size=64, progress=False, storage="bfloat16")
    with h5py.File(a, "r") as fa, Store(e) as se:
        for name in fa["embeddings"]:
            x = fa["embeddings"][name][()]
            raw = se.f["embeddings"][name]
            assert raw.dtype == np.uint16 and raw.attrs["encoding"] == "bfloat16"
            want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
            assert np.array_equal(se.embeddings(name)[()], want)
    te = robust(reprscope.analyze(str(e), analyzers=["spectrum", "center"], progress=False))
    assert te.index.equals(ra.index) and np.allclose(te, ra, rtol=3e-2, atol=3e-3)
