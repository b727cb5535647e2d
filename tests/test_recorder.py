"""The recorder: a live run's cutoff_stats() to arrays and to an .npz that load_trace reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
from horovod_cutoff.traces import load_trace, record, stats_to_arrays


def _stats(steps: int = 4, workers: int = 3):
    """What opt.cutoff_stats() returns: the last rank is cut (time = cutoff) on odd steps."""
    out = []
    for t in range(steps):
        cut = t % 2 == 1
        cutoff = 0.3 if cut else math.inf
        times = [0.1 + 0.01 * t + 0.02 * n for n in range(workers - 1)] + [0.3 if cut else 0.25]
        censored = [False] * (workers - 1) + [cut]
        out.append({"step": t, "cutoff": cutoff, "contributors": workers - int(cut),
                    "times": times, "censored": censored, "step_seconds": max(times) + 0.01})
    return out


def test_stats_to_arrays_shapes_and_values():
    times, censored, cutoff = stats_to_arrays(_stats(4, 3))
    assert times.shape == censored.shape == (4, 3) and cutoff.shape == (4,)
    assert censored.dtype == bool and times.dtype == np.float64
    assert censored[:, 2].tolist() == [False, True, False, True] and not censored[:, :2].any()
    np.testing.assert_allclose(times[1::2, 2], 0.3)
    assert np.isinf(cutoff[0::2]).all() and (cutoff[1::2] == 0.3).all()


def test_record_round_trips_through_load_trace(tmp_path):
    stats = _stats(5, 4)
    path = record(tmp_path / "sub" / "run.npz", stats)
    assert path.exists()
    times, censored = load_trace(path, with_censoring=True)
    want_times, want_censored, want_cutoff = stats_to_arrays(stats)
    np.testing.assert_array_equal(times, want_times)
    np.testing.assert_array_equal(censored, want_censored)
    np.testing.assert_array_equal(load_trace(path), want_times)  # plain readers still work
    with np.load(path) as data:
        assert set(data.files) == {"times", "censored", "cutoff", "contributors", "step_seconds"}
        np.testing.assert_array_equal(data["cutoff"], want_cutoff)
        assert data["contributors"].tolist() == [s["contributors"] for s in stats]
        np.testing.assert_allclose(data["step_seconds"], [s["step_seconds"] for s in stats])


def test_record_leaves_out_per_step_extras_some_steps_lack(tmp_path):
    stats = _stats(3, 2)
    del stats[1]["step_seconds"]
    with np.load(record(tmp_path / "run.npz", stats)) as data:
        assert "step_seconds" not in data.files and "contributors" in data.files


def test_one_worker_and_one_step(tmp_path):
    stats = [{"step": 0, "cutoff": math.inf, "contributors": 1, "times": [0.2],
              "censored": [False], "step_seconds": 0.2}]
    times, censored = load_trace(record(tmp_path / "one.npz", stats), with_censoring=True)
    assert times.shape == censored.shape == (1, 1)


def test_bad_stats_are_named(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        stats_to_arrays([])
    uneven = _stats(3, 3)
    uneven[2]["times"] = uneven[2]["times"][:2]
    with pytest.raises(ValueError, match=r"stats\[2\].*2 times"):
        stats_to_arrays(uneven)
    flags = _stats(3, 3)
    flags[1]["censored"] = [False] * 4
    with pytest.raises(ValueError, match="4 censored"):
        stats_to_arrays(flags)
    missing = _stats(2, 2)
    del missing[1]["cutoff"]
    with pytest.raises(ValueError, match="cutoff"):
        stats_to_arrays(missing)
    with pytest.raises(ValueError, match=".npz"):
        record(tmp_path / "run.csv", _stats())
    with pytest.raises(ValueError, match="empty"):
        record(tmp_path / "run.npz", [])
