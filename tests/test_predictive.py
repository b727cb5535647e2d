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


def test_a_raising_model_falls_back_instead_of_crashing():
    policy = Predictive(samples=16)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    policy.model.step = broken
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
