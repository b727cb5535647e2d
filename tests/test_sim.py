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
    fixed_rule_cost,
    hybrid_hindsight,
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


class Rule(Counter):
    """A fixed cutoff and quorum (None: every present worker)."""

    def __init__(self, cutoff, quorum=None):
        super().__init__()
        self.c, self.k, self.shown = cutoff, quorum, []

    def observe(self, times, censored):
        self.shown.append((np.array(times), np.array(censored)))

    def cutoff(self):
        return self.c

    def quorum(self):
        return self.k


def test_arrivals_a_deadline_nobody_met_waits_for_everyone_in_the_same_step():
    o = 0.1
    policy = Rule(0.5)
    r = replay(np.array([[1.0, 1.2, 3.0]]), policy, o, arrivals=True, record=True)
    # Nobody by 0.5: nobody is cut, the step ends at the last arrival (the engine's rule).
    assert r["gradients"] == 3 and r["zero_steps"] == 0 and r["steps"] == 1
    assert r["seconds"] == pytest.approx(3.0 + o) and r["trail"][0, 1] == pytest.approx(3.0)
    times, cut = policy.shown[0]
    np.testing.assert_array_equal(times, [1.0, 1.2, 3.0])
    assert cut.tolist() == [False, False, False]
    # Without arrivals the same row is a step nobody made, then one waiting for everyone.
    r = replay(np.array([[1.0, 1.2, 3.0]]), Rule(0.5), o)
    assert (r["gradients"], r["zero_steps"], r["steps"]) == (3, 1, 2)
    assert r["seconds"] == pytest.approx((0.5 + o) + (3.0 + o))


def test_a_pause_taken_by_every_worker_loses_nobody_with_arrivals():
    times = np.array([[0.10, 0.12, 0.11], [3.10, 3.12, 3.11], [0.10, 0.12, 0.11]])
    r = replay(times, Rule(0.2), 0.01, arrivals=True)
    assert r["gradients"] == 9 and r["zero_steps"] == 0
    assert r["seconds"] == pytest.approx(0.12 + 3.12 + 0.12 + 3 * 0.01)


@pytest.mark.parametrize("arrivals", [False, True])
@pytest.mark.parametrize("c,gradients,seconds", [(1.5, 1, 1.5), (5.0, 3, 2.0), (math.inf, 3, 2.0)])
def test_a_quorum_ends_the_step_at_min_of_cutoff_and_kth_arrival(arrivals, c, gradients, seconds):
    times = np.array([[3.0, 1.0, 2.0, 2.0, 9.0]])  # the 2nd arrival ties with the 3rd: both in
    r = replay(times, Rule(c, 2), 0.25, arrivals=arrivals)
    assert r["gradients"] == gradients and r["seconds"] == pytest.approx(seconds + 0.25)


def test_a_deadline_nobody_met_still_ends_at_the_quorum():
    times = np.array([[1.0, 1.1, 1.2, 5.0]])
    policy = Rule(0.15, 3)
    r = replay(times, policy, 0.0, arrivals=True)
    assert r["gradients"] == 3 and r["seconds"] == pytest.approx(1.2)  # x_(3)
    np.testing.assert_array_equal(policy.shown[0][0], [1.0, 1.1, 1.2, 1.2])
    assert policy.shown[0][1].tolist() == [False, False, False, True]


def test_arrivals_count_ties_and_skip_absent_workers():
    r = replay(np.array([[2.0, 2.0, 2.0, 3.0]]), Rule(math.inf, 1), 0.0, arrivals=True)
    assert r["gradients"] == 3 and r["seconds"] == pytest.approx(2.0)
    policy = Rule(1.5, 5)  # a quorum larger than the workers present: all of them
    r = replay(np.array([[np.nan, 1.0, 2.0, np.nan]]), policy, 0.0, arrivals=True)
    assert r["gradients"] == 1 and r["seconds"] == pytest.approx(1.5)
    np.testing.assert_array_equal(policy.shown[0][0], [np.nan, 1.0, 1.5, np.nan])
    assert policy.shown[0][1].tolist() == [False, False, True, False]


@pytest.mark.parametrize("cutoff", [1e-9, 0.05, 0.3])
def test_no_step_goes_without_contributors_with_arrivals(cutoff):
    times = _trace_with_edge_cases(0, rows=40)
    r = replay(times, Rule(cutoff), 0.02, arrivals=True, record=True)
    assert r["zero_steps"] == 0 and r["steps"] == 40 and (r["trail"][:, 2] >= 1).all()


def test_lag_delays_the_quorum_with_the_cutoff():
    class Growing(Counter):
        def quorum(self):
            return 1 + self.seen

    times = np.array([[1.0, 2.0, 3.0]] * 3)
    assert replay(times, Growing(), lag=0)["gradients"] == 1 + 2 + 3
    assert replay(times, Growing(), lag=1)["gradients"] == 1 + 1 + 2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("arrivals", [False, True])
def test_fixed_rule_cost_equals_the_step_loop_for_every_candidate(seed, arrivals):
    times = _trace_with_edge_cases(seed, rows=10, workers=4)
    first = np.nanmin(times, axis=1, keepdims=True)
    cutoffs = np.unique(np.concatenate([times[~np.isnan(times)], (times - first)[~np.isnan(times)]]))
    cutoffs = np.append(cutoffs[cutoffs > 0], np.inf)
    for k in [None, 1, 2, 3, 4]:
        g, s, e = fixed_rule_cost(times, cutoffs, 0.05, quorum=k, arrivals=arrivals)
        for i, c in enumerate(cutoffs):
            loop = replay(times, Rule(float(c), k), 0.05, record=True, arrivals=arrivals)
            assert (g[i], e[i]) == (loop["gradients"], loop["steps"]), (k, c)
            assert s[i] == pytest.approx(loop["seconds"], rel=1e-12), (k, c)


@pytest.mark.parametrize("policy", [NoCutoff(), StaticCutoff(seconds=0.05), StaticCutoff(seconds=0.3)])
def test_vectorised_replay_of_a_fixed_cutoff_applies_the_arrivals_rule(policy):
    rng = np.random.default_rng(0)
    times = rng.lognormal(np.log(0.2), 0.5, (300, 8))
    times[rng.random(times.shape) < 0.1] = np.nan
    times[np.isnan(times).all(axis=1), 0] = 0.3
    fast = replay(times, policy, 0.03, warmup=7, arrivals=True)
    loop = replay(times, policy, 0.03, warmup=7, record=True, arrivals=True)
    for key in ("gradients", "seconds", "steps", "zero_steps"):
        assert fast[key] == pytest.approx(loop[key], rel=1e-12), key
    assert fast["zero_steps"] == 0


def brute_force_hybrid(times, o, arrivals):
    """The definition: every (c, k) replayed in the step loop, c among the positive worker
    times and their distances to their row's first arrival (where rates can peak), and inf."""
    first = np.nanmin(times, axis=1, keepdims=True)
    values = np.concatenate([times[~np.isnan(times)], (times - first)[~np.isnan(times)]])
    cutoffs = list(np.unique(values[values > 0])) + [math.inf]
    best = (0.0, None)
    for k in range(1, times.shape[1] + 1):
        for c in cutoffs:
            r = replay(times, Rule(float(c), k), o, record=True, arrivals=arrivals)
            best = max(best, (r["gradients_per_second"], (float(c), k)), key=lambda b: b[0])
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("arrivals", [False, True])
def test_hybrid_hindsight_equals_brute_force_over_cutoff_and_quorum(seed, arrivals):
    times = _trace_with_edge_cases(seed, rows=10, workers=4)
    rate, _ = brute_force_hybrid(times, 0.03, arrivals)
    y = hybrid_hindsight(times, 0.03, arrivals)
    assert y.rate == pytest.approx(rate, rel=1e-12) and y.parameter["exact"]
    again = replay(times, Rule(y.parameter["cutoff"], y.parameter["quorum"]), 0.03,
                   record=True, arrivals=arrivals)  # the choice reproduces its rate
    assert again["gradients_per_second"] == pytest.approx(rate, rel=1e-12)
    assert again["steps"] == y.steps
    # It contains the best fixed cutoff (k = N) and the best fixed b (c = inf).
    assert y.rate >= static_hindsight(times, 0.03, arrivals).rate * (1 - 1e-12)
    assert y.rate >= backup_hindsight(times, 0.03).rate * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_static_hindsight_with_arrivals_equals_brute_force(seed):
    times = _trace_with_edge_cases(seed, rows=10, workers=4)
    first = np.nanmin(times, axis=1, keepdims=True)
    values = np.concatenate([times[~np.isnan(times)], (times - first)[~np.isnan(times)]])
    rates = [replay(times, Rule(float(c)), 0.03, record=True, arrivals=True)["gradients_per_second"]
             for c in np.unique(values[values > 0])]
    assert static_hindsight(times, 0.03, arrivals=True).rate == pytest.approx(max(rates), rel=1e-12)


@pytest.mark.parametrize("arrivals", [False, True])
def test_hybrid_hindsight_on_a_large_trace_searches_and_says_so(monkeypatch, arrivals):
    import horovod_cutoff.policies.oracle as oracle_module

    rng = np.random.default_rng(3)
    times = rng.lognormal(np.log(0.2), 0.4, (300, 12)) * rng.choice([1, 3], (300, 1), p=[0.9, 0.1])
    exact = hybrid_hindsight(times, 0.02, arrivals)
    monkeypatch.setattr(oracle_module, "EXACT_WORK", 10)
    monkeypatch.setattr(oracle_module, "COARSE_CUTOFFS", 64)
    approx = hybrid_hindsight(times, 0.02, arrivals)
    assert exact.parameter["exact"] and not approx.parameter["exact"]
    assert exact.rate * (1 - 2e-3) <= approx.rate <= exact.rate * (1 + 1e-12)
    assert approx.rate >= backup_hindsight(times, 0.02).rate * (1 - 1e-12)


def test_backup_is_exact_with_arrivals():
    """From its second step on, every step ends at the (N-b)-th arrival, however far it is."""
    rng = np.random.default_rng(1)
    times = rng.lognormal(np.log(0.2), 0.8, (50, 6))
    r = replay(times, BackupWorkers(backup=2), 0.02, arrivals=True, warmup=1)
    g, s, e = fixed_rule_cost(times[1:], np.array([np.inf]), 0.02, quorum=4, arrivals=True)
    assert (r["gradients"], r["steps"]) == (g[0], e[0]) and r["seconds"] == pytest.approx(s[0])
    assert r["gradients"] == 4 * 49  # no ties: exactly the quorum, every step


def test_simulate_all_with_arrivals_reports_hybrid_hindsight_and_no_empty_steps():
    rng = np.random.default_rng(0)
    times = rng.lognormal(np.log(0.2), 0.3, size=(200, 8))
    results = {r["policy"]: r for r in simulate_all(times, overhead=0.01, warmup=10,
                                                    arrivals=True)}
    hybrid = results["hybrid_hindsight"]
    assert set(hybrid["chosen"]) >= {"cutoff", "quorum"} and 1 <= hybrid["chosen"]["quorum"] <= 8
    for name, r in results.items():
        assert r["arrivals"] is True and r["zero_steps"] == 0, name
        assert r["ratio_to_oracle"] <= 1.0 + 1e-9, name
    for name in ("static_hindsight", "backup_hindsight"):
        assert hybrid["gradients_per_second"] >= results[name]["gradients_per_second"] * (1 - 1e-12)
