"""The predictive's online spread calibration (model/calibration.py) and its use in sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from horovod_cutoff.model import Noise, load_model, predictive_log_times
from horovod_cutoff.model.calibration import SpreadCalibration, tail_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(truth_sd: float, model_sd: float, steps: int = 300, seed: int = 0) -> float:
    """The factor after ``steps`` of a N(0, model_sd) predictive meeting N(0, truth_sd) times."""
    rng = np.random.default_rng(seed)
    cal = SpreadCalibration()
    for _ in range(steps):
        samples = rng.normal(0, model_sd * cal.spread, size=(256, 32))
        cal.update(samples, rng.normal(0, truth_sd, size=32), np.zeros(32, dtype=bool))
    return cal.spread


def test_a_calibrated_predictive_keeps_its_spread():
    assert _run(1.0, 1.0) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("truth_sd, model_sd", [(2.0, 1.0), (0.5, 1.0)])
def test_the_factor_converges_to_the_ratio_of_spreads(truth_sd, model_sd):
    assert _run(truth_sd, model_sd) == pytest.approx(truth_sd / model_sd, rel=0.15)


def test_censored_error_is_its_expectation_over_the_unseen_tail():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(256, 1))  # MAX_SAMPLES: all of them are used
    for c in (-1.0, 0.0, 0.7):
        u_c = float((samples < c).mean())
        u = rng.uniform(u_c, 1.0, size=200_000)
        expected = np.abs(2 * u - 1).mean()
        got = tail_error(samples, np.array([c]), np.array([True]))
        assert got == pytest.approx(expected, abs=3e-3)


def test_absent_workers_are_ignored_and_nobody_present_changes_nothing():
    cal = SpreadCalibration()
    cal.update(np.zeros((8, 2)), np.array([np.nan, np.nan]), np.zeros(2, dtype=bool))
    assert cal.spread == 1.0
    assert tail_error(np.zeros((8, 2)), np.array([np.nan, 0.0]), np.zeros(2, dtype=bool)) == 0.0


def test_spread_scales_each_worker_about_its_mean_and_keeps_the_order():
    model = load_model()
    state = model.initial_state(1, 5)
    x = torch.tensor([[0.2, 0.21, 0.5, 0.19, 0.2]])
    for _ in range(3):
        state, _ = model.step(state, x, torch.zeros_like(x, dtype=torch.bool), score=False)
    noise = Noise.draw(512, 5, model.D, torch.Generator().manual_seed(0))
    one = predictive_log_times(model, state, noise)
    two = predictive_log_times(model, state, noise, spread=2.0)
    assert torch.equal(torch.argsort(one, 0), torch.argsort(two, 0))
    assert torch.allclose(two.std(0), 2 * one.std(0), rtol=1e-4)


def test_large_steps_are_subsampled_to_a_fixed_cost():
    from horovod_cutoff.model.calibration import MAX_SAMPLES, MAX_WORKERS

    rng = np.random.default_rng(2)
    samples = rng.normal(size=(4 * MAX_SAMPLES, 8 * MAX_WORKERS))
    times = rng.normal(size=8 * MAX_WORKERS)
    whole = tail_error(samples, times, np.zeros(times.size, dtype=bool))
    assert whole == pytest.approx(0.5, abs=0.05)  # calibrated: the subsample sees it too


def test_order_calibration_starts_as_the_identity():
    from horovod_cutoff.model.calibration import OrderCalibration

    np.testing.assert_allclose(OrderCalibration().weights(5, 64), 1 / 64)


def test_order_calibration_moves_mass_to_where_arrivals_fall():
    """Realized arrivals always above 90% of the samples: their calibrated CDF moves there."""
    from horovod_cutoff.model.calibration import OrderCalibration

    rng = np.random.default_rng(0)
    cal = OrderCalibration()
    for _ in range(200):
        columns = np.sort(rng.normal(size=(4, 100)), axis=1)
        arrived = columns[:, 95]  # each at PIT 0.955
        cal.update(columns, arrived, np.inf)
    w = cal.weights(4, 100)
    assert np.allclose(w.sum(1), 1.0) and (w[:, 90:].sum(1) > 0.9).all()


def test_order_calibration_leaves_arrivals_beyond_the_quorum_as_they_were():
    from horovod_cutoff.model.calibration import OrderCalibration

    rng = np.random.default_rng(0)
    cal = OrderCalibration()
    for _ in range(100):
        columns = np.sort(rng.normal(size=(4, 100)), axis=1)
        cal.update(columns, columns[:2, 10], float(columns[1, 10]), quorum=2)
    w = cal.weights(4, 100)
    assert (w[:2, :20].sum(1) > 0.9).all()  # the first two: learned
    np.testing.assert_allclose(w[2:], 1 / 100)  # after the quorum: untouched
    # Without the quorum, the later ones are censored at the deadline: mass moves above it.
    cal.update(np.sort(rng.normal(size=(4, 100)), axis=1), np.array([-3.0]), -2.5)
    assert not np.allclose(cal.weights(4, 100)[1:], 1 / 100)
