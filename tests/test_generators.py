"""Scenario generators and the recorder: seeded, valid, and with the structure they claim."""

from __future__ import annotations

import numpy as np
import pytest
from horovod_cutoff.traces import SCENARIOS, generate, load_trace, record, stats_to_arrays


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_is_seeded_valid_and_positive(name):
    a = generate(name, 12, 150, seed=1)
    assert a.shape == (150, 12) and (a > 0).all()
    np.testing.assert_array_equal(a, generate(name, 12, 150, seed=1))
    assert not np.array_equal(a, generate(name, 12, 150, seed=2))
    assert generate(name, 1, 3, seed=0).shape == (3, 1)
    assert SCENARIOS[name].__doc__ and "\n" not in SCENARIOS[name].__doc__.strip()


def test_slow_nodes_stay_slow():
    x = generate("slow_nodes", 20, 400, seed=0)
    first, second = x[:200].mean(0), x[200:].mean(0)
    assert set(np.argsort(first)[-2:]) == set(np.argsort(second)[-2:])


def test_rack_slowdowns_are_correlated_within_racks():
    x = np.log(generate("rack", 32, 3000, seed=0))
    corr = np.corrcoef(x.T)
    same = np.mean([corr[i, j] for i in range(32) for j in range(32) if i != j and i // 8 == j // 8])
    other = np.mean([corr[i, j] for i in range(32) for j in range(32) if i // 8 != j // 8])
    assert same > other + 0.2


def test_periodic_pauses_repeat():
    x = generate("periodic", 1, 400, seed=3)[:, 0]
    pauses = np.flatnonzero(x > 0.35)
    gaps = np.diff(pauses)
    assert len(pauses) >= 15 and np.all(gaps == gaps[0])


def test_phase_moves_the_whole_cluster_together():
    x = generate("phase", 16, 500, seed=0)
    med = np.median(x, axis=1)
    assert med.max() / med.min() > 2.5


def test_unknown_scenario_and_bad_sizes_are_named():
    with pytest.raises(ValueError, match="tornado"):
        generate("tornado", 2, 2)
    with pytest.raises(ValueError, match="workers"):
        generate("iid", 0, 2)
    with pytest.raises(ValueError, match="steps"):
        generate("iid", 2, 0)


def test_recorder_round_trips_live_stats(tmp_path):
    stats = [{"step": t, "cutoff": 0.3, "contributors": 1, "times": [0.1 + t, 0.3],
              "censored": [False, True], "step_seconds": 0.35} for t in range(3)]
    path = record(tmp_path / "run.npz", stats)
    times, censored = load_trace(path, with_censoring=True)
    np.testing.assert_allclose(times[:, 1], 0.3)
    assert censored[:, 1].all() and not censored[:, 0].any()
    assert np.load(path)["cutoff"].tolist() == [0.3] * 3
    with pytest.raises(ValueError, match="empty"):
        stats_to_arrays([])
    with pytest.raises(ValueError, match=".npz"):
        record(tmp_path / "run.csv", stats)
