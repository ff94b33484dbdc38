"""The native checkpoint (SPEC §3): keys, safe loading, round trip, periodic saves, atomicity, exact resume,
strict loading, and every kind of bad file refused without running code from it."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from reprscope.data import build_dataset
from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, load_checkpoint
from reprscope.formats.native import FORMAT, save_native
from reprscope.models.bundle import build_bundle
from reprscope.train import train

KEYS = ("format", "method", "config", "state_dict", "step", "epoch", "optimizer", "scheduler", "rng", "metrics")


@pytest.fixture(scope="module")
def payload(tiny_ckpt):
    return torch.load(tiny_ckpt, map_location="cpu", weights_only=True)


def test_keys_and_safe_load(payload):
    missing = [k for k in KEYS if k not in payload]
    assert not missing, f"checkpoint lacks {missing}"
    assert payload["format"] == "reprscope/1" == FORMAT
    assert payload["method"] == "simclr"
    assert payload["step"] == 20
    assert isinstance(payload["optimizer"], dict) and payload["optimizer"]["state"]
    assert isinstance(payload["scheduler"], dict)
    assert isinstance(payload["rng"], dict) and payload["rng"]
    assert "loss" in payload["metrics"] and isinstance(payload["metrics"]["loss"], float)


def test_state_dict_prefixes(payload):
    sd = payload["state_dict"]
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"encoder", "projector"}
    assert "projector.0.weight" in sd and sd["projector.0.weight"].shape == (8, 16)


def test_config_rebuilds_model(payload, tiny_config):
    cfg = payload["config"]
    assert cfg == tiny_config
    assert cfg["model"]["backbone"] == "mlp"
    assert cfg["model"]["backbone_kwargs"] == {"width": 16, "depth": 3}
    assert cfg["model"]["heads"]["projector"] == [{"type": "linear", "in": 16, "out": 8, "bias": False}]
    assert cfg["data"]["name"] == "dgp" and "seed" in cfg["data"] and cfg["data"]["eval_size"] == 400
    assert cfg["method"]["name"] == "simclr"
    assert {"optim", "train"} <= set(cfg)


def test_load_round_trip(tiny_ckpt, payload):
    model = load_checkpoint(tiny_ckpt)
    assert model.format == "reprscope" and model.method == "simclr" and model.step == 20
    assert model.dataset == payload["config"]["data"]
    loaded = model.bundle.state_dict()
    assert set(loaded) == set(payload["state_dict"])
    for k, v in payload["state_dict"].items():
        assert torch.equal(loaded[k], v), k
    # an independently rebuilt bundle with the stored weights gives the same outputs
    ref = build_bundle(payload["config"]["model"], payload["config"]["model"]["in_shape"])
    ref.load_state_dict(payload["state_dict"])
    ref.eval()
    x = build_dataset(model.dataset).eval_set().x[:64]
    names = [i.name for i in ref.layer_infos()]
    with torch.inference_mode():
        a = model.bundle.forward_layers(x, names)
        b = ref.forward_layers(x, names)
    for n in names:
        assert torch.equal(a[n], b[n]), n
    # and it is not a freshly initialised model
    init = torch.load(Path(tiny_ckpt).parent / "ckpt-0000000.pt", weights_only=True)["state_dict"]
    assert not torch.equal(init["projector.0.weight"], payload["state_dict"]["projector.0.weight"])


def test_periodic_checkpoints(tiny_run):
    d = Path(tiny_run.run_dir)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ckpt-0000000.pt", "ckpt-0000010.pt", "ckpt-0000020.pt", "last.pt", "metrics.csv"]
    assert not [n for n in names if n.endswith(".partial")]
    assert (d / "metrics.csv").is_file()
    names = [n for n in names if n.endswith(".pt")]
    steps = {n: torch.load(d / n, weights_only=True)["step"] for n in names}
    assert steps == {"ckpt-0000000.pt": 0, "ckpt-0000010.pt": 10, "ckpt-0000020.pt": 20, "last.pt": 20}
    a = torch.load(d / "ckpt-0000020.pt", weights_only=True)["state_dict"]
    b = torch.load(d / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = torch.load(d / "ckpt-0000010.pt", weights_only=True)["state_dict"]
    assert not torch.equal(a["encoder.layer1.0.weight"], c["encoder.layer1.0.weight"])
    assert [Path(p).name for p in tiny_run.checkpoints] == names[:3]


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "ck.pt"
    save_native(target, {"method": "m", "step": 1})
    before = target.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_native(target, {"method": "m", "step": 2})
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no .partial left over


# -- exact resume ------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop_at(step):
    def on_log(done, metrics):
        if done == step:
            raise _Stop()
    return on_log


def test_exact_resume(tmp_path, tiny_config_factory):
    cfg = tiny_config_factory(**{"train.log_every": 5})
    straight = train(cfg, tmp_path / "a", progress=False)

    # interrupted after step 15: ckpt-0000010.pt is the newest checkpoint and there is no last.pt
    with pytest.raises(_Stop):
        train(cfg, tmp_path / "b", progress=False, on_log=_stop_at(15))
    assert not (tmp_path / "b" / "last.pt").exists()
    assert (tmp_path / "b" / "ckpt-0000010.pt").exists()
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)

    a = torch.load(straight.last, weights_only=True)
    b = torch.load(resumed.last, weights_only=True)
    assert b["step"] == 20
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["metrics"]["loss"] == b["metrics"]["loss"]
    assert straight.metrics["loss"] == resumed.metrics["loss"]
    c20 = torch.load(tmp_path / "b" / "ckpt-0000020.pt", weights_only=True)
    assert all(torch.equal(c20["state_dict"][k], a["state_dict"][k]) for k in a["state_dict"])


def test_resume_from_last_of_halfway_run(tmp_path, tiny_config_factory):
    """A copy of the step-10 checkpoint as last.pt resumes to the same weights as the straight run."""
    cfg = tiny_config_factory()
    straight = train(cfg, tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "ckpt-0000010.pt", tmp_path / "b" / "last.pt")
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a = torch.load(straight.last, weights_only=True)["state_dict"]
    b = torch.load(resumed.last, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.metrics["loss"] == resumed.metrics["loss"]


def test_resume_with_other_config_refused(tmp_path, tiny_run, tiny_config_factory):
    d = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, d)
    other = tiny_config_factory(**{"optim.lr": 0.005})
    before = (d / "last.pt").read_bytes()
    with pytest.raises(ReprscopeError, match="different config"):
        train(other, d, resume=True, progress=False)
    assert (d / "last.pt").read_bytes() == before


def test_resume_without_checkpoint_refused(tmp_path, tiny_config):
    with pytest.raises(ReprscopeError, match="resume: no last.pt"):
        train(tiny_config, tmp_path / "empty", resume=True, progress=False)


# -- strict loading ----------------------------------------------------------------------------------------


def test_missing_key_refused(tmp_path, payload):
    p = dict(payload)
    p["state_dict"] = {k: v for k, v in payload["state_dict"].items() if k != "projector.0.weight"}
    torch.save(p, tmp_path / "missing.pt")
    with pytest.raises(ReprscopeError, match=r"projector\.0\.weight") as ei:
        load_checkpoint(tmp_path / "missing.pt")
    assert "issing" in str(ei.value)


def test_extra_key_refused(tmp_path, payload):
    p = dict(payload)
    p["state_dict"] = {**payload["state_dict"], "encoder.extra.weight": torch.zeros(3)}
    torch.save(p, tmp_path / "extra.pt")
    with pytest.raises(ReprscopeError, match=r"encoder\.extra\.weight") as ei:
        load_checkpoint(tmp_path / "extra.pt")
    assert "nexpected" in str(ei.value)


def test_wrong_shape_refused(tmp_path, payload):
    p = dict(payload)
    p["state_dict"] = {**payload["state_dict"], "projector.0.weight": torch.zeros(5, 16)}
    torch.save(p, tmp_path / "shape.pt")
    with pytest.raises(ReprscopeError, match=r"projector\.0\.weight"):
        load_checkpoint(tmp_path / "shape.pt")


def test_native_missing_required_key(tmp_path, payload):
    p = {k: v for k, v in payload.items() if k != "state_dict"}
    torch.save(p, tmp_path / "nostate.pt")
    with pytest.raises(ReprscopeError, match="state_dict"):
        load_checkpoint(tmp_path / "nostate.pt")


# -- bad files ---------------------------------------------------------------------------------------------


class _EvilOpen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _EvilSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("evil", [_EvilOpen, _EvilSystem])
@pytest.mark.parametrize("wrap", ["bare", "in_dict"])
def test_malicious_pickle_not_executed(tmp_path, evil, wrap, protocol):
    marker = tmp_path / "MARKER"
    obj = evil(str(marker))
    if wrap == "in_dict":
        obj = {"format": FORMAT, "state_dict": obj}
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(ReprscopeError, match="evil.pt") as ei:
        load_checkpoint(p)
    assert not marker.exists()
    if protocol == 2:  # the protocol torch.load understands: refused for the global it would call
        assert "refuses" in str(ei.value)
    assert "weights_only` set to `False" not in str(ei.value)  # never advise the unsafe load


def test_malicious_torch_save_not_executed(tmp_path):
    """The same payload inside a real torch.save zip archive."""
    marker = tmp_path / "MARKER"
    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": _EvilSystem(str(marker))}, p)
    with pytest.raises(ReprscopeError, match="refuses"):
        load_checkpoint(p)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(ReprscopeError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(ReprscopeError, match="directory"):
        load_checkpoint(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(ReprscopeError, match="empty"):
        load_checkpoint(p)


def test_truncated_checkpoint(tmp_path, tiny_ckpt):
    data = Path(tiny_ckpt).read_bytes()
    p = tmp_path / "trunc.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReprscopeError, match="trunc.pt"):
        load_checkpoint(p)


@pytest.mark.parametrize("text", ["this is a text file, not a checkpoint\n", "not a checkpoint\n", "hello\n"])
def test_text_file(tmp_path, text):
    p = tmp_path / "notes.pt"
    p.write_text(text)
    with pytest.raises(ReprscopeError, match="notes.pt.*is a text file, not a checkpoint") as ei:
        load_checkpoint(p)
    assert "arbitrary unpickling" not in str(ei.value)  # garbage is not a security refusal


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.pt"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ReprscopeError, match="noise.pt"):
        load_checkpoint(p)


def test_non_dict_torch_file(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(ReprscopeError, match="list"):
        load_checkpoint(p)


def test_unknown_dict_format_lists_formats(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, p)
    with pytest.raises(ReprscopeError) as ei:
        load_checkpoint(p)
    msg = str(ei.value)
    assert "known formats" in msg
    for name in FORMATS.names():
        assert name in msg
    assert "model" in msg  # says what it found


@pytest.mark.parametrize("content", [b"hello world\n", b"(", b")", b"}", b"0.5\n", b"\x80\x02", b"[1, 2]", b"a"])
def test_short_garbage_files(tmp_path, content):
    """Whatever the unpickler trips over (IndexError, EOFError, KeyError …), the user gets a ReprscopeError."""
    p = tmp_path / "garbage.pt"
    p.write_bytes(content)
    with pytest.raises(ReprscopeError, match="garbage.pt"):
        load_checkpoint(p)


def test_seeded_random_files(tmp_path):
    import random

    rnd = random.Random(0)
    for i in range(100):
        p = tmp_path / f"rand{i}.pt"
        p.write_bytes(bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 64))))
        with pytest.raises(ReprscopeError):
            load_checkpoint(p)


def test_refusal_prints_no_warning(tmp_path):
    """The CLI promises one line on stderr: torch's pickle-protocol warning must not leak out."""
    import warnings

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps(_EvilOpen(str(tmp_path / "MARKER"))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ReprscopeError):
            load_checkpoint(p)
    assert [str(w.message) for w in caught] == []
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("method, branch", [("byol", "momentum"), ("dino", "teacher")])
def test_native_ema_branch_loads(tmp_path, method, branch, tiny_ckpt):
    """A native BYOL / DINO checkpoint holds its EMA copy in method_state; --branch picks it, strictly; a run
    without one says which branches it has."""
    import sys

    from reprscope.formats import LoadOptions

    sys.path.insert(0, str(Path(__file__).parent))
    from test_methods import smoke_config

    res = train(smoke_config(method, **{"train.steps": 3, "train.save_every_steps": 3}), tmp_path / "r", progress=False)
    online = load_checkpoint(res.last)
    assert online.branch == "online" and branch in online.branches
    ema = load_checkpoint(res.last, options=LoadOptions(branch=branch))
    assert ema.branch == branch and not ema.bundle.has("predictor")
    ck = torch.load(res.last, weights_only=True)
    prefix = "teacher." if branch == "teacher" else "target."
    state = ema.bundle.state_dict()
    assert state and all(torch.equal(v, ck["method_state"][prefix + k]) for k, v in state.items())
    with pytest.raises(ReprscopeError, match="no 'teacher' branch"):
        load_checkpoint(tiny_ckpt, options=LoadOptions(branch="teacher"))


def test_a_training_script_function_in_the_optimizer_is_skipped_not_imported(tmp_path):
    """VICReg's own model.pth pickles its LARS filter `main_vicreg.exclude_bias_and_norm` in the optimizer's
    parameter groups: the tensors load, the function is an inert stand-in (its module is never imported), and
    `inspect` lists it as skipped."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "make.py"
    (tmp_path / "main_vicreg.py").write_text("def exclude_bias_and_norm(p):\n    return p.ndim == 1\n")
    script.write_text(textwrap.dedent('''
        import torch, torchvision, main_vicreg
        from torch import nn
        bb = torchvision.models.resnet18(); bb.fc = nn.Identity()
        proj = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(True), nn.Linear(64, 64, bias=False))
        m = nn.Module(); m.backbone = bb; m.projector = proj
        f = main_vicreg.exclude_bias_and_norm
        opt = {"state": {}, "param_groups": [{"params": [0, 1], "lr": 0.2, "weight_decay_filter": f,
                                              "lars_adaptation_filter": f}]}
        torch.save(dict(epoch=2, model=m.state_dict(), optimizer=opt), "model.pth")
    '''))
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    (tmp_path / "main_vicreg.py").write_text("raise SystemExit('imported!')\n")  # importing it now would fail
    model = load_checkpoint(tmp_path / "model.pth")
    assert model.format == "vicreg" and model.skipped_globals == ["main_vicreg.exclude_bias_and_norm"]
    assert "main_vicreg" not in sys.modules
    from reprscope.inspect import inspect_checkpoint

    lines, err = inspect_checkpoint(tmp_path / "model.pth")
    assert err is None and any(line.startswith("skipped objects: main_vicreg.exclude_bias_and_norm") for line in lines)


def test_stand_ins_never_rescue_a_file_without_a_model(tmp_path):
    import subprocess
    import sys

    (tmp_path / "helper.py").write_text("def f():\n    return 1\n")
    (tmp_path / "make.py").write_text("import torch, helper\n"
                                      "torch.save({'model': {'w': torch.zeros(1)}, 'x': helper.f}, 'h.pth')\n")
    subprocess.run([sys.executable, "make.py"], cwd=tmp_path, check=True)
    with pytest.raises(ReprscopeError, match="needs arbitrary unpickling, which reprscope refuses.*helper.f"):
        load_checkpoint(tmp_path / "h.pth")
