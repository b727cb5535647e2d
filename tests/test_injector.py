"""The straggler injector: recorded times, the busy modes, aborting when cut."""

from __future__ import annotations

import time

import numpy as np
import pytest
from horovod_cutoff.traces import StragglerInjector, TraceError

TRACE = np.array([[0.02, 0.05], [0.01, np.nan]])


def test_seconds_reads_row_step_column_rank_and_wraps():
    inj = StragglerInjector(TRACE, rank=1, scale=2.0)
    assert inj.seconds(0) == pytest.approx(0.10)
    assert inj.seconds(1) == 0.0  # absent worker
    assert inj.seconds(2) == pytest.approx(0.10)  # wraps around the trace


@pytest.mark.parametrize("mode", ["sleep", "spin", "gil", "torch"])
def test_each_mode_is_busy_for_the_recorded_time(mode):
    inj = StragglerInjector(np.array([[0.05]]), rank=0, mode=mode)
    spent = inj.delay(0)
    assert 0.05 <= spent < 0.2


def test_delay_returns_early_when_aborted():
    inj = StragglerInjector(np.array([[2.0]]), rank=0, mode="spin")
    deadline = time.perf_counter() + 0.03
    spent = inj.delay(0, abort=lambda: time.perf_counter() > deadline)
    assert spent < 0.2


@pytest.mark.parametrize("kwargs,argument", [
    ({"mode": "nap"}, "mode"), ({"scale": -1}, "scale"), ({"rank": -1}, "rank")])
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        StragglerInjector(TRACE, **{"rank": 0, **kwargs})


def test_malformed_trace_file_is_named(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([1.0, -2.0]))
    with pytest.raises(TraceError, match="bad.npy"):
        StragglerInjector(bad, rank=0)
