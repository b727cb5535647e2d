"""Sim vs live: the live ``none`` run's recorded per-step times (every rank's true time: nobody
is cut) replayed in the simulator under each policy, and the predicted gain over ``none``
set against the gain measured on the same stragglers in the same job."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Dict

import numpy as np


def step_overhead(record: Path) -> float:
    """What a recorded live step cost beyond its slowest rank (or its cut): the reduction,
    the optimizer, Python; the median over the run."""
    data = np.load(record)
    return float(np.median(data["step_seconds"] - data["times"].max(axis=1)))


def compare(records: Dict[str, Path], measured: Dict[str, float], eval_every: int) -> dict:
    """``records``: each policy's live recording (``none`` included: its times are the trace
    replayed); ``measured``: live gradients/s per policy.

    The replay follows the live engine: one step of cutoff lag, the arrival channel's step
    end where the simulator has it, each policy with the parameters it had live, and the
    overhead measured on the none run: ``predicted``, what a user would ask before deploying.
    ``predicted_with_pauses`` also makes the step after each evaluation wait for every rank,
    as ``opt.paused()`` does live (the simulator has no pauses); ``predicted_with_live_overhead``
    also charges each policy the overhead its own live run paid per step."""
    from horovod_cutoff.sim import build_policy, default_params, replay

    times = np.load(records["none"])["times"]
    workers = times.shape[1]
    overhead = {name: step_overhead(path) for name, path in records.items()}
    arrivals = "arrivals" in inspect.signature(replay).parameters
    extra = {"arrivals": True} if arrivals else {}
    warmup = 1  # step 0 waits for every rank and checks the configuration
    index = np.arange(times.shape[0])
    paused = (index % eval_every == 0) & (index > 0)

    def rates(name: str, o: float) -> tuple:
        # Told the overhead, as the live cutoff service tells the policies that charge one.
        policy = build_policy(name, o, **default_params(name, workers))
        out = replay(times, policy, o, warmup=warmup, lag=1, record=True, **extra)
        rows, _, made, seconds = out["trail"].T
        rows = rows.astype(int)
        keep = rows >= warmup
        after_pause = paused[rows] & keep
        made = np.where(after_pause, workers, made)
        seconds = np.where(after_pause, times[rows].max(axis=1) + o, seconds)
        return out["gradients_per_second"], float(made[keep].sum() / seconds[keep].sum())

    plain = {name: rates(name, overhead["none"]) for name in records}
    own = {name: rates(name, overhead[name])[1] for name in records}
    gains = {}
    for name in records:
        if name == "none":
            continue
        live = measured[name] / measured["none"]
        row = {"measured": live, "predicted": plain[name][0] / plain["none"][0],
               "predicted_with_pauses": plain[name][1] / plain["none"][1],
               "predicted_with_live_overhead": own[name] / own["none"]}
        row.update({f"error{key[len('predicted'):]}": row[key] / live - 1
                    for key in list(row) if key.startswith("predicted")})
        gains[name] = {k: round(v, 4) for k, v in row.items()}
    return {"steps": int(times.shape[0]), "workers": workers, "arrivals": arrivals, "lag": 1,
            "overhead_s": {k: round(v, 5) for k, v in overhead.items()},
            "simulated_gradients_per_s": {k: round(v[0], 3) for k, v in plain.items()},
            "live_gradients_per_s": {k: round(v, 3) for k, v in measured.items()},
            "gains": gains}
