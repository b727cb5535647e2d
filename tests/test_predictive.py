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
