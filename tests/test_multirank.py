"""Real horovodrun jobs on localhost over Gloo: the semantics of DESIGN's "One step, as data"."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.multirank

G = np.array([1.0, 2.0, 3.0, 4.0])


def contributors(stat):
    return [r for r, cut in enumerate(stat["censored"]) if not cut]


@pytest.mark.parametrize("closure,opt", [(False, {}), (True, {}), (False, {"coordinator": 2})],
                         ids=["plain_loop", "closure", "coordinator_2"])
def test_parameters_bit_identical_after_200_steps_with_stragglers(horovodrun, closure, opt):
    job = horovodrun(3, "identical", steps=200, cutoff="static",
                     options={"seconds": 0.012}, closure=closure, opt=opt)
    assert job.returncode == 0, job.output[-3000:]
    digests = {job.rank(r)["digest"] for r in range(3)}
    assert len(digests) == 1, "replicas diverged"
    stats = job.rank(0)["stats"]
    assert len(stats) == 200
    cut_steps = sum(1 for s in stats if s["contributors"] < 3)
    assert cut_steps > 10, "the injected straggler was never cut: the test exercises nothing"


@pytest.mark.parametrize("mode,closure", [("sleep", False), ("sleep", True), ("spin", False)])
def test_update_is_mean_over_exactly_the_contributors(horovodrun, mode, closure):
    job = horovodrun(3, "mean_of_contributors", steps=10, cutoff=0.05, slow_steps=[2, 6],
                     mode=mode, closure=closure)
    assert job.returncode == 0, job.output[-3000:]
    for r in range(3):
        res = job.rank(r)
        assert len(res["deltas"]) == 10
        for step, (delta, stat) in enumerate(zip(res["deltas"], res["stats"])):
            who = contributors(stat)
            assert stat["contributors"] == len(who)
            expected = -np.mean([(k + 1) * G for k in who], axis=0) if who else np.zeros(4)
            np.testing.assert_allclose(delta, expected, rtol=1e-6,
                                       err_msg=f"rank {r} step {step} contributors {who}")
    cut = [s["step"] for s in job.rank(0)["stats"] if s["censored"][2]]
    assert 2 in cut and 6 in cut, f"the slow rank was not cut at its slow steps: {cut}"


def test_cut_rank_in_closure_form_starts_next_step_on_time(horovodrun):
    """The closure form abandons the slow step; the plain loop carries the lag forward."""
    closure = horovodrun(2, "mean_of_contributors", steps=8, cutoff=0.05, slow_steps=[2],
                         mode="sleep", closure=True)
    plain = horovodrun(2, "mean_of_contributors", steps=8, cutoff=0.05, slow_steps=[2],
                       mode="sleep", closure=False)
    assert closure.returncode == 0 and plain.returncode == 0
    cut_closure = [s["step"] for s in closure.rank(0)["stats"] if s["censored"][1]]
    cut_plain = [s["step"] for s in plain.rank(0)["stats"] if s["censored"][1]]
    assert cut_closure == [2], cut_closure
    # The plain loop carries the lag into later steps, at most max_lag (2) of them: then the
    # lagging rank is no longer cut and the others wait for it.
    assert cut_plain[:2] == [2, 3] and 4 not in cut_plain, cut_plain


def test_cutoff_none_matches_plain_horovod(horovodrun):
    job = horovodrun(2, "none_matches_horovod", steps=5)
    assert job.returncode == 0, job.output[-3000:]
    for r in range(2):
        assert job.rank(r)["max_abs_diff"] < 1e-6
        assert all(s["contributors"] == 2 for s in job.rank(r)["stats"])


@pytest.mark.parametrize("mode", ["sleep", "spin", "gil"])
def test_rank_busy_ten_times_the_cutoff_does_not_hold_the_others(horovodrun, mode):
    cutoff = 0.05
    # A lag bound above the steps run: this is about the timer, not the bound.
    job = horovodrun(2, "straggler", steps=12, cutoff=cutoff, mode=mode, opt={"max_lag": 16})
    assert job.returncode == 0, job.output[-3000:]
    durations = np.array(job.rank(0)["durations"][2:])  # steps after the slow rank fell behind
    # Generous tolerance (shared 2-core machine); the tight figure is benchmark P4's.
    assert np.median(durations) < cutoff + 0.04, durations
    assert durations.max() < cutoff + 0.25, durations
    assert all(s["censored"][1] for s in job.rank(0)["stats"][2:])


def test_step_with_no_contributor_applies_nothing_and_widens_the_cutoff(horovodrun):
    # Only without the arrival channel can a step end with nobody (with it, see the next test).
    cutoff = 0.1
    job = horovodrun(2, "count_zero", steps=7, cutoff=cutoff, late_step=3,
                     opt={"arrivals": False})
    assert job.returncode == 0, job.output[-3000:]
    for r in range(2):
        stats, deltas = job.rank(r)["stats"], job.rank(r)["deltas"]
        assert stats[3]["contributors"] == 0
        assert deltas[3] == [0.0, 0.0, 0.0, 0.0]
        assert stats[4]["cutoff"] >= 2 * stats[3]["cutoff"] * 0.999
        assert stats[4]["contributors"] == 2, "the widened cutoff should let both ranks in"
        np.testing.assert_allclose(deltas[2], -np.ones(4), rtol=1e-6)


def test_deadline_nobody_met_waits_for_every_rank_with_arrivals(horovodrun):
    """Every rank late for one step: with the arrival channel nobody is cut (before: a step
    with no contributor, all its gradients lost)."""
    job = horovodrun(2, "count_zero", steps=7, cutoff=0.1, late_step=3)
    assert job.returncode == 0, job.output[-3000:]
    for r in range(2):
        stats, deltas = job.rank(r)["stats"], job.rank(r)["deltas"]
        assert [s["contributors"] for s in stats] == [2] * 7, stats
        np.testing.assert_allclose(deltas[3], -np.ones(4), rtol=1e-6)
        assert stats[3]["step_seconds"] > 0.25, "the step should have waited for the late ranks"


def test_ranks_with_different_cutoff_configurations_all_get_a_clear_error(horovodrun):
    job = horovodrun(2, "mismatch", timeout=90)
    for r in range(2):
        error = job.rank(r)["error"]
        assert error and "disagree on the cutoff configuration" in error, error


@pytest.mark.parametrize("cutoff,options", [("static", {"seconds": 0.05}), ("none", None)])
def test_dead_rank_ends_the_job_with_an_error_in_bounded_time(horovodrun, cutoff, options):
    job = horovodrun(2, "death", timeout=90, steps=200, die_at=5, cutoff=cutoff, options=options)
    assert job.returncode != 0
    assert job.seconds < 60, f"took {job.seconds:.0f} s to notice a dead rank"


# ---- hardening: each test below failed (or hung) before its fix -----------------------------


@pytest.mark.parametrize("use_paused", [True, False], ids=["paused", "without_paused"])
def test_pause_taken_by_every_rank(horovodrun, use_paused):
    # Without the arrival channel: tests/test_arrivals.py has the pause with it.
    job = horovodrun(2, "pause", steps=8, cutoff=0.1, pause_at=4, pause=2.0, use_paused=use_paused,
                     opt={"arrivals": False})
    assert job.returncode == 0, job.output[-3000:]
    stats = [job.rank(r)["stats"] for r in range(2)]
    counts = [s["contributors"] for s in stats[0]]
    assert job.rank(0)["digest"] == job.rank(1)["digest"]
    # Every step leaves identical gradients on every rank, a step nobody made included.
    assert job.rank(0)["grad_digests"] == job.rank(1)["grad_digests"]
    if use_paused:
        assert counts == [2] * 8, counts
        assert stats[0][4]["paused"]
        assert all(t < 1.0 for t in job.rank(0)["fed"]), "the policy was fed the pause"
    else:
        # Before: 0.1, 0.2, 0.4, 0.8, 1.6 s all passed with nobody (5 lost steps).
        assert counts.count(0) <= 1, counts
        assert counts[5:] == [2, 2, 2], counts


def test_lagging_rank_is_bounded_and_warned(horovodrun):
    job = horovodrun(2, "lag", steps=12, cutoff=0.05, stall_at=3, stall=2.0, max_lag=3)
    assert job.returncode == 0, job.output[-3000:]
    slow, fast = job.rank(1), job.rank(0)
    assert fast["w"] == slow["w"]
    behind = [max(s["behind"]) for s in fast["stats"]]
    assert max(behind) <= 3, behind
    cut = [s["step"] for s in fast["stats"] if s["censored"][1]]
    assert 3 <= len(cut) <= 4, f"cut steps {cut}: the lag bound (3) should stop the cuts"
    assert max(fast["durations"]) > 1.0, "the others must wait once the lag bound is reached"
    assert any("rank 1 is 3 steps behind" in w for w in slow["warnings"]), slow["warnings"]


@pytest.mark.parametrize("cutoff", ["none", "static"])
def test_rank_that_stops_stepping_is_named_and_ends_in_an_error(horovodrun, cutoff):
    options = {"seconds": 0.05} if cutoff == "static" else None
    job = horovodrun(2, "stop_stepping", timeout=90, steps=10, fewer=5, cutoff=cutoff,
                     options=options, step_timeout=4, stall_warning=1)
    waiting = job.rank(0)
    assert waiting["error"] and "step_timeout" in waiting["error"], waiting
    assert waiting["seconds"] < 20
    assert waiting["stall_warnings"], "no warning before giving up"
    if cutoff == "static":  # the lagging rank was cut up to its bound: the message names it
        assert "rank 1" in waiting["stall_warnings"][0], waiting["stall_warnings"]


def test_optimizer_built_on_one_rank_only_times_out_and_the_shared_one_works(horovodrun):
    job = horovodrun(2, "extra_optimizer", timeout=90)
    assert job.returncode == 0, job.output[-3000:]
    assert "built on every rank" in job.rank(0)["error"]
    assert job.rank(0)["w"] == job.rank(1)["w"] == [-3.0] * 4


@pytest.mark.parametrize("drop", [False, True], ids=["close", "drop"])
def test_optimizer_closed_on_one_rank_is_an_error_on_the_others(horovodrun, drop):
    job = horovodrun(2, "close_one", timeout=90, steps=20, close_at=5, drop=drop)
    error = job.rank(0)["error"]
    assert error and "rank(s) 1 closed or dropped" in error, error
    assert job.rank(0)["seconds"] < 10
