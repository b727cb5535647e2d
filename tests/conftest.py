"""Shared fixtures: launching real horovodrun jobs on localhost over Gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

WORKER = Path(__file__).parent / "multirank" / "worker.py"
HOROVODRUN = Path(sys.executable).with_name("horovodrun")


class Job:
    def __init__(self, returncode: int, seconds: float, output: str, results: List[Optional[dict]]):
        self.returncode, self.seconds, self.output, self.results = returncode, seconds, output, results

    def rank(self, r: int) -> Dict[str, Any]:
        if self.results[r] is None:
            raise AssertionError(f"rank {r} wrote no result; job output:\n{self.output[-4000:]}")
        return self.results[r]


def launch(np: int, argv: List[str], timeout: float, what: str,
           stderr: int = subprocess.STDOUT, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``horovodrun -np N -H localhost:N --gloo`` running ``argv`` with this interpreter. A job
    still running after ``timeout`` s fails the test as a hang, its ranks killed with it (they
    are in horovodrun's process group). stderr joins stdout unless ``stderr`` says otherwise."""
    assert HOROVODRUN.exists(), f"{HOROVODRUN} is missing: run scripts/setup.sh first"
    cmd = [str(HOROVODRUN), "-np", str(np), "-H", f"localhost:{np}", "--gloo", sys.executable, *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                            cwd=cwd, start_new_session=True)
    try:
        stdout, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not just horovodrun
        stdout, err = proc.communicate()
        raise AssertionError(f"{what} did not finish in {timeout} s (a hang); "
                             f"output:\n{(stdout + (err or ''))[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, err)


@pytest.fixture
def horovodrun(tmp_path):
    """run(np, scenario, timeout=..., **params) -> Job, running tests/multirank/worker.py."""

    def run(np: int, scenario: str, timeout: float = 120, **params: Any) -> Job:
        start = time.monotonic()
        done = launch(np, [str(WORKER), scenario, str(tmp_path), json.dumps(params)], timeout,
                      f"horovodrun {scenario}")
        seconds = time.monotonic() - start
        results = []
        for r in range(np):
            f = tmp_path / f"rank{r}.json"
            results.append(json.loads(f.read_text()) if f.exists() else None)
        return Job(done.returncode, seconds, done.stdout, results)

    return run


@pytest.fixture
def launch_horovodrun():
    """launch(np, argv, timeout, what, stderr=..., cwd=...): any script under horovodrun."""
    return launch


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test, restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
