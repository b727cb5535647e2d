"""The simulator and its yardsticks against hand computations and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from horovod_cutoff.policies import BackupWorkers, NoCutoff, StaticCutoff
from horovod_cutoff.policies.oracle import (
    backup_hindsight,
    fixed_cutoff_cost,
    oracle,
    static_hindsight,
)
from horovod_cutoff.sim import replay, simulate, simulate_all

SMALL = np.array([[1.0, 2.0, 4.0], [1.5, 1.0, 3.0], [5.0, 1.0, 1.2], [2.0, 2.0, 2.0]])


def brute_force_oracle(times, o):
    rows = [np.sort(r[~np.isnan(r)]) for r in times]
    best = 0.0
    for ks in itertools.product(*[range(1, len(r) + 1) for r in rows]):
        g = sum(ks)
        s = sum(r[k - 1] + o for r, k in zip(rows, ks))
        best = max(best, g / s)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("o", [0.0, 0.3])
def test_oracle_equals_brute_force_on_small_traces(seed, o):
    rng = np.random.default_rng(seed)
    times = rng.lognormal(0, 0.6, size=(4, 3))
    if seed == 3:
        times[1, 2] = np.nan  # an absent worker
    assert oracle(times, o).rate == pytest.approx(brute_force_oracle(times, o), rel=1e-12)


def test_none_matches_hand_computation():
    o = 0.5
    r = replay(SMALL, NoCutoff(), overhead=o)
    seconds = (4.0 + o) + (3.0 + o) + (5.0 + o) + (2.0 + o)
    assert r["gradients"] == 12 and r["seconds"] == pytest.approx(seconds)
    assert r["gradients_per_second"] == pytest.approx(12 / seconds)


def test_a_row_nobody_made_is_replayed_once_waiting_for_everyone():
    times = np.array([[0.3, 0.5], [1.0, 1.2], [0.2, 0.6]])
    o = 0.1
    r = replay(times, StaticCutoff(seconds=0.4), overhead=o, record=True)
    # row 0: min(0.4, 0.5) + o, yields 1. row 1: 0.4 + o yields nothing; its replay waits for
    # everyone: 1.2 + o, yields 2. row 2: the policy's 0.4 again: min(0.4, 0.6) + o, yields 1.
    assert r["trail"][:, 1].tolist() == [0.4, 0.4, math.inf, 0.4]
    assert r["gradients"] == 1 + 0 + 2 + 1
    assert r["seconds"] == pytest.approx((0.4 + o) + (0.4 + o) + (1.2 + o) + (0.4 + o))
    assert r["zero_steps"] == 1 and r["steps"] == 4
    fast = replay(times, StaticCutoff(seconds=0.4), overhead=o)  # the vectorised path
    assert (fast["gradients"], fast["steps"], fast["zero_steps"]) == (4, 4, 1)
    assert fast["seconds"] == pytest.approx(r["seconds"])
    g, s, e = fixed_cutoff_cost(times, np.array([0.4]), o)
    assert (g[0], e[0]) == (4, 4) and s[0] == pytest.approx(r["seconds"])


def test_a_policy_that_always_cuts_everyone_still_finishes_the_trace():
    # Every row: one try nobody makes (1e-30 + o), then one waiting for everyone.
    times = np.array([[1.0, 2.0], [3.0, 1.5], [2.0, 2.0]])
    r = replay(times, Spy(1e-30), overhead=0.5)
    assert r["steps"] == 6 and r["zero_steps"] == 3 and r["gradients"] == 6
    assert r["seconds"] == pytest.approx(3 * (1e-30 + 0.5) + (2.0 + 3.0 + 2.0) + 3 * 0.5)


def test_carry_lag_replays_a_row_nobody_made_from_what_remains():
    times = np.array([[1.0, 3.0], [1.0, 1.0]])
    o = 0.25
    r = replay(times, StaticCutoff(seconds=0.5), overhead=o, carry_lag=True, record=True)
    # Row 0: nobody by 0.5 (0.75 s); the replay waits for the rest: 0.25 and 2.25 s remain,
    # so it lasts 2.25 + o. Row 1 alike: 0.75 s, then 0.25 + o.
    assert r["trail"][:, 1].tolist() == [0.5, math.inf, 0.5, math.inf]
    assert r["gradients"] == 4 and r["zero_steps"] == 2
    assert r["seconds"] == pytest.approx(0.75 + (2.25 + o) + 0.75 + (0.25 + o))


def test_static_hindsight_is_the_best_fixed_cutoff():
    rng = np.random.default_rng(1)
    times = rng.lognormal(0, 0.5, size=(30, 5))
    o = 0.2
    best = static_hindsight(times, o)
    for c in np.unique(times):
        r = replay(times, StaticCutoff(seconds=float(c)), overhead=o)
        assert r["gradients_per_second"] <= best.rate * (1 + 1e-12)
    r = replay(times, StaticCutoff(seconds=best.parameter), overhead=o)
    assert r["gradients_per_second"] == pytest.approx(best.rate)


def test_backup_hindsight_matches_hand_computation():
    o = 0.0
    # b = 1: rows end at the 2nd arrival: 2.0, 1.5, 1.2, 2.0 (ties: all three at 2.0).
    g1, s1 = 2 + 2 + 2 + 3, 2.0 + 1.5 + 1.2 + 2.0
    g0, s0 = 12, 4.0 + 3.0 + 5.0 + 2.0
    g2, s2 = 1 + 1 + 1 + 3, 1.0 + 1.0 + 1.0 + 2.0
    best = max([(g0 / s0, 0), (g1 / s1, 1), (g2 / s2, 2)])
    y = backup_hindsight(SMALL, o)
    assert y.rate == pytest.approx(best[0]) and y.parameter == best[1]


def test_backup_policy_ends_each_step_at_the_quorum_in_the_simulator():
    policy = BackupWorkers(backup=1)
    r = replay(SMALL, policy, overhead=0.0)
    # Step 0 has no quorum yet (waits for all), then the 2nd arrival ends each step.
    assert r["gradients"] == 3 + 2 + 2 + 3
    assert r["seconds"] == pytest.approx(4.0 + 1.5 + 1.2 + 2.0)


def test_carry_lag_carries_a_cut_workers_unfinished_time():
    times = np.array([[1.0, 3.0], [1.0, 1.0], [1.0, 1.0]])
    r = replay(times, StaticCutoff(seconds=1.5), overhead=0.5, carry_lag=True, record=True)
    # Step 0: worker 1 cut at 1.5, step lasts 2.0, 1.0 left over. Step 1: worker 1 needs 2.0:
    # cut again at 1.5 (2.0 - 2.0 = 0 left). Step 2: both make it.
    assert r["gradients"] == 1 + 1 + 2
    closure = replay(times, StaticCutoff(seconds=1.5), overhead=0.5)
    assert closure["gradients"] == 1 + 2 + 2


class Counter:
    """Returns how many steps it has seen, as the cutoff: exposes which decision was used."""

    def __init__(self):
        self.seen = 0

    def observe(self, times, censored):
        self.seen += 1

    def cutoff(self):
        return 10.0 + self.seen


def test_lag_uses_the_decision_made_lag_steps_earlier():
    times = np.ones((4, 2))
    r0 = replay(times, Counter(), record=True)["trail"][:, 1]
    r1 = replay(times, Counter(), lag=1, record=True)["trail"][:, 1]
    assert list(r0) == [10, 11, 12, 13]
    assert list(r1) == [10, 10, 11, 12]


def test_a_policy_that_returns_nan_waits_for_everyone():
    class NaN(Counter):
        def cutoff(self):
            return float("nan")

    r = replay(SMALL, NaN())
    assert r["gradients"] == 12


def test_simulate_all_reports_every_policy_and_the_yardsticks():
    rng = np.random.default_rng(0)
    times = rng.lognormal(np.log(0.2), 0.3, size=(200, 8))
    results = simulate_all(times, overhead=0.01, warmup=10)
    names = [r["policy"] for r in results]
    for must in ("none", "static", "backup", "elfving", "adaptive", "static_hindsight",
                 "backup_hindsight", "oracle"):
        assert must in names
    for r in results:
        assert r["ratio_to_oracle"] <= 1.0 + 1e-9, r
        assert r["oracle_gradients_per_second"] == results[-1]["gradients_per_second"]


def test_warmup_leaves_leading_steps_out():
    r = simulate(SMALL, "none", warmup=2)
    assert r["steps"] == 2 and r["gradients"] == 6
    with pytest.raises(ValueError, match="warmup"):
        simulate(SMALL, "none", warmup=4)


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="nonsense"):
        simulate(SMALL, "nonsense")


def test_overhead_must_be_non_negative():
    with pytest.raises(ValueError, match="overhead"):
        replay(SMALL, NoCutoff(), overhead=-1.0)


def test_oracle_never_yields_zero_and_bounds_every_policy():
    rng = np.random.default_rng(5)
    times = rng.pareto(1.5, size=(300, 16)) + 0.1
    best = oracle(times, 0.05)
    assert best.gradients >= times.shape[0]
    for r in simulate_all(times, overhead=0.05):
        assert r["gradients_per_second"] <= best.rate * (1 + 1e-9)
    assert math.isfinite(best.rate)


@pytest.mark.parametrize("policy", [NoCutoff(), StaticCutoff(seconds=0.05),
                                    StaticCutoff(seconds=0.3)])
@pytest.mark.parametrize("warmup", [0, 7])
def test_vectorised_replay_of_a_fixed_cutoff_equals_the_step_loop(policy, warmup):
    rng = np.random.default_rng(0)
    times = rng.lognormal(np.log(0.2), 0.5, (300, 8))
    times[rng.random(times.shape) < 0.1] = np.nan
    times[np.isnan(times).all(axis=1), 0] = 0.3
    fast = replay(times, policy, 0.03, warmup=warmup)
    loop = replay(times, policy, 0.03, warmup=warmup, record=True)  # recording forces the loop
    for key in ("gradients", "seconds", "steps", "zero_steps", "mean_contributors"):
        assert fast[key] == pytest.approx(loop[key], rel=1e-12), key
    if isinstance(policy, StaticCutoff) and policy.seconds < 0.1:
        assert fast["zero_steps"] > 0  # the rule for a row nobody made is exercised


class Spy(Counter):
    """Records what it was shown."""

    def __init__(self, cutoff):
        super().__init__()
        self.c, self.shown = cutoff, []

    def observe(self, times, censored):
        self.shown.append((np.array(times), np.array(censored)))

    def cutoff(self):
        return self.c


def test_policy_sees_contributors_times_and_the_cutoff_for_cut_workers():
    times = np.array([[0.1, 0.5, np.nan], [0.9, 0.8, 0.7]])
    spy = Spy(0.3)
    r = replay(times, spy, overhead=0.1)
    t0, c0 = spy.shown[0]
    np.testing.assert_array_equal(t0, [0.1, 0.3, np.nan])
    assert c0.tolist() == [False, True, False]  # absent is neither done nor cut
    # Row 1: nobody makes 0.3, so the row is replayed once, waiting for everyone.
    t1, c1 = spy.shown[1]
    np.testing.assert_array_equal(t1, [0.3, 0.3, 0.3])
    assert c1.all()
    np.testing.assert_array_equal(spy.shown[2][0], [0.9, 0.8, 0.7])
    assert not spy.shown[2][1].any() and len(spy.shown) == 3
    assert r["gradients"] == 1 + 3 and r["zero_steps"] == 1
    assert r["seconds"] == pytest.approx((0.3 + 0.1) + (0.3 + 0.1) + (0.9 + 0.1))


def test_fixed_cutoff_cost_of_inf_waits_for_everyone():
    g, s, e = fixed_cutoff_cost(SMALL, np.array([np.inf, 100.0]), 0.5)
    assert g.tolist() == [12, 12] and e.tolist() == [4, 4]
    assert s[0] == pytest.approx((4.0 + 3.0 + 5.0 + 2.0) + 4 * 0.5) and s[1] == s[0]


def test_quorum_ends_the_step_at_the_kth_arrival_and_counts_ties():
    class Quorum(Counter):
        def quorum(self):
            return 2

    times = np.array([[3.0, 1.0, 2.0, 2.0, 9.0]])
    r = replay(times, Quorum(), overhead=0.25)
    assert r["gradients"] == 3 and r["seconds"] == pytest.approx(2.0 + 0.25)


def _trace_with_edge_cases(seed, rows=12, workers=4):
    """Small lognormal trace with absent workers, exact 0.0 times, ties, and rows nobody makes
    under the low candidate cutoffs."""
    rng = np.random.default_rng(seed)
    times = np.round(rng.lognormal(np.log(0.2), 0.6, (rows, workers)), 2)  # rounding: ties
    times[rng.random(times.shape) < 0.15] = np.nan
    times[np.isnan(times).all(axis=1), 0] = 0.25
    times[1, 0] = 0.0
    times[4, :] = np.where(np.isnan(times[4]), np.nan, 1.5 + np.arange(workers))  # slow row
    return times


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("o", [0.0, 0.05])
def test_fixed_cutoff_cost_equals_the_step_loop_for_every_candidate(seed, o):
    times = _trace_with_edge_cases(seed)
    cutoffs = np.unique(times[~np.isnan(times) & (times > 0)])
    cutoffs = np.concatenate([cutoffs, cutoffs[:3] * 0.999, [np.inf]])
    g, s, e = fixed_cutoff_cost(times, cutoffs, o)
    for i, c in enumerate(cutoffs):
        policy = NoCutoff() if math.isinf(c) else StaticCutoff(seconds=float(c))
        loop = replay(times, policy, o, record=True)  # recording forces the step loop
        assert (g[i], e[i]) == (loop["gradients"], loop["steps"]), c
        assert s[i] == pytest.approx(loop["seconds"], rel=1e-12), c


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("o", [0.0, 0.05])
def test_static_hindsight_equals_brute_force_over_every_candidate(seed, o):
    """Exact, with rows nobody makes, absent workers and a 0.0 time: every positive worker
    time replayed in the step loop, none better than the choice, the choice reproduced."""
    times = _trace_with_edge_cases(seed)
    best = static_hindsight(times, o)
    rates = {}
    for c in np.unique(times[~np.isnan(times) & (times > 0)]):
        r = replay(times, StaticCutoff(seconds=float(c)), o, record=True)
        rates[float(c)] = (r["gradients_per_second"], r["steps"])
    top = max(rate for rate, _ in rates.values())
    assert best.rate == pytest.approx(top, rel=1e-12)
    assert rates[best.parameter][0] == pytest.approx(top, rel=1e-12)
    assert best.steps == rates[best.parameter][1]


def test_static_hindsight_of_a_trace_of_zeros_waits_for_everyone():
    times = np.array([[0.0, 0.0], [0.0, np.nan]])
    best = static_hindsight(times, 0.1)
    assert math.isinf(best.parameter) and best.gradients == 3
    assert best.seconds == pytest.approx(0.2)


def brute_force_backup(times, o):
    """The definition, one b at a time: each row ends at its (N-b)-th arrival."""
    best = None
    for b in range(times.shape[1]):
        g = s = 0.0
        for row in times:
            x = np.sort(row[~np.isnan(row)])
            end = x[max(x.size - b, 1) - 1]
            g += float((x <= end).sum())
            s += end + o
        if best is None or g / s > best[0]:
            best = (g / s, b)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_backup_hindsight_equals_brute_force_with_ties_and_absent_workers(seed):
    times = _trace_with_edge_cases(seed, rows=20, workers=6)
    rate, b = brute_force_backup(times, 0.03)
    y = backup_hindsight(times, 0.03)
    assert y.rate == pytest.approx(rate, rel=1e-12) and y.parameter == b


def test_simulate_all_computes_the_oracle_once(monkeypatch):
    import horovod_cutoff.sim as sim

    calls = []

    def counting(times, overhead):
        calls.append(times.shape)
        return oracle(times, overhead)

    monkeypatch.setattr(sim, "oracle", counting)
    results = sim.simulate_all(SMALL, overhead=0.1, warmup=1)
    assert calls == [(3, 3)]
    assert len({r["oracle_gradients_per_second"] for r in results}) == 1


def test_a_zero_time_is_a_valid_worker_time():
    times = SMALL.copy()
    times[2, 1] = 0.0
    for r in simulate_all(times, overhead=0.05):
        assert math.isfinite(r["gradients_per_second"]) and 0 < r["ratio_to_oracle"] <= 1 + 1e-9
    best = static_hindsight(times, 0.05)
    assert best.parameter > 0


def test_static_hindsight_reports_the_executions_of_rows_nobody_made():
    # Nine rows with one straggler, then one slow row: the best fixed cutoff, 0.1 (21 gradients
    # in 9 * 0.11 + (0.11 + 5.01) s), leaves the slow row to nobody once.
    times = np.array([[0.1, 0.1, 3.0]] * 9 + [[5.0, 5.0, 5.0]])
    r = simulate(times, "static_hindsight", overhead=0.01)
    assert r["chosen"] == pytest.approx(0.1) and r["gradients"] == 21
    assert r["seconds"] == pytest.approx(9 * 0.11 + 0.11 + 5.01)
    assert r["zero_steps"] == 1 and r["steps"] == 11


def test_an_unknown_policy_lists_every_name_simulate_accepts():
    with pytest.raises(ValueError) as info:
        simulate(SMALL, "nonsense")
    for name in ("none", "adaptive", "oracle", "static_hindsight", "backup_hindsight"):
        assert name in str(info.value)


def test_overhead_is_not_a_policy_parameter():
    with pytest.raises(ValueError, match="--overhead"):
        simulate(SMALL, "adaptive", overhead=0.1, params={"overhead": 0.2})


def test_backup_of_every_worker_is_refused():
    with pytest.raises(ValueError, match=r"backup.*\(3\)"):
        simulate(SMALL, "backup", params={"backup": 3})
