"""P5: in the simulator, on every shipped scenario, predictive gradients/s / oracle >= 0.95,
measured after the first 100 steps (the shared table's warmup) and from the first step.

``--model FILE`` replays with other weights (e.g. leave-one-family-out ones);
``--scenarios a b`` restricts the scenarios.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import flag_values, machine, main  # noqa: E402
from _scenarios import scenario_table, sizes  # noqa: E402

ID = "P5"
TARGET = 0.95


def run(quick: bool = False) -> dict:
    from horovod_cutoff.policies import POLICIES
    from horovod_cutoff.sim import simulate
    from horovod_cutoff.traces.generators import SCENARIOS, generate

    policy = "predictive" if "predictive" in POLICIES else "adaptive"
    model = (flag_values("--model") or [None])[0]
    only = flag_values("--scenarios")
    n = sizes(quick)
    after, whole = {}, {}
    if model is None and only is None:
        rows = {r["scenario"]: r["results"] for r in scenario_table(quick)}
    else:
        rows = {}
    for name in only or SCENARIOS:
        times = generate(name, n["workers"], n["steps"], 0)
        params = {"model": model} if model else None
        if name in rows:
            after[name] = round(rows[name][policy]["ratio_to_oracle"], 4)
        else:
            after[name] = round(simulate(times, policy, 0.02, n["warmup"], params=params)
                                ["ratio_to_oracle"], 4)
        whole[name] = round(simulate(times, policy, 0.02, 0, params=params)["ratio_to_oracle"], 4)
    worst = min(min(after.values()), min(whole.values()))
    result = {"id": ID, "value": worst,
              "unit": f"min over scenarios (after warmup and from step 0) of {policy} / oracle",
              "target": f">= {TARGET}", "met": policy == "predictive" and worst >= TARGET,
              "device": machine(), "policy": policy, "model": model or "shipped default",
              "command": " ".join(sys.argv), "per_scenario": after,
              "per_scenario_from_step_0": whole, "warmup": n["warmup"]}
    if policy != "predictive":
        result["note"] = "predictive policy not implemented yet: figure is the adaptive baseline"
    return result


if __name__ == "__main__":
    main(run)
