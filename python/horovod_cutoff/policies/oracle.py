"""Whole-trace yardsticks for the simulator (no live counterpart): the oracle, which knows
every step's true times, and the best fixed cutoff / best fixed b chosen with hindsight."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import cutoff_after_empty_step


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


ROW_CHUNK = 8192  # rows per pass where a [T, N] temporary would otherwise be needed
VALUE_CHUNK = 1 << 22  # sorted worker times evaluated per pass by static_hindsight


def oracle(times: np.ndarray, overhead: float, iterations: int = 50) -> Yardstick:
    """Maximises total gradients / total time over the whole trace by choosing, per step, how
    many of the fastest workers to wait for (Dinkelbach: per step max k - lam * (x_(k) + o),
    then lam <- ratio, until it stops changing). Always waits for at least one worker."""
    durations, present = _sorted_rows(times)
    durations += overhead  # our own sorted copy: x_(k) + o in place
    k = np.arange(1, durations.shape[1] + 1, dtype=float)[None, :]
    lam = 0.0
    for _ in range(iterations):
        gradients = seconds = 0.0
        for lo in range(0, durations.shape[0], ROW_CHUNK):  # bounded temporaries on long traces
            duration = durations[lo:lo + ROW_CHUNK]
            valid = k <= present[lo:lo + ROW_CHUNK, None]
            best = np.argmax(np.where(valid, k - lam * duration, -np.inf), axis=1)
            gradients += float((best + 1).sum())
            seconds += float(duration[np.arange(best.size), best].sum())
        new = gradients / seconds if seconds > 0 else math.inf  # all-zero times
        if math.isinf(new) or abs(new - lam) <= 1e-12 * max(new, 1.0):
            break
        lam = new
    return Yardstick("oracle", gradients, seconds, durations.shape[0], float("nan"))


def backup_hindsight(times: np.ndarray, overhead: float) -> Yardstick:
    """The best fixed number b of backup workers for this trace: each step ends at the
    (N-b)-th arrival and yields the workers done by then (ties with it included)."""
    xs, present = _sorted_rows(times)
    T, N = xs.shape
    rows = np.arange(T)
    # made[t, j]: how many of row t's workers are done by its (j+1)-th arrival, i.e. the end
    # of the run of times equal to xs[t, j], plus one. NaN (absent) never equals anything.
    column = np.arange(N, dtype=np.int32)
    run_end = np.empty(xs.shape, dtype=np.int32)
    run_end[:, -1] = N - 1
    run_end[:, :-1] = np.where(xs[:, :-1] != xs[:, 1:], column[:-1], N - 1)
    made = np.minimum.accumulate(run_end[:, ::-1], axis=1)[:, ::-1] + 1
    best = None
    for b in range(N):
        k = np.maximum(present - b, 1) - 1
        gradients = float(made[rows, k].sum())
        seconds = float((xs[rows, k] + overhead).sum())
        cand = Yardstick("backup_hindsight", gradients, seconds, T, float(b))
        if best is None or cand.rate > best.rate:
            best = cand
    return best


class _FixedCutoffCurve:
    """Seconds, gradients and executions of replaying a trace under any fixed cutoff c, from
    per-row facts sorted once. Replay rules (sim.replay): a row whose fastest worker is within
    c lasts min(c, slowest) + o and yields #{x <= c}; a row nobody makes costs c + o, then
    runs again under base.cutoff_after_empty_step, which waits for everyone: slowest + o,
    yielding every present worker. So for a trace of T rows,

        seconds(c)     = T o + sum_t min(c, slowest_t) + sum_{t: fastest_t > c} (slowest_t + o)
        gradients(c)   = #{x <= c} + sum_{t: fastest_t > c} present_t
        executions(c)  = T + #{t: fastest_t > c}

    and each sum is a prefix or suffix sum found by a binary search.
    """

    def __init__(self, times: np.ndarray, overhead: float):
        # The retry below is priced as "wait for everyone": that is the shared rule.
        assert math.isinf(cutoff_after_empty_step(0.0))
        present = (~np.isnan(times)).sum(axis=1)
        slowest = np.nanmax(times, axis=1)
        fastest = np.nanmin(times, axis=1)
        self.rows, self.overhead = times.shape[0], float(overhead)
        self.slowest = np.sort(slowest)
        self.slowest_prefix = np.concatenate([[0.0], np.cumsum(self.slowest)])
        order = np.argsort(fastest, kind="stable")
        self.fastest = fastest[order]
        self.retry_seconds = _suffix_sums(slowest[order] + self.overhead)
        self.retry_gradients = _suffix_sums(present[order].astype(float))

    def cost(self, cutoffs: np.ndarray, done: np.ndarray) -> tuple:
        """Gradients, seconds, executions for ``cutoffs`` [M] (> 0; inf waits for everyone),
        given ``done`` [M]: how many worker times in the trace are <= each cutoff."""
        c = np.asarray(cutoffs, dtype=float)
        T = self.rows
        within = np.searchsorted(self.slowest, c, side="right")  # rows whose slowest <= c
        capped = self.slowest_prefix[within] + np.where(within < T, c, 0.0) * (T - within)
        reached = np.searchsorted(self.fastest, c, side="right")  # rows someone makes
        seconds = T * self.overhead + capped + self.retry_seconds[reached]
        gradients = np.asarray(done, dtype=float) + self.retry_gradients[reached]
        return gradients, seconds, T + (T - reached)


def _suffix_sums(values: np.ndarray) -> np.ndarray:
    """out[j] = values[j:].sum(), with out[len(values)] = 0."""
    return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])


def fixed_cutoff_cost(times: np.ndarray, cutoffs: np.ndarray, overhead: float) -> tuple:
    """Gradients, seconds and step executions of replaying the trace under each fixed cutoff,
    with the simulator's rule for a step nobody makes: it costs c + o, and its row is run
    again waiting for every worker (base.cutoff_after_empty_step), so such a row counts two
    executions. Shapes: times [T, N], cutoffs [M] (positive; inf waits for every worker)."""
    c = np.asarray(cutoffs, dtype=float).reshape(-1)
    if not np.all(c > 0):
        raise ValueError(f"cutoffs must be positive seconds (inf: wait for everyone), got {c}")
    done = np.array([np.count_nonzero(times <= ci) for ci in c])  # NaN is never <= c
    return _FixedCutoffCurve(times, overhead).cost(c, done)


def static_hindsight(times: np.ndarray, overhead: float) -> Yardstick:
    """The best fixed cutoff for this trace, exactly. Between two worker times the rate only
    falls (more seconds, no more gradients), so the optimum is one of the positive worker
    times (a cutoff must be positive); every one is evaluated, in one sort of all the times
    and binary searches (_FixedCutoffCurve), never a pass over the trace per candidate."""
    curve = _FixedCutoffCurve(times, overhead)
    values = times[~np.isnan(times)]
    values.sort()
    best = None
    for lo in range(0, values.size, VALUE_CHUNK):
        chunk = values[lo:lo + VALUE_CHUNK]
        following = values[lo + 1:lo + 1 + VALUE_CHUNK]
        # The last of each run of equal times: there, #{x <= c} is its position + 1.
        last = np.ones(chunk.size, dtype=bool)
        last[:following.size] = chunk[:following.size] != following
        at = np.flatnonzero(last & (chunk > 0))
        if at.size == 0:
            continue
        g, s, e = curve.cost(chunk[at], lo + at + 1)
        i = int(np.argmax(g / s))
        cand = Yardstick("static_hindsight", float(g[i]), float(s[i]), int(e[i]), float(chunk[at[i]]))
        if best is None or cand.rate > best.rate:
            best = cand
    if best is None:  # no positive time at all: only waiting for everyone is a cutoff
        g, s, e = curve.cost(np.array([math.inf]), np.array([values.size]))
        best = Yardstick("static_hindsight", float(g[0]), float(s[0]), int(e[0]), math.inf)
    return best
