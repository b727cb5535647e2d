"""Trace replay of any cutoff policy, with metrics against the oracle (DESIGN "Command line").

Replay rules: row t holds every worker's time for step t; a step lasts min(c, max x) + o and
yields #{x <= c}; cut workers start the next step on time (the closure form). A policy's
quorum k (``quorum()``) ends the step at min(c, x_(k)) instead. A step nobody makes costs
c + o, yields nothing, and the same row is replayed once more waiting for every worker
(policies.base.cutoff_after_empty_step, the live engine's rule too); the policy's cutoff
applies again from the next row. Policies see what they would see live: the times of
contributors, and the cutoff, flagged censored, for the rest. ``carry_lag`` models the plain
loop instead: a cut worker's unfinished time carries into its next step.

``arrivals`` models the engine with its arrival channel (DESIGN "Arrivals"): a step ends at
min(c, x_(k)) (k: the quorum, else every present worker) if someone arrived by c, and
otherwise at x_(k): a deadline nobody met cuts nobody, so the step waits for the quorum (or
everyone), and a step nobody made never happens. Cut workers are censored at the step's end.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .policies import POLICIES, make_policy
from .policies.base import cutoff_after_empty_step, non_negative_seconds
from .policies.oracle import (
    Yardstick,
    backup_hindsight,
    fixed_cutoff_cost,
    fixed_rule_cost,
    hybrid_hindsight,
    oracle,
    static_hindsight,
)

# Parameters the online baselines run with when none are given (e.g. under --policy all).
DEFAULT_PARAMS: Dict[str, Dict[str, Any]] = {"static": {"quantile": 0.9}, "backup": {"backup": 1}}
# Whole-trace yardsticks simulate() accepts besides the registered policies.
YARDSTICKS = ("static_hindsight", "backup_hindsight", "hybrid_hindsight", "oracle")
# Progress bars (stderr only) appear once a piece of work has run this many seconds.
PROGRESS_DELAY = 2.0
# A replay's bar advances in blocks of rows: per-row updates would cost more than a fast step.
PROGRESS_BLOCK = 512


def policy_names() -> List[str]:
    """Every name simulate() accepts: the registered policies, then the yardsticks."""
    return list(POLICIES) + list(YARDSTICKS)


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar on stderr, never stdout (which may carry JSON): shown only when enabled,
    stderr is a terminal, and the work has already run PROGRESS_DELAY seconds."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=None if enabled else True, delay=PROGRESS_DELAY, mininterval=0.5)


def default_params(name: str, workers: int) -> Dict[str, Any]:
    """The parameters ``name`` runs with when given none, for a trace of ``workers``."""
    params = dict(DEFAULT_PARAMS.get(name, {}))
    if "backup" in params:  # backup workers must leave someone to wait for
        params["backup"] = min(params["backup"], workers - 1)
    return params


def build_policy(name: str, overhead: float, /, **params: Any):
    """A registered policy with its default parameters, told the overhead if it takes one."""
    if "overhead" in params:
        raise ValueError("overhead is set once for the whole simulation (--overhead on the "
                         "command line), not as a policy parameter")
    # The defaults stand in only for a policy given no parameters at all.
    merged = dict(params) if params else dict(DEFAULT_PARAMS.get(name, {}))
    factory = POLICIES.get(name)
    if factory is not None and "overhead" in inspect.signature(factory).parameters:
        merged.setdefault("overhead", overhead)
    return make_policy(name, **merged)


def replay(times: np.ndarray, policy, overhead: float = 0.0, warmup: int = 0,
           carry_lag: bool = False, lag: int = 0, record: bool = False,
           progress: bool = False, arrivals: bool = False) -> Dict[str, Any]:
    """Replays ``times`` [T, N] under ``policy``; returns totals over rows >= warmup.

    ``arrivals``: the step-end rule of the engine with its arrival channel (module doc).
    ``progress`` shows a bar of rows replayed on stderr for a replay that takes a while.
    """
    overhead = non_negative_seconds(overhead, "overhead")
    if warmup < 0 or warmup >= times.shape[0]:
        raise ValueError(f"warmup must lie in [0, {times.shape[0]}) steps, got {warmup}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0 steps, got {lag}")
    fixed = getattr(policy, "fixed_cutoff", None)
    if fixed is not None and fixed() is not None and not (carry_lag or record):
        return _replay_fixed(times, float(fixed()), overhead, warmup, arrivals)
    quorum = getattr(policy, "quorum", None)
    T, N = times.shape

    def decide() -> tuple:
        return float(policy.cutoff()), quorum() if quorum is not None else None

    decisions = [decide()]  # decisions[e]: (cutoff, quorum) made after observing e executions
    carry = np.zeros(N)
    gradients = seconds = 0.0
    executions = zero_steps = 0
    after_empty = False  # the previous execution was a step nobody made
    trail: List[tuple] = []
    bar = progress_bar(T, f"replay {getattr(policy, 'name', type(policy).__name__)}",
                       progress, unit="step")
    started = time.perf_counter()
    t = e = 0
    with bar:  # closed (and erased) however the replay ends
        while t < T:
            c, q = decisions[max(0, e - lag)]
            if not (c > 0) or math.isnan(c):  # a failing policy: wait for all, as live does
                c = math.inf
            x = times[t] + carry if carry_lag else times[t]
            present = ~np.isnan(x)
            if after_empty:
                c, q = cutoff_after_empty_step(c), None
            made, c = _step_end(x, present, c, q, arrivals)
            k = int(made.sum())
            if k == 0:
                duration = c + overhead
                observed = np.where(present, c, np.nan)
                cut = present.copy()
                if carry_lag:  # still working on the same step: the replay sees what remains
                    carry = np.where(present, np.maximum(x - duration, 0.0) - times[t], 0.0)
            else:
                duration = min(c, float(np.max(x[present]))) + overhead
                observed = np.where(made, x, np.where(present, c, np.nan))
                cut = present & ~made
                if carry_lag:
                    carry = np.where(cut, np.maximum(x - duration, 0.0), 0.0)
            after_empty = k == 0
            policy.observe(observed, cut)
            decisions.append(decide())
            if t >= warmup:
                gradients += k
                seconds += duration
                executions += 1
                zero_steps += k == 0
            if record:
                trail.append((t, c, k, duration))
            if k > 0:
                t += 1
                if t % PROGRESS_BLOCK == 0:
                    bar.update(PROGRESS_BLOCK)
            e += 1
    elapsed = time.perf_counter() - started
    result = {
        "gradients": gradients, "seconds": seconds, "steps": executions, "zero_steps": zero_steps,
        "gradients_per_second": gradients / seconds if seconds > 0 else 0.0,
        "mean_contributors": gradients / executions if executions else 0.0,
        "mean_step_seconds": seconds / executions if executions else 0.0,
        "replay_seconds": elapsed,
    }
    if record:
        result["trail"] = np.array(trail, dtype=float)  # row, deadline, contributors, duration
    return result


def _step_end(x: np.ndarray, present: np.ndarray, c: float, q: Optional[int],
              arrivals: bool) -> tuple:
    """Who makes one step and when it ends, for cutoff ``c`` and quorum ``q`` (None: every
    present worker). Without arrivals it ends at min(c, x_(q)). With them too, unless nobody
    arrived by c: then nobody is cut at c and it ends at x_(q) (the engine's rule)."""
    if q is None and not arrivals:
        return present & (x <= c), c
    arrived = np.sort(x[present])
    if arrived.size == 0:
        return present, c
    quorum_time = float(arrived[-1 if q is None else min(max(int(q), 1), arrived.size) - 1])
    if arrived[0] <= c or not arrivals:
        end = c if q is None else min(c, quorum_time)
        return present & (x <= end), end
    return present & (x <= quorum_time), quorum_time


def _replay_fixed(times: np.ndarray, cutoff: float, overhead: float, warmup: int,
                  arrivals: bool = False) -> Dict[str, Any]:
    """The loop's result for a cutoff that never changes, computed for all rows at once."""
    started = time.perf_counter()
    if arrivals:
        g, s, e = fixed_rule_cost(times[warmup:], np.array([cutoff]), overhead, arrivals=True)
    else:
        g, s, e = fixed_cutoff_cost(times[warmup:], np.array([cutoff]), overhead)
    gradients, seconds, executions = float(g[0]), float(s[0]), int(e[0])
    return {
        "gradients": gradients, "seconds": seconds, "steps": executions,
        "zero_steps": executions - (times.shape[0] - warmup),
        "gradients_per_second": gradients / seconds if seconds > 0 else 0.0,
        "mean_contributors": gradients / executions, "mean_step_seconds": seconds / executions,
        "replay_seconds": time.perf_counter() - started,
    }


def simulate(times: np.ndarray, policy_name: str, overhead: float = 0.0, warmup: int = 0,
             carry_lag: bool = False, lag: int = 0, params: Optional[Dict[str, Any]] = None,
             policy=None, best: Optional[Yardstick] = None,
             progress: bool = False, arrivals: bool = False) -> Dict[str, Any]:
    """One policy's JSON object (DESIGN's keys), measured against the oracle.

    ``best`` is the oracle of ``times[warmup:]`` at this overhead when the caller has it
    already (simulate_all computes it once per trace); otherwise it is computed here.
    ``arrivals``: replay (and price the hindsight yardsticks) with the arrival channel's
    step-end rule (replay); the oracle, which knows every time, is the same either way.
    """
    if not 0 <= warmup < times.shape[0]:
        raise ValueError(f"warmup must lie in [0, {times.shape[0]}) steps, got {warmup}")
    if policy is None and policy_name not in policy_names():
        raise ValueError(f"policy must be one of {policy_names()}, got {policy_name!r}")
    overhead = non_negative_seconds(overhead, "overhead")
    measured = times[warmup:]
    if best is None:
        best = oracle(measured, overhead)
    if policy_name in YARDSTICKS:
        if params:
            raise ValueError(f"policy {policy_name!r} takes no parameters")
        if policy_name == "oracle":
            y = best
        elif policy_name == "backup_hindsight":  # c = inf: someone always arrives by then
            y = backup_hindsight(measured, overhead)
        else:
            stick = {"static_hindsight": static_hindsight, "hybrid_hindsight": hybrid_hindsight}
            y = stick[policy_name](measured, overhead, arrivals)
        out = {"gradients": y.gradients, "seconds": y.seconds, "steps": y.steps,
               "zero_steps": y.steps - measured.shape[0], "gradients_per_second": y.rate,
               "mean_contributors": y.gradients / y.steps, "mean_step_seconds": y.seconds / y.steps,
               "replay_seconds": 0.0}
        if policy_name != "oracle":
            out["chosen"] = y.parameter
    else:
        if policy is None:
            params = params or default_params(policy_name, times.shape[1])
            policy = build_policy(policy_name, overhead, **params)
        out = replay(times, policy, overhead, warmup, carry_lag, lag, progress=progress,
                     arrivals=arrivals)
    rate = out["gradients_per_second"]
    return {"policy": policy_name, **out, "oracle_gradients_per_second": best.rate,
            "ratio_to_oracle": rate / best.rate if best.rate > 0 else 0.0,
            "overhead": overhead, "warmup": warmup, "carry_lag": carry_lag, "lag": lag,
            "arrivals": arrivals}


def simulate_all(times: np.ndarray, overhead: float = 0.0, warmup: int = 0,
                 carry_lag: bool = False, lag: int = 0, progress: bool = False,
                 exclude: Sequence[str] = (), arrivals: bool = False) -> List[Dict[str, Any]]:
    """simulate() for every registered policy and yardstick but those in ``exclude``, against
    one oracle computed once; ``progress`` ticks a stderr bar per policy (and per row inside
    long replays); ``arrivals``: the arrival channel's step-end rule (replay)."""
    if not 0 <= warmup < times.shape[0]:
        raise ValueError(f"warmup must lie in [0, {times.shape[0]}) steps, got {warmup}")
    overhead = non_negative_seconds(overhead, "overhead")
    unknown = sorted(set(exclude) - set(policy_names()))
    if unknown:
        raise ValueError(f"exclude: unknown policies {unknown}; choose from {policy_names()}")
    names = [n for n in policy_names() if n not in set(exclude)]
    results = []
    with progress_bar(len(names) + 1, "policies", progress, unit="policy") as bar:
        bar.set_postfix_str("oracle")
        best = oracle(times[warmup:], overhead)
        bar.update()
        for name in names:
            bar.set_postfix_str(name)
            results.append(simulate(times, name, overhead, warmup, carry_lag, lag, best=best,
                                    progress=progress, arrivals=arrivals))
            bar.update()
    return results
