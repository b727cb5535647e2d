"""P8: no harm. On a straggler-free cluster (i.i.d. log-normal, sigma 0.05, no stragglers)
every adaptive policy must keep >= 0.995x the gradients/s of waiting for everyone (`none`).

The scenario is the shipped generator "steady" (`horovod-cutoff generate steady ...`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, main  # noqa: E402
from _scenarios import sizes  # noqa: E402

ID = "P8"
TARGET = 0.995
ADAPTIVE = ("static", "elfving", "adaptive", "predictive")


def run(quick: bool = False) -> dict:
    from horovod_cutoff.policies import POLICIES
    from horovod_cutoff.policies.oracle import oracle
    from horovod_cutoff.sim import simulate
    from horovod_cutoff.traces.generators import STEADY_SIGMA, generate

    n = sizes(quick)
    times = generate("steady", n["workers"], n["steps"], 0)
    best = oracle(times[n["warmup"]:], 0.02)
    res = {p: simulate(times, p, 0.02, n["warmup"], best=best)
           for p in ("none",) + ADAPTIVE + ("static_hindsight",) if p in POLICIES or p.endswith("hindsight")}
    none = res["none"]["gradients_per_second"]
    ratios = {p: round(r["gradients_per_second"] / none, 4) for p, r in res.items() if p != "none"}
    mine = ratios.get("predictive")
    return {"id": ID, "value": mine, "unit": "predictive gradients/s / none's",
            "target": f">= {TARGET}", "met": mine is not None and mine >= TARGET,
            "device": machine(), "command": " ".join(sys.argv),
            "scenario": f"steady: i.i.d. log-normal(log 0.2 s, {STEADY_SIGMA}), "
                        f"{n['workers']} workers x {n['steps']} steps, o = 0.02 s",
            "vs_none": ratios,
            "all_adaptive_met": all(ratios[p] >= TARGET for p in ADAPTIVE if p in ratios),
            "none_ratio_to_oracle": round(res["none"]["ratio_to_oracle"], 4)}


if __name__ == "__main__":
    main(run)
