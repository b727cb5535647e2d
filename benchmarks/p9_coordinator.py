"""P9: what the cutoff service costs the coordinator. Rank 0's median step time while its
service runs the predictive policy at N=1024 simulated workers (its default samples, S=64 at
that N; ``--samples S`` for more), against the same run under "static". Target: <= 1.01x.

The policy is fed a 1024-worker vector each step (this rank's time, spread over 1024
simulated workers), so its cost is the real inference, not a sleep; ``--policy adaptive``
runs the adaptive baseline instead. Both optimizers train their own copy of the model in
alternating blocks of steps, in one process, so machine noise hits both alike. One rank
(np=1): the service competes with training for the GIL and for a core of the coordinator,
which is what this measures; with np=2 on this 2-core machine the ranks would also compete
for the cores themselves.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import flag_values, horovodrun, machine, main, write_rank_result  # noqa: E402

ID = "P9"
TARGET = 1.01
WORKERS = 1024
SAMPLES = None  # the predictive policy's default (Predictive.samples_for)


class SimulatedCluster:
    """A policy over WORKERS simulated workers whose times follow this rank's."""

    def __init__(self, policy: str = "predictive", samples=SAMPLES, workers: int = WORKERS,
                 seed: int = 0):
        from horovod_cutoff.policies import make_policy

        self.name = f"simulated_{policy}"
        self.inner = make_policy(policy, **({"samples": samples} if policy == "predictive" else {}))
        self.rng = np.random.default_rng(seed)
        self.spread = self.rng.lognormal(0.0, 0.2, workers)
        self.answer_seconds: list = []

    def observe(self, times, censored):
        started = time.perf_counter()
        base = float(np.nanmax(times))
        simulated = base * self.spread * self.rng.lognormal(0.0, 0.05, self.spread.size)
        self.inner.observe(simulated, np.zeros(simulated.size, dtype=bool))
        self.inner.cutoff()
        self.answer_seconds.append(time.perf_counter() - started)

    def serve_live(self):  # the service's call: the inner policy's refits go off its thread
        live = getattr(self.inner, "serve_live", None)
        if live is not None:
            live()

    def close(self):
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def cutoff(self):
        # Far beyond any step here: the policy's work is real, its answer never cuts anyone.
        return 60.0

    def config(self):
        return {"policy": self.name}


def run(quick: bool = False) -> dict:
    policy = (flag_values("--policy") or ["predictive"])[0]
    given = flag_values("--samples")
    samples = int(given[0]) if given else SAMPLES
    params = {"blocks": 6 if quick else 40, "block": 5, "batch": 64, "policy": policy,
              "samples": samples}
    rank0 = horovodrun(1, Path(__file__), params)[0]
    static = np.array(rank0["static"])
    served = np.array(rank0["served"])
    ratio = float(np.median(served) / np.median(static))
    answers = np.array(rank0["answer_seconds"]) * 1e3
    return {
        "id": ID, "value": round(ratio, 4), "unit": "x rank 0's median step time under static",
        "target": f"<= {TARGET}", "met": ratio <= TARGET, "device": machine(), "np": 1,
        "simulated_workers": WORKERS, "steps_each": int(static.size),
        "static_median_s": float(np.median(static)), "served_median_s": float(np.median(served)),
        "static_p90_s": float(np.percentile(static, 90)),
        "served_p90_s": float(np.percentile(served, 90)),
        "policy_answer_median_ms": float(np.median(answers)),
        "policy_answer_p90_ms": float(np.percentile(answers, 90)),
        "policy_answers": int(answers.size),
        "policy": f"{policy} over {WORKERS} simulated workers"
                  + (f", S={samples or 'auto (64 at N=1024)'}" if policy == "predictive" else "")
                  + ", on the cutoff service's thread",
        "command": " ".join(sys.argv),
    }


def rank_side(outdir: str, params: dict) -> None:
    import horovod_cutoff.torch as hvd
    import torch

    hvd.init()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def model():
        return torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(),
                                   torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                                   torch.nn.Linear(2048, 1024))

    a, b = model(), model()
    b.load_state_dict(a.state_dict())
    policy = SimulatedCluster(params["policy"], params["samples"])
    opt_static = hvd.DistributedOptimizer(torch.optim.SGD(a.parameters(), lr=1e-3),
                                          named_parameters=a.named_parameters(),
                                          cutoff="static", cutoff_options={"seconds": 60.0})
    opt_served = hvd.DistributedOptimizer(torch.optim.SGD(b.parameters(), lr=1e-3),
                                          named_parameters=b.named_parameters(), cutoff=policy)
    x = torch.randn(params["batch"], 1024)
    times = {"static": [], "served": []}

    def one_step(net, opt):
        start = time.perf_counter()
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        one_step(a, opt_static)
        one_step(b, opt_served)
    for block in range(params["blocks"]):
        order = [("static", a, opt_static), ("served", b, opt_served)]
        for key, net, opt in order if block % 2 == 0 else reversed(order):
            for _ in range(params["block"]):
                times[key].append(one_step(net, opt))
    time.sleep(0.5)
    times["answer_seconds"] = policy.answer_seconds
    write_rank_result(outdir, hvd.rank(), times)


if __name__ == "__main__":
    main(run, rank_side)
