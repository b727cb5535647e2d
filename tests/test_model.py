"""The run-time model: censored likelihood, ELBO training, reproducibility, any N, the argmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from horovod_cutoff.model import (
    Noise,
    RunTimeModel,
    best_cutoff,
    censored_log_likelihood,
    hot_path,
    load_model,
    weights_hash,
)
from horovod_cutoff.model.inference import predictive_log_times, predictive_trace
from horovod_cutoff.model.train import make_batch, train
from scipy import special, stats

# Seeded results and timings as on a one-core CI share (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scipy_mixture(weights, loc, scale, x, censored):
    """log f(x) or log(1 - F(c)) of a log-normal mixture, from scipy.stats."""
    parts = []
    for w, m, s in zip(weights, loc, scale):
        d = stats.lognorm(s=s, scale=math.exp(m))
        parts.append(math.log(w) + (d.logsf(x) if censored else d.logpdf(x)))
    return float(special.logsumexp(parts))


@pytest.mark.parametrize("components", [1, 3])
def test_censored_log_likelihood_equals_scipy_logpdf_and_logsf(components):
    rng = np.random.default_rng(0)
    cells = 40
    logits = rng.normal(size=(cells, components))
    loc = rng.normal(-1.0, 1.0, size=(cells, components))
    scale = rng.uniform(0.05, 1.0, size=(cells, components))
    x = np.exp(rng.normal(-1.0, 1.5, size=cells))
    x[:4] = np.exp(loc[:4, 0] + 5.5 * scale[:4, 0])  # deep in the right tail
    censored = rng.random(cells) < 0.5
    censored[:4] = True
    # The survival term is a double-precision cdf: exact to 1e-6 (in log) up to ~6 sd into
    # the tail of the farthest component; beyond that it is floored (next test).
    x = np.minimum(x, np.exp((loc + 6.0 * scale).max(axis=1)))
    ours = censored_log_likelihood(torch.tensor(logits), torch.tensor(loc), torch.tensor(scale),
                                   torch.tensor(x), torch.tensor(censored)).numpy()
    weights = special.softmax(logits, axis=1)
    ref = [_scipy_mixture(weights[i], loc[i], scale[i], x[i], censored[i]) for i in range(cells)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_survival_term_stays_finite_far_in_the_tail():
    one = torch.zeros(1, 1, dtype=torch.float64)
    out = censored_log_likelihood(one, one, one + 0.01, torch.tensor([10.0], dtype=torch.float64),
                                  torch.tensor([True]))
    assert torch.isfinite(out).all() and out[0] < -600


def test_censored_log_likelihood_is_nan_for_absent_workers():
    one = torch.zeros(2, 1, dtype=torch.float64)
    out = censored_log_likelihood(one, one, one + 1, torch.tensor([float("nan"), 1.0], dtype=torch.float64),
                                  torch.tensor([False, True]))
    assert math.isnan(out[0]) and out[1] == pytest.approx(math.log(0.5))


def _two_regimes(rng, batch=4, steps=30, workers=4):
    """The whole cluster switches between a fast (0.1 s) and a slow (0.3 s) regime, sticky."""
    times = np.empty((batch, steps, workers))
    regimes = np.empty((batch, steps), dtype=bool)
    for b in range(batch):
        slow = rng.random() < 0.5
        for t in range(steps):
            if rng.random() < 0.1:
                slow = not slow
            regimes[b, t] = slow
            times[b, t] = (0.3 if slow else 0.1) * np.exp(rng.normal(0, 0.05, size=workers))
    return times, regimes


def test_elbo_rises_and_model_separates_regimes_better_than_iid_fit():
    source = lambda r: tuple(torch.tensor(a) for a in (  # noqa: E731
        _two_regimes(r)[0].astype(np.float32), np.zeros((4, 30, 4), dtype=bool)))
    model = RunTimeModel(hidden=12, global_hidden=12, latent=2, components=2, embed=12)
    model, history = train(iterations=40, lr=1e-2, seed=0, model=model, log_every=0,
                           batch_source=source)
    assert np.mean(history[-10:]) > np.mean(history[:10]) + 0.5
    # Held-out one-step predictive log-likelihood: model vs the best i.i.d. log-normal fit.
    times, regimes = _two_regimes(np.random.default_rng(1), batch=1, steps=120)
    x = times[0]
    check = predictive_trace(model.eval(), x, samples=32)
    model_ll = np.nanmean(check["loglik"][1:])
    logs = np.log(x)
    iid_ll = np.mean(stats.norm(logs.mean(), logs.std()).logpdf(logs[1:]) - logs[1:])
    assert model_ll > iid_ll + 0.5
    # The predictive mean follows the regime: slow after slow steps, fast after fast ones.
    mean = check["mean"][1:, 0]
    after_slow, after_fast = mean[regimes[0, :-1]], mean[~regimes[0, :-1]]
    assert np.median(after_slow) > 2.0 * np.median(after_fast)


def test_the_joint_check_counts_stragglers_against_the_last_steps_median():
    from horovod_cutoff.model.dependence import MIN_HISTORY

    """predictive_trace's joint check: a straggler is a worker over STRAGGLER x the previous
    step's median; a step with a cut worker is not checked; the shipped model, shown one worker
    that is always 3x slower, predicts about one straggler a step."""
    rng = np.random.default_rng(0)
    x = rng.lognormal(math.log(0.2), 0.02, size=(60, 8))
    x[:, 0] *= 3.0
    x[40, 0] /= 3.0  # the one step with no straggler
    censored = np.zeros(x.shape, dtype=bool)
    censored[50, 3] = True
    check = predictive_trace(load_model(), x, censored, samples=64)
    seen, none = check["stragglers"], check["no_straggler"]
    assert math.isnan(seen[0]) and math.isnan(check["p_no_straggler"][0])  # nothing predicted yet
    assert np.all(seen[1:40] == 1) and np.all(none[1:40] == 0)
    assert seen[40] == 0 and none[40] == 1
    assert math.isnan(seen[50]) and math.isnan(check["p_no_straggler"][50])
    p = check["p_no_straggler"][1:50]
    assert np.all((p >= 0) & (p <= 1))
    assert 0.5 < np.median(check["mean_stragglers"][20:40]) < 1.5
    assert np.median(p[20:39]) < 0.5
    # The joint the quorum uses: only once its dependence has steps to learn from; it too
    # keeps the always-slow worker a straggler.
    learned = check["p_no_straggler_learned"]
    assert np.all(np.isnan(learned[:MIN_HISTORY])) and math.isnan(learned[50])
    assert np.all((learned[MIN_HISTORY + 1:40] >= 0) & (learned[MIN_HISTORY + 1:40] <= 1))
    assert np.median(learned[MIN_HISTORY + 1:40]) < 0.5


def test_seeded_training_reproduces_exactly():
    def run():
        m, h = train(iterations=2, batch=2, steps=8, seed=3, log_every=0, workers=4,
                     model=None)
        return m, h
    (a, ha), (b, hb) = run(), run()
    assert ha == hb
    assert weights_hash(a) == weights_hash(b)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_batches_are_seeded_and_carry_policy_censoring():
    x1, c1 = make_batch(np.random.default_rng(5), 4, 30, workers=8)
    x2, c2 = make_batch(np.random.default_rng(5), 4, 30, workers=8)
    assert torch.equal(torch.nan_to_num(x1), torch.nan_to_num(x2)) and torch.equal(c1, c2)


@pytest.mark.parametrize("workers", [1, 7, 64, 1024])
def test_one_model_serves_any_number_of_workers(workers):
    model = load_model()
    state = model.initial_state(1, workers)
    gen = torch.Generator().manual_seed(0)
    x = torch.exp(torch.randn(3, workers, generator=gen) * 0.2 - 1.6)
    for t in range(3):
        noise = Noise.draw(16, workers, model.D, gen)
        c, state, samples = hot_path(model, state, x[t], torch.zeros(workers, dtype=torch.bool),
                                     noise, 0.02)
        assert samples.shape == (16, workers)
        assert math.isfinite(c) and c > 0


def test_predictions_are_scale_free():
    """The same trace in milliseconds or in minutes gives the same cutoff, rescaled."""
    model = load_model()
    x = torch.exp(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)) * 0.3)
    noise = Noise.draw(64, 16, model.D, torch.Generator().manual_seed(2))
    cuts = []
    for scale in (0.05, 50.0):
        state = model.initial_state(1, 16)
        for t in range(5):
            c, state, _ = hot_path(model, state, x[t] * scale, torch.zeros(16, dtype=torch.bool),
                                   noise, 0.0)
        cuts.append(c / scale)
    assert cuts[0] == pytest.approx(cuts[1], rel=1e-4)


def test_hot_path_is_a_function_of_its_noise():
    model = load_model()
    x = torch.exp(torch.randn(8, generator=torch.Generator().manual_seed(0)))
    noise = Noise.draw(32, 8, model.D, torch.Generator().manual_seed(4))
    out = [hot_path(model, model.initial_state(1, 8), x, torch.zeros(8, dtype=torch.bool), noise, 0.01)
           for _ in range(2)]
    assert out[0][0] == out[1][0] and torch.equal(out[0][2], out[1][2])
    assert torch.equal(predictive_log_times(model, out[0][1], noise),
                       predictive_log_times(model, out[1][1], noise))


def _objective_on_grid(samples, grid, overhead, objective, rate):
    counts = (samples[None, :, :] <= grid[:, None, None]).sum(axis=(1, 2)) / samples.shape[0]
    if objective == "ratio":
        return counts / (grid + overhead)
    duration = np.minimum(grid[:, None], samples.max(axis=1)[None, :]).mean(axis=1) + overhead
    return counts / duration if objective == "step" else counts - rate * duration


@pytest.mark.parametrize("objective", ["step", "ratio", "lambda"])
def test_argmax_equals_brute_force_over_dense_grid(objective):
    rng = np.random.default_rng(7)
    samples = np.exp(rng.normal(-1.5, 0.4, size=(64, 12)))
    samples[:, 0] *= 4  # a straggler
    overhead, rate = 0.02, 40.0
    c, value = best_cutoff(torch.tensor(samples, dtype=torch.float32), overhead, objective, rate)
    s32 = samples.astype(np.float32).astype(np.float64)
    # Below the fastest sample nobody makes the step: never a candidate.
    grid = np.concatenate([np.linspace(s32.min(), s32.max() * 1.1, 20000), s32.ravel()])
    brute = _objective_on_grid(s32, grid, overhead, objective, rate)
    assert value == pytest.approx(brute.max(), rel=1e-9)
    assert c == pytest.approx(grid[np.argmax(brute)], rel=1e-6)
    assert value == pytest.approx(_objective_on_grid(s32, np.array([c]), overhead, objective, rate)[0])
