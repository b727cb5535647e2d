"""Every shipped scenario x every policy in the simulator: the table P5, P6 and SIM report."""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List

from horovod_cutoff.sim import progress_bar, simulate_all
from horovod_cutoff.traces.generators import SCENARIOS, generate

ONLINE_BASELINES = ("none", "static", "backup", "elfving", "adaptive")
HINDSIGHT = ("static_hindsight", "backup_hindsight")


def sizes(quick: bool) -> Dict[str, int]:
    return {"workers": 16, "steps": 400, "warmup": 40} if quick else \
        {"workers": 64, "steps": 2000, "warmup": 100}


@lru_cache(maxsize=4)  # SIM, P5, P6 (P5A, P6A) in one `bench` run share a table (read-only)
def scenario_table(quick: bool, overhead: float = 0.02, seed: int = 0,
                   arrivals: bool = False) -> List[dict]:
    """One row per scenario: {scenario, results: {policy: simulate JSON}}; ``arrivals``: the
    arrival channel's step-end rule (sim.replay)."""
    n = sizes(quick)
    rows = []
    # Minutes at full size: a bar per scenario, and simulate_all's per policy inside it.
    with progress_bar(len(SCENARIOS), "scenarios" + (" (arrivals)" if arrivals else ""), True,
                      unit="scenario") as bar:
        for name in SCENARIOS:
            bar.set_postfix_str(name)
            times = generate(name, n["workers"], n["steps"], seed)
            results = simulate_all(times, overhead=overhead, warmup=n["warmup"], arrivals=arrivals,
                                   progress=True)
            rows.append({"scenario": name, "results": {r["policy"]: r for r in results}})
            bar.update()
    return rows


def markdown(rows: List[dict]) -> str:
    policies = [p for p in rows[0]["results"] if p != "oracle"]
    head = "| scenario | oracle grads/s | " + " | ".join(policies) + " |"
    rule = "|---" * (len(policies) + 2) + "|"
    lines = [head, rule]
    for row in rows:
        res = row["results"]
        cells = [f"{res[p]['gradients_per_second']:.1f} ({res[p]['ratio_to_oracle']:.3f})"
                 for p in policies]
        lines.append(f"| {row['scenario']} | {res['oracle']['gradients_per_second']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\ncells: gradients/s (ratio to oracle)"


def best_online(res: dict, exclude: str = "") -> str:
    return max((p for p in ONLINE_BASELINES if p in res and p != exclude),
               key=lambda p: res[p]["gradients_per_second"])
