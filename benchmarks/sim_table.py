"""SIM: every shipped scenario x every policy (gradients/s and ratio to the oracle), with the
cutoff alone and with the arrival channel's rule (the live default), plus the replay speed
of the baselines on 10,000 steps x 64 workers. Not a target: the yardstick."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from _scenarios import best_online, markdown, scenario_table, sizes  # noqa: E402

ID = "SIM"


def replay_speed() -> dict:
    """Seconds to replay 10,000 steps x 64 workers, per policy (the table's policies plus the
    fixed-cutoff case, which replays all rows at once)."""
    from horovod_cutoff.policies import POLICIES
    from horovod_cutoff.policies.oracle import backup_hindsight, oracle, static_hindsight
    from horovod_cutoff.sim import build_policy, replay

    times = np.random.default_rng(0).lognormal(np.log(0.2), 0.3, size=(10_000, 64))
    seconds = {}
    runs = [(name, build_policy(name, 0.02)) for name in POLICIES]
    runs.append(("static (seconds=0.25, vectorised)", build_policy("static", 0.02, seconds=0.25)))
    for name, policy in runs:
        start = time.perf_counter()
        replay(times, policy, overhead=0.02)
        seconds[name] = round(time.perf_counter() - start, 3)
    for name, fn in (("oracle", oracle), ("static_hindsight", static_hindsight),
                     ("backup_hindsight", backup_hindsight)):
        start = time.perf_counter()
        fn(times, 0.02)
        seconds[name] = round(time.perf_counter() - start, 3)
    return seconds


def run(quick: bool = False) -> dict:
    rows = scenario_table(quick)
    speed = replay_speed()
    best = {r["scenario"]: best_online(r["results"]) for r in rows}
    n = sizes(quick)
    slowest = max(speed.values())
    return {
        "id": ID, "value": round(slowest, 3), "unit": "s, slowest replay of 10,000 x 64",
        "target": "seconds, not minutes (< 60)", "met": slowest < 60, "device": machine(),
        "replay_seconds_10000x64": speed, "best_online_baseline": best,
        "workers": n["workers"], "steps": n["steps"], "warmup": n["warmup"], "overhead": 0.02,
        "seed": 0,
        "table": [{"scenario": r["scenario"],
                   **{p: {"gradients_per_second": round(v["gradients_per_second"], 3),
                          "ratio_to_oracle": round(v["ratio_to_oracle"], 4)}
                      for p, v in r["results"].items()}} for r in rows],
        "markdown": markdown(rows),
        # The live engine's rule (its arrival channel): the README's results table.
        "markdown_arrivals": markdown(scenario_table(quick, arrivals=True)),
    }


if __name__ == "__main__":
    import json
    result = run(quick="--quick" in sys.argv)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("markdown")}))
    print(result["markdown"])
    print("\nwith the arrival channel's rule (--arrivals):\n")
    print(result["markdown_arrivals"])
