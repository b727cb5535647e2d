"""What the examples and the live suite compute from a run, on hand-made stats (no ranks)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _runs  # noqa: E402
from _contention import spells  # noqa: E402
from _sim_vs_live import step_overhead  # noqa: E402


def _stats(times, censored, contributors):
    return [{"step": t, "times": x, "censored": c, "contributors": k}
            for t, (x, c, k) in enumerate(zip(times, censored, contributors))]


def test_wasted_compute_counts_cut_work_no_longer_than_the_step_asked():
    trace = np.array([[0.03, 0.03, 0.15], [0.03, 0.03, 0.03]])
    # Step 0: rank 2 cut at 0.05 s (it had 0.15 s of work); step 1: rank 2 recorded as cut at
    # 0.05 s, but its step only asked 0.03 s plus its own compute (0.002 s here).
    stats = _stats([[0.032, 0.032, 0.05], [0.032, 0.032, 0.05]],
                   [[False, False, True], [False, False, True]], [2, 2])
    assert _runs.wasted_compute(stats, trace) == pytest.approx(0.05 + 0.032)
    assert _runs.wasted_compute(_stats([[0.1, 0.1]], [[False, False]], [2]), None) == 0.0


def test_run_metrics_plain_horovod_and_cutoff():
    plain = _runs.run_metrics("horovod", None, None, seconds=2.0, steps=10, workers=4)
    assert plain["gradients_per_s"] == 20.0 and plain["steps_per_s"] == 5.0 and plain["wasted_s"] == 0
    stats = _stats([[0.1, 0.2]] * 4, [[False, True]] * 4, [1] * 4)
    cut = _runs.run_metrics("static", stats, None, seconds=1.0, steps=4, workers=2)
    assert cut["gradients"] == 4 and cut["cut_steps"] == 4 and cut["mean_contributors"] == 1.0
    assert cut["wasted_s"] == pytest.approx(4 * 0.1)  # capped at the rank's own compute


def test_straggler_traces_are_rescaled_to_the_healthy_step():
    shipped = _runs.straggler_trace("steady", 400, 4, seed=1, step_ms=30.0)
    assert shipped.shape == (400, 4) and np.median(shipped) == pytest.approx(0.03, rel=0.05)
    example = _runs.straggler_trace("example", 400, 4, seed=1, step_ms=15.0)
    assert np.median(example) == pytest.approx(0.015, rel=0.2)
    assert _runs.straggler_trace(None, 10, 4) is None


def test_step_overhead_is_the_median_time_beyond_the_slowest_rank(tmp_path):
    path = tmp_path / "r.npz"
    np.savez(path, times=np.array([[0.1, 0.2], [0.3, 0.1], [0.1, 0.1]]),
             step_seconds=np.array([0.21, 0.32, 0.13]))
    assert step_overhead(path) == pytest.approx(0.02)


def test_neighbour_spells_alternate_and_repeat_for_a_seed():
    a = spells(60.0, seed=3)
    assert a == spells(60.0, seed=3) and len(a) > 5
    assert all(on < off for on, off in a) and all(a[i][1] < a[i + 1][0] for i in range(len(a) - 1))


def test_the_results_tables_show_every_run_of_the_committed_p7_result():
    import json

    from _live_tables import markdown

    result = json.loads((ROOT / "docs" / "figures" / "live" / "p7.json").read_text())
    text = markdown(result)
    assert ("not met" in text) != result["met"]
    gain = result["headline"]["predictive_gain"]
    assert f"| predictive vs none | {gain['median']:.2f}x ({gain['min']:.2f}-{gain['max']:.2f}) |" in text
    for job, rows in result["runs"].items():
        assert f"**{job}**" in text
        for r in rows:
            assert f"| {r['run']} | {r['gradients_per_s']:.1f} | {r['gain_vs_none']:.2f}x |" in text
    for name in result["sim_vs_live"]["gains"]:
        assert f"| {name} | {result['sim_vs_live']['gains'][name]['measured']:.2f}x |" in text
    assert all(line in text for line in result["losing"])


def test_the_headline_gains_by_stretch_of_steps_sum_every_repetition_and_leave_out_step_0(tmp_path):
    from live_suite import HEADLINE, _by_segment

    def write(folder, name, contributors, seconds):
        folder.mkdir(exist_ok=True)
        np.savez(folder / f"{HEADLINE}-{name}.npz", contributors=np.asarray(contributors),
                 step_seconds=np.asarray(seconds))

    steps = 400  # step 0 is a warm-up: 1000 contributors in 1 s would swamp every stretch
    for rep, folder in enumerate((tmp_path, tmp_path / "rep1")):
        for name, per_step in (("none", 2), ("adaptive", 3), ("predictive", 4)):
            k = np.full(steps, per_step)
            k[0] = 1000
            # predictive is slower before step 100 in repetition 1 only
            seconds = np.full(steps, 0.1)
            if name == "predictive" and rep == 1:
                seconds[1:100] = 0.3
            write(folder, name, k, seconds)
    out = _by_segment([tmp_path, tmp_path / "rep1"], ("none", "adaptive", "predictive"))
    assert list(out) == ["1-99", "100-299", "300-399"]
    assert out["1-99"]["none"] == 20.0 and out["1-99"]["adaptive"] == 30.0
    # 2 x 99 steps x 4 gradients in 99 x 0.1 + 99 x 0.3 seconds
    assert out["1-99"]["predictive"] == pytest.approx(20.0) and out["1-99"]["predictive_vs_adaptive"] == 0.667
    assert out["100-299"]["predictive"] == 40.0 and out["300-399"]["predictive_vs_adaptive"] == 1.333
    # One repetition alone: the same stretches.
    short = _by_segment([folder], ("none", "adaptive", "predictive"))
    assert list(short) == ["1-99", "100-299", "300-399"]
    # A run shorter than a stretch reports what it has of it, and nothing beyond.
    for name in ("none", "adaptive", "predictive"):
        write(tmp_path / "short", name, np.full(150, 3), np.full(150, 0.1))
    assert list(_by_segment([tmp_path / "short"], ("none", "adaptive", "predictive"))) == ["1-99", "100-149"]
