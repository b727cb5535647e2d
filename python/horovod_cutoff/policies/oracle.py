"""Whole-trace yardsticks for the simulator (no live counterpart): the oracle, which knows
every step's true times, and the best fixed cutoff / best fixed b chosen with hindsight."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Yardstick:
    name: str
    gradients: float
    seconds: float
    steps: int
    parameter: float  # the chosen fixed cutoff or b; NaN for the oracle

    @property
    def rate(self) -> float:
        return self.gradients / self.seconds if self.seconds > 0 else 0.0


def _sorted_rows(times: np.ndarray) -> tuple:
    """Rows sorted ascending with NaN (absent) last, and each row's count of present workers."""
    return np.sort(times, axis=1), (~np.isnan(times)).sum(axis=1)


def oracle(times: np.ndarray, overhead: float, iterations: int = 50) -> Yardstick:
    """Maximises total gradients / total time over the whole trace by choosing, per step, how
    many of the fastest workers to wait for (Dinkelbach: per step max k - lam * (x_(k) + o),
    then lam <- ratio, until it stops changing). Always waits for at least one worker."""
    xs, present = _sorted_rows(times)
    k = np.arange(1, xs.shape[1] + 1, dtype=float)[None, :]
    valid = k <= present[:, None]
    duration = xs + overhead
    lam = 0.0
    for _ in range(iterations):
        score = np.where(valid, k - lam * duration, -np.inf)
        best = np.argmax(score, axis=1)
        rows = np.arange(xs.shape[0])
        gradients = float((best + 1).sum())
        seconds = float(duration[rows, best].sum())
        new = gradients / seconds if seconds > 0 else math.inf  # all-zero times
        if math.isinf(new) or abs(new - lam) <= 1e-12 * max(new, 1.0):
            break
        lam = new
    return Yardstick("oracle", gradients, seconds, xs.shape[0], float("nan"))


def backup_hindsight(times: np.ndarray, overhead: float) -> Yardstick:
    """The best fixed number b of backup workers for this trace: each step ends at the
    (N-b)-th arrival and yields the workers done by then."""
    xs, present = _sorted_rows(times)
    rows = np.arange(xs.shape[0])
    best = None
    for b in range(xs.shape[1]):
        k = np.maximum(present - b, 1)
        end = xs[rows, k - 1]
        gradients = float((times <= end[:, None]).sum())
        seconds = float((end + overhead).sum())
        cand = Yardstick("backup_hindsight", gradients, seconds, xs.shape[0], float(b))
        if best is None or cand.rate > best.rate:
            best = cand
    return best


def fixed_cutoff_cost(times: np.ndarray, cutoffs: np.ndarray, overhead: float) -> tuple:
    """Gradients, seconds and step executions of replaying the trace under each fixed cutoff,
    with the simulator's rule for a step nobody makes (it costs c + o, is replayed, and the
    replay's cutoff doubles until someone makes it). Shapes: times [T, N], cutoffs [M];
    a cutoff of inf waits for every worker."""
    xs, present = _sorted_rows(times)
    fastest = xs[:, 0][:, None]
    slowest = np.nanmax(times, axis=1)[:, None]
    c = np.asarray(cutoffs, dtype=float)[None, :]
    finite = np.isfinite(c)
    safe = np.where(finite, c, 1.0)  # inf * 0 would be NaN below; inf never needs a retry
    # Doublings needed before the fastest worker makes it: 2^j c >= fastest.
    j = np.where(finite, np.maximum(np.ceil(np.log2(fastest / safe) - 1e-12), 0.0), 0.0)
    final = np.where(finite, safe * 2.0**j, np.inf)
    wasted = safe * (2.0**j - 1.0) + j * overhead  # the failed tries: c + 2c + ... + o each
    seconds = (wasted + np.minimum(final, slowest) + overhead).sum(axis=0)
    gradients = np.zeros(c.shape[1])
    for m in range(c.shape[1]):  # counting per cutoff keeps memory at [T, N]
        gradients[m] = float((times <= final[:, m][:, None]).sum())
    executions = (j + 1).sum(axis=0)
    return gradients, seconds, executions


def static_hindsight(times: np.ndarray, overhead: float, exact_limit: int = 4096) -> Yardstick:
    """The best fixed cutoff for this trace. The rate only falls between data points, so the
    optimum is one of the worker times: all of them for small traces, else 512 quantiles
    followed by every worker time between the best quantile's neighbours."""
    values = np.unique(times[~np.isnan(times)])
    if values.size <= exact_limit:
        candidates = values
    else:
        coarse = np.quantile(values, np.linspace(0, 1, 512))
        g, s, _ = fixed_cutoff_cost(times, coarse, overhead)
        i = int(np.argmax(g / s))
        lo, hi = coarse[max(i - 1, 0)], coarse[min(i + 1, coarse.size - 1)]
        candidates = values[(values >= lo) & (values <= hi)]
        if candidates.size > exact_limit:
            candidates = np.quantile(candidates, np.linspace(0, 1, exact_limit))
    best = None
    for chunk in np.array_split(candidates, max(1, candidates.size // 256)):
        g, s, e = fixed_cutoff_cost(times, chunk, overhead)
        i = int(np.argmax(g / s))
        cand = Yardstick("static_hindsight", float(g[i]), float(s[i]), int(e[i]), float(chunk[i]))
        if best is None or cand.rate > best.rate:
            best = cand
    return best
