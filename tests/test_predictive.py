"""The "predictive" policy: registered, runs in the simulator, falls back safely, reproducible."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from horovod_cutoff.model import load_model, save_model, weights_hash
from horovod_cutoff.policies import POLICIES, make_policy
from horovod_cutoff.policies.predictive import Predictive
from horovod_cutoff.sim import replay, simulate
from horovod_cutoff.traces.generators import generate

# Seeded results and timings as on a one-core CI share (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _steps(policy, times, cut_at=None):
    out = []
    for row in times:
        c = policy.cutoff() if cut_at is None else cut_at
        cut = row > c
        policy.observe(np.where(cut, c, row), cut)
        out.append(policy.cutoff())
    return out


def test_predictive_is_registered_and_built_by_name():
    assert "predictive" in POLICIES
    policy = make_policy("predictive", overhead=0.02, samples=64, seed=1)
    assert isinstance(policy, Predictive) and math.isinf(policy.cutoff())


def test_predictive_runs_in_the_simulator_replay():
    times = generate("markov", 16, 150, seed=0)
    policy = make_policy("predictive", overhead=0.02, samples=64)
    result = replay(times, policy, overhead=0.02, warmup=20)
    none = simulate(times, "none", overhead=0.02, warmup=20)
    assert result["gradients_per_second"] > none["gradients_per_second"]
    assert policy.failed is None


def test_seeded_policy_reproduces_cutoffs():
    times = generate("rack", 8, 30, seed=2)
    a = _steps(Predictive(overhead=0.01, samples=32, seed=5), times)
    b = _steps(Predictive(overhead=0.01, samples=32, seed=5), times)
    assert a == b and all(math.isfinite(c) for c in a)


def test_nan_from_the_model_falls_back_to_adaptive_with_one_warning():
    model = copy.deepcopy(load_model())
    with torch.no_grad():
        model.emission_net[-1].bias.fill_(float("nan"))
    policy = Predictive(overhead=0.02, samples=16, model=model)
    times = generate("iid", 8, 10, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cutoffs = _steps(policy, times)
    assert len([w for w in caught if "falling back" in str(w.message)]) == 1
    assert policy.failed is not None
    assert cutoffs[-1] == policy.fallback.cutoff() and math.isfinite(cutoffs[-1])


@pytest.mark.parametrize("fast", [True, False])
def test_a_raising_model_falls_back_instead_of_crashing(fast, monkeypatch):
    policy = Predictive(samples=16, fast=fast)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    policy.model.step = broken  # the reference path
    monkeypatch.setattr("horovod_cutoff.policies.predictive.make_predictor", broken)  # the fast one
    with pytest.warns(RuntimeWarning, match="boom"):
        _steps(policy, generate("iid", 4, 6, seed=0))
    assert policy.cutoff() == policy.fallback.cutoff()


def test_all_censored_observation_keeps_state():
    policy = Predictive(samples=32)
    times = generate("iid", 8, 5, seed=0)
    _steps(policy, times)
    before = (policy.cutoff(), policy.state.h.clone())
    policy.observe(np.full(8, 0.01), np.ones(8, dtype=bool))
    assert policy.cutoff() == before[0] and torch.equal(policy.state.h, before[1])


def test_absent_workers_are_ignored():
    policy = Predictive(samples=32)
    times = generate("iid", 8, 6, seed=0)
    times[:, 3] = np.nan
    times[2, 5] = np.nan
    cutoffs = _steps(policy, times)
    assert all(math.isfinite(c) and c > 0 for c in cutoffs)


def test_config_names_the_weights(tmp_path):
    a = Predictive(overhead=0.02)
    cfg = a.config()
    assert cfg["policy"] == "predictive" and cfg["model_sha256"] == weights_hash(a.model)
    other = copy.deepcopy(a.model)
    with torch.no_grad():
        other.prior_net[0].weight.add_(1.0)
    path = tmp_path / "other.pt"
    save_model(other, path)
    b = Predictive(overhead=0.02, model=str(path))
    assert b.config()["model_sha256"] != cfg["model_sha256"]


@pytest.mark.parametrize("params,argument", [
    ({"samples": 0}, "samples"), ({"objective": "median"}, "objective"),
    ({"model": "/nonexistent/weights.pt"}, "model"), ({"overhead": -1.0}, "overhead")])
def test_bad_parameters_raise_value_error_naming_the_argument(params, argument):
    with pytest.raises(ValueError, match=argument):
        make_policy("predictive", **params)


@pytest.mark.parametrize("objective", ["step", "ratio", "lambda"])
def test_every_objective_runs_in_the_replay(objective):
    times = generate("heavy_tail", 16, 60, seed=0)
    out = replay(times, Predictive(overhead=0.02, samples=64, objective=objective), overhead=0.02)
    assert out["gradients_per_second"] > 0


def test_fast_path_and_reference_give_the_same_throughput_in_replay():
    # Different noise streams and the grid argmax against the exact one: the same policy.
    times = generate("markov", 16, 300, seed=3)
    fast = replay(times, Predictive(overhead=0.02, samples=128, fast=True), overhead=0.02, warmup=30)
    ref = replay(times, Predictive(overhead=0.02, samples=128, fast=False), overhead=0.02, warmup=30)
    assert fast["gradients_per_second"] == pytest.approx(ref["gradients_per_second"], rel=0.01)


@pytest.mark.parametrize("fast", [True, False])
def test_the_policy_calibrates_its_spread_from_what_it_sees(fast):
    policy = Predictive(overhead=0.02, samples=64, fast=fast)
    replay(generate("steady", 16, 200, seed=0), policy, overhead=0.02)
    assert policy.failed is None and policy.calibration.spread != 1.0
    assert 0.25 <= policy.calibration.spread <= 4.0


@pytest.mark.parametrize("fast", [True, False])
def test_weights_swap_in_mid_run_and_keep_the_state(fast):
    times = generate("markov", 8, 40, seed=1)
    policy = Predictive(overhead=0.02, samples=64, fast=fast)
    _steps(policy, times[:20])
    h = policy.state.h.clone()
    other = copy.deepcopy(load_model())
    with torch.no_grad():
        other.emission_net[-1].bias.add_(0.3)  # slower predicted times: later cutoffs
    before = policy.hash
    assert policy.load_weights(other) == weights_hash(other) != before
    assert torch.equal(policy.state.h, h)
    _steps(policy, times[20:])
    assert policy.failed is None and math.isfinite(policy.cutoff())
    with pytest.raises(ValueError, match="hyper-parameters"):
        from horovod_cutoff.model import RunTimeModel
        policy.load_weights(RunTimeModel(hidden=8))


def test_auto_samples_keep_the_draws_per_step_flat_in_the_workers():
    auto = Predictive()
    assert [auto.samples_for(n) for n in (1, 64, 128, 256, 1024, 4096)] == [256, 256, 128, 64, 64, 64]
    assert Predictive(samples=33).samples_for(1024) == 33
    assert auto.config()["samples"] is None


def brute_force_rule(x, o, cutoffs, time_only):
    """best_rule's objective by its definition, sample by sample, every k < N at ``cutoffs``:
    count_s = min(k, #{x_s <= c}), duration_s = min(c, x_s(k)); and the time-only rule."""
    xs = np.sort(x, axis=1)
    best = (-math.inf, None, None)
    for k in range(1, x.shape[1]):
        for c in cutoffs:
            value = np.minimum(k, (x <= c).sum(1)).mean() / (np.minimum(c, xs[:, k - 1]).mean() + o)
            if value > best[0]:
                best = (value, c, k)
    alone = (x <= time_only).sum(1).mean() / (np.minimum(time_only, xs[:, -1]).mean() + o)
    return best, alone


@pytest.mark.parametrize("seed", range(4))
def test_the_joint_choice_matches_a_brute_force_objective_on_fixed_samples(seed):
    from horovod_cutoff.model import inference

    rng = np.random.default_rng(seed)
    x = rng.lognormal(np.log(0.2), 0.3, (64, 12)) * np.where(rng.random((64, 12)) < 0.1, 4.0, 1.0)
    L = np.log(x)
    c0 = float(np.quantile(x, 0.8))
    c, k, value, alone = inference.best_rule(inference.order_statistics(L), 0.02, c0)
    M = int(np.clip(inference.QUORUM_PAIRS // 12, *inference.QUORUM_CUTOFFS))
    grid = np.exp(np.linspace(L.min(), L.max(), M))
    grid[-1] = x.max()
    (top, c_top, k_top), alone_bf = brute_force_rule(x, 0.02, grid, c0)
    assert alone == pytest.approx(alone_bf, rel=1e-9)
    assert k == k_top and value == pytest.approx(top, rel=1e-9) and top > alone
    assert c == (math.inf if c_top == x.max() else pytest.approx(c_top, rel=1e-12))


def test_thinned_order_statistics_keep_the_choice_at_large_n():
    """Beyond ORDER_ROWS workers the joint choice keeps every m-th arrival (and the last):
    the quorum it answers is one of those, and its objective stays close to the full one's."""
    from horovod_cutoff.model import inference

    assert inference.order_rows(100).tolist() == list(range(100))
    rows = inference.order_rows(1000)
    assert rows.size <= inference.ORDER_ROWS + 1 and rows[-1] == 999 and rows[0] == 7
    rng = np.random.default_rng(3)
    x = rng.lognormal(np.log(0.2), 0.2, (64, 1000)) * np.where(rng.random((64, 1000)) < 0.05, 5.0, 1.0)
    L = np.log(x)
    c0 = float(np.quantile(x, 0.9))
    full = inference.best_rule(inference.order_statistics(L), 0.02, c0)
    thin = inference.best_rule(inference.order_statistics(L, rows), 0.02, c0, rows=rows)
    # Both values undercount alike (each row counts for the arrivals before it), so the
    # quorum and the time-only rule are compared on equal terms.
    assert thin[3] == pytest.approx(full[3], rel=0.01) and thin[3] <= full[3]
    assert thin[1] is not None and thin[1] - 1 in set(rows.tolist())
    assert thin[2] == pytest.approx(full[2], rel=0.01) and thin[2] <= full[2] * (1 + 1e-9)


def test_no_quorum_is_answered_where_waiting_for_everyone_scores_best():
    from horovod_cutoff.model.inference import best_rule, order_statistics

    rng = np.random.default_rng(0)
    x = rng.lognormal(np.log(0.2), 0.01, (64, 8))  # no spread: every arrival is worth waiting for
    c, k, value, alone = best_rule(order_statistics(np.log(x)), 0.05, math.inf)
    assert k is None and math.isinf(c) and value == alone


def test_calibration_weights_reweight_the_brute_force_objective_too():
    from horovod_cutoff.model.inference import best_rule, order_statistics

    rng = np.random.default_rng(1)
    order = order_statistics(np.log(rng.lognormal(np.log(0.2), 0.4, (32, 6))))
    weights = rng.random(order.shape)
    weights /= weights.sum(1, keepdims=True)
    c0 = float(np.exp(order[-1, 20]))
    _, _, _, alone = best_rule(order, 0.02, c0, weights=weights)
    x = np.exp(order)  # row j: the j-th arrival's samples, with their weights
    count = (weights * (x <= c0)).sum()
    assert alone == pytest.approx(count / ((weights[-1] * np.minimum(c0, x[-1])).sum() + 0.02))


def test_the_policy_answers_the_joint_choice_on_its_own_samples(monkeypatch):
    import horovod_cutoff.policies.quorum as quorum_module
    seen = []
    real = quorum_module.best_rule

    def spy(order, overhead, cutoff, objective, rate, weights, rows):
        assert rows is None  # 16 workers: every arrival is a row
        seen.append((order, real(order, overhead, cutoff, objective, rate, weights)))
        return seen[-1][1]

    monkeypatch.setattr(quorum_module, "best_rule", spy)
    policy = Predictive(overhead=0.02, samples=64)
    answered = 0
    for row in generate("iid", 16, 60, seed=0):
        c, k = policy.cutoff(), policy.quorum()
        end = c if k is None else min(c, np.sort(row)[k - 1])
        calls = len(seen)
        policy.observe(np.where(row > end, end, row), row > end)
        if len(seen) > calls:  # a joint choice: the policy answers it, from its own samples
            order, (c, k, _, _) = seen[-1]
            assert (policy.cutoff(), policy.quorum()) == (c, k)
            # Its own draws, their joint re-learned (model/dependence.py: each a draw of the
            # same worker, so every order statistic is one of the step's samples).
            assert policy.joint.copula.ready and np.isin(order, policy._last_log).all()
            answered += k is not None
        elif policy.joint._choices:  # every EXPLORE-th step, and until the joint is learned: time-only
            assert policy.quorum() is None
            assert policy.joint._choices % quorum_module.EXPLORE == 0 or not policy.joint.copula.ready
    assert policy.failed is None and answered > 0


def test_a_quorum_from_a_failing_model_falls_back_with_the_cutoff():
    model = copy.deepcopy(load_model())
    policy = Predictive(overhead=0.02, samples=16, model=model)
    _steps(policy, generate("iid", 8, 10, seed=0))
    with torch.no_grad():
        model.emission_net[-1].bias.fill_(float("nan"))
    policy._predictor = None  # rebuilt from the broken weights at the next step
    with pytest.warns(RuntimeWarning, match="falling back"):
        _steps(policy, generate("iid", 8, 3, seed=1))
    assert policy.failed is not None and policy.quorum() is None
    assert policy.cutoff() == policy.fallback.cutoff()


def test_quorum_false_answers_time_only_and_is_in_the_config():
    policy = Predictive(overhead=0.02, samples=32, quorum=False)
    _steps(policy, generate("iid", 8, 20, seed=0))
    assert policy.quorum() is None and policy.config()["quorum"] is False
    assert Predictive(objective="ratio").config()["quorum"] is False  # no quorum form
    with pytest.raises(ValueError, match="quorum"):
        Predictive(quorum="yes")


def test_predictive_gains_from_its_quorum_with_arrivals():
    # Over three traces: on one alone the gain (about 1%) is within a trace's noise.
    rates = {True: 0.0, False: 0.0}
    for seed in range(3):
        times = generate("iid", 32, 400, seed=seed)
        for quorum in rates:
            rates[quorum] += replay(times, Predictive(overhead=0.02, samples=64, quorum=quorum),
                                    0.02, warmup=50, arrivals=True)["gradients_per_second"]
    assert rates[True] > rates[False]


@pytest.mark.parametrize("fast", [True, False])
def test_the_measured_overhead_reaches_every_part_of_the_choice(fast):
    # Set before the predictor is built, and again after: the policy then chooses as one
    # built with that overhead (the live service tells it as it measures).
    times = generate("heavy_tail", 6, 20, seed=1)
    told, given = Predictive(fast=fast, seed=2), Predictive(overhead=0.05, fast=fast, seed=2)
    assert told.config()["overhead"] == "measured"
    told.set_overhead(0.05)
    assert _steps(told, times) == _steps(given, times)
    told.set_overhead(0.01)
    parts = [told.fallback.overhead, told.joint.overhead]
    if fast:
        parts.append(told._predictor.overhead)
    assert parts == [0.01] * len(parts)
