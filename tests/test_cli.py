"""The command line as scripts call it: `python -m horovod_cutoff.cli ...` in a subprocess."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from horovod_cutoff.traces import save_trace

KEYS = {"policy", "steps", "gradients_per_second", "oracle_gradients_per_second",
        "ratio_to_oracle", "mean_contributors", "mean_step_seconds"}


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "horovod_cutoff.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def trace(tmp_path):
    rng = np.random.default_rng(0)
    return save_trace(tmp_path / "t.npy", rng.lognormal(np.log(0.2), 0.3, size=(120, 8)))


def test_simulate_json_has_every_documented_key(trace):
    out = json.loads(cli("simulate", "--trace", trace, "--policy", "adaptive",
                         "--overhead", "0.01", "--warmup", "10", "--json").stdout)
    assert KEYS <= set(out) and out["policy"] == "adaptive"
    assert 0 < out["ratio_to_oracle"] <= 1


def test_simulate_all_lists_every_policy_with_hindsight_baselines(trace):
    out = json.loads(cli("simulate", "--trace", trace, "--policy", "all", "--json").stdout)
    assert isinstance(out, list)
    names = {r["policy"] for r in out}
    assert {"none", "static", "backup", "elfving", "adaptive", "static_hindsight",
            "backup_hindsight", "oracle"} <= names
    for r in out:
        assert KEYS <= set(r)


def test_simulate_with_policy_parameters_and_carry_lag(trace):
    out = json.loads(cli("simulate", "--trace", trace, "--policy", "static", "--param",
                         "seconds=0.25", "--carry-lag", "--lag", "1", "--json").stdout)
    assert out["carry_lag"] is True and out["lag"] == 1


@pytest.mark.parametrize("args,needle", [
    (["--policy", "nonsense"], "nonsense"),
    (["--policy", "static", "--param", "seconds=-1"], "seconds"),
    (["--policy", "none", "--warmup", "500"], "warmup"),
    (["--policy", "none", "--param", "oops"], "--param"),
])
def test_bad_arguments_exit_2_with_one_line_naming_them(trace, args, needle):
    proc = cli("simulate", "--trace", trace, *args, "--json", check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_trace_is_named(tmp_path):
    bad = tmp_path / "broken.csv"
    bad.write_text("0.1,0.2\nx,y\n")
    proc = cli("simulate", "--trace", bad, "--policy", "none", "--json", check=False)
    assert proc.returncode == 2 and "broken.csv" in proc.stderr and "not numeric" in proc.stderr


def test_generate_writes_a_trace_the_simulator_reads(tmp_path):
    path = tmp_path / "g.npz"
    cli("generate", "markov", "--workers", 6, "--steps", 50, "--seed", 3, "-o", path)
    out = json.loads(cli("simulate", "--trace", path, "--policy", "none", "--json").stdout)
    assert out["steps"] == 50 and out["mean_contributors"] == 6


def test_generate_unknown_scenario_is_named(tmp_path):
    proc = cli("generate", "tornado", "--workers", 2, "--steps", 5, "-o", tmp_path / "x.npy",
               check=False)
    assert proc.returncode == 2 and "tornado" in proc.stderr


@pytest.mark.parametrize("kind", ["trace", "policies", "cutoffs"])
def test_plot_writes_png(trace, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    cli("plot", kind, "--trace", trace, "-o", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bench_discovers_and_runs_a_benchmark_by_id(tmp_path, monkeypatch):
    (tmp_path / "x9_demo.py").write_text(
        "ID = 'X9'\n"
        "def run(quick=False):\n"
        "    return {'id': 'X9', 'value': 2.0 if quick else 1.0, 'unit': 'u', 'target': '<= 3',\n"
        "            'met': True, 'device': 'cpu'}\n")
    monkeypatch.setenv("HOROVOD_CUTOFF_BENCHMARKS", str(tmp_path))
    out = json.loads(cli("bench", "x9", "--quick", "--json").stdout)
    assert out["id"] == "X9" and out["value"] == 2.0 and "command" in out
    # A file may declare its id instead of starting its name with it.
    (tmp_path / "long_name.py").write_text(
        "ID = 'LONG1'\n"
        "def run(quick=False):\n"
        "    return {'id': 'LONG1', 'value': 3, 'unit': 'u', 'target': None, 'met': True}\n")
    out = json.loads(cli("bench", "long1", "--json").stdout)
    assert out["id"] == "LONG1" and out["value"] == 3
    proc = cli("bench", "P99", "--json", check=False)
    assert proc.returncode == 2 and "P99" in proc.stderr


def _recording(tmp_path):
    from horovod_cutoff.traces import record

    stats = [{"step": t, "cutoff": 0.25, "contributors": 2, "times": [0.2, 0.21, 0.25],
              "censored": [False, False, True], "step_seconds": 0.26} for t in range(40)]
    return record(tmp_path / "live.npz", stats)


def test_simulate_warns_that_a_recordings_censored_times_are_lower_bounds(tmp_path):
    proc = cli("simulate", "--trace", _recording(tmp_path), "--policy", "none", "--json")
    assert "censored" in proc.stderr and json.loads(proc.stdout)["steps"] == 40


def test_plot_draws_a_recordings_own_cutoffs(tmp_path, trace):
    out = tmp_path / "live.png"
    cli("plot", "trace", "--trace", _recording(tmp_path), "--policy", "recorded", "-o", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = cli("plot", "trace", "--trace", trace, "--policy", "recorded", "-o", out, check=False)
    assert proc.returncode == 2 and "recording" in proc.stderr


def test_bench_reports_machine_and_command_and_survives_a_broken_benchmark(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "x1_ok.py").write_text(
        "ID = 'X1'\n"
        "def run(quick=False):\n"
        "    return [{'id': 'X1', 'value': 1, 'unit': 'u', 'target': '<= 3', 'met': True},\n"
        "            {'id': 'X1', 'value': 5, 'unit': 'u', 'target': '<= 3', 'met': False}]\n")
    (tmp_path / "x2_broken.py").write_text("import no_such_module_here\n")
    monkeypatch.setenv("HOROVOD_CUTOFF_BENCHMARKS", str(tmp_path))
    proc = cli("bench", "--json", check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["id"], r["met"]) for r in lines] == [("X1", True), ("X1", False), ("X2", False)]
    assert "no_such_module_here" in lines[2]["error"] and proc.returncode == 1
    for r in lines:
        assert {"id", "value", "unit", "target", "met", "device", "command", "machine"} <= set(r)
        assert r["machine"]["cores"] >= 1 and r["command"].startswith("horovod-cutoff bench")


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("horovod-cutoff: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.mark.parametrize("name", ["empty.npy", "empty.npz", "empty.csv"])
def test_an_empty_trace_file_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    proc = cli("simulate", "--trace", path, "--policy", "none", "--json", check=False)
    assert_one_line_error(proc, name, "empty")


def test_a_truncated_npz_is_named(tmp_path):
    whole = tmp_path / "whole.npz"
    np.savez(whole, times=np.ones((4, 2)))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:40])
    proc = cli("simulate", "--trace", cut, "--policy", "none", "--json", check=False)
    assert_one_line_error(proc, "cut.npz", "cannot read")


@pytest.fixture
def zero_trace(tmp_path):
    rng = np.random.default_rng(1)
    times = rng.lognormal(np.log(0.2), 0.3, size=(60, 6))
    times[7, 2] = 0.0  # a worker with nothing to do that step: a valid time
    return save_trace(tmp_path / "zero.npy", times)


def test_a_zero_time_is_simulated_and_plotted(zero_trace, tmp_path):
    out = json.loads(cli("simulate", "--trace", zero_trace, "--policy", "all", "--json").stdout)
    for r in out:
        assert 0 < r["ratio_to_oracle"] <= 1 + 1e-9, r
    best = json.loads(cli("simulate", "--trace", zero_trace, "--policy", "static_hindsight",
                          "--overhead", "0.01", "--json").stdout)
    assert best["chosen"] > 0
    png = tmp_path / "policies.png"
    cli("plot", "policies", "--trace", zero_trace, "-o", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", ["simulate", "plot"])
def test_overhead_as_a_policy_parameter_points_to_the_overhead_option(trace, tmp_path, command):
    args = (["simulate", "--trace", trace, "--policy", "adaptive", "--json"] if command == "simulate"
            else ["plot", "cutoffs", "--trace", trace, "-o", tmp_path / "c.png"])
    proc = cli(*args, "--param", "overhead=0.1", check=False)
    assert_one_line_error(proc, "--overhead")


def test_generate_too_large_is_refused_before_allocating(tmp_path):
    out = tmp_path / "big.npy"
    proc = cli("generate", "iid", "--workers", 1_000_000, "--steps", 1_000_000, "-o", out,
               check=False)
    assert_one_line_error(proc, "1000000 steps x 1000000 workers", "memory")
    assert not out.exists()


def test_an_unknown_policy_lists_every_choice(trace, tmp_path):
    proc = cli("simulate", "--trace", trace, "--policy", "nonsense", "--json", check=False)
    assert_one_line_error(proc, "nonsense")
    for name in ("none", "static", "backup", "elfving", "adaptive", "static_hindsight",
                 "backup_hindsight", "oracle", "all"):
        assert re.search(rf"\b{name}\b", proc.stderr), name
    proc = cli("plot", "cutoffs", "--trace", trace, "--policy", "nonsense", "-o",
               tmp_path / "x.png", check=False)
    assert_one_line_error(proc, "nonsense", "adaptive", "recorded")


def test_backup_of_every_worker_is_an_error_not_a_clamp(trace):
    proc = cli("simulate", "--trace", trace, "--policy", "backup", "--param", "backup=8",
               "--json", check=False)
    assert_one_line_error(proc, "backup", "(8)")


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal, so that progress bars draw into it."""

    def isatty(self):
        return True


@pytest.mark.parametrize("kind", ["simulate", "plot"])
def test_progress_bars_go_to_stderr_and_stdout_stays_clean(trace, tmp_path, capsys,
                                                           monkeypatch, kind):
    from horovod_cutoff import cli as command_line
    from horovod_cutoff import sim

    monkeypatch.setattr(sim, "PROGRESS_DELAY", 0.0)  # draw at once, however short the work
    monkeypatch.setattr(sim, "PROGRESS_BLOCK", 1)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    png = tmp_path / "p.png"
    args = (["simulate", "--trace", str(trace), "--policy", "all", "--json"] if kind == "simulate"
            else ["plot", "policies", "--trace", str(trace), "-o", str(png)])
    assert command_line.main(args) == 0
    out = capsys.readouterr().out
    if kind == "simulate":
        assert [r["policy"] for r in json.loads(out)] == sim.policy_names()
    else:
        assert out == f"wrote {png}\n"
    drawn = terminal.getvalue()
    assert "policies" in drawn and "replay adaptive" in drawn


def test_simulate_all_can_leave_a_policy_out(trace):
    out = json.loads(cli("simulate", "--trace", trace, "--policy", "all", "--exclude", "predictive",
                         "--json").stdout)
    names = [r["policy"] for r in out]
    assert "predictive" not in names and "adaptive" in names and "oracle" in names
    bad = cli("simulate", "--trace", trace, "--policy", "all", "--exclude", "bogus", check=False)
    assert bad.returncode == 2 and "exclude" in bad.stderr


def test_train_writes_weights_the_simulator_loads(tmp_path, trace):
    # Regression: `train -o FILE` once failed with "-o/--output is required" (argparse kept
    # the "--" separator in front of the options it passes on).
    out = tmp_path / "w.pt"
    cli("train", "-o", out, "--iterations", 2, "--batch", 2, "--steps", 8, "--exclude", "markov")
    assert out.stat().st_size > 10_000
    res = json.loads(cli("simulate", "--trace", trace, "--policy", "predictive", "--model", out,
                         "--json").stdout)
    assert res["policy"] == "predictive" and res["gradients_per_second"] > 0


def test_simulate_arrivals_waits_out_a_missed_deadline_instead_of_an_empty_step(trace):
    args = ("simulate", "--trace", trace, "--policy", "static", "--param", "seconds=0.01",
            "--overhead", "0.01", "--json")
    plain = json.loads(cli(*args).stdout)
    arrivals = json.loads(cli(*args, "--arrivals").stdout)
    assert plain["arrivals"] is False and plain["zero_steps"] == 120  # every row: once empty
    assert arrivals["arrivals"] is True and arrivals["zero_steps"] == 0
    assert arrivals["steps"] == 120 and arrivals["gradients"] >= 120  # someone, every step


def test_simulate_all_with_arrivals_reports_the_hybrid_choice(trace):
    out = json.loads(cli("simulate", "--trace", trace, "--policy", "all", "--arrivals",
                         "--exclude", "predictive", "--json").stdout)
    results = {r["policy"]: r for r in out}
    chosen = results["hybrid_hindsight"]["chosen"]
    assert 1 <= chosen["quorum"] <= 8 and (chosen["cutoff"] == "inf" or chosen["cutoff"] > 0)
    assert all(r["arrivals"] is True and r["zero_steps"] == 0 for r in out)
    assert "--arrivals" in cli("simulate", "--help").stdout
