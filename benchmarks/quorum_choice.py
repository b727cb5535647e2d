"""QUORUM: the cost per step of the predictive policy's joint (cutoff, quorum) choice
(policies/quorum.py: order statistics of the next step's samples, their online calibration,
model/inference.best_rule), timed inside a replay of the heavy_tail scenario with the arrival
channel's rule, on the policy's own samples: N=64 workers, S=256 samples (target < 1 ms
median, one thread) and N=1024, S=64. It runs on the policy's own step, after the hot path's
cutoff (P1), off the engine's critical path; the machine's load average is reported (on a
shared machine the tail is other processes' time slices).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, main, percentile  # noqa: E402

ID = "QUORUM"
TARGET_US = 1000.0
CASES = ((64, 256), (1024, 64))


def _time_choice(workers: int, samples: int, steps: int) -> list:
    """Seconds of each joint choice along a replay."""
    import torch
    from horovod_cutoff.policies.predictive import Predictive
    from horovod_cutoff.sim import replay
    from horovod_cutoff.traces.generators import generate

    torch.set_num_threads(1)
    policy = Predictive(overhead=0.02, samples=samples)
    choose, spent = policy.joint.choose, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = choose(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    policy.joint.choose = timed
    replay(generate("heavy_tail", workers, steps, seed=0), policy, 0.02, arrivals=True)
    return spent[len(spent) // 10:]  # after the first tenth: caches warm


def run(quick: bool = False) -> dict:
    steps = 100 if quick else 600
    per_case = {}
    for workers, samples in CASES:
        spent = _time_choice(workers, samples, steps if workers <= 64 else steps // 3)
        per_case[f"N={workers},S={samples}"] = {
            "median_us": round(1e6 * float(np.median(spent)), 1),
            "p90_us": round(1e6 * percentile(spent, 90), 1), "steps": len(spent)}
    value = per_case["N=64,S=256"]["median_us"]
    return {"id": ID, "value": value, "unit": "us, median per step at N=64, S=256 (one thread)",
            "target": f"< {TARGET_US:.0f}", "met": value < TARGET_US, "device": machine(),
            "per_case": per_case, "load_average": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    main(run)
