"""Plots: each writes a real, non-trivial PNG, and bad inputs are refused with a named reason."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from horovod_cutoff import plots
from horovod_cutoff.traces import generate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path, min_bytes: int = 5000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200 and len(data) >= min_bytes
    return width, height


@pytest.fixture
def trace():
    return generate("mixture", 16, 120, seed=0)


def test_plot_trace_with_cutoffs_and_censoring(tmp_path, trace):
    cutoffs = np.full(trace.shape[0], 0.3)
    cutoffs[:3] = np.nan  # no decision yet
    cutoffs[3] = math.inf  # a live step with no cutoff
    censored = trace > 0.3
    out = plots.plot_trace(tmp_path / "a" / "trace.png", trace, cutoffs=cutoffs,
                           censored=censored, title="mixture")
    assert out == tmp_path / "a" / "trace.png"
    _, tall = _png(out)
    _, short = _png(plots.plot_trace(tmp_path / "plain.png", trace))
    assert tall > short  # the cutoff panel sits above the heatmap


def test_plot_trace_odd_shapes(tmp_path):
    _png(plots.plot_trace(tmp_path / "one.png", np.array([[0.2]]), cutoffs=[0.25]), 2000)
    absent = generate("iid", 4, 30, seed=0)
    absent[5:10, 1] = np.nan  # an absent worker
    _png(plots.plot_trace(tmp_path / "nan.png", absent, cutoffs=np.full(30, 0.22)))


def test_long_trace_shows_the_first_steps_and_says_so(tmp_path, monkeypatch):
    saved = []
    real_save = plots._save

    def spy(fig, path):
        saved.append([t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))])
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    times = generate("rack", 16, 2100, seed=0)
    _png(plots.plot_trace(tmp_path / "long.png", times, cutoffs=np.full(2100, 0.25)))
    _png(plots.plot_cutoffs(tmp_path / "long_cut.png", times, np.full(2100, 0.25)))
    assert len(saved) == 2
    for texts in saved:
        assert any("first 2000 of 2100 steps" in t for t in texts)


def test_plot_policies(tmp_path):
    results = [{"policy": p, "gradients_per_second": g, "oracle_gradients_per_second": 100.0,
                "ratio_to_oracle": g / 100.0}
               for p, g in [("none", 20.0), ("adaptive", 91.0), ("static_hindsight", 96.0),
                            ("oracle", 100.0)]]
    _png(plots.plot_policies(tmp_path / "policies.png", results, title="t"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_policies(tmp_path / "none.png", [])


def test_plot_cutoffs(tmp_path, trace):
    cutoffs = np.linspace(0.25, 0.35, trace.shape[0])
    _png(plots.plot_cutoffs(tmp_path / "cutoffs.png", trace, cutoffs, title="mixture"))


def test_mismatched_inputs_are_named(tmp_path, trace):
    with pytest.raises(ValueError, match="cutoffs"):
        plots.plot_trace(tmp_path / "x.png", trace, cutoffs=np.ones(5))
    with pytest.raises(ValueError, match="cutoffs"):
        plots.plot_cutoffs(tmp_path / "x.png", trace, np.ones(5))
    with pytest.raises(ValueError, match="censored"):
        plots.plot_trace(tmp_path / "x.png", trace, censored=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="times"):
        plots.plot_trace(tmp_path / "x.png", np.ones(4))
