"""BYOL: the normalised-MSE loss against a hand computation, the target branch without gradient, the required
predictor, and the EMA momentum ablations of the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") §3.5 (0 copies the online network, 1 freezes the target,
cosine schedule from the base value to 1)."""
from __future__ import annotations

import math

import pytest
import torch

from method_helpers import make_config, make_model, run_training, views_for
from reprscope.errors import ReprscopeError
from reprscope.methods.base import encode
from reprscope.methods.byol import byol_loss, normalized_mse
from reprscope.methods.ema import cosine_momentum


def _rows(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]


def hand_nmse(p, z):
    """2 − 2 Σ_k p_k z_k / (‖p‖ ‖z‖) for one pair of vectors, in python floats."""
    dot = sum(a * b for a, b in zip(p, z))
    return 2 - 2 * dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in z)))


def test_normalized_mse_by_hand():
    p, z, _, _ = _rows()
    got = normalized_mse(p, z)
    want = [hand_nmse(p[i].tolist(), z[i].tolist()) for i in range(p.shape[0])]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    # it is the squared distance of the ℓ2-normalised vectors
    pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    assert torch.allclose(got, (pn - zn).pow(2).sum(1))


def test_loss_is_the_sum_over_both_view_orders():
    p1, p2, t1, t2 = _rows(seed=1)
    n = p1.shape[0]
    want = sum(hand_nmse(p1[i].tolist(), t2[i].tolist()) for i in range(n)) / n \
        + sum(hand_nmse(p2[i].tolist(), t1[i].tolist()) for i in range(n)) / n
    assert float(byol_loss(p1, p2, t1, t2)) == pytest.approx(want, rel=1e-12)


def test_target_branch_receives_no_gradient():
    p1, p2, t1, t2 = [x.requires_grad_() for x in _rows(seed=2)]
    byol_loss(p1, p2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_training_step_matches_the_reference_at_initialisation():
    """At step 0 the target is a copy of the online encoder + projector, so its projections equal the online ones."""
    cfg = make_config("byol")
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    assert float(loss.detach()) == pytest.approx(float(byol_loss(e1["p"], e2["p"], e1["z"], e2["z"])), rel=1e-5)
    assert logs["momentum"] == pytest.approx(0.99)
    loss.backward()
    assert all(p.grad is None for p in method.target.parameters())
    assert bundle.predictor[0].weight.grad.abs().sum() > 0
    assert not any(k.startswith("target.predictor") for k in method.state_dict())  # the target has no predictor


def test_predictor_is_required_and_must_output_the_projection_width():
    with pytest.raises(ReprscopeError, match="needs a predictor head"):
        make_config("byol", predictor="none")
    with pytest.raises(ReprscopeError, match="projector's width 16"):
        make_config("byol", predictor__out_dim=8)


def _perturb(bundle):
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(torch.randn_like(p))


def _ema_params(method):
    return {k: v.clone() for k, v in method.target.named_parameters()}


def test_momentum_one_leaves_the_target_unchanged():
    cfg = make_config("byol", method__momentum=1.0, method__momentum_schedule="constant")
    bundle, method = make_model(cfg)
    before = _ema_params(method)
    _perturb(bundle)
    method.after_step(bundle, 3, 10)
    after = _ema_params(method)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    online = dict(bundle.named_parameters())
    assert all(not torch.equal(online[k], v) for k, v in after.items())  # while the online network moved


def test_momentum_zero_copies_the_online_network():
    cfg = make_config("byol", method__momentum=0.0, method__momentum_schedule="constant")
    bundle, method = make_model(cfg)
    _perturb(bundle)
    method.after_step(bundle, 3, 10)
    for part in ("encoder", "projector"):
        online = getattr(bundle, part).state_dict()
        target = getattr(method.target, part).state_dict()
        assert online.keys() == target.keys() and all(torch.equal(online[k], target[k]) for k in online)


def test_cosine_schedule_and_one_ema_step():
    cfg = make_config("byol", method__momentum=0.9)
    bundle, method = make_model(cfg)
    assert method.momentum_at(0, 100) == pytest.approx(0.9)
    assert method.momentum_at(50, 100) == pytest.approx(0.95)
    assert method.momentum_at(100, 100) == pytest.approx(1.0)
    assert method.momentum_at(30, 100) == pytest.approx(cosine_momentum(0.9, 30, 100, 1.0))
    xi = {k: v.clone() for k, v in method.target.encoder.named_parameters()}
    _perturb(bundle)
    theta = dict(bundle.encoder.named_parameters())
    m = method.momentum_at(30, 100)
    method.after_step(bundle, 30, 100)
    for k, v in method.target.encoder.named_parameters():
        assert torch.allclose(v, m * xi[k] + (1 - m) * theta[k], atol=1e-6)


def _params_only(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_fixed_momentum_through_the_trainer(momentum, tmp_path):
    """momentum=1: the target keeps the initial weights (those of ckpt-0); momentum=0: it ends equal to the
    trained online network."""
    cfg = make_config("byol", method__momentum=momentum, method__momentum_schedule="constant",
                      train__steps=4, train__save_every_steps=4)
    logged, result = run_training(cfg, tmp_path)
    assert [m["momentum"] for m in logged] == [momentum] * 4
    init = torch.load(result.checkpoints[0], weights_only=True)["state_dict"]
    last = torch.load(result.last, weights_only=True)
    target = _params_only(last["method_state"], "target.")
    reference = _params_only(init if momentum == 1.0 else last["state_dict"], "")
    assert target and all(torch.equal(target[k], reference[k]) for k in target)
    moved = _params_only(last["state_dict"], "")
    assert any(not torch.equal(moved[k], _params_only(init, "")[k]) for k in target)  # the online network trained
