"""P6A (issue 10's P6'): with the arrival channel's step-end rule, predictive against every
online baseline including exact-quorum backup (>= 1.00x with temporal structure, >= 0.99x
where times are independent from step to step: steady, iid, heavy_tail and slow_nodes), and
against hybrid_hindsight, the best fixed (cutoff, quorum) chosen knowing the whole trace
(>= 0.98x everywhere).

Also reports, for information, the adaptive baseline with ``quorum=True`` (off by default)
beside it. ``--model FILE`` replays the predictive policy with other weights and
``--scenarios a b`` restricts the scenarios.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import flag_values, machine, main  # noqa: E402
from _scenarios import ONLINE_BASELINES, scenario_table, sizes  # noqa: E402
from p6_simulator import IID  # noqa: E402

ID = "P6A"


def _table(quick: bool, model, only) -> list:
    """The shared arrivals table, or (for other weights or a subset) the same rows here."""
    if model is None and only is None:
        return scenario_table(quick, arrivals=True)
    from horovod_cutoff.policies.oracle import oracle
    from horovod_cutoff.sim import simulate
    from horovod_cutoff.traces.generators import SCENARIOS, generate

    n = sizes(quick)
    rows = []
    for name in only or SCENARIOS:
        times = generate(name, n["workers"], n["steps"], 0)
        best = oracle(times[n["warmup"]:], 0.02)
        res = {p: simulate(times, p, 0.02, n["warmup"], best=best, arrivals=True)
               for p in ONLINE_BASELINES + ("hybrid_hindsight",)}
        res["predictive"] = simulate(times, "predictive", 0.02, n["warmup"], best=best,
                                     params={"model": model} if model else None, arrivals=True)
        rows.append({"scenario": name, "results": res})
    return rows


def run(quick: bool = False) -> list:
    from horovod_cutoff.sim import simulate
    from horovod_cutoff.traces.generators import generate

    model = (flag_values("--model") or [None])[0]
    rows = _table(quick, model, flag_values("--scenarios"))
    n = sizes(quick)
    vs_online, vs_hybrid, informational = {}, {}, {}
    online_ok = hybrid_ok = True
    for row in rows:
        res, name = row["results"], row["scenario"]
        mine = res["predictive"]["gradients_per_second"]
        rival = max((p for p in ONLINE_BASELINES if p in res),
                    key=lambda p: res[p]["gradients_per_second"])
        ratio = mine / res[rival]["gradients_per_second"]
        bar = 0.99 if name in IID else 1.0
        vs_online[name] = {"ratio": round(ratio, 4), "baseline": rival, "bar": bar}
        online_ok &= ratio >= bar
        hybrid = res["hybrid_hindsight"]
        h = mine / hybrid["gradients_per_second"]
        chosen = dict(hybrid["chosen"])  # strict JSON: "inf" for no cutoff, as the CLI writes
        chosen["cutoff"] = chosen["cutoff"] if chosen["cutoff"] < float("inf") else "inf"
        vs_hybrid[name] = {"ratio": round(h, 4), "chosen": chosen}
        hybrid_ok &= h >= 0.98
        if not quick:
            times = generate(name, n["workers"], n["steps"], 0)
            adaptive_quorum = simulate(times, "adaptive", 0.02, n["warmup"],
                                       params={"quorum": True}, arrivals=True)
            informational[name] = {
                "predictive": round(res["predictive"]["ratio_to_oracle"], 4),
                "adaptive": round(res["adaptive"]["ratio_to_oracle"], 4),
                "adaptive_quorum": round(adaptive_quorum["ratio_to_oracle"], 4)}
    common = {"device": machine(), "policy": "predictive", "model": model or "shipped default",
              "arrivals": True, "command": " ".join(sys.argv)}
    out = [
        {"id": ID, "part": "vs every online baseline incl. exact-quorum backup "
                           f"({', '.join(ONLINE_BASELINES)})",
         "value": min(v["ratio"] for v in vs_online.values()), "unit": "x (min over scenarios)",
         "target": ">= 1.00 with temporal structure, >= 0.99 i.i.d.", "met": online_ok,
         "losing": sorted(s for s, v in vs_online.items() if v["ratio"] < v["bar"]),
         "per_scenario": vs_online, **common},
        {"id": ID, "part": "vs hybrid_hindsight (best fixed cutoff and quorum, in hindsight)",
         "value": min(v["ratio"] for v in vs_hybrid.values()), "unit": "x (min over scenarios)",
         "target": ">= 0.98 everywhere", "met": hybrid_ok,
         "losing": sorted(s for s, v in vs_hybrid.items() if v["ratio"] < 0.98),
         "per_scenario": vs_hybrid, **common},
    ]
    if informational:
        out.append({"id": ID, "part": "adaptive with quorum=True (informational)",
                    "value": round(sum(v["adaptive_quorum"] - v["adaptive"]
                                       for v in informational.values()) / len(informational), 4),
                    "unit": "mean over scenarios of the change in adaptive / oracle from its quorum",
                    "target": "none", "met": True, "per_scenario": informational, **common})
    return out


if __name__ == "__main__":
    main(run)
