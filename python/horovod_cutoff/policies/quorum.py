"""The joint (cutoff, quorum) choice from predictive samples, for the policies that answer a
quorum as well as a cutoff (predictive; adaptive with ``quorum=True``): a step then ends at
min(c, k-th arrival) (DESIGN "Arrivals").

Each step: the next step's samples become predicted order statistics
(model/inference.order_statistics), recalibrated by where the realized arrivals fell in the
previous prediction (model/calibration.OrderCalibration), and model/inference.best_rule picks
the best (c, k), answered only when it beats the time-only cutoff by the objective. Every
EXPLORE-th step runs time-only: under a quorum k the arrivals after the k-th are never waited
for, so without those steps their calibration would go stale (on the phase scenario that cost
1.4% of throughput). Uncalibrated, the choice trusts the joint draws, which place the late
arrivals badly where slowdowns persist or come in groups (Markov, rack, mixture: 1-2.5% lost).
Calibrated, the draws' dependence between workers is first re-learned from the run's own steps
(model/dependence.py: the empirical copula of recent PITs, then groups of workers that
straggle together sharing their mode), which is what makes the quorum gain on the rack
scenario instead of losing (bench P5A's quorum_vs_time_only there: 0.9975 before); until
that has MIN_HISTORY steps to learn from, the choice is time-only.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..model.calibration import OrderCalibration
from ..model.dependence import EmpiricalCopula, SlowdownGroups
from ..model.inference import best_rule, order_rows, order_statistics

EXPLORE = 8  # every EXPLORE-th choice is time-only (calibrated choices only)


class QuorumChoice:
    """One policy's joint choice, step after step. ``calibrate=False`` trusts the samples."""

    def __init__(self, overhead: float, objective: str = "step", calibrate: bool = True,
                 seed: int = 0):
        self.overhead, self.objective = float(overhead), objective
        self.calibration = OrderCalibration() if calibrate else None
        self.copula = EmpiricalCopula(seed) if calibrate else None
        self.groups = SlowdownGroups(seed + 1) if calibrate else None
        self._last: Optional[np.ndarray] = None  # the last prediction's order statistics
        self._choices = 0

    def choose(self, times: np.ndarray, censored: np.ndarray, log_samples: np.ndarray,
               cutoff: float, ran: Optional[int], rate: Optional[float] = None
               ) -> Tuple[float, Optional[int]]:
        """The (cutoff, quorum) for the next step, from its log samples [S, N] (absent
        workers' columns are dropped), given the step just observed (``times``, ``censored``;
        ``ran``: the quorum it ran under) and the time-only ``cutoff``."""
        present = ~np.isnan(times)
        n = int(present.sum())
        with np.errstate(divide="ignore"):  # a 0.0 time: log -inf, still the earliest
            log_times = np.log(times)
        if self.copula is not None:
            self.groups.observe(log_times, censored)
            log_samples = self.groups.apply(self.copula.apply(log_times, censored, log_samples))
        rows = order_rows(n)  # beyond ORDER_ROWS workers, every m-th arrival stands for m
        order = order_statistics(log_samples[:, present], rows)
        weights = None
        if self.calibration is not None:
            if self._last is not None and self._last.shape[0] == rows.size:
                arrived = np.sort(log_times[present & ~censored])
                end = float(log_times[censored].max()) if censored.any() else math.inf
                told = n if ran is None else max(min(int(ran), n), arrived.size)
                self.calibration.update(self._last, arrived[rows[rows < arrived.size]], end,
                                        int(np.count_nonzero(rows < told)))
            weights = self.calibration.weights(*order.shape)
        self._last = order
        self._choices += 1
        if self.calibration is not None and self._choices % EXPLORE == 0:
            return cutoff, None
        if self.copula is not None and not self.copula.ready:  # the joint is not learned yet
            return cutoff, None
        c, k, _, _ = best_rule(order, self.overhead, cutoff, self.objective, rate, weights,
                               None if rows.size == n else rows)
        if not c > 0:  # inf is fine with a quorum: the quorum alone ends the step
            raise FloatingPointError(f"the joint choice gave cutoff {c}")
        return c, k
