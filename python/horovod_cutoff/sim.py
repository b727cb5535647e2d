"""Trace replay of any cutoff policy, with metrics against the oracle (DESIGN "Command line").

Replay rules: row t holds every worker's time for step t; a step lasts min(c, max x) + o and
yields #{x <= c}; cut workers start the next step on time (the closure form). A step nobody
makes costs c + o, yields nothing, and the same row is replayed under a cutoff at least
twice as wide (what the live engine does). Policies see what they would see live: the
times of contributors, and the cutoff, flagged censored, for the rest. ``carry_lag`` models
the plain loop instead: a cut worker's unfinished time carries into its next step.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .policies import POLICIES, make_policy
from .policies.base import non_negative_seconds
from .policies.oracle import backup_hindsight, fixed_cutoff_cost, oracle, static_hindsight

# Parameters the online baselines run with when none are given (e.g. under --policy all).
DEFAULT_PARAMS: Dict[str, Dict[str, Any]] = {"static": {"quantile": 0.9}, "backup": {"backup": 1}}
# A policy that never widens after a step nobody made would replay that row forever.
MAX_REPLAYS = 60


def build_policy(name: str, overhead: float, **params: Any):
    """A registered policy with its default parameters, told the overhead if it takes one."""
    # The defaults stand in only for a policy given no parameters at all.
    merged = dict(params) if params else dict(DEFAULT_PARAMS.get(name, {}))
    factory = POLICIES.get(name)
    if factory is not None and "overhead" in inspect.signature(factory).parameters:
        merged.setdefault("overhead", overhead)
    return make_policy(name, **merged)


def replay(times: np.ndarray, policy, overhead: float = 0.0, warmup: int = 0,
           carry_lag: bool = False, lag: int = 0, record: bool = False) -> Dict[str, Any]:
    """Replays ``times`` [T, N] under ``policy``; returns totals over rows >= warmup."""
    overhead = non_negative_seconds(overhead, "overhead")
    if warmup < 0 or warmup >= times.shape[0]:
        raise ValueError(f"warmup must lie in [0, {times.shape[0]}) steps, got {warmup}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0 steps, got {lag}")
    fixed = getattr(policy, "fixed_cutoff", None)
    if fixed is not None and fixed() is not None and not (carry_lag or record):
        return _replay_fixed(times, float(fixed()), overhead, warmup)
    quorum = getattr(policy, "quorum", None)
    T, N = times.shape
    decisions = [float(policy.cutoff())]  # decisions[e]: made after observing e executions
    carry = np.zeros(N)
    gradients = seconds = 0.0
    executions = zero_steps = replays = 0
    last_cutoff, widen = math.inf, False
    trail: List[tuple] = []
    started = time.perf_counter()
    t = e = 0
    while t < T:
        c = decisions[max(0, e - lag)]
        if not (c > 0) or math.isnan(c):  # a failing policy: wait for all, as live does
            c = math.inf
        if widen:
            c = max(c, 2.0 * last_cutoff)
        x = times[t] + carry if carry_lag else times[t]
        present = ~np.isnan(x)
        q = quorum() if quorum is not None else None
        if q is not None:
            arrived = np.sort(x[present])
            c = float(arrived[min(max(int(q), 1), arrived.size) - 1])
        made = present & (x <= c)
        k = int(made.sum())
        if k == 0:
            duration = c + overhead
            observed = np.where(present, c, np.nan)
            cut = present.copy()
            widen, replays = True, replays + 1
            if replays > MAX_REPLAYS:
                raise RuntimeError(f"policy {getattr(policy, 'name', policy)!r} left step {t} "
                                   f"with no contributor {MAX_REPLAYS} times in a row")
            if carry_lag:  # still working on the same step: the replay sees what remains
                carry = np.where(present, np.maximum(x - duration, 0.0) - times[t], 0.0)
        else:
            duration = min(c, float(np.max(x[present]))) + overhead
            observed = np.where(made, x, np.where(present, c, np.nan))
            cut = present & ~made
            widen, replays = False, 0
            if carry_lag:
                carry = np.where(cut, np.maximum(x - duration, 0.0), 0.0)
        last_cutoff = c
        policy.observe(observed, cut)
        decisions.append(float(policy.cutoff()))
        if t >= warmup:
            gradients += k
            seconds += duration
            executions += 1
            zero_steps += k == 0
        if record:
            trail.append((t, c, k, duration))
        if k > 0:
            t += 1
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
        result["trail"] = np.array(trail, dtype=float)  # row, cutoff, contributors, duration
    return result


def _replay_fixed(times: np.ndarray, cutoff: float, overhead: float,
                  warmup: int) -> Dict[str, Any]:
    """The loop's result for a cutoff that never changes, computed for all rows at once."""
    started = time.perf_counter()
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
             policy=None) -> Dict[str, Any]:
    """One policy's JSON object (DESIGN's keys), measured against the oracle."""
    if not 0 <= warmup < times.shape[0]:
        raise ValueError(f"warmup must lie in [0, {times.shape[0]}) steps, got {warmup}")
    overhead = non_negative_seconds(overhead, "overhead")
    measured = times[warmup:]
    best = oracle(measured, overhead)
    if policy_name in ("oracle", "static_hindsight", "backup_hindsight"):
        if params:
            raise ValueError(f"policy {policy_name!r} takes no parameters")
        stick = {"oracle": lambda: best, "static_hindsight": static_hindsight,
                 "backup_hindsight": backup_hindsight}[policy_name]
        y = stick() if policy_name == "oracle" else stick(measured, overhead)
        out = {"gradients": y.gradients, "seconds": y.seconds, "steps": y.steps,
               "zero_steps": 0, "gradients_per_second": y.rate,
               "mean_contributors": y.gradients / y.steps, "mean_step_seconds": y.seconds / y.steps,
               "replay_seconds": 0.0}
        if policy_name != "oracle":
            out["chosen"] = y.parameter
    else:
        if policy is None:
            policy = build_policy(policy_name, overhead, **(params or {}))
        out = replay(times, policy, overhead, warmup, carry_lag, lag)
    rate = out["gradients_per_second"]
    return {"policy": policy_name, **out, "oracle_gradients_per_second": best.rate,
            "ratio_to_oracle": rate / best.rate if best.rate > 0 else 0.0,
            "overhead": overhead, "warmup": warmup, "carry_lag": carry_lag, "lag": lag}


def simulate_all(times: np.ndarray, overhead: float = 0.0, warmup: int = 0,
                 carry_lag: bool = False, lag: int = 0) -> List[Dict[str, Any]]:
    names = list(POLICIES) + ["static_hindsight", "backup_hindsight", "oracle"]
    return [simulate(times, n, overhead, warmup, carry_lag, lag) for n in names]
