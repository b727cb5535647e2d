"""The arrival channel under real horovodrun jobs (Gloo, localhost): a step ends at
min(cutoff, k-th arrival), and never with nobody while ranks compute (DESIGN "Arrivals")."""

from __future__ import annotations

import datetime
import math
import time

import numpy as np
import pytest
import torch

multirank = pytest.mark.multirank


def _absolute(stat, key):
    """A rank's event on this host's steady clock (every rank of a localhost job shares it)."""
    return stat["started"] + stat[key]


@multirank
def test_quorum_of_two_ends_every_step_at_the_second_arrival(horovodrun):
    steps = 25
    job = horovodrun(3, "quorum", steps=steps, quorum=2, times=[0.02, 0.03, 0.3])
    assert job.returncode == 0, job.output[-3000:]
    s0, s1, s2 = (job.rank(r)["stats"] for r in range(3))
    latencies = []
    for t in range(2, steps):  # step 1 may still run without the policy's first answer
        assert s0[t]["quorum"] == 2, s0[t]
        assert s0[t]["contributors"] == 2 and s0[t]["censored"] == [False, False, True], s0[t]
        assert s2[t]["ended_by_quorum"], s2[t]
        second = max(_absolute(s0[t], "announced_at"), _absolute(s1[t], "announced_at"))
        latencies.append(_absolute(s2[t], "submitted_at") - second)
        # The step lasts about the second arrival, nowhere near the slow rank's 0.3 s.
        assert s0[t]["step_seconds"] < 0.15, s0[t]
    latencies = np.array(latencies)
    assert np.all(latencies > 0), latencies
    # Generous bounds for a shared 2-core machine; the p99 figure is benchmark P4A's.
    assert np.median(latencies) < 0.005, latencies
    assert latencies.max() < 0.05, latencies
    # Every replica applied the mean of ranks 0 and 1 (gradients 1 and 2) at the same steps.
    assert job.rank(0)["w"] == job.rank(1)["w"] == job.rank(2)["w"]


@multirank
def test_backup_is_exact_and_replicas_stay_bit_identical(horovodrun):
    job = horovodrun(3, "identical", steps=200, cutoff="backup", options={"backup": 1},
                     closure=True)
    assert job.returncode == 0, job.output[-3000:]
    assert len({job.rank(r)["digest"] for r in range(3)}) == 1, "replicas diverged"
    counts = np.array([s["contributors"] for s in job.rank(0)["stats"]])[2:]
    assert counts.min() >= 2, counts  # the quorum is a floor: never fewer
    # Exactly N-b, except when the third rank claims before the end reaches it.
    assert np.mean(counts == 2) > 0.8, counts


@multirank
def test_pause_of_every_rank_without_paused_loses_nobody(horovodrun):
    job = horovodrun(3, "pause", steps=8, cutoff=0.1, pause_at=4, pause=3.0, use_paused=False)
    assert job.returncode == 0, job.output[-3000:]
    counts = [s["contributors"] for s in job.rank(0)["stats"]]
    assert counts == [3] * 8, counts
    assert len({job.rank(r)["digest"] for r in range(3)}) == 1


@multirank
def test_coordinator_closing_first_leaves_no_channel_errors_on_the_others(horovodrun):
    """Before: the coordinator took its store down at once, under the others' waiters, and
    c10d printed "recvValue failed" stack traces on every other rank."""
    job = horovodrun(3, "close_at_end", steps=5, delay=0.5)
    assert job.returncode == 0, job.output[-3000:]
    assert "recvValue" not in job.output and "Traceback" not in job.output, job.output[-3000:]
    assert job.rank(0)["close_seconds"] < 5.0  # it waited for the others, not for the grace


@multirank
def test_death_of_the_store_host_is_an_error_on_every_rank_in_bounded_time(horovodrun):
    # Rank 0 exits with status 0, so horovodrun leaves the others to notice by themselves.
    job = horovodrun(3, "death", timeout=90, steps=200, die_at=5, dies=0, exit_status=0,
                     cutoff="static", options={"seconds": 0.05})
    assert job.returncode != 0
    assert job.seconds < 60, f"took {job.seconds:.0f} s to notice the coordinator's death"
    for r in (1, 2):
        error = job.rank(r)["error"]
        assert error, f"rank {r} ended without an error"


# ---- the channel's protocol, in one process: Horovod of size 1 reduces an engine of world 2
# at once, and a TCPStore client plays the other rank. --------------------------------------


@pytest.fixture(scope="module")
def horovod_single():
    import horovod_cutoff.torch as hvd
    hvd.init()
    return hvd


def _engine(name, rank=0, cutoff=math.inf, quorum=0, arrivals=True):
    from horovod_cutoff import _C
    engine = _C.Engine(name, rank, 2, 4, "float32", -1, 1, math.inf, arrivals=arrivals,
                       store_host="127.0.0.1")
    if rank == 0:
        engine.set_next_cutoff(cutoff, 0, quorum)  # carried by step 0 to step 1
    grads = [torch.ones(4)]
    assert engine.contribute(0, grads) == _C.Outcome.CONTRIBUTED
    assert engine.wait(0, 5.0)
    engine.take(0, grads)
    return engine


def _other_rank(engine):
    from torch.distributed import TCPStore
    return TCPStore("127.0.0.1", engine.store_port(), None, False, datetime.timedelta(seconds=10))


def test_another_ranks_arrival_at_the_quorum_cuts_this_rank_at_once(horovod_single):
    from horovod_cutoff import _C
    engine = _engine("arrivals.quorum", quorum=1)
    other = _other_rank(engine)
    prefix = "hvdcut/arrivals.quorum/"
    assert other.add(prefix + "a/1", 1) == 1  # the other rank's arrival: the quorum of 1
    claimed = time.monotonic()
    other.multi_set([prefix + "w/1/0", prefix + "w/1/1"], ["q", "q"])
    assert engine.wait(1, 5.0)
    waited = time.monotonic() - claimed
    result = engine.take(1, [torch.ones(4)])
    assert result.ended_by_quorum and result.quorum == 1 and result.censored[0]
    assert waited < 0.5, waited
    assert engine.contribute(1, [torch.ones(4)]) == _C.Outcome.LATE
    engine.close()


@pytest.mark.parametrize("arrivals", [True, False])
def test_deadline_nobody_met_waits_for_this_rank(horovod_single, arrivals):
    """Before the channel, a rank past its deadline was cut even when nobody had arrived."""
    from horovod_cutoff import _C
    engine = _engine(f"arrivals.nobody.{arrivals}", cutoff=0.05, arrivals=arrivals)
    time.sleep(0.15)  # every rank (this one; the other never comes) misses the deadline
    outcome = engine.contribute(1, [torch.ones(4)])
    # Without the channel the timer cut this rank (and this 1-process Horovod reduced the step).
    assert outcome in ((_C.Outcome.CONTRIBUTED,) if arrivals else (_C.Outcome.CUT, _C.Outcome.LATE))
    assert engine.wait(1, 5.0)
    assert engine.take(1, [torch.ones(4)]).count == (1 if arrivals else 0)
    engine.close()


def test_failed_channel_is_an_error_within_a_bounded_time(horovod_single):
    # Rank 1 of a coordinator that advertises no channel: it cannot join, so it must fail.
    engine = _engine("arrivals.fault", rank=1)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="arrival channel .* failed on rank 1"):
        for step in range(1, 1000):
            engine.contribute(step, [torch.ones(4)])
            engine.wait(step, 5.0)
            engine.take(step, [torch.ones(4)])
            time.sleep(0.05)
    assert time.monotonic() - started < 5.0
    engine.close()
