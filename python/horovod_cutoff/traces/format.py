"""The trace format: N worker times for each of T steps, as .npy, .npz (key ``times``) or CSV.

Row t holds every worker's compute time in seconds for step t; NaN marks an absent worker.
An optional boolean ``censored`` array of the same shape (npz only) marks times that are a
cutoff, not a finish (what a live recording of a cut worker knows).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class TraceError(ValueError):
    """A malformed trace; the message names the file and the problem."""


def validate(times: np.ndarray, source: str = "trace") -> np.ndarray:
    """Check a [T, N] array of seconds; return it as float64 or raise TraceError."""
    try:
        arr = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError):
        raise TraceError(f"{source}: times are not numeric") from None
    if arr.ndim != 2:
        raise TraceError(f"{source}: times must have shape [steps, workers], got shape {arr.shape}")
    if arr.size == 0:
        raise TraceError(f"{source}: trace is empty (shape {arr.shape})")
    if np.isinf(arr).any():
        raise TraceError(f"{source}: times contain infinity")
    bad = np.argwhere(arr < 0)
    if bad.size:
        t, n = bad[0]
        raise TraceError(f"{source}: negative time {arr[t, n]} at step {t}, worker {n}")
    if np.isnan(arr).all(axis=1).any():
        t = int(np.flatnonzero(np.isnan(arr).all(axis=1))[0])
        raise TraceError(f"{source}: step {t} has no worker present (all NaN)")
    return arr


def load_trace(path: PathLike, with_censoring: bool = False):
    """Read and validate a trace; returns times, or (times, censored) if asked."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"{path}: no such trace file")
    if path.is_file() and path.stat().st_size == 0:
        raise TraceError(f"{path}: trace file is empty (no data)")
    censored: Optional[np.ndarray] = None
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
            if not isinstance(raw, np.ndarray):  # an .npz archive under a .npy name
                raw.close()
                raise TraceError(f"{path}: not a .npy array (an .npz archive? name it .npz)")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "times" not in data:
                    raise TraceError(
                        f"{path}: npz trace has no 'times' array (keys: {sorted(data)})")
                raw = data["times"]
                if "censored" in data:
                    censored = np.asarray(data["censored"], dtype=bool)
        elif suffix in (".csv", ".txt"):
            raw = _read_csv(path)
        else:
            raise TraceError(f"{path}: unknown trace format {suffix!r} (use .npy, .npz or .csv)")
    except TraceError:
        raise
    except EOFError:  # np.load on a file with a header but no data
        raise TraceError(f"{path}: trace file is empty or truncated (no data)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise TraceError(f"{path}: cannot read trace: {err}") from None
    if raw.dtype.kind not in "fiub":
        raise TraceError(f"{path}: times are not numeric (dtype {raw.dtype})")
    times = validate(raw, str(path))
    if censored is not None and censored.shape != times.shape:
        raise TraceError(f"{path}: 'censored' has shape {censored.shape}, times {times.shape}")
    if with_censoring:
        return times, (censored if censored is not None else np.zeros(times.shape, dtype=bool))
    return times


def _read_csv(path: Path) -> np.ndarray:
    rows = []
    with open(path, newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rows.append([float(cell) if cell.strip() else np.nan for cell in line.split(",")])
            except ValueError:
                raise TraceError(f"{path}: line {lineno} is not numeric: {line[:60]!r}") from None
    if not rows:
        raise TraceError(f"{path}: trace is empty")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise TraceError(f"{path}: rows have different numbers of workers {sorted(widths)}")
    return np.array(rows, dtype=np.float64)


def save_trace(path: PathLike, times: np.ndarray, censored: Optional[np.ndarray] = None) -> Path:
    """Write a trace in the format its suffix names; censoring flags need .npz."""
    path = Path(path)
    times = validate(times, str(path))
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        extra = {} if censored is None else {"censored": np.asarray(censored, dtype=bool)}
        np.savez(path, times=times, **extra)
    elif censored is not None and np.any(censored):
        raise TraceError(f"{path}: censoring flags can only be stored in .npz")
    elif suffix == ".npy":
        np.save(path, times)
    elif suffix in (".csv", ".txt"):
        np.savetxt(path, times, delimiter=",", fmt="%.9g")
    else:
        raise TraceError(f"{path}: unknown trace format {suffix!r} (use .npy, .npz or .csv)")
    return path

