"""Whole-trace yardsticks for the simulator (no live counterpart): the oracle, which knows
every step's true times, and the best fixed cutoff / best fixed b / best fixed (cutoff,
quorum) pair chosen with hindsight. ``arrivals=True`` prices a fixed rule as sim.replay does
with the arrival channel (a step nobody made by c waits for its quorum, or everyone)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .base import cutoff_after_empty_step


@dataclass
class Yardstick:
    name: str
    gradients: float
    seconds: float
    steps: int
    parameter: Any  # the chosen cutoff, b, or {cutoff, quorum, exact} (hybrid); NaN: the oracle

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


def static_hindsight(times: np.ndarray, overhead: float, arrivals: bool = False) -> Yardstick:
    """The best fixed cutoff for this trace, exactly. Between two worker times the rate only
    falls (more seconds, no more gradients), so the optimum is one of the positive worker
    times (a cutoff must be positive); every one is evaluated, in one sort of all the times
    and binary searches (_FixedCutoffCurve), never a pass over the trace per candidate.
    ``arrivals``: under the arrival channel's rule, the rule "min(c, last arrival)" of
    hybrid_hindsight (whose candidates then include each time's distance to its row's first):
    exact up to EXACT_CELLS times, beyond on quantiles refined near the best."""
    if arrivals:
        curve = _RuleCurve(times, overhead, arrivals=True)
        if curve.rows * curve.workers <= EXACT_CELLS:
            best = curve.best(curve.workers, curve.candidates())
        else:  # as hybrid_hindsight on a large trace (approximate)
            best = _refined_best(curve, curve.workers, _coarse_cutoffs(curve))
        return Yardstick("static_hindsight", best.gradients, best.seconds, best.steps,
                         best.parameter["cutoff"])
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


# hybrid_hindsight is exact (every k, every candidate cutoff) while rows x workers x workers
# stays under EXACT_WORK; beyond, it tries every k on COARSE_CUTOFFS quantiles of the
# candidate cutoffs, refined within the REFINED best brackets (its JSON says "exact": false).
EXACT_WORK = 1 << 25
EXACT_CELLS = 1 << 21  # static_hindsight with arrivals: exact up to this many times, as above
COARSE_CUTOFFS, REFINED = 4096, 3


class _RuleCurve:
    """Gradients, seconds and executions of replaying a trace under the fixed rule "end each
    step at min(c, its k-th arrival)", for one quorum k and many cutoffs c at once, with
    sim.replay's rules. A row whose first arrival is within c ends at min(c, x_(k)) and yields
    #{x <= that}. A row nobody makes by c: without arrivals it costs c + o and runs again
    waiting for everyone (base.cutoff_after_empty_step); with arrivals nobody is cut at c, so
    it ends at x_(k) and yields the k kept workers (the same rule within the step). Every sum
    over rows or workers is a cumulative sum over the sorted cutoffs of one histogram: of the
    rows' facts (first arrival, k-th arrival), and of the kept workers' times (with arrivals,
    a kept worker v of a row whose first arrival is f counts where c >= v or c < f).
    """

    def __init__(self, times: np.ndarray, overhead: float, arrivals: bool):
        # The retry below is priced as "wait for everyone": that is the shared rule.
        assert math.isinf(cutoff_after_empty_step(0.0))
        self.xs, self.present = _sorted_rows(times)
        self.rows, self.overhead, self.arrivals = self.xs.shape[0], float(overhead), bool(arrivals)
        self.workers = int(self.present.max())
        self.first = self.xs[:, 0]
        self.slowest = self.xs[np.arange(self.rows), self.present - 1]
        self._memo: Optional[tuple] = None

    def candidates(self, above: float = 0.0, upto: float = math.inf, stride: int = 1) -> np.ndarray:
        """Sorted cutoffs in (above, upto] where some rate can peak, then inf: the positive
        worker times (of every ``stride``-th cell only, for a sample). Between two of them the
        gradients are constant and the seconds do not fall, and with arrivals a cutoff below
        every first arrival is the same rule as inf. Rows chunked: bounded temporaries."""
        found = []
        for lo in range(0, self.rows, ROW_CHUNK):
            x = self.xs[lo:lo + ROW_CHUNK]
            v = x[~np.isnan(x)][::stride]
            found.append(v[(v > max(above, 0.0)) & (v <= upto)])
        return np.append(np.unique(np.concatenate(found)), math.inf)

    def quorum_times(self, k: int) -> np.ndarray:
        """Each row's k-th arrival (its last, where fewer are present)."""
        return self.xs[np.arange(self.rows), np.minimum(k, self.present) - 1]

    def cost(self, k: int, cutoffs: np.ndarray, histogram: Optional[np.ndarray] = None) -> tuple:
        """Gradients, seconds, executions [M] of quorum ``k`` at ``cutoffs`` [M] (sorted, > 0).
        ``histogram``: _histogram of this k's kept workers at these cutoffs, if known. Every
        per-row sum is a cumulative sum over the cutoffs of one histogram of the rows."""
        c = np.asarray(cutoffs, dtype=float)
        T, o = self.rows, self.overhead
        ends = self.quorum_times(k)
        if histogram is None:
            histogram = self._histogram(ends, c)
        gradients = np.rint(np.cumsum(histogram)[:-1])
        at, reached, late_sums = self._reached(c)
        late = T - reached
        capped = _capped_sum(ends, c)  # sum_t min(c, x_(k))
        if not self.arrivals:
            retry_seconds, retry_gradients = late_sums
            return gradients + retry_gradients, T * o + capped + retry_seconds, T + late
        # On-time rows: min(c, x_(k)), i.e. capped less c for each late row (x_(k) > c there);
        # late rows: x_(k).
        late_ends = _cumulative(at, c.size, ends, late=True)
        seconds = T * o + capped - _times(c, late) + late_ends
        return gradients, seconds, np.full(c.size, T)

    def _reached(self, c: np.ndarray) -> tuple:
        """Each row's first cutoff at or above its first arrival; at each cutoff, how many rows
        someone makes by it; and (without arrivals) over the others the retry's seconds and
        gradients, which do not depend on k. Kept for the last cutoffs asked: a sweep over k
        reuses them."""
        if self._memo is None or self._memo[0] is not c:
            at = np.searchsorted(c, self.first)  # the first cutoff that reaches each row
            late = None if self.arrivals else (
                _cumulative(at, c.size, self.slowest + self.overhead, late=True),
                _cumulative(at, c.size, self.present.astype(float), late=True))
            self._memo = (c, at, _cumulative(at, c.size), late)
        return self._memo[1:]

    def _histogram(self, ends: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Where each kept worker (no later than its row's ``ends``) starts to count, over the
        cutoffs ``c`` [M]: its cumulative sum is the gradients at each cutoff."""
        hist = np.zeros(c.size + 1)
        for lo in range(0, self.rows, ROW_CHUNK):  # bounded temporaries
            x = self.xs[lo:lo + ROW_CHUNK]
            kept = x <= ends[lo:lo + ROW_CHUNK, None]  # NaN (absent) is never kept
            first = np.broadcast_to(self.first[lo:lo + ROW_CHUNK, None], x.shape)
            hist += self._place(x[kept], first[kept], c)
        return hist

    def _place(self, v: np.ndarray, first: np.ndarray, c: np.ndarray) -> np.ndarray:
        """_histogram of the workers with times ``v`` in rows whose first arrival is ``first``."""
        if not self.arrivals:
            return np.bincount(np.searchsorted(c, v), minlength=c.size + 1)
        # Counts below its row's first arrival (a late row keeps everyone it waited for), stops
        # there, and counts again from its own time on.
        at = np.concatenate([np.zeros(v.size, dtype=np.intp), np.searchsorted(c, first),
                             np.searchsorted(c, v)])
        return np.bincount(at, np.repeat([1.0, -1.0, 1.0], v.size), minlength=c.size + 1)

    def _joining(self, k: int) -> tuple:
        """The workers kept under quorum k but not k - 1 (times, their rows' first arrivals):
        in rows with k or more present, the run of times equal to the k-th arrival, if it
        starts there (an earlier start was kept already). Column by column: O(rows)."""
        j = k - 1
        run = j < self.present
        if j > 0:
            run &= self.xs[:, j] != self.xs[:, j - 1]
        values, rows = [], []
        while run.any():
            rows.append(np.flatnonzero(run))
            values.append(self.xs[rows[-1], j])
            j += 1
            if j == self.xs.shape[1]:
                break
            run &= self.xs[:, j] == self.xs[:, j - 1]
        if not rows:
            return np.empty(0), np.empty(0)
        rows = np.concatenate(rows)
        return np.concatenate(values), self.first[rows]

    def best_per_quorum(self, cutoffs: np.ndarray):
        """best(k, cutoffs) for k = 1..N in turn. The kept workers only grow with k, so one
        histogram grows with them: each worker's time is placed once, not once per k."""
        hist = np.zeros(cutoffs.size + 1)
        for k in range(1, self.workers + 1):
            hist += self._place(*self._joining(k), cutoffs)
            yield self.best(k, cutoffs, hist)

    def best(self, k: int, cutoffs: np.ndarray,
             histogram: Optional[np.ndarray] = None) -> Yardstick:
        """The best of ``cutoffs`` for quorum ``k``, as a Yardstick named by its (c, k)."""
        g, s, e = self.cost(k, cutoffs, histogram)
        i = int(np.argmax(g / s))
        c = float(cutoffs[i])
        if c >= float(np.max(self.quorum_times(k))):  # never binds: the same as no cutoff
            c = math.inf
        return Yardstick("hybrid_hindsight", float(g[i]), float(s[i]), int(e[i]),
                         {"cutoff": c, "quorum": int(k), "exact": True})


def _cumulative(at: np.ndarray, size: int, weights: Optional[np.ndarray] = None,
                late: bool = False) -> np.ndarray:
    """For each of ``size`` sorted cutoffs: how many rows (or the sum of their ``weights``)
    have their key at or below it, given ``at``, the index of the first cutoff at or above
    each key; ``late``: above it instead."""
    total = np.cumsum(np.bincount(at, weights, minlength=size + 1))
    return total[-1] - total[:-1] if late else total[:-1]


def _capped_sum(values: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sum_t min(c, values_t) for each of the sorted cutoffs ``c``."""
    at = np.searchsorted(c, values)
    return _cumulative(at, c.size, values) + _times(c, values.size - _cumulative(at, c.size))


def _times(c: np.ndarray, count: np.ndarray) -> np.ndarray:
    """c * count, with inf * 0 = 0 (no row at an infinite cutoff)."""
    return np.multiply(c, count, out=np.zeros(c.shape), where=count > 0)


def fixed_rule_cost(times: np.ndarray, cutoffs: np.ndarray, overhead: float,
                    quorum: Optional[int] = None, arrivals: bool = False) -> tuple:
    """fixed_cutoff_cost for the rule "end each step at min(c, the k-th arrival)": gradients,
    seconds and step executions under each cutoff with the fixed ``quorum`` k (None: every
    present worker), by sim.replay's rules with or without ``arrivals``."""
    c = np.asarray(cutoffs, dtype=float).reshape(-1)
    if not np.all(c > 0):
        raise ValueError(f"cutoffs must be positive seconds (inf: wait for everyone), got {c}")
    if quorum is not None and not (isinstance(quorum, (int, np.integer)) and quorum >= 1):
        raise ValueError(f"quorum must be a positive number of workers or None, got {quorum!r}")
    curve = _RuleCurve(times, overhead, arrivals)
    order = np.argsort(c)
    out = curve.cost(curve.workers if quorum is None else int(quorum), c[order])
    undo = np.empty_like(order)
    undo[order] = np.arange(order.size)
    return tuple(np.asarray(a)[undo] for a in out)


def hybrid_hindsight(times: np.ndarray, overhead: float, arrivals: bool = False) -> Yardstick:
    """The best fixed rule "end each step at min(c, the k-th arrival)" for this trace, priced
    by sim.replay's rules (``arrivals``: with the arrival channel's). For a fixed k this is
    static_hindsight with every worker slower than its row's k-th arrival absent (the retry of
    a row nobody made still waits for everyone); k runs over 1..N. It contains the best fixed
    cutoff (k = N) and the best fixed b (c = inf, k = N - b). Exact (every k, every candidate
    cutoff) while rows x N x N <= EXACT_WORK; beyond, c is searched on quantiles refined near
    the best, floored by static_hindsight and backup_hindsight so it never falls below
    either (JSON "exact": false)."""
    curve = _RuleCurve(times, overhead, arrivals)
    N = curve.workers
    if curve.rows * N * N <= EXACT_WORK:
        return max(curve.best_per_quorum(curve.candidates()), key=lambda y: y.rate)
    best = _hybrid_search(curve)
    static = static_hindsight(times, overhead, arrivals)
    backup = backup_hindsight(times, overhead)
    for y, rule in ((static, {"cutoff": static.parameter, "quorum": N}),
                    (backup, {"cutoff": math.inf, "quorum": N - int(backup.parameter)})):
        if y.rate > best.rate:
            best = Yardstick("hybrid_hindsight", y.gradients, y.seconds, y.steps,
                             {**rule, "exact": False})
    return best


def _coarse_cutoffs(curve: _RuleCurve) -> np.ndarray:
    """COARSE_CUTOFFS quantiles of a sample of the candidate cutoffs, then inf."""
    sample = curve.candidates(stride=max(1, curve.rows * curve.workers // (64 * COARSE_CUTOFFS)))
    if sample.size == 1:  # no positive time at all: only waiting is a cutoff
        return sample
    return np.unique(np.append(np.quantile(sample[:-1], np.linspace(0, 1, COARSE_CUTOFFS),
                                           method="inverted_cdf"), math.inf))


def _refined_best(curve: _RuleCurve, k: int, coarse: np.ndarray) -> Yardstick:
    """The best cutoff for quorum k among the coarse ones and every candidate within the
    REFINED best coarse brackets."""
    g, s, _ = curve.cost(k, coarse)
    fine = [curve.candidates(coarse[max(i - 1, 0)], coarse[min(i + 1, coarse.size - 1)])
            for i in np.argsort(g / s)[-REFINED:]]
    best = curve.best(k, np.unique(np.concatenate(fine + [coarse])))
    best.parameter["exact"] = False
    return best


def _hybrid_search(curve: _RuleCurve) -> Yardstick:
    """hybrid_hindsight on a large trace: every k on the coarse cutoffs, then the best k's
    cutoff refined."""
    coarse = _coarse_cutoffs(curve)
    k = max(curve.best_per_quorum(coarse), key=lambda y: y.rate).parameter["quorum"]
    return _refined_best(curve, k, coarse)
