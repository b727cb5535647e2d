"""Real horovodrun jobs on localhost over Gloo: the semantics of DESIGN's "One step, as data"."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.multirank

G = np.array([1.0, 2.0, 3.0, 4.0])


def contributors(stat):
    return [r for r, cut in enumerate(stat["censored"]) if not cut]


@pytest.mark.parametrize("closure", [False, True], ids=["plain_loop", "closure"])
def test_parameters_bit_identical_after_200_steps_with_stragglers(horovodrun, closure):
    job = horovodrun(3, "identical", steps=200, cutoff="static",
                     options={"seconds": 0.012}, closure=closure)
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
    assert cut_plain[:2] == [2, 3] and len(cut_plain) >= 3, cut_plain


def test_cutoff_none_matches_plain_horovod(horovodrun):
    job = horovodrun(2, "none_matches_horovod", steps=5)
    assert job.returncode == 0, job.output[-3000:]
    for r in range(2):
        assert job.rank(r)["max_abs_diff"] < 1e-6
        assert all(s["contributors"] == 2 for s in job.rank(r)["stats"])


@pytest.mark.parametrize("mode", ["sleep", "spin", "gil"])
def test_rank_busy_ten_times_the_cutoff_does_not_hold_the_others(horovodrun, mode):
    cutoff = 0.05
    job = horovodrun(2, "straggler", steps=12, cutoff=cutoff, mode=mode)
    assert job.returncode == 0, job.output[-3000:]
    durations = np.array(job.rank(0)["durations"][2:])  # steps after the slow rank fell behind
    # Generous tolerance (shared 2-core machine); the tight figure is benchmark P4's.
    assert np.median(durations) < cutoff + 0.04, durations
    assert durations.max() < cutoff + 0.25, durations
    assert all(s["censored"][1] for s in job.rank(0)["stats"][2:])


def test_step_with_no_contributor_applies_nothing_and_widens_the_cutoff(horovodrun):
    cutoff = 0.1
    job = horovodrun(2, "count_zero", steps=7, cutoff=cutoff, late_step=3)
    assert job.returncode == 0, job.output[-3000:]
    for r in range(2):
        stats, deltas = job.rank(r)["stats"], job.rank(r)["deltas"]
        assert stats[3]["contributors"] == 0
        assert deltas[3] == [0.0, 0.0, 0.0, 0.0]
        assert stats[4]["cutoff"] >= 2 * stats[3]["cutoff"] * 0.999
        assert stats[4]["contributors"] == 2, "the widened cutoff should let both ranks in"
        np.testing.assert_allclose(deltas[2], -np.ones(4), rtol=1e-6)


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
