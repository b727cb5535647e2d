"""Baseline policies that need no model: wait for all, a fixed cutoff, backup workers."""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np

from .base import Policy, check_step, positive_seconds

# A cut worker tells us only that the quantity we track lies beyond the cutoff; where that
# quantity decides the cutoff, we widen by this factor so that a too-tight cutoff recovers
# in a few steps rather than starving. (A step nobody made needs none of this: the next
# execution waits for every worker, base.cutoff_after_empty_step.)
WIDEN = 2.0


class NoCutoff(Policy):
    """Plain Horovod: every step waits for every worker."""

    name = "none"

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        check_step(times, censored)

    def cutoff(self) -> float:
        return math.inf

    def fixed_cutoff(self) -> float:
        """The cutoff never changes: the simulator may replay the whole trace at once."""
        return math.inf


class StaticCutoff(Policy):
    """A fixed cutoff in seconds, or a fixed quantile of the last ``window`` steps' times.

    In quantile mode cut workers count as "beyond the cutoff" (+inf), so when the quantile
    falls among them the cutoff widens instead of shrinking on imputed values.
    """

    name = "static"

    def __init__(
        self, seconds: Optional[float] = None, quantile: Optional[float] = None, window: int = 50
    ):
        if (seconds is None) == (quantile is None):
            raise ValueError("static cutoff needs exactly one of seconds= or quantile=")
        if seconds is not None:
            seconds = positive_seconds(seconds, "seconds")
        if quantile is not None and not (0.0 < float(quantile) <= 1.0):
            raise ValueError(f"quantile must lie in (0, 1], got {quantile}")
        if int(window) < 1:
            raise ValueError(f"window must be a positive number of steps, got {window}")
        self.seconds = seconds
        self.quantile = None if quantile is None else float(quantile)
        self.window: deque = deque(maxlen=int(window))
        self._cutoff = math.inf if seconds is None else seconds

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        times, censored = check_step(times, censored)
        if self.quantile is None:
            return
        present = ~np.isnan(times)
        self.window.append(np.where(censored, np.inf, times)[present])
        pooled = np.concatenate(list(self.window))
        if pooled.size == 0:
            return
        q = float(np.quantile(pooled, self.quantile, method="higher"))
        if math.isinf(q):
            # The quantile lies among cut workers: all we know is that it exceeds the cutoff.
            q = WIDEN * float(np.max(times[present]))
        self._cutoff = q

    def cutoff(self) -> float:
        return self._cutoff

    def fixed_cutoff(self) -> Optional[float]:
        """The cutoff in seconds mode (it never changes); None when it follows a quantile."""
        return self.seconds

    def config(self) -> dict:
        return {"policy": self.name, "seconds": self.seconds, "quantile": self.quantile,
                "window": self.window.maxlen}


class BackupWorkers(Policy):
    """Chen et al. 2016: end the step once the first N-b workers are done.

    It answers the quorum N - b (N: the workers present at its last observation) and no
    cutoff: the engine ends each step at that arrival exactly (live through its arrival
    channel, DESIGN "Arrivals"; in the simulator by the replay). Until it has seen a step it
    waits for every worker. ``backup`` must be smaller than the number of workers.
    """

    name = "backup"

    def __init__(self, backup: int = 1):
        if isinstance(backup, bool) or not isinstance(backup, (int, np.integer)) or backup < 0:
            raise ValueError(
                f"backup must be a non-negative integer number of workers, got {backup!r}")
        self.backup = int(backup)
        self.workers: Optional[int] = None

    def quorum(self) -> Optional[int]:
        if self.workers is None:
            return None
        return max(1, self.workers - self.backup)

    def check_workers(self, workers: int) -> None:
        """ValueError naming ``backup`` unless it leaves at least one of ``workers`` to wait for
        (the live optimizer calls this at construction)."""
        if self.backup >= workers:
            raise ValueError(f"backup must be smaller than the number of workers ({workers}): "
                             f"with backup={self.backup} no worker would be waited for")

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        times, censored = check_step(times, censored)
        self.check_workers(times.size)
        present = int((~np.isnan(times)).sum())
        if present:
            self.workers = present

    def cutoff(self) -> float:
        return math.inf  # the quorum alone ends the step

    def config(self) -> dict:
        return {"policy": self.name, "backup": self.backup}
