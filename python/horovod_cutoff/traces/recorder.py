"""Writes a live run's ``opt.cutoff_stats()`` as a trace: times, censoring flags, cutoffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .format import PathLike, validate


def stats_to_arrays(stats: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [T, N], censored [T, N], cutoff [T]) from per-step stats dicts."""
    if not stats:
        raise ValueError("stats is empty: no step was recorded")
    widths = {len(s["times"]) for s in stats} | {len(s["censored"]) for s in stats}
    if len(widths) != 1:
        raise ValueError(f"stats have different numbers of workers per step: {sorted(widths)}")
    times = np.array([s["times"] for s in stats], dtype=np.float64)
    censored = np.array([s["censored"] for s in stats], dtype=bool)
    cutoff = np.array([s["cutoff"] for s in stats], dtype=np.float64)
    return validate(times, "stats"), censored, cutoff


def record(path: PathLike, stats: List[Dict[str, Any]]) -> Path:
    """Writes an .npz (times, censored, cutoff) that load_trace and the simulator read."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: a recording keeps censoring flags, so it must be .npz")
    times, censored, cutoff = stats_to_arrays(stats)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, times=times, censored=censored, cutoff=cutoff)
    return path
