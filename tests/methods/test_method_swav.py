"""SwAV: Sinkhorn–Knopp against a naive loop and its marginals, the swapped prediction loss against a hand
computation, the training step against the two composed, the queue (filled from ``queue_start_step``, used once
full, saved and restored), prototypes frozen for the first steps or for the whole run (the center-vector paper, ICLR 2024 submission, §3.4), and
the loss falling through the real trainer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from method_helpers import make_config, make_model, run_training, views_for
from resume_helpers import assert_same_state, interrupt_and_resume
from reprscope.methods.base import encode
from reprscope.methods.swav import sinkhorn_knopp, swapped_prediction_loss
from reprscope.train import train


def naive_sinkhorn(scores, eps, iters):
    """SwAV's ``distributed_sinkhorn`` on one process, written with python loops over rows and columns."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / eps) for i in range(b)] for j in range(k)]  # K × B
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iters):
        for j in range(k):  # every prototype gets mass 1/K
            r = sum(q[j])
            q[j] = [x / r / k for x in q[j]]
        for i in range(b):  # every sample gets mass 1/B
            c = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / c / b
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def _scores(b=10, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 5, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(k, 5, generator=g, dtype=torch.float64), dim=1)
    return z @ c.t()


def test_sinkhorn_matches_a_naive_loop():
    s = _scores()
    for eps, iters in [(0.05, 3), (0.5, 1), (0.1, 7)]:
        want = torch.tensor(naive_sinkhorn(s.tolist(), eps, iters), dtype=torch.float64)
        torch.testing.assert_close(sinkhorn_knopp(s, eps, iters), want, rtol=1e-10, atol=1e-12)


def test_sinkhorn_marginals_are_uniform():
    s = _scores(b=12, k=4, seed=1)
    q = sinkhorn_knopp(s, 0.5, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(12, dtype=q.dtype))  # each sample's code sums to 1
    q = sinkhorn_knopp(s, 0.5, 200)  # converged: every prototype receives B/K samples
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0, dtype=q.dtype), rtol=1e-8, atol=1e-8)
    assert not sinkhorn_knopp(s.clone().requires_grad_(), 0.05, 3).requires_grad  # codes carry no gradient


def test_sinkhorn_is_finite_for_a_small_epsilon():
    s = _scores(seed=2) * 30  # exp(30/0.01) overflows, exp(−30/0.01) underflows: the log domain keeps both
    q = sinkhorn_knopp(s, 0.01, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(len(s), dtype=q.dtype))


def test_swapped_prediction_loss_by_hand():
    s1, s2 = _scores(4, 3, seed=3), _scores(4, 3, seed=4)
    q1, q2 = sinkhorn_knopp(s1, 0.05, 3), sinkhorn_knopp(s2, 0.05, 3)
    tau = 0.1

    def ce(q, s):  # −mean_i Σ_k q_ik log softmax(s_i/τ)_k
        total = 0.0
        for qi, si in zip(q.tolist(), s.tolist()):
            lse = math.log(sum(math.exp(x / tau) for x in si))
            total -= sum(a * (x / tau - lse) for a, x in zip(qi, si))
        return total / len(q)

    want = (ce(q1, s2) + ce(q2, s1)) / 2
    assert float(swapped_prediction_loss([s1, s2], [q1, q2], tau)) == pytest.approx(want, rel=1e-12)


def test_training_step_composes_sinkhorn_and_the_swapped_loss():
    cfg = make_config("swav", method__freeze_prototypes_steps=0)
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    loss, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=True)
        c = method.prototypes.weight
        torch.testing.assert_close(c.norm(dim=1), torch.ones(len(c)))  # prototypes on the unit sphere
        s1, s2 = F.normalize(e1["z"], dim=1) @ c.t(), F.normalize(e2["z"], dim=1) @ c.t()
        want = swapped_prediction_loss([s1, s2], [sinkhorn_knopp(s1, 0.05, 3), sinkhorn_knopp(s2, 0.05, 3)], 0.1)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(logs["swav_loss"]) == pytest.approx(float(want), rel=1e-5)
    # the projector ends at the normalised embedding that is scored (what the analyzers read)
    assert cfg["model"]["heads"]["projector"][-1] == {"type": "l2norm"}
    assert torch.allclose(e1["z"].norm(dim=1), torch.ones(len(e1["z"])))
    loss.backward()
    assert method.prototypes.weight.grad.abs().sum() > 0


def _prototype_run(cfg, steps):
    bundle, method = make_model(cfg)
    params = [p for g in method.param_groups(bundle) for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    w0 = method.prototypes.weight.detach().clone()
    grads, weights = [], []
    for step in range(steps):
        loss, _ = method.training_step(bundle, views_for(cfg, seed=step), step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads.append(method.prototypes.weight.grad)
        opt.step()
        method.after_step(bundle, step, steps)
        weights.append(method.prototypes.weight.detach().clone())
    return method, bundle, w0, grads, weights


def test_prototypes_frozen_for_the_first_steps():
    cfg = make_config("swav", method__freeze_prototypes_steps=3, method__n_prototypes=40)
    method, bundle, w0, grads, weights = _prototype_run(cfg, 5)
    for step in range(3):  # zero gradient (not None: DDP needs every parameter used), values kept exactly
        assert grads[step] is not None and torch.count_nonzero(grads[step]) == 0
        assert torch.equal(weights[step], w0)
    assert grads[3].abs().sum() > 0 and not torch.equal(weights[3], w0)
    torch.testing.assert_close(weights[4].norm(dim=1), torch.ones(len(w0)))  # renormalised after each step
    assert any(p is method.prototypes.weight for g in method.param_groups(bundle) for p in g["params"])


def test_prototypes_frozen_for_the_whole_run():
    cfg = make_config("swav", method__freeze_prototypes=True, method__freeze_prototypes_steps=0, method__n_prototypes=40)
    method, bundle, w0, grads, weights = _prototype_run(cfg, 4)
    assert all(g is None for g in grads)
    assert all(torch.equal(w, w0) for w in weights)
    assert not any(p is method.prototypes.weight for g in method.param_groups(bundle) for p in g["params"])
    # the center-vector paper §3.4: random prototypes spread uniformly over the sphere
    torch.testing.assert_close(w0.norm(dim=1), torch.ones(len(w0)))


def test_queue_filled_from_its_start_step_and_used_once_full():
    n = 16
    cfg = make_config("swav", method__queue_length=2 * n, method__queue_start_step=2,
                      method__freeze_prototypes_steps=0)
    bundle, method = make_model(cfg)
    views = [views_for(cfg, n=n, seed=s) for s in range(6)]
    used = []
    for step in range(6):
        before = method.queue.clone()
        _, logs = method.training_step(bundle, views[step], step, 6)
        used.append(logs["queue_used"])
        if step < 2:
            assert torch.equal(method.queue, before) and int(method.queue_count) == 0
    assert used == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # filled at steps 2 and 3, used from step 4
    assert int(method.queue_count) == 2 * n
    with torch.no_grad():  # newest batch first, in order; the previous batch behind it
        last = [F.normalize(e["z"], dim=1) for e in encode(bundle, views[5], joint=True)]
        prev = [F.normalize(e["z"], dim=1) for e in encode(bundle, views[4], joint=True)]
    for i in range(2):
        torch.testing.assert_close(method.queue[i, :n], last[i])
        torch.testing.assert_close(method.queue[i, n:], prev[i])

    # the codes of a step with a full queue come from Sinkhorn over [queue scores; batch scores]
    loss, _ = method.training_step(bundle, views[0], 6, 7)
    with torch.no_grad():
        c = method.prototypes.weight
        e = encode(bundle, views[0], joint=True)
        s = [F.normalize(x["z"], dim=1) @ c.t() for x in e]
        q = [sinkhorn_knopp(torch.cat([torch.cat([last[i], prev[i]]) @ c.t(), s[i]]), 0.05, 3)[-n:] for i in range(2)]
        plain = [sinkhorn_knopp(s[i], 0.05, 3) for i in range(2)]
    assert float(loss.detach()) == pytest.approx(float(swapped_prediction_loss(s, q, 0.1)), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(float(swapped_prediction_loss(s, plain, 0.1)), rel=1e-5)


def test_queue_is_saved_and_restored():
    cfg = make_config("swav", method__queue_length=32, method__queue_start_step=0)
    bundle, method = make_model(cfg)
    for step in range(3):
        method.training_step(bundle, views_for(cfg, n=16, seed=step), step, 5)
    state = method.state_dict()
    assert {"queue", "queue_count", "prototypes.weight"} <= set(state)
    bundle2, fresh = make_model(cfg, seed=1)
    bundle2.load_state_dict(bundle.state_dict())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, method.queue) and int(fresh.queue_count) == 32
    a, _ = method.training_step(bundle, views_for(cfg, n=16, seed=9), 3, 5)
    b, _ = fresh.training_step(bundle2, views_for(cfg, n=16, seed=9), 3, 5)
    assert float(a.detach()) == float(b.detach())


def test_resume_with_a_queue_is_exact(tmp_path):
    """Through the trainer: 6 steps straight equal 4 steps + resume + 2, queue and prototypes included."""
    cfg = make_config("swav", data="dgp", method__queue_length=64, method__queue_start_step=1,
                      method__freeze_prototypes_steps=2, train__steps=6, train__batch_size=32,
                      train__save_every_steps=2)
    straight = train(cfg, tmp_path / "a", progress=False)
    resumed = interrupt_and_resume(cfg, tmp_path / "b", stop_at=4)
    a, _ = assert_same_state(straight.last, resumed.last)
    assert int(a["method_state"]["queue_count"]) == 64


def test_loss_decreases_through_the_trainer(tmp_path):
    logged, _ = run_training(make_config("swav", data="dgp", method__n_prototypes=24, train__steps=40), tmp_path)
    losses = np.array([m["swav_loss"] for m in logged])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.8 * losses[:5].mean()


def test_parameters_are_validated():
    from reprscope.errors import ReprscopeError
    from reprscope.methods import build_method

    for bad in ({"epsilon": 0}, {"n_prototypes": 0}, {"queue_length": -1}, {"sinkhorn_iterations": 0},
                {"temperature": -0.1}):
        with pytest.raises(ReprscopeError, match=f"'{next(iter(bad))}' parameter of method swav"):
            build_method("swav", bad)


def test_var_cov_regularisers_act_on_the_branch_embeddings():
    from reprscope.methods.losses import covariance_term, variance_term

    cfg = make_config("swav")
    bundle, method = make_model(cfg)
    views = views_for(cfg)
    plain, _ = method.training_step(bundle, views, 0, 10)
    method.cfg.update(var_reg=2.0, cov_reg=0.5)
    reg, logs = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        zs = [e["z"] for e in encode(bundle, views, joint=True)]
    var = sum(variance_term(z, 1.0) for z in zs) / 2
    cov = sum(covariance_term(z) for z in zs) / 2
    assert float(logs["var_reg"]) == pytest.approx(float(var), rel=1e-5)
    assert float((reg - plain).detach()) == pytest.approx(float(2.0 * var + 0.5 * cov), rel=1e-4, abs=1e-6)
