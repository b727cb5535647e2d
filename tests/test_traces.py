"""The trace format: round trips, and malformed files named with their problem."""

from __future__ import annotations

import numpy as np
import pytest
from horovod_cutoff.traces import TraceError, load_trace, save_trace

GOOD = np.array([[0.1, 0.2, np.nan], [0.3, 0.1, 0.2]])


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_round_trip_keeps_values_and_absent_workers(tmp_path, suffix):
    path = save_trace(tmp_path / f"t{suffix}", GOOD)
    np.testing.assert_allclose(load_trace(path), GOOD, equal_nan=True)


def test_npz_keeps_censoring_flags(tmp_path):
    censored = np.array([[False, True, False], [False, False, False]])
    path = save_trace(tmp_path / "t.npz", GOOD, censored=censored)
    times, flags = load_trace(path, with_censoring=True)
    assert (flags == censored).all()


@pytest.mark.parametrize("content,problem", [
    (np.array([0.1, 0.2]), "shape"),
    (np.zeros((0, 3)), "empty"),
    (np.array([[0.1, -0.2]]), "negative"),
    (np.array([["a", "b"]]), "not numeric"),
    (np.array([[np.inf, 0.1]]), "infinity"),
    (np.array([[np.nan, np.nan]]), "all NaN"),
])
def test_malformed_npy_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(TraceError, match=problem) as err:
        load_trace(path)
    assert "bad.npy" in str(err.value)


@pytest.mark.parametrize("text,problem", [
    ("0.1,0.2\n0.3\n", "different numbers of workers"),
    ("0.1,abc\n", "not numeric"),
    ("", "empty"),
    ("0.1,-3\n", "negative"),
])
def test_malformed_csv_names_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=problem) as err:
        load_trace(path)
    assert "bad.csv" in str(err.value)


def test_npz_without_times_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, durations=GOOD)
    with pytest.raises(TraceError, match="'times'"):
        load_trace(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(TraceError, match="no such trace"):
        load_trace(tmp_path / "nope.npy")
    other = tmp_path / "t.json"
    other.write_text("[]")
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(other)
