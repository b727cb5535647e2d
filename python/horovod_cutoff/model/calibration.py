"""Online calibration of the predictive spread: one factor per run, learned from where each
step's observed times fall in the previous prediction.

A calibrated predictive puts an observed time at a uniform probability integral transform
(PIT) u = F(x), so E|2u - 1| = 1/2; an under-dispersed one puts observations in its tails
(E|2u - 1| > 1/2), an over-dispersed one near its centre. The factor
(``predictive_log_times(spread=...)``) follows that error by stochastic approximation in log
space. A cut worker's time is only known to exceed the cutoff c: it enters with E|2u - 1|
over u ~ U(F(c), 1), its expectation under calibration. The pretrained weights fit a broad
family; this absorbs what the run's own cluster does differently (a narrower body, a wider
one) within tens of steps, for a compare per sample. (Separate factors below and above the
centre were tried: they fit the upper tail better, but widen it after every regime switch and
lost 0.3-0.5% of throughput on the Markov, rack and phase scenarios.)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np

RATE = 0.05           # step size of the log-factor update (about 20 steps of memory)
LIMITS = (0.25, 4.0)  # the factor stays within these: the model keeps its shape
# One scalar needs few PITs: at most this many workers (evenly spaced) and samples a step, so
# the update costs the same ~0.2 ms at 64 or 4096 workers (it holds the GIL on the service).
MAX_WORKERS, MAX_SAMPLES = 128, 256


def pit(log_samples: np.ndarray, log_times: np.ndarray) -> np.ndarray:
    """Each worker's probability integral transform u = F(x) under a sampled predictive: the
    fraction of its samples [S, N] below its time [N], ties counted half."""
    return (log_samples < log_times).mean(0) + 0.5 * (log_samples == log_times).mean(0)


def tail_error(log_samples: np.ndarray, log_times: np.ndarray, censored: np.ndarray) -> Optional[float]:
    """Mean |2u - 1| over the present workers of one step: u the fraction of that worker's
    samples [S, N] below its time (mid-rank for ties); censored workers by the expectation
    given u > F(c). None when nobody is present. Large steps are subsampled (MAX_WORKERS,
    MAX_SAMPLES)."""
    log_samples = log_samples[:MAX_SAMPLES]  # a view: rows are independent draws
    N = log_samples.shape[1]
    if N > MAX_WORKERS:
        cols = np.linspace(0, N - 1, MAX_WORKERS).astype(int)
        log_samples, log_times, censored = log_samples[:, cols], log_times[cols], censored[cols]
    present = ~np.isnan(log_times) & ~np.isnan(log_samples).any(0)  # absent, or not predicted
    if not present.any():
        return None
    L = log_samples[:, present]
    v = log_times[present]
    u = np.clip(pit(L, v), 0.0, 1.0)
    err = np.abs(2 * u - 1)
    cut = censored[present]
    if cut.any():  # u ~ U(u_c, 1)
        uc = u[cut]
        err[cut] = np.where(uc >= 0.5, uc, ((0.5 - uc) ** 2 + 0.25) / np.maximum(1 - uc, 1e-12))
    return float(err.mean())


class SpreadCalibration:
    """The run's spread factor (starts at 1: the pretrained model as it is)."""

    def __init__(self, rate: float = RATE):
        self.rate = float(rate)
        self.log_spread = 0.0

    @property
    def spread(self) -> float:
        return math.exp(self.log_spread)

    def update(self, log_samples: np.ndarray, log_times: np.ndarray, censored: np.ndarray) -> None:
        """Moves the factor by one step's error (samples: the prediction made for this step)."""
        err = tail_error(log_samples, log_times, censored)
        if err is None:
            return
        lo, hi = (math.log(x) for x in LIMITS)
        self.log_spread = min(hi, max(lo, self.log_spread + self.rate * 2 * (err - 0.5)))


ORDER_BINS = 32      # PIT levels of each order statistic's recalibration map
ORDER_MEMORY = 300   # steps: the decay of its counts (a window of about that many steps)
ORDER_PRIOR = 10.0   # pseudo-steps of "already calibrated" (spread evenly over the levels)


class OrderCalibration:
    """Recalibration of the predicted order statistics of the next step (x_(j), the j-th
    arrival among the present workers), which are all the quorum rule's objective depends on
    (inference.best_rule). Each worker's own predictive is calibrated (SpreadCalibration), but
    the model's joint draws place the order statistics badly on some clusters: on the Markov
    and rack scenarios most realized 60th arrivals of 64 fall above 95% of their samples, and a
    quorum chosen from them loses 1-2% of throughput instead of gaining.

    Per j, R_j is the distribution of the PIT u_j = F_j(x_(j)) of the realized j-th arrival
    under the prediction made for it (counts over ORDER_BINS levels, decayed as each j gets
    news; Kaplan-Meier where a step's deadline passed before its j-th arrival, known only to
    exceed F_j(end)). A step run under a quorum k never waits for the arrivals after the k-th:
    they are left as they were. (Censored at x_(k), or at the deadline in the steps where that
    came first, they would teach that x_(k+1) always lies far beyond x_(k), make waiting look
    worse and the quorum better, and feed that back: on the rack scenario that cost 2.5%.)
    The calibrated
    CDF of x_(j) is R_j(F_j(x)) (Kuleshov, Fenner & Ermon 2018, "Accurate uncertainties for
    deep learning using calibrated regression"); ``weights`` gives it as a probability for each
    of the prediction's sorted samples.
    """

    def __init__(self, bins: int = ORDER_BINS, memory: float = ORDER_MEMORY,
                 prior: float = ORDER_PRIOR):
        self.bins, self.keep, self.prior = int(bins), 1.0 - 1.0 / float(memory), float(prior)
        self.events = np.zeros((0, self.bins))    # [N, B] PITs seen in each level
        self.censored = np.zeros((0, self.bins))  # [N, B] PITs known to exceed a level in it

    def update(self, columns: np.ndarray, arrived: np.ndarray, end: float,
               quorum: Optional[int] = None) -> None:
        """One step: ``columns`` [N, S], the prediction made for it (row j: the samples of the
        (j+1)-th arrival, sorted); ``arrived``, the n <= N arrivals it saw, sorted (same units);
        ``end``, the deadline the others were censored at; ``quorum``, the k it ran under (the
        arrivals after the k-th are left as they were; None: all are told)."""
        N, S = columns.shape
        if self.events.shape[0] < N:  # more workers than seen so far: new rows start empty
            grow = ((0, N - self.events.shape[0]), (0, 0))
            self.events, self.censored = np.pad(self.events, grow), np.pad(self.censored, grow)
        B = self.bins
        told = N if quorum is None else max(min(int(quorum), N), int(arrived.size))
        n = min(int(arrived.size), told)
        self.events[:told] *= self.keep
        self.censored[:told] *= self.keep
        if n:  # the PIT at mid-rank (continuous samples: a tie is as likely as not)
            u = (np.count_nonzero(columns[:n] < arrived[:n, None], axis=1) + 0.5) / S
            self.events[np.arange(n), np.minimum((u * B).astype(int), B - 1)] += 1.0
        if told > n:
            low = np.count_nonzero(columns[n:told] <= end, axis=1) / S
            self.censored[np.arange(n, told), np.minimum((low * B).astype(int), B - 1)] += 1.0

    def weights(self, workers: int, samples: int) -> np.ndarray:
        """[N, S]: the calibrated probability of each of a prediction's sorted samples of each
        order statistic, R_j((r + 1) / S) - R_j(r / S) (1 / S where nothing is known)."""
        B = self.bins
        events = np.full((workers, B), self.prior / B)
        censored = np.zeros((workers, B))
        seen = min(workers, self.events.shape[0])
        events[:seen] += self.events[:seen]
        censored[:seen] += self.censored[:seen]
        counts = events + censored
        at_risk = counts.sum(1, keepdims=True) - np.cumsum(counts, axis=1) + counts  # level b on
        survival = np.cumprod(1.0 - events / at_risk, axis=1)
        R = np.concatenate([np.zeros((workers, 1)), 1.0 - survival], axis=1)  # at levels b / B
        R[:, -1] = 1.0  # mass no one has seen yet: at the top
        return R @ _level_weights(B, samples)


@lru_cache(maxsize=8)
def _level_weights(bins: int, samples: int) -> np.ndarray:
    """[B + 1, S]: maps a CDF R at the levels b / B to the probabilities of S sorted samples,
    R((r + 1) / S) - R(r / S), R linear between levels (one product instead of gathers)."""
    at = np.arange(samples + 1) * (bins / samples)
    i = np.minimum(at.astype(int), bins - 1)
    interp = np.zeros((bins + 1, samples + 1))
    interp[i, np.arange(samples + 1)] = 1.0 - (at - i)
    interp[i + 1, np.arange(samples + 1)] += at - i
    return np.diff(interp, axis=1)
