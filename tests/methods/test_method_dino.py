"""DINO: the loss against a hand computation over view pairs, centering off (the center-vector paper, ICLR 2024 submission, B.2) never touching the
center, the center's momentum update from the batch mean, the teacher temperature warm-up, a teacher without
gradients following the EMA, the frozen last layer, the head (MLP → ℓ2 norm → weight-normalised prototypes),
and the student/teacher cross-entropy falling through the real trainer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from method_helpers import make_config, make_model, run_training, views_for
from reprscope.errors import ReprscopeError
from reprscope.methods import build_method
from reprscope.methods.base import encode
from reprscope.methods.dino import dino_loss, teacher_temperature, update_center
from reprscope.methods.ema import cosine_momentum


def _outputs(n=4, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g, dtype=torch.float64) for _ in range(4)]


def hand_dino(student, teacher, center, tt, ts):
    """Σ over pairs (teacher view a, student view b ≠ a) of mean_i −Σ_k P_t log P_s, divided by the pairs,
    with explicit softmaxes in python floats."""
    def softmax(row):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        return [x / sum(e) for x in e]

    total, pairs = 0.0, 0
    for a, t in enumerate(teacher):
        for b, s in enumerate(student):
            if a == b:
                continue
            ce = 0.0
            for ti, si in zip(t.tolist(), s.tolist()):
                c = center if center is not None else [0.0] * len(ti)
                pt = softmax([(x - ci) / tt for x, ci in zip(ti, c)])
                ps = softmax([x / ts for x in si])
                ce -= sum(p * math.log(q) for p, q in zip(pt, ps))
            total += ce / len(t)
            pairs += 1
    return total / pairs


def test_loss_by_hand_with_and_without_center():
    s1, s2, t1, t2 = _outputs()
    center = torch.tensor([[0.3, -0.2, 0.1, 0.0, 0.5]], dtype=torch.float64)
    got = dino_loss([s1, s2], [t1, t2], center, 0.04, 0.1)
    assert float(got) == pytest.approx(hand_dino([s1, s2], [t1, t2], center[0].tolist(), 0.04, 0.1), rel=1e-10)
    got = dino_loss([s1, s2], [t1, t2], None, 0.07, 0.1)
    assert float(got) == pytest.approx(hand_dino([s1, s2], [t1, t2], None, 0.07, 0.1), rel=1e-10)


def test_teacher_outputs_receive_no_gradient():
    s1, s2, t1, t2 = [x.requires_grad_() for x in _outputs(seed=1)]
    dino_loss([s1, s2], [t1, t2], None, 0.04, 0.1).backward()
    assert t1.grad is None and t2.grad is None
    assert s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0


def test_center_update_is_the_momentum_average_of_the_batch_mean():
    _, _, t1, t2 = _outputs(seed=2)
    c0 = torch.randn(1, 5, dtype=torch.float64)
    want = 0.9 * c0 + 0.1 * torch.cat([t1, t2]).mean(0, keepdim=True)
    torch.testing.assert_close(update_center(c0, [t1, t2], 0.9), want)


def test_teacher_temperature_schedule():
    # linspace(0.04, 0.07, 31)[i] during the warm-up, then 0.07
    assert teacher_temperature(0, 0.04, 0.07, 31) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.04, 0.07, 31) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.04, 0.07, 31) == pytest.approx(0.07)
    assert teacher_temperature(1000, 0.04, 0.07, 31) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)  # no warm-up
    np.testing.assert_allclose([teacher_temperature(i, 0.04, 0.07, 7) for i in range(7)], np.linspace(0.04, 0.07, 7))
    cfg = make_config("dino", method__warmup_teacher_temp_steps=11, method__teacher_temp=0.06)
    bundle, method = make_model(cfg)
    temps = [method.training_step(bundle, views_for(cfg), s, 20)[1]["teacher_temp"] for s in (0, 5, 10, 19)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.06])


def test_training_step_with_center():
    cfg = make_config("dino")
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    c0 = torch.randn_like(method.center)
    method.center.copy_(c0)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        s = [e["z"] for e in encode(bundle, views, joint=True)]
        t = list(method.teacher(torch.cat(views))["z"].split([len(v) for v in views]))  # one joint forward
    # at step 0 the teacher is a copy of the student: its outputs are the student's
    torch.testing.assert_close(t[0], s[0])
    assert float(loss.detach()) == pytest.approx(float(dino_loss(s, t, c0, 0.04, 0.1)), rel=1e-5)
    assert float(logs["dino_loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    torch.testing.assert_close(method.center, 0.9 * c0 + 0.1 * torch.cat(t).mean(0, keepdim=True))


def test_without_centering_the_center_is_never_used_nor_updated():
    cfg = make_config("dino", method__centering=False)
    bundle, method = make_model(cfg)
    c0 = torch.randn_like(method.center)
    method.center.copy_(c0)  # a non-zero center: if it were subtracted, the loss would change
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        s = [e["z"] for e in encode(bundle, views, joint=True)]
    assert float(loss.detach()) == pytest.approx(float(dino_loss(s, s, None, 0.04, 0.1)), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(float(dino_loss(s, s, c0, 0.04, 0.1)), rel=1e-5)
    for step in range(1, 4):
        method.training_step(bundle, views_for(cfg, seed=step), step, 10)
    assert torch.equal(method.center, c0) and "center_norm" not in logs


def test_teacher_gets_no_gradient_and_follows_the_ema():
    cfg = make_config("dino", method__momentum=0.9, method__freeze_last_layer_steps=0)
    bundle, method = make_model(cfg)
    assert all(not p.requires_grad for p in method.teacher.parameters())
    grouped = {id(p) for g in method.param_groups(bundle) for p in g["params"]}
    assert not grouped & {id(p) for p in method.teacher.parameters()}
    loss, _ = method.training_step(bundle, views_for(cfg), 0, 10)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = [p.detach().clone() for p in method.teacher.parameters()]
    method.after_step(bundle, 3, 10)
    m = cosine_momentum(0.9, 3, 10)
    online = list(bundle.encoder.parameters()) + list(bundle.projector.parameters())
    for old, new, onl in zip(before, method.teacher.parameters(), online):
        torch.testing.assert_close(new, m * old + (1 - m) * onl.detach())


def test_head_is_mlp_l2norm_weightnormed_prototypes():
    cfg = make_config("dino", projector__out_dim=12, projector__bottleneck_dim=6)
    spec = cfg["model"]["heads"]["projector"]
    assert [l["type"] for l in spec] == ["linear", "gelu", "linear", "gelu", "linear", "l2norm", "weightnorm_linear"]
    assert spec[-1] == {"type": "weightnorm_linear", "in": 6, "out": 12, "bias": False}
    bundle, method = make_model(cfg)
    last = bundle.projector[-1]
    g = last.parametrizations.weight.original0
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad  # norm_last_layer: ‖prototype‖ = 1
    torch.testing.assert_close(last.weight.norm(dim=1), torch.ones(12))
    assert method.center.shape == (1, 12)
    assert float(bundle.projector[0].weight.detach().std()) == pytest.approx(0.02, rel=0.2)  # DINOHead's init
    # without norm_last_layer the gain is learned (still initialised at 1)
    cfg2 = make_config("dino", method__norm_last_layer=False)
    bundle2, method2 = make_model(cfg2)
    assert bundle2.projector[-1].parametrizations.weight.original0.requires_grad


def test_last_layer_frozen_for_the_first_steps():
    cfg = make_config("dino", method__freeze_last_layer_steps=2, method__norm_last_layer=False)
    bundle, method = make_model(cfg)
    last = list(bundle.projector[-1].parameters())
    opt = torch.optim.AdamW([p for g in method.param_groups(bundle) for p in g["params"]], lr=1e-2, weight_decay=0.1)
    start = [p.detach().clone() for p in last]
    for step in range(3):
        loss, _ = method.training_step(bundle, views_for(cfg, seed=step), step, 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in last]
        opt.step()
        method.after_step(bundle, step, 10)
        if step < 2:  # zero gradient (DDP sees the parameter used) and the values kept exactly
            assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
            assert all(torch.equal(p, s) for p, s in zip(last, start))
        else:
            assert all(g.abs().sum() > 0 for g in grads)
            assert not all(torch.equal(p, s) for p, s in zip(last, start))
    assert bundle.projector[0].weight.grad.abs().sum() > 0  # the rest of the head trains throughout


def test_projector_must_end_with_the_prototypes():
    with pytest.raises(ReprscopeError, match="projector that ends with its prototypes"):
        make_config("dino", projector="none")
    with pytest.raises(ReprscopeError, match="norm_last_layer"):
        make_config("dino", projector="mlp")
    cfg = make_config("dino", projector="mlp", method__norm_last_layer=False)
    bundle, method = make_model(cfg)
    loss, _ = method.training_step(bundle, views_for(cfg), 0, 10)
    assert torch.isfinite(loss)


def test_parameters_are_validated():
    for bad in ({"teacher_temp": 0}, {"center_momentum": 1.5}, {"momentum": -0.1}, {"freeze_last_layer_steps": -1}):
        with pytest.raises(ReprscopeError, match=f"'{next(iter(bad))}' parameter of method dino"):
            build_method("dino", bad)


def test_cross_entropy_falls_through_the_trainer(tmp_path):
    """40 steps on blobs with BatchNorm in the head (DINOHead's use_bn): the student/teacher cross-entropy of
    the last ten steps is well below that of the first five, with no NaN."""
    cfg = make_config("dino", data="blobs", projector__bn=True, method__momentum=0.99,
                      method__freeze_last_layer_steps=0, optim__lr=5e-3, train__steps=40)
    logged, _ = run_training(cfg, tmp_path)
    ce = np.array([m["dino_loss"] for m in logged])
    assert len(ce) == 40 and np.isfinite(ce).all()
    assert ce[-10:].mean() < 0.8 * ce[:5].mean()


def test_var_cov_regularisers_act_on_the_student_outputs():
    from reprscope.methods.losses import covariance_term, variance_term

    cfg = make_config("dino")
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    c0 = method.center.clone()
    plain, _ = method.training_step(bundle, views, 0, 10)
    method.center.copy_(c0)  # the same center for the second evaluation
    method.cfg.update(var_reg=2.0, cov_reg=0.5)
    reg, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        zs = [e["z"] for e in encode(bundle, views, joint=True)]
    var = sum(variance_term(z, 1.0) for z in zs) / 2
    cov = sum(covariance_term(z) for z in zs) / 2
    assert float(logs["cov_reg"]) == pytest.approx(float(cov), rel=1e-5)
    assert float((reg - plain).detach()) == pytest.approx(float(2.0 * var + 0.5 * cov), rel=1e-4, abs=1e-6)
