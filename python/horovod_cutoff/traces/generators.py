"""Seeded scenario generators of per-worker step times, [steps, workers] seconds.

Each scenario is one function ``(workers, steps, rng) -> times`` documented in one line;
``generate(name, workers, steps, seed)`` is the entry point the CLI and benchmarks use.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import numpy as np

from .format import validate

BASE = 0.2     # median step time of a healthy worker, seconds
JITTER = 0.12  # log-normal sigma of step-to-step noise
MAX_STALL = 50.0  # cap on a Pareto stall's slowdown: alpha 1.5 alone can draw hour-long steps
# A scenario holds about this many [steps, workers] float64 arrays at once (draws, masks, factors).
WORKING_COPIES = 5


def _base(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(np.log(BASE), JITTER, size=(steps, workers))


def _stalls(times: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply a fraction ``rate`` of cells by a capped Pareto (alpha 1.5) slowdown."""
    stall = rng.random(times.shape) < rate
    factor = np.minimum(1.0 + rng.pareto(1.5, times.shape) * 2.0, MAX_STALL)
    return np.where(stall, times * factor, times)


def _markov(steps: int, chains: int, p_enter: float, p_leave: float,
            rng: np.random.Generator) -> np.ndarray:
    """[steps, chains] booleans: a sticky two-state chain per column, started at stationarity."""
    state = rng.random(chains) < p_enter / (p_enter + p_leave)
    out = np.empty((steps, chains), dtype=bool)
    for t in range(steps):
        out[t] = state
        u = rng.random(chains)
        state = np.where(state, u >= p_leave, u < p_enter)
    return out


STEADY_SIGMA = 0.05  # the steady scenario's log-normal spread


def steady(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Straggler-free: independent log-normal times around 0.2 s, sigma 0.05 (waiting is best)."""
    return rng.lognormal(np.log(BASE), STEADY_SIGMA, size=(steps, workers))


def iid(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Independent log-normal times around 0.2 s: no stragglers beyond noise."""
    return rng.lognormal(np.log(BASE), 0.25, size=(steps, workers))


def heavy_tail(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal body; 3% of worker-steps are Pareto-tailed (alpha 1.5, capped 50x) stalls."""
    return _stalls(_base(workers, steps, rng), 0.03, rng)


def slow_nodes(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """A persistent tenth of the nodes (at least one) runs 1.5x-3x slower all run long."""
    times = _base(workers, steps, rng)
    slow = rng.choice(workers, size=max(1, workers // 10), replace=False)
    times[:, slow] *= rng.uniform(1.5, 3.0, size=slow.size)
    return times


def markov(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Each node flips between normal and slowed (x2-x5) by a sticky Markov chain."""
    times = _base(workers, steps, rng)
    slowed = _markov(steps, workers, p_enter=0.02, p_leave=0.15, rng=rng)
    factor = rng.uniform(2.0, 5.0, size=workers)
    return np.where(slowed, times * factor, times)


def rack(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Racks of 8 nodes share slowdowns (x2-x4, sticky): correlated groups of stragglers."""
    times = _base(workers, steps, rng)
    racks = np.arange(workers) // 8
    n_racks = int(racks.max()) + 1
    slowed = _markov(steps, n_racks, p_enter=0.03, p_leave=0.2, rng=rng)
    factor = rng.uniform(2.0, 4.0, size=n_racks)
    return np.where(slowed[:, racks], times * factor[racks], times)


def periodic(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Every node pauses (+0.3-0.6 s, like GC) once per P=10-20 steps, each at its own phase."""
    times = _base(workers, steps, rng)
    period = int(rng.integers(10, 21))  # one P for the job: same code, same allocation rhythm
    phase = rng.integers(0, period, size=workers)
    t = np.arange(steps)[:, None]
    pause = ((t + phase) % period) == 0
    return times + pause * rng.uniform(0.3, 0.6, size=workers)


def drift(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """A third of the nodes slowly throttle and recover (thermal): speed drifts by up to 2.5x."""
    times = _base(workers, steps, rng)
    hot = rng.random(workers) < 1 / 3
    hot[rng.integers(workers)] = True
    t = np.arange(steps)[:, None]
    cycle = rng.uniform(200, 800, size=workers)
    start = rng.uniform(0, 2 * np.pi, size=workers)
    level = 1.0 + 0.75 * (1.0 + np.sin(2 * np.pi * t / cycle + start))  # 1x .. 2.5x
    return np.where(hot, times * level, times)


def phase(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """The whole cluster shifts between step-time levels (x0.5-x2, like sequence-length buckets)."""
    times = _base(workers, steps, rng)
    levels = np.array([0.5, 1.0, 1.5, 2.0])
    t, out = 0, np.empty(steps)
    while t < steps:
        run = int(rng.integers(20, 80))
        out[t:t + run] = rng.choice(levels)
        t += run
    return times * out[:, None]


def mixture(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Slow nodes, Markov slowdowns and heavy-tailed stalls together."""
    times = markov(workers, steps, rng)
    slow = rng.choice(workers, size=max(1, workers // 10), replace=False)
    times[:, slow] *= rng.uniform(1.5, 2.5, size=slow.size)
    return _stalls(times, 0.02, rng)


SCENARIOS: Dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    f.__name__: f for f in (steady, iid, heavy_tail, slow_nodes, markov, rack, periodic, drift, phase,
                            mixture)
}


def generate(scenario: str, workers: int, steps: int, seed: int = 0) -> np.ndarray:
    """A validated [steps, workers] trace of the named scenario; same seed, same trace."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
    if int(workers) < 1:
        raise ValueError(f"workers must be a positive number, got {workers}")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive number, got {steps}")
    _check_size(scenario, int(workers), int(steps))
    rng = np.random.default_rng(int(seed))
    return validate(SCENARIOS[scenario](int(workers), int(steps), rng), f"scenario {scenario}")


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no check
        return None


def _check_size(scenario: str, workers: int, steps: int) -> None:
    """ValueError, before any allocation, for a trace this machine cannot hold while making it."""
    need = WORKING_COPIES * 8 * workers * steps
    memory = _physical_memory()
    if memory is not None and need > memory:
        raise ValueError(
            f"scenario {scenario}: {steps} steps x {workers} workers is {workers * steps:.3g} "
            f"times ({8 * workers * steps / 2**30:.3g} GiB as float64); generating it needs "
            f"about {need / 2**30:.3g} GiB, more than this machine's {memory / 2**30:.3g} GiB "
            "of memory: use fewer --steps or --workers")
