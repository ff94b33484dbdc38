"""The ``esd`` analyzer (WeightWatcher-style spectra) against exact power laws, a written-out
Clauset–Shalizi–Newman fit, closed forms of the norms, the Marchenko–Pastur edge of random matrices, and the
weights it reads from a checkpoint, a module and a store."""
import numpy as np
import pytest
import torch
from torch import nn

import reprscope
from reprscope.metrics.esd import eigenvalues, esd_metrics, fit_power_law, module_weights


def _pareto(n, alpha, xmin, seed=0):
    u = np.random.default_rng(seed).uniform(size=n)
    return xmin * (1 - u) ** (-1.0 / (alpha - 1))  # inverse CDF of p(x) ∝ x^-alpha, x ≥ xmin


def naive_fit(x):
    """Every sorted value but the largest as xmin, the MLE and the KS distance against i/n written with explicit
    loops over the tail (WeightWatcher's default fit, as documented)."""
    x = sorted(x)
    best = None
    for k in range(len(x) - 1):
        xmin, tail = x[k], x[k:]
        alpha = 1 + len(tail) / sum(np.log(v / xmin) for v in tail)
        d = max(abs(1 - (v / xmin) ** (1 - alpha) - i / len(tail)) for i, v in enumerate(tail))
        if best is None or d < best[2]:
            best = (alpha, xmin, d, len(tail))
    return best


def test_the_fit_recovers_an_exact_power_law_and_its_xmin():
    x = _pareto(4000, 2.5, 1.0)
    alpha, xmin, d, n = fit_power_law(x)
    assert alpha == pytest.approx(2.5, abs=0.1) and d < 0.03
    # a body below 5 that is not a power law: the KS choice finds the tail's start
    body = np.random.default_rng(1).uniform(0.5, 5.0, size=3000)
    mixed = np.concatenate([body, _pareto(2000, 3.0, 5.0, seed=2)])
    alpha, xmin, _, _ = fit_power_law(mixed)
    assert 4.5 < xmin < 6.5 and alpha == pytest.approx(3.0, abs=0.25)


def test_the_fit_equals_the_written_out_procedure():
    x = np.concatenate([np.random.default_rng(3).uniform(0.1, 1, 40), _pareto(60, 2.2, 1.0, seed=4)])
    got, ref = fit_power_law(x), naive_fit(x)
    assert got[0] == pytest.approx(ref[0], rel=1e-12) and got[1] == ref[1]
    assert got[2] == pytest.approx(ref[2], rel=1e-12) and got[3] == ref[3]
    assert fit_power_law(x[:19]) is None and fit_power_law(x[:19], min_evals=5) is not None


def test_norms_and_ranks_have_their_closed_forms():
    sv = np.array([4.0, 2.0, 1.0, 0.5])
    u, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(7, 4)))
    v, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(4, 4)))
    w = (u * sv) @ v.T  # 7 × 4 with singular values sv
    got = esd_metrics(w, min_evals=2)
    lam = sv ** 2
    assert got["log_spectral_norm"] == pytest.approx(np.log10(16.0))
    assert got["log_norm"] == pytest.approx(np.log10(lam.sum()))
    assert got["stable_rank"] == pytest.approx(lam.sum() / 16.0)
    edge = 7 * (lam.sum() / 28) * (1 + np.sqrt(4 / 7)) ** 2
    assert got["mp_softrank"] == pytest.approx(edge / 16.0)
    assert got["num_spikes"] == np.count_nonzero(lam > edge)
    assert got["alpha_weighted"] == pytest.approx(got["alpha"] * np.log10(16.0))


def test_marchenko_pastur_edge_of_random_matrices_and_a_spike():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(2000, 400))
    got = esd_metrics(w)
    # the largest eigenvalue sits at the edge up to Tracy–Widom fluctuations of order N^(-2/3)
    assert got["num_spikes"] <= 2 and got["mp_softrank"] == pytest.approx(1.0, abs=0.05)
    spiked = w + 40 * np.outer(rng.normal(size=2000), rng.normal(size=400)) / np.sqrt(400)
    got = esd_metrics(spiked)
    assert got["num_spikes"] >= 1 and got["mp_softrank"] < 0.2


def test_a_convolution_pools_the_eigenvalues_of_its_kernel_positions():
    w = np.random.default_rng(8).normal(size=(8, 5, 3, 3))
    lam, n, m = eigenvalues(w)
    ref = np.sort(np.concatenate([np.linalg.svd(w[:, :, a, b], compute_uv=False) ** 2
                                  for a in range(3) for b in range(3)]))[::-1]
    assert np.allclose(lam, ref) and (n, m) == (8, 5) and lam.size == 45
    # WeightWatcher's conv2d_norm halves a Conv2d's eigenvalues in the norms
    assert esd_metrics(w)["log_norm"] == pytest.approx(np.log10(0.5 * ref.sum()))


def test_weights_of_a_module_a_checkpoint_and_a_store(tiny_ckpt, tiny_h5):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
            self.teacher = nn.Linear(16, 16)

        def forward(self, x):
            return self.head(self.encoder(x))

    names = set(module_weights(Net()))
    assert names == {"encoder.0", "head.0", "head.2"}
    ckpt = reprscope.analyze(tiny_ckpt, analyzers="esd", limit=100)
    store = reprscope.analyze(tiny_h5, analyzers="esd")
    assert any(i.startswith("encoder") for i in ckpt["index"])  # the checkpoint: the encoder's weights too
    assert set(store["index"]) and not any(i.startswith("encoder") for i in store["index"])  # a store: its heads
    assert set(store["layer"]) == {"encoder"} and set(ckpt["layer"]) == {"encoder"}
    x = torch.randn(64, 3, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x + 0.1), batch_size=32)
    mod = reprscope.analyze(Net(), loader, layers={"encoder": "encoder", "projector": "head"}, analyzers="esd",
                            progress=False)
    assert {"encoder.0", "head.0", "head.2"} <= set(mod["index"])
