"""P3: step time with the cutoff on but no stragglers, against plain Horovod's
DistributedOptimizer; a 25M-parameter model, np=2 over Gloo. Target: median ratio <= 1.05.

Both optimizers train their own copy of the model in the same ranks, in alternating blocks
of steps, so machine noise hits both alike.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import horovodrun, machine, main, write_rank_result  # noqa: E402

ID = "P3"
TARGET = 1.05


def run(quick: bool = False) -> dict:
    params = {"blocks": 6 if quick else 20, "block": 5, "batch": 32}
    ranks = horovodrun(2, Path(__file__), params)
    import numpy as np
    plain = np.array(ranks[0]["plain"])
    cut = np.array(ranks[0]["cutoff"])
    ratio = float(np.median(cut) / np.median(plain))
    return {
        "id": ID, "value": round(ratio, 4), "unit": "x plain Horovod step time (median)",
        "target": f"<= {TARGET}", "met": ratio <= TARGET, "device": machine(),
        "np": 2, "parameters": ranks[0]["parameters"], "steps_each": int(plain.size),
        "plain_median_s": float(np.median(plain)), "cutoff_median_s": float(np.median(cut)),
        "plain_p90_s": float(np.percentile(plain, 90)),
        "cutoff_p90_s": float(np.percentile(cut, 90)),
        "policy": "static, 60 s (armed every step, never reached)",
    }


def rank_side(outdir: str, params: dict) -> None:
    import horovod_cutoff.torch as hvd
    import torch

    hvd.init()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def model():
        # 1024*4096 + 4096*4096 + 4096*1024 weights: 25.2M parameters.
        return torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(),
                                   torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
                                   torch.nn.Linear(4096, 1024))

    a, b = model(), model()
    b.load_state_dict(a.state_dict())
    opt_plain = hvd.DistributedOptimizer(torch.optim.SGD(a.parameters(), lr=1e-3),
                                         named_parameters=a.named_parameters())
    opt_cut = hvd.DistributedOptimizer(torch.optim.SGD(b.parameters(), lr=1e-3),
                                       named_parameters=b.named_parameters(),
                                       cutoff="static", cutoff_options={"seconds": 60.0})
    x = torch.randn(params["batch"], 1024)
    times = {"plain": [], "cutoff": []}

    def one_step(net, opt):
        start = time.perf_counter()
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(2):  # warm-up: allocation, Horovod's response cache
        one_step(a, opt_plain)
        one_step(b, opt_cut)
    for block in range(params["blocks"]):
        order = [("plain", a, opt_plain), ("cutoff", b, opt_cut)]
        for key, net, opt in order if block % 2 == 0 else reversed(order):
            for _ in range(params["block"]):
                times[key].append(one_step(net, opt))
    times["parameters"] = sum(p.numel() for p in a.parameters())
    write_rank_result(outdir, hvd.rank(), times)


if __name__ == "__main__":
    main(run, rank_side)
