"""SimSiam: the symmetric negative cosine against a hand computation, the stop-gradient and "without predictor"
ablations (the center-vector paper, ICLR 2024 submission, §3.2), and the predictor's own fixed learning rate with a multiplier (the center-vector paper B.4)
through the real trainer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from method_helpers import make_config, make_model, run_training, views_for
from reprscope.methods.base import encode
from reprscope.methods.simsiam import negative_cosine, simsiam_loss
from reprscope.train.optim import lr_factor


def hand_cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _rows(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]


def test_loss_by_hand():
    p1, p2, z1, z2 = _rows()
    n = p1.shape[0]
    assert negative_cosine(p1, z2).tolist() == pytest.approx([-hand_cos(p1[i].tolist(), z2[i].tolist()) for i in range(n)])
    want = 0.5 * sum(-hand_cos(p1[i].tolist(), z2[i].tolist()) for i in range(n)) / n \
        + 0.5 * sum(-hand_cos(p2[i].tolist(), z1[i].tolist()) for i in range(n)) / n
    for sg in (True, False):
        assert float(simsiam_loss(p1, p2, z1, z2, stop_gradient=sg)) == pytest.approx(want, rel=1e-12)


def test_stop_gradient_blocks_the_target_branch():
    """With p = z W: under stop-gradient z₁ receives gradient only through its own prediction p₁."""
    p1_, p2_, z1_, z2_ = _rows(seed=3)
    w = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = {}
    for sg in (True, False):
        z1, z2 = z1_.clone().requires_grad_(), z2_.clone().requires_grad_()
        simsiam_loss(z1 @ w, z2 @ w, z1, z2, stop_gradient=sg).backward()
        grads[sg] = z1.grad
    z1 = z1_.clone().requires_grad_()
    (0.5 * -F.cosine_similarity(z1 @ w, z2_, dim=-1).mean()).backward()  # the only path left to z₁
    assert torch.allclose(grads[True], z1.grad)
    assert not torch.allclose(grads[True], grads[False])


def _encoder_grads(cfg, views):
    bundle, method = make_model(cfg)
    loss, _ = method.training_step(bundle, views, 0, 10)
    loss.backward()
    return bundle, {k: p.grad.clone() for k, p in bundle.encoder.named_parameters()}


def test_without_stop_gradient_gradients_flow_into_the_target_branch():
    cfg = make_config("simsiam")
    views = views_for(cfg)
    bundle, with_sg = _encoder_grads(cfg, views)
    _, without_sg = _encoder_grads(make_config("simsiam", method__stop_gradient=False), views)
    assert any(not torch.allclose(with_sg[k], without_sg[k]) for k in with_sg)
    # reference: the same loss written out, targets detached or not
    for sg, got in ((True, with_sg), (False, without_sg)):
        bundle.zero_grad()
        e1, e2 = encode(bundle, views, joint=False)
        t1, t2 = (e1["z"].detach(), e2["z"].detach()) if sg else (e1["z"], e2["z"])
        (0.5 * -F.cosine_similarity(e1["p"], t2).mean() - 0.5 * F.cosine_similarity(e2["p"], t1).mean()).backward()
        for k, p in bundle.encoder.named_parameters():
            assert torch.allclose(p.grad, got[k], rtol=1e-4, atol=1e-7), (sg, k)


def test_without_predictor_p_is_z_and_stop_gradient_halves_the_gradient():
    """predictor=none: L = −½cos(z₁, sg z₂) − ½cos(z₂, sg z₁), whose gradient is exactly half that of −cos(z₁, z₂)."""
    cfg = make_config("simsiam", predictor="none")
    assert "predictor" not in cfg["model"]["heads"]
    views = views_for(cfg)
    bundle, method = make_model(cfg)
    assert not bundle.has("predictor") and len(method.param_groups(bundle)) == 1
    loss, _ = method.training_step(bundle, views, 0, 10)
    with torch.no_grad():
        e1, e2 = encode(bundle, views, joint=False)
    assert float(loss.detach()) == pytest.approx(float(-F.cosine_similarity(e1["z"], e2["z"]).mean()), rel=1e-5)
    _, with_sg = _encoder_grads(cfg, views)
    _, without_sg = _encoder_grads(make_config("simsiam", predictor="none", method__stop_gradient=False), views)
    for k in with_sg:
        assert torch.allclose(2 * with_sg[k], without_sg[k], rtol=1e-4, atol=1e-7), k


def test_without_predictor_trains(tmp_path):
    logged, _ = run_training(make_config("simsiam", predictor="none", train__steps=5), tmp_path)
    assert len(logged) == 5 and all(math.isfinite(m["loss"]) for m in logged)


def _group_lrs(path):
    groups = torch.load(path, weights_only=True)["optimizer"]["param_groups"]
    return [(bool(g.get("fixed_lr")), len(g["params"]), g["lr"]) for g in groups]


@pytest.mark.parametrize("fixed", [True, False])
def test_predictor_learning_rate_fixed_and_multiplied(fixed, tmp_path):
    """SGD with warm-up + cosine over 6 steps, peak lr 0.1, predictor_lr_mult 0.5: the predictor groups keep
    0.05 at every checkpoint when fixed, and follow the schedule (× 0.5) otherwise."""
    steps, peak, warm = 6, 0.1, 2
    cfg = make_config("simsiam", optim__name="sgd", optim__lr=peak, optim__schedule="cosine", optim__warmup_steps=warm,
                      train__steps=steps, train__save_every_steps=2, method__predictor_fixed_lr=fixed,
                      method__predictor_lr_mult=0.5)
    bundle, _ = make_model(cfg)
    n_pred = len(list(bundle.predictor.parameters()))
    logged, result = run_training(cfg, tmp_path)
    for path in result.checkpoints[1:]:
        done = int(path.stem.split("-")[1])
        factor = lr_factor(done, steps, warm, "cosine", 0.0)  # the scheduler has stepped `done` times
        groups = _group_lrs(path)
        assert sum(n for f, n, _ in groups if f) == (n_pred if fixed else 0)
        # groups come as [encoder+projector weights, their biases/norms, predictor weights, predictor biases/norms]
        pred = groups[2:]
        assert sum(n for _, n, _ in pred) == n_pred
        for _, _, lr in groups[:2]:
            assert lr == pytest.approx(peak * factor, abs=1e-12)
        for _, _, lr in pred:
            assert lr == pytest.approx(0.5 * peak if fixed else 0.5 * peak * factor, abs=1e-12)
    lrs = [m["lr"] for m in logged]  # the logged lr is the encoder group's: warm-up, then cosine decay
    assert lrs[1] == pytest.approx(peak) and lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[2] < lrs[1]
