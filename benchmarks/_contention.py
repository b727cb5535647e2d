"""Real contention for a live run: a noisy neighbour (CPU-burning processes in on/off spells)
pinned to the CPU of one rank, while the other ranks keep the other CPUs. Nothing sleeps on
the slowed rank's behalf: it is slower because the kernel gives it a smaller share of its
CPU while the neighbour burns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import List, Sequence, Tuple

import numpy as np

# Each burner is one process: sleep until a spell starts, spin until it ends.
_BURNER = """
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
for on, off in json.loads(sys.argv[2]):
    while time.time() < on:
        time.sleep(min(0.05, max(on - time.time(), 0)))
    while time.time() < off:
        pass
"""


def spells(seconds: float, seed: int, on_s: Tuple[float, float] = (1.0, 3.0),
           off_s: Tuple[float, float] = (1.0, 3.0)) -> List[Tuple[float, float]]:
    """(start, end) of each burning spell, seconds from the run's start: off and on in turn,
    each lasting a seeded uniform draw, so every run meets the same neighbour in time."""
    rng = np.random.default_rng(seed)
    out, t = [], float(rng.uniform(*off_s))
    while t < seconds:
        length = float(rng.uniform(*on_s))
        out.append((t, t + length))
        t += length + float(rng.uniform(*off_s))
    return out


def pin_process(cpus: Sequence[int]) -> None:
    """Every thread of this process (Horovod's, torch's, the engine's) onto ``cpus``; threads
    started later inherit it from the thread that starts them."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), set(cpus))
        except OSError:  # a thread that ended meanwhile
            pass


class NoisyNeighbour:
    """``burners`` processes pinned to ``cpu``, burning during ``spells`` (seconds from start())."""

    def __init__(self, cpu: int, burners: int, spells: Sequence[Tuple[float, float]]):
        self.cpu, self.burners, self.spells = int(cpu), int(burners), list(spells)
        self._procs: List[subprocess.Popen] = []

    def start(self) -> None:
        now = time.time()
        windows = json.dumps([(now + on, now + off) for on, off in self.spells])
        self._procs = [subprocess.Popen([sys.executable, "-c", _BURNER, str(self.cpu), windows])
                       for _ in range(self.burners)]

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()
        self._procs = []

    def burning_fraction(self, seconds: float) -> float:
        """The share of the first ``seconds`` during which the neighbour burned."""
        burned = sum(max(0.0, min(off, seconds) - on) for on, off in self.spells if on < seconds)
        return burned / seconds if seconds > 0 else 0.0

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
