"""The model-free adaptive baseline: a per-worker exponentially weighted log-normal predictive
of next step's time, censoring-aware, and the expected-throughput argmax over cutoffs.

Each worker n keeps an EWMA mean and variance of its log time (``alpha`` per step), so its
next time is predicted as LogNormal(mu_n, sd_n). The cutoff maximises the paper's per-step
ratio sum_n P(x_n <= c) / (c + o), found in closed form per candidate (no sampling noise) and
maximised to within 1e-6 of the objective (lognormal.best_cutoff). Censoring: a cut worker's
log time enters the update as E[log x | log x > log c] under its current predictive (one
EM-style imputation), never as the cutoff itself, which would teach the policy that a slow
worker is fast. A step nobody made teaches it nothing but lower bounds: it keeps its state
(the next step waits for every worker anyway, base.cutoff_after_empty_step).

It is the bar the learned model must clear: it adapts to slow nodes and drifts, but knows
nothing of regimes, correlations or periodicity. (Targeting the long-run rate instead, with
E[k] - lambda * (E[min(c, max x)] + o), was compared on the shipped scenarios: no
consistent gain, so the paper's ratio stays.)

``quorum=True`` also answers a quorum, chosen jointly with the cutoff (policies/quorum.py)
from S draws of its independent per-worker predictives. Off by default: with the arrival
channel (64 workers, 2000 steps, o = 0.02 s) it gained 0.3% on average over the shipped
scenarios (up to 1.1% on drift, 0.8% on mixture) but lost 0.7% on rack and 0.4% on periodic,
and it costs a sampling and the joint choice every step.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .base import Policy, check_step
from .lognormal import best_cutoff, impute_censored_log
from .quorum import QuorumChoice

MIN_SD = 0.02  # log-space floor: a worker never looks perfectly predictable
QUORUM_DRAWS = 16384  # quorum=True: S = this / N draws a step, within 64..256 (as predictive)


class AdaptiveLogNormal(Policy):
    name = "adaptive"

    def __init__(self, alpha: float = 0.2, overhead: Optional[float] = None, warmup: int = 3,
                 quorum: bool = False, seed: int = 0):
        if not (0.0 < float(alpha) <= 1.0):
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        if int(warmup) < 1:
            raise ValueError(f"warmup must be at least 1 step, got {warmup}")
        self.alpha = float(alpha)
        self._take_overhead(overhead)
        self.warmup = int(warmup)
        self.mu: Optional[np.ndarray] = None
        self.var: Optional[np.ndarray] = None
        self.seen = 0
        self._cutoff = math.inf
        self._stale = False
        self._present: Optional[np.ndarray] = None
        if not isinstance(quorum, (bool, np.bool_)):
            raise ValueError(f"quorum must be True or False, got {quorum!r}")
        self.seed = int(seed)
        self.joint = QuorumChoice(self.overhead, seed=self.seed) if quorum else None
        self._rng = np.random.default_rng(self.seed)
        self._quorum: Optional[int] = None

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        times, censored = check_step(times, censored)
        present = ~np.isnan(times)
        if not (present & ~censored).any():  # nobody made it (or nobody was there): keep state
            return
        log_t = np.log(np.maximum(times, 1e-9))
        if self.mu is None or self.mu.shape != times.shape:
            # First look: uncensored logs as they are; a cut worker starts at twice the cutoff.
            self.mu = np.where(censored, log_t + math.log(2.0), log_t)
            self.mu[~present] = np.nanmean(np.where(present, self.mu, np.nan))
            self.var = np.full(times.shape, 0.25**2)
        else:
            sd = np.maximum(np.sqrt(self.var), MIN_SD)
            with np.errstate(invalid="ignore"):  # absent workers are NaN here, masked below
                imputed = impute_censored_log(log_t, self.mu, sd)
            value = np.where(censored, imputed, log_t)
            a = self.alpha
            delta = np.where(present, value - self.mu, 0.0)
            self.mu = self.mu + a * delta
            self.var = np.where(present, (1 - a) * (self.var + a * delta**2), self.var)
        self.seen += 1
        if self.seen >= self.warmup:
            self._present = present
            self._stale = True  # computed when asked: a policy shadowing this one rarely asks
            if self.joint is not None:  # its calibration learns every step: choose now
                S = max(64, min(256, QUORUM_DRAWS // times.size))
                sd = np.maximum(np.sqrt(self.var), MIN_SD)
                draws = (self.mu + sd * self._rng.standard_normal((S, times.size))).astype(np.float32)
                self._cutoff, self._quorum = self.joint.choose(
                    times, censored, draws, self.cutoff_time_only(), self._quorum)
                self._stale = False

    def set_overhead(self, seconds: float) -> None:
        super().set_overhead(seconds)
        if self.joint is not None:
            self.joint.overhead = self.overhead
        if self._present is not None and self.joint is None:
            self._stale = True  # the time-only cutoff is recomputed with it when asked

    def cutoff_time_only(self) -> float:
        """The time-only cutoff for the next step (the paper's per-step ratio)."""
        sd = np.maximum(np.sqrt(self.var), MIN_SD)
        return best_cutoff(self.mu[self._present], sd[self._present], self.overhead)

    def cutoff(self) -> float:
        if self._stale:
            self._cutoff = self.cutoff_time_only()
            self._stale = False
        return self._cutoff

    def quorum(self) -> Optional[int]:
        return self._quorum

    def config(self) -> dict:
        return {"policy": self.name, "alpha": self.alpha, "overhead": self._overhead_config(),
                "warmup": self.warmup, "quorum": self.joint is not None, "seed": self.seed}
