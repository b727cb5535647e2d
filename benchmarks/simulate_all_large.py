"""SIMALL: wall time and peak memory of `horovod-cutoff simulate --policy all` on a long, wide
trace (200,000 steps x 256 workers; --quick: 20,000 x 64), run as a user runs it: the command
line in a subprocess, the baselines and yardsticks (predictive left out with --exclude: its
reference inference costs milliseconds a step until the fused kernel). Not a target: the figure
behind "long work is neither slow nor silent"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, main  # noqa: E402

ID = "SIMALL"
SCENARIO, SEED, OVERHEAD = "mixture", 0, 0.02
TIMEOUT = 3 * 3600  # seconds; the full run takes minutes, mostly the online policies' replays


def sizes(quick: bool) -> dict:
    return {"steps": 20_000, "workers": 64} if quick else {"steps": 200_000, "workers": 256}


def run_command(command: list, timeout: float = TIMEOUT) -> tuple:
    """Runs ``command``; returns (seconds, peak resident MiB of that process, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = start + timeout
        while True:  # wait4, not wait: it also returns this child's own resource usage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"{' '.join(command)} did not finish in {timeout} s")
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout, stderr  # ru_maxrss: KiB on Linux


def run(quick: bool = False) -> dict:
    from horovod_cutoff.traces import save_trace
    from horovod_cutoff.traces.generators import generate

    n = sizes(quick)
    with tempfile.TemporaryDirectory() as folder:
        trace = save_trace(Path(folder) / "trace.npy",
                           generate(SCENARIO, n["workers"], n["steps"], SEED))
        command = [sys.executable, "-m", "horovod_cutoff.cli", "simulate", "--trace", str(trace),
                   "--policy", "all", "--exclude", "predictive", "--overhead", str(OVERHEAD),
                   "--json"]
        seconds, peak_mib, stdout, _ = run_command(command)
    results = json.loads(stdout)
    return {
        "id": ID, "value": round(seconds, 2), "unit": "s, simulate --policy all (wall)",
        "target": None, "met": True, "device": machine(),
        "peak_memory_mib": round(peak_mib, 1),
        "trace": {"scenario": SCENARIO, "seed": SEED, **n, "overhead": OVERHEAD},
        "cli": " ".join(["horovod-cutoff"] + command[3:]),
        "replay_seconds": {r["policy"]: round(r["replay_seconds"], 2) for r in results},
        "ratio_to_oracle": {r["policy"]: round(r["ratio_to_oracle"], 4) for r in results},
    }


if __name__ == "__main__":
    main(run)
