"""Straggler injection: each rank takes its recorded time per step, so that live runs of
different policies meet the same stragglers.

Modes say how the rank is busy, which matters for who can still act while it is:
``sleep`` releases the GIL; ``spin`` is a pure-Python loop (holds the GIL, yields at
switch intervals); ``gil`` is C code that never yields the GIL (``sum(range(n))``);
``torch`` runs tensor ops. Work goes in slices of about a millisecond so a cut rank can
abort between them.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

import numpy as np
import torch

from .format import PathLike, load_trace, validate

MODES = ("sleep", "spin", "gil", "torch")
SLICE = 1e-3  # seconds of work between abort checks


class StragglerInjector:
    """Adds trace[step % T, rank % N] * scale seconds of work to this rank's step."""

    def __init__(self, trace: Union[PathLike, np.ndarray], rank: int, mode: str = "sleep",
                 scale: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (float(scale) >= 0):
            raise ValueError(f"scale must be a non-negative factor, got {scale}")
        if int(rank) < 0:
            raise ValueError(f"rank must be non-negative, got {rank}")
        self.times = validate(trace, "trace") if isinstance(trace, np.ndarray) else load_trace(trace)
        self.rank = int(rank)
        self.mode = mode
        self.scale = float(scale)
        self._gil_rate = _calibrate_gil() if mode == "gil" else 0.0
        self._tensor = torch.ones(96, 96) if mode == "torch" else None

    def seconds(self, step: int) -> float:
        """The recorded time of this rank at ``step`` (0 for an absent worker)."""
        value = self.times[step % self.times.shape[0], self.rank % self.times.shape[1]]
        return 0.0 if np.isnan(value) else float(value) * self.scale

    def delay(self, step: int, abort: Optional[Callable[[], bool]] = None) -> float:
        """Be busy for this step's recorded time; returns early once ``abort()`` is true."""
        target = self.seconds(step)
        start = time.perf_counter()
        end = start + target
        while True:
            now = time.perf_counter()
            if now >= end or (abort is not None and abort()):
                return now - start
            # Without an abort check the work runs in one piece (a GIL hold stays unbroken).
            self._work(end - now if abort is None else min(SLICE, end - now))

    def _work(self, seconds: float) -> None:
        if self.mode == "sleep":
            time.sleep(seconds)
        elif self.mode == "spin":
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                pass
        elif self.mode == "gil":
            sum(range(max(1, int(seconds * self._gil_rate))))
        else:
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                self._tensor = torch.tanh(self._tensor @ self._tensor * 1e-2)


def _calibrate_gil() -> float:
    """Integers per second that ``sum(range(n))`` adds on this machine."""
    n = 200_000
    start = time.perf_counter()
    sum(range(n))
    return n / max(time.perf_counter() - start, 1e-6)
