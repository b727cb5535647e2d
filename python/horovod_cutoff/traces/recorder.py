"""Writes a live run's ``opt.cutoff_stats()`` as a trace: times, censoring flags, cutoffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .format import PathLike, validate

_KEYS = ("cutoff", "times", "censored")


def stats_to_arrays(stats: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [T, N], censored [T, N] bool, cutoff [T], inf = none) from per-step stats dicts."""
    if len(stats) == 0:
        raise ValueError("stats is empty: no step was recorded")
    width = None
    for i, s in enumerate(stats):
        missing = [k for k in _KEYS if k not in s]
        if missing:
            raise ValueError(f"stats[{i}] (step {s.get('step', i)}) lacks {', '.join(missing)}")
        n_times, n_cens = len(s["times"]), len(s["censored"])
        width = n_times if width is None else width
        # One N for the whole run: a step with another width means stats from different jobs.
        if n_times != width or n_cens != width:
            raise ValueError(f"stats[{i}] (step {s.get('step', i)}) has {n_times} times and "
                             f"{n_cens} censored flags; the first step has {width} workers")
    times = np.array([s["times"] for s in stats], dtype=np.float64)
    censored = np.array([s["censored"] for s in stats], dtype=bool)
    cutoff = np.array([s["cutoff"] for s in stats], dtype=np.float64)
    return validate(times, "stats"), censored, cutoff


def record(path: PathLike, stats: Sequence[Dict[str, Any]]) -> Path:
    """Writes an .npz that load_trace and the simulator read: ``times`` and ``censored``
    [T, N], ``cutoff`` [T] (inf: none), and, when every step has them, ``contributors`` and
    ``step_seconds`` [T] (what the live run achieved, to compare with a replay)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: a recording keeps censoring flags, so it must be .npz")
    times, censored, cutoff = stats_to_arrays(stats)
    extra = {key: np.array([s[key] for s in stats], dtype=dtype)
             for key, dtype in (("contributors", np.int64), ("step_seconds", np.float64))
             if all(key in s for s in stats)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, times=times, censored=censored, cutoff=cutoff, **extra)
    return path
