"""Scenario generators: seeded, valid, positive, and with the structure each one claims."""

from __future__ import annotations

import numpy as np
import pytest
from horovod_cutoff.traces import SCENARIOS, generate, validate

ORDER = ["steady", "iid", "heavy_tail", "slow_nodes", "markov", "rack", "periodic", "drift", "phase",
         "mixture"]
BASE_MEDIAN = 0.2  # a healthy worker's median step time in every scenario


def test_registry_lists_every_scenario_in_order():
    assert list(SCENARIOS) == ORDER


@pytest.mark.parametrize("name", ORDER)
def test_every_scenario_is_seeded_valid_and_positive(name):
    a = generate(name, 12, 150, seed=1)
    assert a.shape == (150, 12) and a.dtype == np.float64
    assert np.isfinite(a).all() and (a > 0).all()
    validate(a)
    np.testing.assert_array_equal(a, generate(name, 12, 150, seed=1))
    assert not np.array_equal(a, generate(name, 12, 150, seed=2))
    # The function itself takes a Generator and is documented in one line.
    direct = SCENARIOS[name](12, 150, np.random.default_rng(1))
    np.testing.assert_array_equal(a, direct)
    assert SCENARIOS[name].__doc__ and "\n" not in SCENARIOS[name].__doc__.strip()


@pytest.mark.parametrize("name", ORDER)
@pytest.mark.parametrize("workers,steps", [(1, 1), (1, 3), (3, 1), (2, 5)])
def test_tiny_sizes_work(name, workers, steps):
    a = generate(name, workers, steps, seed=0)
    assert a.shape == (steps, workers) and (a > 0).all()


@pytest.mark.parametrize("name", ORDER)
def test_healthy_step_times_are_realistic(name):
    a = generate(name, 16, 400, seed=0)
    assert 0.1 <= np.median(a) <= 0.5
    assert a.max() < 60  # stalls are capped: no hour-long step from a 0.2 s base


def test_iid_has_no_persistent_straggler():
    x = generate("iid", 16, 2000, seed=0)
    means = x.mean(axis=0)
    assert means.max() / means.min() < 1.1


def test_heavy_tail_has_a_few_percent_of_much_slower_cells():
    x = generate("heavy_tail", 32, 1000, seed=0)
    slow = np.mean(x > 3 * np.median(x))
    assert 0.005 < slow < 0.05
    assert x.max() > 10 * np.median(x)
    assert np.mean(generate("iid", 32, 1000, seed=0) > 3 * BASE_MEDIAN) < 0.001


def test_slow_nodes_stay_slow():
    x = generate("slow_nodes", 20, 400, seed=0)
    first, second = x[:200].mean(0), x[200:].mean(0)
    assert set(np.argsort(first)[-2:]) == set(np.argsort(second)[-2:])
    assert np.sort(first)[-2:].min() > 1.4 * np.median(first)


def _lag1(slowed: np.ndarray) -> float:
    return float(np.mean(slowed[1:] == slowed[:-1]))


def test_markov_slowdowns_are_sticky_and_per_node():
    x = generate("markov", 16, 2000, seed=0)
    slowed = x > 1.8 * BASE_MEDIAN
    assert 0.03 < slowed.mean() < 0.3
    assert _lag1(slowed) > 0.95  # states persist: far stickier than independent coin flips
    # Nodes are independent: the fraction slowed at once stays well below "all or none".
    assert slowed.mean(axis=1).max() < 0.8


def test_rack_slowdowns_are_correlated_within_racks():
    x = np.log(generate("rack", 32, 3000, seed=0))
    corr = np.corrcoef(x.T)
    pairs = [(i, j) for i in range(32) for j in range(32) if i != j]
    same = np.mean([corr[i, j] for i, j in pairs if i // 8 == j // 8])
    other = np.mean([corr[i, j] for i, j in pairs if i // 8 != j // 8])
    assert same > other + 0.2


def _autocorr(x: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


def test_periodic_pauses_share_one_period_with_per_worker_phase():
    x = generate("periodic", 6, 400, seed=3)
    periods = []
    for n in range(x.shape[1]):
        ac = [_autocorr(x[:, n], k) for k in range(1, 30)]
        periods.append(1 + next(k for k, v in enumerate(ac) if v > 0.5))
        assert max(ac[:periods[-1] - 1], default=0) < 0.2  # nothing before the period
    assert len(set(periods)) == 1 and 10 <= periods[0] <= 20
    first_pause = [int(np.argmax(x[:, n] > 0.35)) for n in range(x.shape[1])]
    assert len(set(first_pause)) > 1  # phases differ between workers


def test_drift_changes_some_workers_slowly():
    x = generate("drift", 12, 2000, seed=0)
    blocks = x.reshape(20, 100, 12).mean(axis=1)  # 100-step means per worker
    swing = blocks.max(axis=0) / blocks.min(axis=0)
    assert swing.max() > 1.5 and np.sort(swing)[0] < 1.1  # some drift, some do not
    hot = int(np.argmax(swing))
    # Slow: neighbouring blocks differ far less than the whole swing.
    assert np.abs(np.diff(np.log(blocks[:, hot]))).max() < 0.5 * np.log(swing[hot])


def test_phase_moves_the_whole_cluster_together():
    x = generate("phase", 16, 500, seed=0)
    med = np.median(x, axis=1)
    assert med.max() / med.min() > 2.5
    # Every worker follows the cluster level: per-step spread stays small relative to shifts.
    assert np.mean(np.std(np.log(x), axis=1)) < 0.2
    assert _autocorr(med, 1) > 0.8  # levels are held for runs of steps


def test_mixture_has_slow_nodes_markov_and_stalls():
    x = generate("mixture", 20, 2000, seed=0)
    means = x.mean(axis=0)
    assert means.max() > 1.4 * np.median(means)
    assert x.max() > 10 * np.median(x)
    assert _lag1(x > 1.8 * np.median(x)) > 0.9


def test_unknown_scenario_and_bad_sizes_are_named():
    with pytest.raises(ValueError, match="tornado") as err:
        generate("tornado", 2, 2)
    assert "heavy_tail" in str(err.value)  # lists what is known
    with pytest.raises(ValueError, match="workers"):
        generate("iid", 0, 2)
    with pytest.raises(ValueError, match="steps"):
        generate("iid", 2, -1)


def test_steady_has_no_stragglers_so_waiting_for_all_is_near_the_oracle():
    from horovod_cutoff.sim import simulate

    times = generate("steady", 32, 400, 0)
    assert np.std(np.log(times)) < 0.06
    assert simulate(times, "none", 0.02, 0)["ratio_to_oracle"] > 0.99
