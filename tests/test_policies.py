"""Every policy through the one interface, on the edge cases live runs and traces produce."""

from __future__ import annotations

import math

import numpy as np
import pytest
from horovod_cutoff.policies import POLICIES, make_policy
from horovod_cutoff.policies.adaptive import AdaptiveLogNormal
from horovod_cutoff.policies.lognormal import best_cutoff
from horovod_cutoff.sim import build_policy
from scipy import stats

ONLINE = sorted(POLICIES)


def feed(policy, rows, cutoff=None):
    for row in rows:
        row = np.asarray(row, dtype=float)
        c = policy.cutoff() if cutoff is None else cutoff
        cut = ~np.isnan(row) & (row > c)
        policy.observe(np.where(cut, c, row), cut)
    return policy.cutoff()


@pytest.mark.parametrize("name", ONLINE)
def test_single_worker(name):
    params = {"backup": 0} if name == "backup" else {}  # one worker leaves none to spare
    c = feed(build_policy(name, 0.01, **params), [[0.2]] * 10)
    assert c > 0 and not math.isnan(c)


@pytest.mark.parametrize("backup", [4, 5])
def test_backup_of_every_worker_is_refused_naming_backup_and_the_worker_count(backup):
    policy = make_policy("backup", backup=backup)
    with pytest.raises(ValueError, match=rf"backup.*\(4\).*backup={backup}"):
        policy.observe(np.full(4, 0.2), np.zeros(4, dtype=bool))


@pytest.mark.parametrize("name", ONLINE)
def test_all_equal_times_admit_every_worker_eventually(name):
    c = feed(build_policy(name, 0.01), [[0.3] * 8] * 30)
    assert c > 0 and not math.isnan(c)
    if name not in ("backup",):  # backup waits for N-b by design
        assert c >= 0.3 * 0.999 or math.isinf(c)


@pytest.mark.parametrize("name", ONLINE)
def test_absent_workers_are_ignored(name):
    rows = [[0.2, np.nan, 0.25, 0.22]] * 10
    c = feed(build_policy(name, 0.01), rows)
    assert c > 0 and not math.isnan(c)


@pytest.mark.parametrize("name,params", [("elfving", {}), ("adaptive", {})])
def test_a_step_nobody_made_leaves_the_policy_as_it_was(name, params):
    """The next step waits for everyone (base.cutoff_after_empty_step): no policy widens."""
    rows = [[0.2, 0.21, 0.22, 0.5]] * 20
    seen, unseen = build_policy(name, 0.01, **params), build_policy(name, 0.01, **params)
    feed(seen, rows)
    feed(unseen, rows)
    before = seen.cutoff()
    assert math.isfinite(before)
    seen.observe(np.full(4, 0.25 * before), np.ones(4, dtype=bool))
    assert seen.cutoff() == before
    more = [[0.25, 0.2, 0.3, 0.6], [0.2, 0.2, 0.2, 0.2]] * 3
    assert feed(seen, more) == feed(unseen, more)


def test_backup_answers_the_quorum_of_the_present_workers_and_no_cutoff():
    """The engine honours the quorum exactly (arrival channel): no time stands in for it."""
    policy = make_policy("backup", backup=2)
    assert policy.quorum() is None and math.isinf(policy.cutoff())  # nothing seen: wait for all
    policy.observe(np.array([0.2, 0.3, 0.25, 0.9, 0.4]), np.zeros(5, dtype=bool))
    assert policy.quorum() == 3 and math.isinf(policy.cutoff())
    policy.observe(np.array([0.2, np.nan, 0.25, 0.24, 0.24]), np.array([0, 0, 0, 1, 1], bool))
    assert policy.quorum() == 2 and math.isinf(policy.cutoff())  # one absent: N = 4
    assert policy.config() == {"policy": "backup", "backup": 2}


def test_static_quantile_widens_when_its_quantile_falls_among_cut_workers():
    """Its own rule (cut workers count as +inf), not the one for a step nobody made."""
    policy = make_policy("static", quantile=0.9, window=1)
    policy.observe(np.array([0.3, 0.3, 0.3]), np.ones(3, dtype=bool))
    assert policy.cutoff() == pytest.approx(0.6)


def test_none_always_waits():
    assert math.isinf(feed(make_policy("none"), [[0.1, 5.0]] * 3))


def test_static_seconds_is_fixed_and_quantile_follows_recent_times():
    assert feed(make_policy("static", seconds=0.7), [[0.1, 0.2]] * 5) == 0.7
    q = make_policy("static", quantile=0.5, window=4)
    feed(q, [[1.0, 2.0, 3.0, 4.0]] * 4, cutoff=10.0)
    assert q.cutoff() in (2.0, 3.0)


def test_adaptive_does_not_take_a_cut_workers_cutoff_as_its_time():
    """Censoring: a worker always cut at 0.3 must be believed slower than 0.3."""
    p = AdaptiveLogNormal(alpha=0.3)
    for _ in range(40):
        p.observe(np.array([0.2, 0.21, 0.3]), np.array([False, False, True]))
    assert math.exp(p.mu[2]) > 0.3


def test_adaptive_tracks_a_slowed_worker_and_cuts_it():
    p = AdaptiveLogNormal(alpha=0.3, overhead=0.01)
    c = feed(p, [[0.2, 0.2, 0.2, 0.2, 1.0]] * 30)
    assert 0.2 <= c < 1.0


@pytest.mark.parametrize("seed", range(6))
def test_best_cutoff_matches_a_dense_search(seed):
    """Slow nodes and narrow predictives give several local maxima; none may be missed."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 65))
    mu = rng.normal(np.log(0.2), 0.2, n)
    slow = rng.random(n) < 0.2
    mu[slow] += rng.uniform(0.3, 1.5, slow.sum())
    sd = rng.uniform(0.02, 0.4, n) if seed % 2 else np.full(n, rng.uniform(0.02, 0.3))
    o = [0.0, 0.01, 0.1][seed % 3]

    def rate(c):
        c = np.atleast_1d(c)
        return stats.norm.cdf((np.log(c)[:, None] - mu) / sd).sum(1) / (c + o)

    grid = np.exp(np.linspace(mu.min() - 4 * sd.max(), mu.max() + 4 * sd.max(), 40_000))
    assert rate(best_cutoff(mu, sd, o))[0] >= rate(grid).max() * (1 - 1e-6)


def test_elfving_picks_k_by_expected_order_statistics():
    p = make_policy("elfving", window=5, overhead=0.0)
    feed(p, [np.linspace(1.0, 2.0, 10)] * 5, cutoff=10.0)
    # With no overhead and a tight spread, waiting for all 10 is not worth it; the cutoff
    # lies within the spread of the fitted Normal.
    assert 0.8 < p.cutoff() < 2.5


@pytest.mark.parametrize("name,params,argument", [
    ("adaptive", {"alpha": 0}, "alpha"), ("adaptive", {"overhead": -1}, "overhead"),
    ("elfving", {"window": 0}, "window"), ("static", {"seconds": 1, "quantile": 0.5}, "seconds"),
    ("backup", {"backup": 1.5}, "backup"),
])
def test_bad_parameters_name_the_argument(name, params, argument):
    with pytest.raises(ValueError, match=argument):
        make_policy(name, **params)


@pytest.mark.parametrize("name", ONLINE)
def test_observe_rejects_malformed_steps(name):
    policy = build_policy(name, 0.0)
    with pytest.raises(ValueError, match="censored"):
        policy.observe(np.ones(3), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="times"):
        policy.observe(np.array([0.1, -1.0]), np.zeros(2, dtype=bool))


def test_elfving_never_cuts_below_anything_ever_seen_on_skewed_times():
    """A Normal fit to skewed times must not make waiting for one worker look free."""
    p = make_policy("elfving", window=20, overhead=0.02)
    rng = np.random.default_rng(0)
    for _ in range(30):
        row = rng.lognormal(np.log(0.2), 0.1, 16)
        row[:3] *= 5.0
        c = p.cutoff()
        cut = row > c
        p.observe(np.where(cut, c, row), cut)
    assert p.cutoff() >= 0.1


def test_adaptive_survives_a_worker_always_far_beyond_the_cutoff():
    p = AdaptiveLogNormal(alpha=0.5)
    for _ in range(200):
        p.observe(np.array([0.2, 0.2, 1e-6]), np.array([False, False, True]))
    assert np.isfinite(p.mu).all() and np.isfinite(p.cutoff())


def test_adaptive_with_quorum_answers_one_and_says_so_in_its_config():
    rows = np.random.default_rng(0).lognormal(np.log(0.2), 0.25, (60, 32))
    policy = make_policy("adaptive", overhead=0.02, quorum=True)
    for row in rows:
        c, k = policy.cutoff(), policy.quorum()
        end = c if k is None else min(c, np.sort(row)[k - 1])
        policy.observe(np.where(row > end, end, row), row > end)
    assert policy.config()["quorum"] is True and make_policy("adaptive").config()["quorum"] is False
    assert policy.quorum() is not None or policy.joint._choices % 8 == 0
    assert make_policy("adaptive").quorum() is None
    with pytest.raises(ValueError, match="quorum"):
        make_policy("adaptive", quorum=1)


@pytest.mark.parametrize("name", ["adaptive", "elfving"])
def test_a_policy_built_without_an_overhead_takes_the_measured_one(name):
    # Live, the cutoff service measures the overhead and tells a policy built without one.
    rows = np.random.default_rng(4).lognormal(np.log(0.1), 0.3, size=(30, 6))
    told = make_policy(name)
    assert told.overhead_measured and told.overhead == 0.0 and told.config()["overhead"] == "measured"
    told.set_overhead(0.2)
    given = make_policy(name, overhead=0.2)
    assert not given.overhead_measured and given.config()["overhead"] == 0.2
    assert feed(told, rows) == feed(given, rows)
    assert feed(make_policy(name), rows) != feed(given, rows)  # it matters on these rows
    with pytest.raises(ValueError, match="overhead"):
        told.set_overhead(math.nan)


def test_adaptive_with_quorum_hands_the_overhead_to_its_joint_choice():
    policy = AdaptiveLogNormal(quorum=True)
    policy.set_overhead(0.03)
    assert policy.joint.overhead == 0.03
