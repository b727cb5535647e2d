"""Randomised scenario families the shipped model is pretrained on.

Each family is ``(workers, steps, rng) -> times [steps, workers]`` like the shipped
generators (traces/generators.py), but draws every constant (time scale, jitter, rates,
factors, periods) from a broad range, so the model meets far more than the nine shipped
scenarios. ``steady`` and ``groups`` are new families (to move into the shipped
generators); ``combo`` stacks random effects. ``random_trace`` picks a family (optionally
leaving one out, for the generalisation figures).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from ..traces.generators import _markov  # the shipped scenarios' sticky on/off chain

MAX_STALL = 50.0


def _scale(rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(0.005), np.log(60.0))))


def _base(workers: int, steps: int, rng: np.random.Generator, jitter: Optional[float] = None) -> np.ndarray:
    jitter = rng.uniform(0.03, 0.3) if jitter is None else jitter
    # Per-worker speeds differ a little in a real cluster, even without stragglers.
    speed = rng.normal(0.0, rng.uniform(0.0, 0.05), size=workers)
    return np.exp(np.log(_scale(rng)) + speed + rng.normal(0.0, jitter, size=(steps, workers)))


def _stalls(times: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    stall = rng.random(times.shape) < rate
    alpha = rng.uniform(1.1, 3.0)
    factor = np.minimum(1.0 + rng.pareto(alpha, times.shape) * rng.uniform(0.5, 3.0), MAX_STALL)
    return np.where(stall, times * factor, times)


def steady(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Straggler-free: i.i.d. log-normal with a small spread (sigma 0.01-0.08)."""
    return np.exp(np.log(_scale(rng)) + rng.normal(0.0, rng.uniform(0.01, 0.08), size=(steps, workers)))


def iid(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Independent log-normal times, sigma 0.05-0.5."""
    return np.exp(np.log(_scale(rng)) + rng.normal(0.0, rng.uniform(0.05, 0.5), size=(steps, workers)))


def heavy_tail(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal body with 0.5%-8% Pareto stalls of random tail index."""
    return _stalls(_base(workers, steps, rng), rng.uniform(0.005, 0.08), rng)


def slow_nodes(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """A persistent random fraction of nodes runs 1.2x-4x slower."""
    times = _base(workers, steps, rng)
    count = max(1, int(round(workers * rng.uniform(0.02, 0.3))))
    slow = rng.choice(workers, size=min(count, workers), replace=False)
    times[:, slow] *= rng.uniform(1.2, 4.0, size=slow.size)
    return times


def markov(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Per-node sticky on/off slowdowns with random rates and factors."""
    times = _base(workers, steps, rng)
    slowed = _markov(steps, workers, rng.uniform(0.005, 0.06), rng.uniform(0.05, 0.4), rng)
    factor = rng.uniform(1.5, 6.0, size=workers)
    return np.where(slowed, times * factor, times)


def rack(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Groups of 2-16 nodes share sticky slowdowns."""
    times = _base(workers, steps, rng)
    size = int(rng.integers(2, 17))
    racks = rng.permutation(workers) // size if rng.random() < 0.5 else np.arange(workers) // size
    n = int(racks.max()) + 1
    slowed = _markov(steps, n, rng.uniform(0.005, 0.06), rng.uniform(0.05, 0.4), rng)
    factor = rng.uniform(1.5, 5.0, size=n)
    return np.where(slowed[:, racks], times * factor[racks], times)


def periodic(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Each node pauses once per period (5-40 steps) at its own phase, by 0.5x-4x a step."""
    times = _base(workers, steps, rng)
    period = int(rng.integers(5, 41))
    phase = rng.integers(0, period, size=workers)
    t = np.arange(steps)[:, None]
    pause = ((t + phase) % period) == 0
    med = float(np.median(times))
    return times + pause * med * rng.uniform(0.5, 4.0, size=workers)


def drift(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """A random fraction of nodes slowly throttles and recovers, up to 1.5x-4x."""
    times = _base(workers, steps, rng)
    hot = rng.random(workers) < rng.uniform(0.1, 0.7)
    hot[rng.integers(workers)] = True
    t = np.arange(steps)[:, None]
    cycle = rng.uniform(50, 1000, size=workers)
    start = rng.uniform(0, 2 * np.pi, size=workers)
    top = rng.uniform(1.5, 4.0)
    level = 1.0 + 0.5 * (top - 1.0) * (1.0 + np.sin(2 * np.pi * t / cycle + start))
    return np.where(hot, times * level, times)


def phase(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """The whole cluster shifts between 2-5 step-time levels, runs of 5-120 steps."""
    times = _base(workers, steps, rng)
    levels = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=int(rng.integers(2, 6))))
    lo, hi = sorted(rng.integers(5, 121, size=2))
    t, out = 0, np.empty(steps)
    while t < steps:
        run = int(rng.integers(lo, hi + 1))
        out[t:t + run] = rng.choice(levels)
        t += run
    return times * out[:, None]


def groups(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Persistent heterogeneous groups: 2-4 hardware generations with their own speed and spread."""
    g = int(rng.integers(2, 5))
    which = rng.integers(0, g, size=workers)
    speed = np.exp(rng.uniform(0.0, np.log(3.0), size=g))
    spread = rng.uniform(0.02, 0.3, size=g)
    noise = rng.normal(0.0, 1.0, size=(steps, workers)) * spread[which]
    return _scale(rng) * speed[which] * np.exp(noise)


def mixture(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Slow nodes, Markov slowdowns and heavy-tailed stalls together."""
    times = markov(workers, steps, rng)
    count = max(1, int(round(workers * rng.uniform(0.02, 0.2))))
    slow = rng.choice(workers, size=min(count, workers), replace=False)
    times[:, slow] *= rng.uniform(1.2, 3.0, size=slow.size)
    return _stalls(times, rng.uniform(0.005, 0.05), rng)


def combo(workers: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Two or three random families' slowdowns multiplied (ratios to their own medians)."""
    names = [n for n in FAMILIES if n not in ("combo", "steady")]
    picks = rng.choice(names, size=int(rng.integers(2, 4)), replace=False)
    out = np.ones((steps, workers))
    for name in picks:
        t = FAMILIES[name](workers, steps, rng)
        out *= t / np.median(t)
    return out * _scale(rng)


FAMILIES: Dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    f.__name__: f for f in (steady, iid, heavy_tail, slow_nodes, markov, rack, periodic, drift,
                            phase, groups, mixture, combo)
}


def random_trace(workers: int, steps: int, rng: np.random.Generator,
                 exclude: Sequence[str] = ()) -> tuple:
    """(family name, times [steps, workers]) from a random family not in ``exclude``.
    A family excluded also leaves ``combo`` and ``mixture`` (which reuse it) out."""
    names = [n for n in FAMILIES if n not in exclude]
    if exclude:
        names = [n for n in names if n not in ("combo", "mixture")] if any(
            e in ("markov", "slow_nodes", "heavy_tail", "mixture") for e in exclude) else \
            [n for n in names if n != "combo"]
    name = str(rng.choice(names))
    return name, FAMILIES[name](workers, steps, rng)
