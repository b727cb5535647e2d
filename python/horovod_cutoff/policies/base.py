"""The one interface every cutoff policy implements, live and in the simulator.

A policy sees, after each step, every worker's time with a censoring flag (a cut worker's
true time is unknown: it shows the cutoff and ``censored=True``), and answers with the
cutoff for a coming step in seconds measured from step start. ``math.inf`` means "wait for
every worker".
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np


def cutoff_after_empty_step(previous: float) -> float:
    """The cutoff of the execution that follows a step nobody made (count 0): wait for every
    worker, whatever ``previous`` (the cutoff nobody made) was.

    One rule, one owner. A policy that cut everyone has just learned only lower bounds, so
    the next execution waits for all and shows it every worker's true time; the policy's own
    cutoff applies again from the execution after that. The simulator (sim.replay and
    oracle.fixed_cutoff_cost) calls this; the live engine (csrc/engine.cc) applies the same
    rule. A policy therefore needs no widening of its own for a step nobody made: on an
    all-censored observation it may simply keep its state.
    """
    return math.inf


@runtime_checkable
class CutoffPolicy(Protocol):
    """What the live optimizer and the simulator call; any object with these methods plugs in."""

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        """Record one step: ``times[n]`` seconds for worker n (the cutoff if ``censored[n]``).

        NaN in ``times`` marks an absent worker: it neither finished nor was cut.
        """

    def cutoff(self) -> float:
        """Seconds from step start after which non-finished workers are cut (``inf``: none)."""


class Policy:
    """Convenience base: argument checking and the optional parts of the interface.

    ``quorum()`` lets a policy end a step at its k-th arrival as well: the step ends at
    min(cutoff, k-th arrival) (None: the cutoff alone). The live engine honours it through
    its arrival channel (DESIGN "Arrivals"), the simulator by the replay.
    """

    name: str = "policy"
    # Policies that charge a per-step overhead o take ``overhead``; None (their default)
    # means "measured": 0 until the live cutoff service measures it and calls set_overhead()
    # (DESIGN "The cutoff": o is measured). The simulator always gives one (--overhead).
    overhead: float = 0.0
    overhead_measured: bool = False

    def _take_overhead(self, overhead: Optional[float]) -> None:
        self.overhead_measured = overhead is None
        self.overhead = 0.0 if overhead is None else non_negative_seconds(overhead, "overhead")

    def set_overhead(self, seconds: float) -> None:
        """The per-step overhead the objective charges from the next choice on."""
        self.overhead = non_negative_seconds(seconds, "overhead")

    def _overhead_config(self) -> Any:
        return "measured" if self.overhead_measured else self.overhead

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def cutoff(self) -> float:  # pragma: no cover
        raise NotImplementedError

    def quorum(self) -> Optional[int]:
        return None

    def config(self) -> dict:
        """What must agree across ranks (compared at the first live step)."""
        return {"policy": self.name}


def check_step(times: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise one observation; raises ValueError naming the argument."""
    times = np.asarray(times, dtype=np.float64)
    censored = np.asarray(censored, dtype=bool)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D vector of worker times, got shape {times.shape}")
    if censored.shape != times.shape:
        raise ValueError(
            f"censored must have the shape of times {times.shape}, got {censored.shape}"
        )
    finite = times[~np.isnan(times)]
    if np.any(finite < 0) or np.any(np.isinf(finite)):
        raise ValueError("times must be finite and non-negative (NaN marks an absent worker)")
    return times, censored


def positive_seconds(value: float, argument: str) -> float:
    """A strictly positive, finite number of seconds, or ValueError naming ``argument``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a number of seconds, got {value!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{argument} must be a positive, finite number of seconds, got {value}")
    return value


def non_negative_seconds(value: float, argument: str) -> float:
    """A finite number of seconds >= 0, or ValueError naming ``argument``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a number of seconds, got {value!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{argument} must be a non-negative number of seconds, got {value}")
    return value
