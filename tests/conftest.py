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


@pytest.fixture
def horovodrun(tmp_path):
    """run(np, scenario, timeout=..., **params) -> Job, running tests/multirank/worker.py."""

    def run(np: int, scenario: str, timeout: float = 120, **params: Any) -> Job:
        assert HOROVODRUN.exists(), f"{HOROVODRUN} is missing: run scripts/setup.sh first"
        cmd = [str(HOROVODRUN), "-np", str(np), "-H", f"localhost:{np}", "--gloo",
               sys.executable, str(WORKER), scenario, str(tmp_path), json.dumps(params)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not just horovodrun
            output, _ = proc.communicate()
            raise AssertionError(f"horovodrun {scenario} did not finish in {timeout} s (a hang); "
                                 f"output:\n{output[-3000:]}") from None
        seconds = time.monotonic() - start
        results = []
        for r in range(np):
            f = tmp_path / f"rank{r}.json"
            results.append(json.loads(f.read_text()) if f.exists() else None)
        return Job(proc.returncode, seconds, output, results)

    return run


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test, restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
