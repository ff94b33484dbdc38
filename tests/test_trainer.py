"""The trainer's parts: LARS against a hand-written update, schedules and fixed-lr groups, linear lr scaling,
warm-up in epochs, the metrics log (CSV, resume truncation), the online k-NN monitor, bad settings."""
from __future__ import annotations

import csv

import pytest
import torch

from reprscope.errors import ReprscopeError
from reprscope.train import apply_sets, default_config, resolve_config, train
from reprscope.train.optim import LARS, build_optimizer, lr_factor, split_decay
from resume_helpers import assert_same_state, interrupt_and_resume


def _cfg(data="blobs", **sets):
    base = {"backbone.width": 16, "backbone.depth": 2, "projector.kind": "linear", "projector.out_dim": 4,
            "train.steps": 6, "train.batch_size": 32, "train.device": "cpu", "train.log_every": 1,
            "train.save_every_steps": 3, "data.eval_size": 300}
    base.update({k.replace("__", "."): v for k, v in sets.items()})
    ordered = sorted(base.items(), key=lambda kv: kv[0] != "projector.kind")
    return resolve_config(apply_sets(default_config("simclr", {"name": data}), [(k.split("."), v) for k, v in ordered]))


def test_lars_matches_a_hand_written_update():
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    assert split_decay([{"params": [w, b]}], exclude=False) == [{"params": [w, b]}]
    groups = split_decay([{"params": [w, b]}], exclude=True)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[1]["weight_decay"] == 0.0
    opt = LARS(groups, lr=0.1, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02)
    w0, b0 = w.detach().clone(), b.detach().clone()
    mw, mb = torch.zeros_like(w0), torch.zeros_like(b0)
    for it in range(3):
        gw, gb = torch.randn(5, 3), torch.randn(5)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        dw = gw + 1e-2 * w0
        dw = dw * (0.02 * w0.norm() / (dw.norm() + 1e-8))
        mw = dw if it == 0 else 0.9 * mw + dw
        mb = gb if it == 0 else 0.9 * mb + gb  # a bias: no weight decay, no trust ratio
        w0, b0 = w0 - 0.1 * mw, b0 - 0.1 * mb
        torch.testing.assert_close(w.detach(), w0)
        torch.testing.assert_close(b.detach(), b0)


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 0, "constant", 0.0) == 1.0


def test_group_lr_mult_and_fixed_lr():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))
    cfg = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0, "trust_coefficient": 0.001}
    opt = build_optimizer([{"params": [a]}, {"params": [b], "lr_mult": 3.0, "fixed_lr": True}], cfg, lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.3])
    assert [g["fixed_lr"] for g in opt.param_groups] == [False, True]


def test_linear_lr_scaling_and_warmup_epochs(tmp_path):
    seen = []
    cfg = _cfg(**{"optim.lr_scaling": "linear", "optim.lr": 0.1, "optim.warmup_epochs": 1.0, "data.epoch_size": 128,
                  "optim.schedule": "constant"})
    train(cfg, tmp_path / "r", progress=False, on_log=lambda s, m: seen.append(m["lr"]))
    peak = 0.1 * 32 / 256
    # 4 steps per epoch: warm-up over 4 steps, then constant
    assert seen == pytest.approx([peak * 2 / 4, peak * 3 / 4, peak, peak, peak, peak])


def test_metrics_csv_and_knn_monitor(tmp_path):
    res = train(_cfg(), tmp_path / "r", progress=False)
    with open(res.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = {r["name"] for r in rows}
    assert {"loss", "lr", "images_per_s", "knn_top1", "info_nce"} <= names
    knn = [r for r in rows if r["name"] == "knn_top1"]
    assert [int(r["step"]) for r in knn] == [0, 3, 6]  # at every checkpoint, incl. the initialisation
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in knn)
    assert float(knn[-1]["value"]) > 0.5  # three well-separated blobs
    assert "knn_top1" in res.metrics
    losses = [r for r in rows if r["name"] == "loss"]
    assert [int(r["step"]) for r in losses] == list(range(1, 7))


def test_resume_rewrites_the_log_after_the_checkpoint(tmp_path):
    cfg = _cfg()

    class Stop(Exception):
        pass

    def stop(done, _m):
        if done == 5:
            raise Stop()

    with pytest.raises(Stop):
        train(cfg, tmp_path / "r", progress=False, on_log=stop)
    train(cfg, tmp_path / "r", resume=True, progress=False)
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["name"] == "loss"]
    assert steps == list(range(1, 7))  # 4 and 5 were logged before the crash, dropped, and logged again


def test_no_knn_monitor_without_labels(tmp_path):
    res = train(_cfg(data="dgp"), tmp_path / "r", progress=False)
    text = (res.run_dir / "metrics.csv").read_text()
    assert "knn_top1" not in text


def test_batch_must_split_over_processes(monkeypatch, tmp_path):
    from reprscope import distributed

    monkeypatch.setattr(distributed, "init_from_env", lambda _t: distributed.DistInfo(0, 3, 0))
    with pytest.raises(ReprscopeError, match="must divide by the 3 processes"):
        train(_cfg(), tmp_path / "r", progress=False)


def test_leaving_the_process_group_waits_for_peers_only_after_a_normal_run(monkeypatch):
    """A gloo rank leaving while its peer still writes can abort the peer at exit; after an exception nobody
    waits (the peers may never arrive)."""
    from reprscope import distributed

    calls = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.cleanup(True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.cleanup(True, wait_for_peers=False)
    assert calls == ["destroy"]
    calls.clear()
    distributed.cleanup(False)
    assert calls == []


def test_trainer_leaves_without_waiting_when_it_fails(monkeypatch, tmp_path):
    from reprscope import distributed
    from reprscope.train import trainer

    seen = []
    monkeypatch.setattr(distributed, "init_from_env", lambda _t: distributed.DistInfo(0, 2, 0))
    monkeypatch.setattr(distributed, "cleanup", lambda started, wait_for_peers=True: seen.append((started, wait_for_peers)))

    def fail(*_a):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_train", fail)
    with pytest.raises(RuntimeError, match="boom"):
        train(_cfg(), tmp_path / "r", progress=False)
    monkeypatch.setattr(trainer, "_train", lambda *_a: "done")
    assert train(_cfg(), tmp_path / "r", progress=False) == "done"
    assert seen == [(True, False), (True, True)]


def test_unknown_optimizer_is_named():
    with pytest.raises(ReprscopeError, match="rmsprop"):
        _cfg(**{"optim.name": "rmsprop"})


def test_lr_scaling_can_be_switched_off_again():
    cfg = _cfg(**{"optim.lr_scaling": "linear"})
    assert cfg["optim"]["lr_scaling"] == "linear"
    assert _cfg(**{"optim.lr_scaling": "none"})["optim"]["lr_scaling"] is None


def test_2000_steps_straight_equal_1000_then_resume_1000(tmp_path):
    """Issue 4's resume check, literally: 2000 steps straight vs 1000 + --resume + 1000 → the same weights."""
    cfg = _cfg(data="dgp", **{"train.steps": 2000, "train.save_every_steps": 1000, "train.log_every": 100,
                              "train.batch_size": 32, "projector.out_dim": 4})
    straight = train(cfg, tmp_path / "a", progress=False)
    resumed = interrupt_and_resume(cfg, tmp_path / "b", stop_at=1100)  # after ckpt-0001000.pt, before ckpt-0002000.pt
    a, b = assert_same_state(straight.last, resumed.last)
    assert a["step"] == b["step"] == 2000


def test_the_default_backbone_follows_the_data_and_the_method():
    from reprscope.train import apply_sets, default_config, resolve_config
    from reprscope.train.config import AUTO_BACKBONE, default_backbone

    assert default_backbone("simclr", {"name": "dgp"}) == ("mlp", {})
    assert default_backbone("simclr", {"name": "shapes"}) == ("convnet", {})
    assert default_backbone("mae", {"name": "shapes"}) == ("vit_tiny_patch16_224", {"patch_size": 4})
    assert default_backbone("mae", {"name": "shapes", "resolution": 96}) == ("vit_tiny_patch16_224", {"patch_size": 8})
    cfg = resolve_config(default_config("mae", {"name": "shapes"}))
    assert cfg["model"]["backbone"].startswith("vit_tiny") and AUTO_BACKBONE not in cfg["model"]
    # naming another backbone drops the default's kwargs; kwargs set by hand stay
    cfg = apply_sets(default_config("mae", {"name": "shapes"}), [(["backbone"], "convnet")])
    assert cfg["model"]["backbone"] == "convnet" and cfg["model"]["backbone_kwargs"] == {}
    cfg = apply_sets(default_config("mae", {"name": "shapes"}), [(["backbone", "depth"], 2), (["backbone"], "vit_small_patch16_224")])
    assert cfg["model"]["backbone_kwargs"] == {"patch_size": 4, "depth": 2}
