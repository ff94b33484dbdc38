"""Tests of the image data sets on disk (``reprscope.data.images``) on small fixtures written at test time:
an ImageFolder tree of PNGs, CIFAR-format pickles and STL-10 binary files; the restricted unpickler; the
download switch (with the downloader replaced: nothing is fetched); one extraction end to end."""
import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from reprscope.data import DATASETS, build_dataset
from reprscope.data import images as images_mod
from reprscope.data.augment import sample_view_params, get_preset
from reprscope.data.images import ArrayOnlyUnpickler, load_pickle_safely
from reprscope.errors import ReprscopeError

CLASSES = ["cat", "dog", "emu"]
COLOURS = {"cat": (200, 30, 60), "dog": (10, 250, 128), "emu": (90, 90, 90)}


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes × 4 PNGs; each image one constant colour per class with a small per-image patch."""
    root = tmp_path_factory.mktemp("imagefolder")
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(4):
            arr = np.empty((40 + 4 * i, 48, 3), dtype=np.uint8)
            arr[:] = COLOURS[c]
            arr[:4, :4] = (i * 60, 255 - i * 60, 17)  # a corner outside the centre crop makes images differ
            Image.fromarray(arr).save(root / c / f"img{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def _cifar_data(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": _cifar_data(3, i), b"labels": [i % 10, (i + 1) % 10, (i + 2) % 10],
                         b"batch_label": b"training batch"}, f, protocol=2)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": _cifar_data(6, 0), b"labels": [0, 1, 2, 3, 4, 9]}, f)  # default protocol
    return root


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100") / "cifar-100-python"
    root.mkdir()
    for split, n in (("train", 5), ("test", 4)):
        with open(root / split, "wb") as f:
            pickle.dump({b"data": _cifar_data(n, n), b"fine_labels": list(range(90, 90 + n)),
                         b"coarse_labels": list(range(10, 10 + n))}, f, protocol=2)
    return root  # the folder itself is accepted too


def test_registered_and_listed():
    for name in ("imagefolder", "cifar10", "cifar100", "stl10"):
        assert name in DATASETS
        assert DATASETS.get(name).summary and DATASETS.meta(name)["on_disk"]
        assert "path" in {p.name for p in DATASETS.get(name).all_params()}


# -- imagefolder -------------------------------------------------------------------------------------------------


def test_imagefolder_shapes_labels_and_clean_normalisation(folder):
    ds = build_dataset(f"imagefolder:{folder}", resolution=16, resize=20)
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 3 and ds.classes == CLASSES
    ev = ds.eval_set()
    assert len(ev) == 12 and ev.x.shape == (12, 3, 16, 16) and ev.x.dtype == torch.float32
    assert ev.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(ev.index, torch.arange(12))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for i, c in enumerate(np.repeat(CLASSES, 4)):
        # the centre crop misses the corner patch: a constant image, normalised by hand
        expect = (np.array(COLOURS[c]) / 255.0 - mean) / std
        np.testing.assert_allclose(ev.x[i].numpy(), np.broadcast_to(expect[:, None, None], (3, 16, 16)), atol=1e-5)
    assert ds.cfg["epoch_size"] == 12
    # the spec round-trips through JSON (as in checkpoints and .h5 attrs)
    again = build_dataset(json.loads(json.dumps(ds.spec())))
    assert torch.equal(again.eval_set().x, ev.x)


def test_imagefolder_limit_and_none_augment(folder):
    ds = build_dataset("imagefolder", path=str(folder), resolution=16, resize=16, limit=5, augment="none")
    ev = ds.eval_set()
    assert len(ev) == 5 and ev.labels.tolist() == [0, 0, 0, 0, 1]
    assert torch.equal(ds.augment(ev, _rng()), ev.x)


def test_imagefolder_views_reproducible_and_differ_from_clean(folder):
    ds = build_dataset(f"imagefolder:{folder}", resolution=16, resize=20)
    ev = ds.eval_set()
    a, b = ds.augment(ev, _rng(3)), ds.augment(ev, _rng(3))
    assert a.shape == ev.x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, ds.augment(ev, _rng(4)))
    assert not torch.equal(a, ev.x)
    # training: random images, reproducible from the rng, two different views of the same images
    s1, s2 = ds.sample(6, _rng(1)), ds.sample(6, _rng(1))
    assert torch.equal(s1.x, s2.x) and torch.equal(s1.labels, s2.labels)
    assert torch.equal(s1.labels, torch.from_numpy(ds.targets[s1.index.numpy()]))
    v1, v2 = ds.train_views(5, _rng(2))
    w1, w2 = ds.train_views(5, _rng(2))
    assert torch.equal(v1, w1) and torch.equal(v2, w2) and not torch.equal(v1, v2)
    # a selection carries its paths: augmenting it decodes the right images
    assert ds.augment(ev.select(slice(2, 5)), _rng()).shape == (3, 3, 16, 16)


def test_imagefolder_errors(tmp_path, folder):
    with pytest.raises(ReprscopeError, match="needs a path"):
        build_dataset("imagefolder")
    with pytest.raises(ReprscopeError, match="does not exist.*sub-directory"):
        build_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ReprscopeError, match="not a directory"):
        build_dataset(f"imagefolder:{tmp_path / 'file.png'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ReprscopeError, match="no images"):
        build_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(ReprscopeError, match="'augment'"):
        build_dataset(f"imagefolder:{folder}", augment="autoaugment")
    with pytest.raises(ReprscopeError, match="'mean'"):
        build_dataset(f"imagefolder:{folder}", mean="0.1,0.2")
    with pytest.raises(ReprscopeError, match="'resize'"):
        build_dataset(f"imagefolder:{folder}", resolution=32, resize=16)


def test_random_resized_crop_boxes_in_bounds_per_sample_size():
    """Boxes are drawn per sample inside each image's own extent (images of different sizes in one canvas)."""
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[32, 32], [10, 300], [300, 10], [1, 1]] * 50, dtype=torch.float64)
    p = sample_view_params(len(sizes), get_preset("simclr").view(0), g, sizes[:, 0], sizes[:, 1])
    t, l, ch, cw = p.boxes.unbind(1)
    h, w = sizes.unbind(1)
    assert torch.equal(p.boxes, p.boxes.round())
    assert bool(((t >= 0) & (l >= 0) & (ch > 0) & (cw > 0) & (t + ch <= h) & (l + cw <= w)).all())


def test_imagefolder_presets_and_asymmetric_views(folder):
    ds = build_dataset(f"imagefolder:{folder}", resolution=16, resize=20, augment="byol")
    ev = ds.eval_set()
    v0, v1 = ds.augment(ev, _rng(1), view=0), ds.augment(ev, _rng(1), view=1)
    assert v0.shape == v1.shape == ev.x.shape and not torch.equal(v0, v1)  # same seed, different view recipes
    assert ds.spec()["augment"] == "byol"


# -- CIFAR -------------------------------------------------------------------------------------------------------


def test_cifar10_test_split_shapes_labels_and_normalisation(cifar10_dir):
    ds = build_dataset(f"cifar10:{cifar10_dir}")
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    ev = ds.eval_set()
    assert ev.x.shape == (6, 3, 32, 32) and ev.x.dtype == torch.float32
    assert ev.labels.tolist() == [0, 1, 2, 3, 4, 9] and ev.labels_coarse is None
    raw = _cifar_data(6, 0).reshape(6, 3, 32, 32) / 255.0
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    np.testing.assert_allclose(ev.x.numpy(), (raw - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_cifar10_train_split_concatenates_batches(cifar10_dir):
    ds = build_dataset(f"cifar10:{cifar10_dir / 'cifar-10-batches-py'}", split="train", limit=7)
    assert len(ds.images) == 15 and ds.cfg["epoch_size"] == 15
    ev = ds.eval_set()
    assert len(ev) == 7 and ev.labels.tolist() == [1, 2, 3, 2, 3, 4, 3]
    assert torch.equal(ds.images[3], torch.from_numpy(_cifar_data(3, 2)[0].reshape(3, 32, 32)))


def test_cifar100_fine_and_coarse_labels(cifar100_dir):
    ds = build_dataset(f"cifar100:{cifar100_dir}")
    ev = ds.eval_set()
    assert ev.labels.tolist() == [90, 91, 92, 93] and ev.labels_coarse.tolist() == [10, 11, 12, 13]
    s = ds.sample(8, _rng())
    assert torch.equal(s.labels - 80, s.labels_coarse)
    sub = ev.select(slice(1, 3))
    assert sub.labels_coarse.tolist() == [11, 12] and sub.state["images"].shape == (2, 3, 32, 32)
    tr = build_dataset(f"cifar100:{cifar100_dir.parent}", split="train")
    assert len(tr.eval_set()) == 5


def test_cifar_views_reproducible_and_differ(cifar10_dir):
    ds = build_dataset(f"cifar10:{cifar10_dir}")
    ev = ds.eval_set()
    a, b = ds.augment(ev, _rng(5)), ds.augment(ev, _rng(5))
    assert torch.equal(a, b) and a.shape == ev.x.shape and torch.isfinite(a).all()
    assert not torch.equal(a, ds.augment(ev, _rng(6)))
    assert not torch.equal(a, ev.x)
    # per-sample parameters: two copies of one image get different views within a batch
    twice = ev.select(slice(0, 1))
    twice.state = {"images": twice.state["images"].repeat(2, 1, 1, 1)}
    twice.x = twice.x.repeat(2, 1, 1, 1)
    v = ds.augment(twice, _rng(0))
    assert not torch.equal(v[0], v[1])
    none = build_dataset(f"cifar10:{cifar10_dir}", augment="none")
    assert torch.equal(none.augment(none.eval_set(), _rng()), none.eval_set().x)


def test_cifar_errors(tmp_path, cifar10_dir):
    with pytest.raises(ReprscopeError, match="needs a path"):
        build_dataset("cifar10")
    with pytest.raises(ReprscopeError, match="not a directory"):
        build_dataset(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(ReprscopeError, match="missing test_batch.*cifar-10-batches-py"):
        build_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(ReprscopeError, match="'split'"):
        build_dataset(f"cifar10:{cifar10_dir}", split="val")
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ReprscopeError, match=r"\(n, 3072\)"):
        build_dataset(f"cifar10:{tmp_path}")
    (bad / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ReprscopeError, match="not a readable CIFAR batch"):
        build_dataset(f"cifar10:{tmp_path}")


def test_cifar_resolution_resizes_clean_view_and_views(cifar10_dir):
    from torchvision.transforms.v2 import functional as F

    ds = build_dataset(f"cifar10:{cifar10_dir}", resolution=64)
    assert ds.input_shape == (3, 64, 64) and ds.spec()["resolution"] == 64
    ev = ds.eval_set()
    assert ev.x.shape == (6, 3, 64, 64)
    raw = torch.from_numpy(_cifar_data(6, 0).reshape(6, 3, 32, 32)).float() / 255.0
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    ref = (F.resize(raw, [64, 64], antialias=True) - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(ev.x, ref, atol=1e-5, rtol=0)
    assert ds.augment(ev, _rng()).shape == (6, 3, 64, 64)
    assert all(v.shape == (4, 3, 64, 64) for v in ds.train_views(4, _rng()))
    small = build_dataset(f"cifar10:{cifar10_dir}", resolution=16)  # down-scaling works too
    assert small.eval_set().x.shape == (6, 3, 16, 16)
    assert small.augment(small.eval_set(), _rng()).shape == (6, 3, 16, 16)


@pytest.mark.parametrize("augment", ["simclr", "byol", "none"])
def test_cifar_train_views_draw_as_the_default_stream(cifar10_dir, augment):
    """The in-memory sets skip the unused clean view but consume the rng exactly as sample + augment(view 0, 1)."""
    ds = build_dataset(f"cifar10:{cifar10_dir}", split="train", augment=augment)
    r1, r2 = _rng(3), _rng(3)
    v = ds.train_views(5, r1)
    s = ds.sample(5, r2)
    w = [ds.augment(s, r2, view=0), ds.augment(s, r2, view=1)]
    assert all(torch.equal(a, b) for a, b in zip(v, w))
    assert r1.integers(1 << 30) == r2.integers(1 << 30)  # the stream continues in step


def test_data_set_to_device_keeps_pixels_there_and_metadata_on_cpu(cifar10_dir):
    ds = build_dataset(f"cifar10:{cifar10_dir}")
    ev = ds.eval_set()
    assert ds.device == torch.device("cpu") and ds.memory_bytes() == 6 * 3072
    assert ds.to("cpu") is ds and ds.images.dtype == torch.uint8
    for v in ds.train_views(3, _rng()) + [ds.augment(ev, _rng()), ds.eval_set().x]:
        assert v.device == ds.device and v.dtype == torch.float32
    assert ds.eval_set().index.device.type == "cpu" and ds.eval_set().labels.device.type == "cpu"
    assert build_dataset("dgp", eval_size=10).memory_bytes() == 0


def test_augment_choice_is_any_preset(cifar10_dir):
    from reprscope.data import AUGMENTATIONS

    for name in AUGMENTATIONS.names():
        ds = build_dataset(f"cifar10:{cifar10_dir}", augment=name)
        v = ds.augment(ds.eval_set(), _rng())
        assert v.shape == (6, 3, 32, 32) and torch.isfinite(v).all()
    with pytest.raises(ReprscopeError, match="'augment'.*'byol'"):
        build_dataset(f"cifar10:{cifar10_dir}", augment="autoaugment")


# -- STL-10 ----------------------------------------------------------------------------------------------------

STL_N = {"train": 4, "test": 3, "unlabeled": 5}


def _stl_images(split):
    return np.random.default_rng(len(split)).integers(0, 256, size=(STL_N[split], 3, 96, 96), dtype=np.uint8)


def _stl_labels(split):
    return (np.arange(STL_N[split]) * 3 % 10 + 1).astype(np.uint8)  # 1..10 on disk


def _write_stl(base):
    base.mkdir(parents=True, exist_ok=True)
    for split in STL_N:
        # as distributed: each image's channels stored column-major (Matlab order)
        (base / f"{split}_X.bin").write_bytes(np.ascontiguousarray(_stl_images(split).transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            (base / f"{split}_y.bin").write_bytes(_stl_labels(split).tobytes())


@pytest.fixture(scope="module")
def stl_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl")
    _write_stl(root / "stl10_binary")
    return root


def test_stl10_splits_images_and_labels(stl_dir):
    ds = build_dataset(f"stl10:{stl_dir}")
    assert ds.input_shape == (3, 96, 96) and ds.num_classes == 10 and ds.cfg["split"] == "test"
    ev = ds.eval_set()
    assert ev.x.shape == (3, 3, 96, 96) and ev.labels.tolist() == (_stl_labels("test") - 1).tolist()
    assert torch.equal(ds.images, torch.from_numpy(_stl_images("test")))
    mean, std = np.array([0.4467, 0.4398, 0.4066]), np.array([0.2603, 0.2566, 0.2713])
    expect = (_stl_images("test") / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(ev.x.numpy(), expect, atol=1e-5)
    tr = build_dataset(f"stl10:{stl_dir / 'stl10_binary'}", split="train")  # the folder itself works too
    assert tr.eval_set().labels.tolist() == (_stl_labels("train") - 1).tolist()
    un = build_dataset(f"stl10:{stl_dir}", split="unlabeled")
    assert len(un.images) == 5 and un.eval_set().labels is None and un.cfg["epoch_size"] == 5
    both = build_dataset(f"stl10:{stl_dir}", split="train+unlabeled", resolution=32)
    assert len(both.images) == 9 and both.eval_set().labels is None and both.eval_set().x.shape == (9, 3, 32, 32)
    assert torch.equal(both.images[4:], torch.from_numpy(_stl_images("unlabeled")))
    v1, v2 = both.train_views(6, _rng())
    assert v1.shape == v2.shape == (6, 3, 32, 32) and not torch.equal(v1, v2)


def test_stl10_errors(tmp_path, stl_dir):
    with pytest.raises(ReprscopeError, match="needs a path"):
        build_dataset("stl10")
    with pytest.raises(ReprscopeError, match="missing test_X.bin, test_y.bin.*stl10_binary.*download=true"):
        build_dataset(f"stl10:{tmp_path}")
    with pytest.raises(ReprscopeError, match="'split'"):
        build_dataset(f"stl10:{stl_dir}", split="val")
    bad = tmp_path / "stl10_binary"
    _write_stl(bad)
    (bad / "test_X.bin").write_bytes(b"x" * 100)
    with pytest.raises(ReprscopeError, match="not an STL-10 image file"):
        build_dataset(f"stl10:{tmp_path}")
    _write_stl(bad)
    (bad / "test_y.bin").write_bytes(bytes([0, 1, 2]))
    with pytest.raises(ReprscopeError, match="not an STL-10 label file"):
        build_dataset(f"stl10:{tmp_path}")


# -- download ----------------------------------------------------------------------------------------------------


def _fake_archive(name):
    """What extracting the real archive leaves under root, written from the fixtures."""
    def write(root):
        if name == "stl10":
            _write_stl(root / "stl10_binary")
            return
        base = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        base.mkdir(parents=True)
        if name == "cifar10":
            for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                with open(base / f, "wb") as fh:
                    pickle.dump({b"data": _cifar_data(2, 1), b"labels": [3, 4]}, fh, protocol=2)
        else:
            for f in ("train", "test"):
                with open(base / f, "wb") as fh:
                    pickle.dump({b"data": _cifar_data(2, 1), b"fine_labels": [3, 4], b"coarse_labels": [0, 1]}, fh)
    return write


@pytest.mark.parametrize("name,tv", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100"), ("stl10", "STL10")])
def test_download_fetches_missing_files_then_reads_them_safely(tmp_path, monkeypatch, name, tv):
    import torchvision.datasets as tvd

    calls = []

    def fake_fetch(url, root, filename, md5):
        calls.append((url, filename, md5))
        _fake_archive(name)(root)

    monkeypatch.setattr(images_mod, "fetch_archive", fake_fetch)

    def refuse(*a, **k):
        raise AssertionError("the default unpickler must never run")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    root = tmp_path / "data" / name
    with pytest.raises(ReprscopeError, match="download=true"):  # off by default: the clear error, nothing fetched
        build_dataset(f"{name}:{tmp_path}")
    assert calls == []
    ds = build_dataset(f"{name}:{root}", download=True)
    cls = getattr(tvd, tv)
    assert calls == [(cls.url, cls.filename, cls.tgz_md5)]
    assert len(ds.eval_set()) in (2, 3) and ds.spec()["download"] is True
    build_dataset(f"{name}:{root}", download=True)  # present now: not fetched again
    assert len(calls) == 1


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(ReprscopeError, match="could not download https://www.cs.toronto.edu/.*unreachable"):
        build_dataset(f"cifar10:{tmp_path / 'c'}", download=True)


# -- the restricted unpickler ------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code_and_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ReprscopeError, match="refusing to unpickle global '(posix|nt|os).system'"):
        load_pickle_safely(path)
    assert not marker.exists()
    (tmp_path / "cifar-10-batches-py").mkdir()
    os.replace(path, tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(ReprscopeError, match="refusing"):
        build_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_rebuilds_arrays(tmp_path, protocol):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 12)
    path = tmp_path / "p.pkl"
    with open(path, "wb") as f:
        pickle.dump({b"data": arr, b"labels": [1, 2], b"x": (1.5, b"s", None)}, f, protocol=protocol)
    d = load_pickle_safely(path)
    np.testing.assert_array_equal(d[b"data"], arr)
    assert d[b"labels"] == [1, 2] and d[b"x"] == (1.5, b"s", None)
    with open(path, "wb") as f:
        pickle.dump({"f": np.float64(1.5)}, f, protocol=protocol)  # numpy scalars are rebuilt as numpy scalars
    assert load_pickle_safely(path)["f"] == np.float64(1.5)
    with open(path, "wb") as f:
        pickle.dump({"f": np.random.default_rng(0)}, f, protocol=protocol)  # any other numpy object: refused
    with pytest.raises(ReprscopeError, match="refusing"):
        load_pickle_safely(path)


def test_unpickler_only_numpy_allowlist():
    assert all(m.startswith("numpy") or (m, n) == ("_codecs", "encode") for m, n in ArrayOnlyUnpickler.ALLOWED)


# -- end to end: extract on the CIFAR fixture ----------------------------------------------------------------


def test_extract_end_to_end_on_cifar10(tmp_path, cifar10_dir):
    from reprscope.extract import extract
    from reprscope.formats.base import LoadedModel
    from reprscope.models.bundle import ModelBundle
    from reprscope.models.encoders import build_backbone

    torch.manual_seed(0)
    ds = build_dataset(f"cifar10:{cifar10_dir}")
    bundle = ModelBundle(build_backbone("resnet18", (3, 32, 32)), {})
    model = LoadedModel(bundle=bundle, format="test", method="test", config={}, source="x", sha256="0")
    out = extract(model, ds, tmp_path / "c10.h5", views=2, batch_size=4, progress=False, seed=1)
    with h5py.File(out, "r") as f:
        assert f["labels"][:].tolist() == [0, 1, 2, 3, 4, 9]
        assert f["index"][:].tolist() == list(range(6))
        assert json.loads(f.attrs["views"]) == ["clean", "aug1", "aug2"]
        assert json.loads(f.attrs["dataset"])["name"] == "cifar10"
        emb = f["embeddings/encoder"][:]
        assert emb.shape == (3, 6, 512) and np.isfinite(emb).all()
        assert not np.allclose(emb[0], emb[1])


def test_cifar_labels_saved_as_numpy_scalars_load(tmp_path):
    """Batches re-saved with numpy-integer labels (np.int64 scalars in the list) still load; nothing else is allowed."""
    import pickle

    import numpy as np

    from reprscope.data.images import load_pickle_safely

    p = tmp_path / "b"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [np.int64(3), np.int64(7)]}, f)
    d = load_pickle_safely(p)
    assert [int(v) for v in d[b"labels"]] == [3, 7]


def test_bicubic_clean_view_equals_timms_evaluation_transform(tmp_path):
    """A timm checkpoint's preprocessing: ⌊224/crop_pct⌋ shorter side with PIL's bicubic, centre crop, its
    mean/std — the clean view equals timm's own evaluation transform on the same files."""
    import timm.data
    from PIL import Image

    from reprscope.data import build_dataset

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i, (w, h) in enumerate([(300, 260), (240, 330)]):
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = build_dataset({"name": "imagefolder", "path": str(tmp_path), "resolution": 224, "resize": int(224 / 0.95),
                        "interpolation": "bicubic", "mean": list(mean), "std": list(std)})
    tf = timm.data.create_transform(input_size=224, crop_pct=0.95, interpolation="bicubic", mean=mean, std=std)
    for path in sorted(tmp_path.glob("*/*.png")):
        from reprscope.data.images import decode_image

        ours = ds.clean(decode_image(str(path)))
        with Image.open(path) as im:
            ref = tf(im.convert("RGB"))
        assert ours.shape == ref.shape and float((ours - ref).abs().max()) < 1e-5
