"""Rank-side scenarios for the multi-rank tests; run under horovodrun, one JSON file per rank.

Usage: worker.py SCENARIO OUTDIR JSON_PARAMS
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import horovod_cutoff.torch as hvd
import numpy as np
import torch
from horovod_cutoff.traces import StragglerInjector


def _plain(obj):
    return obj.tolist() if hasattr(obj, "tolist") else float(obj)


def write(outdir: str, payload: dict) -> None:
    with open(os.path.join(outdir, f"rank{hvd.rank()}.json"), "w") as fh:
        json.dump(payload, fh, default=_plain)


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def identical(p: dict) -> dict:
    """A real small training with injected stragglers; parameters must stay bit-identical."""
    rank, size = hvd.rank(), hvd.size()
    torch.manual_seed(1234 + rank)  # different data per rank, same init after broadcast
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                   named_parameters=model.named_parameters(),
                                   cutoff=p["cutoff"], cutoff_options=p.get("options"),
                                   **p.get("opt", {}))
    rng = np.random.default_rng(7)
    trace = rng.lognormal(np.log(0.004), 0.3, size=(p["steps"], size))
    trace[:, -1] *= np.where(rng.random(p["steps"]) < 0.3, 12.0, 1.0)  # an intermittent straggler
    injector = StragglerInjector(trace, rank, mode="sleep")
    for step in range(p["steps"]):
        x = torch.randn(8, 16)
        y = torch.randint(0, 4, (8,))
        if p.get("closure"):
            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                injector.delay(step, abort=opt.is_cut)
                return loss
            opt.step(closure)
        else:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            injector.delay(step)
            opt.step()
    return {"digest": params_digest(model), "stats": opt.cutoff_stats()}


def mean_of_contributors(p: dict) -> dict:
    """Known per-rank gradients: rank r's gradient is (r+1) * [1, 2, 3, 4]."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": p["cutoff"]},
                                   **p.get("opt", {}))
    g = (rank + 1) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    slow_steps = set(p["slow_steps"])
    deltas = []
    for step in range(p["steps"]):
        before = w.detach().clone()
        busy = 10 * p["cutoff"] if (rank == size - 1 and step in slow_steps) else 0.0

        def closure():
            opt.zero_grad()
            (w * g).sum().backward()
            StragglerInjector(np.full((1, 1), busy), 0, mode=p["mode"]).delay(
                0, abort=opt.is_cut if p.get("closure") else None)
            return None
        if p.get("closure"):
            opt.step(closure)
        else:
            closure()
            opt.step()
        deltas.append((w.detach() - before).tolist())
    return {"deltas": deltas, "stats": opt.cutoff_stats()}


def none_matches_horovod(p: dict) -> dict:
    """cutoff='none' against horovod.torch's own DistributedOptimizer on the same data."""
    import horovod.torch as plain
    rank = hvd.rank()
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    b = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    b.load_state_dict(a.state_dict())
    opt_a = plain.DistributedOptimizer(torch.optim.SGD(a.parameters(), lr=0.1),
                                       named_parameters=a.named_parameters())
    opt_b = hvd.DistributedOptimizer(torch.optim.SGD(b.parameters(), lr=0.1),
                                     named_parameters=b.named_parameters(), cutoff="none")
    torch.manual_seed(100 + rank)
    for _ in range(p["steps"]):
        x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    return {"max_abs_diff": diff, "stats": opt_b.cutoff_stats()}


def straggler(p: dict) -> dict:
    """The last rank is busy 10x the cutoff every step; the others time their steps."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(1000))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=0.01), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": p["cutoff"]},
                                   **p.get("opt", {}))
    busy = StragglerInjector(np.full((1, 1), 10 * p["cutoff"]), 0, mode=p["mode"])
    durations = []
    last = time.perf_counter()
    for step in range(p["steps"]):
        opt.zero_grad()
        w.sum().backward()
        if rank == size - 1 and step >= 1:
            busy.delay(0)
        opt.step()
        now = time.perf_counter()
        durations.append(now - last)
        last = now
    return {"durations": durations, "stats": opt.cutoff_stats()}


class FixedRule:
    """A policy answering a fixed cutoff (None: wait for all) and quorum (None: all)."""

    def __init__(self, cutoff, quorum):
        self.seconds = float("inf") if cutoff is None else cutoff
        self.k = quorum

    def observe(self, times, censored):
        pass

    def cutoff(self):
        return self.seconds

    def quorum(self):
        return self.k

    def config(self):
        return {"policy": "fixed_rule", "cutoff": self.seconds, "quorum": self.k}


def quorum(p: dict) -> dict:
    """Ranks take ``times[r]`` seconds each step (closure form, so a cut rank abandons its
    sleep); the policy asks for a quorum. Reports every step's stats."""
    rank = hvd.rank()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff=FixedRule(p.get("cutoff"), p["quorum"]))
    trace = np.tile(np.asarray(p["times"], dtype=float), (p["steps"], 1))
    injector = StragglerInjector(trace, rank, mode="sleep")
    for step in range(p["steps"]):
        def closure():
            opt.zero_grad()
            (w * (rank + 1)).sum().backward()
            injector.delay(step, abort=opt.is_cut)
        opt.step(closure)
    return {"stats": opt.cutoff_stats(), "w": w.detach().tolist()}


def close_at_end(p: dict) -> dict:
    """A job's end: the coordinator closes its optimizer first, the others a moment later."""
    rank = hvd.rank()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": 0.05})
    for _ in range(p["steps"]):
        opt.zero_grad()
        w.sum().backward()
        opt.step()
    if rank != 0:
        time.sleep(p["delay"])
    started = time.monotonic()
    opt.close()
    return {"close_seconds": time.monotonic() - started, "w": w.detach().tolist()}


def count_zero(p: dict) -> dict:
    """Every rank is late for one step: that step applies nothing and the cutoff widens."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": p["cutoff"]},
                                   **p.get("opt", {}))
    deltas = []
    for step in range(p["steps"]):
        before = w.detach().clone()
        opt.zero_grad()
        (w * torch.ones(4)).sum().backward()
        if step == p["late_step"]:
            time.sleep(2.5 * p["cutoff"])
        opt.step()
        deltas.append((w.detach() - before).tolist())
    return {"deltas": deltas, "stats": opt.cutoff_stats()}


def mismatch(p: dict) -> dict:
    """Each rank asks for a different static cutoff: every rank must get a clear error."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="static",
                                   cutoff_options={"seconds": 0.1 * (hvd.rank() + 1)})
    try:
        for _ in range(3):
            opt.zero_grad()
            w.sum().backward()
            opt.step()
    except hvd.CutoffConfigMismatch as err:
        return {"error": str(err)}
    return {"error": None}


def death(p: dict) -> dict:
    """A rank (the last, or ``dies``) dies at a step; the others must end in an error, not hang.
    Rank 0 is the coordinator: its death takes the arrival channel's store with it."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff=p["cutoff"], cutoff_options=p.get("options"))
    dies = p.get("dies", size - 1)
    try:
        for step in range(p["steps"]):
            if rank == dies and step == p["die_at"]:
                # Status 0: horovodrun would otherwise end the others itself, at once.
                os._exit(p.get("exit_status", 3))
            opt.zero_grad()
            w.sum().backward()
            opt.step()
            time.sleep(0.01)
    except RuntimeError as err:
        write(sys.argv[2], {"error": str(err), "step": opt._reduction.step_index})
        sys.exit(1)
    return {"error": None}


def grads_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.grad.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def pause(p: dict) -> dict:
    """Every rank pauses between two steps (evaluation, a checkpoint), with or without
    opt.paused(); a policy spy records what it was fed."""
    rank = hvd.rank()
    fed = []

    class Spy:
        def observe(self, times, censored):
            fed.append(float(np.nanmax(times)))

        def cutoff(self):
            return p["cutoff"]

        def config(self):
            return {"policy": "spy", "cutoff": p["cutoff"]}

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    torch.manual_seed(1 + rank)  # different data per rank
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), cutoff=Spy(),
                                   **p.get("opt", {}))
    digests = []
    for step in range(p["steps"]):
        if step == p["pause_at"]:
            if p["use_paused"]:
                with opt.paused():
                    time.sleep(p["pause"])
            else:
                time.sleep(p["pause"])
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
        digests.append(grads_digest(model))
    time.sleep(0.5)  # let the service see the last steps
    return {"stats": opt.cutoff_stats(), "fed": fed, "grad_digests": digests,
            "digest": params_digest(model)}


def lag(p: dict) -> dict:
    """The last rank stalls once for a long time (a rank-only checkpoint save, plain loop)."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(p.get("numel", 4)))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=0.01), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": p["cutoff"]},
                                   max_lag=p["max_lag"])
    import warnings
    durations, caught = [], []
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        for step in range(p["steps"]):
            started = time.perf_counter()
            opt.zero_grad()
            w.sum().backward()
            if rank == size - 1 and step == p["stall_at"]:
                time.sleep(p["stall"])
            opt.step()
            durations.append(time.perf_counter() - started)
        caught = [str(w.message) for w in log if "steps behind" in str(w.message)]
    return {"stats": opt.cutoff_stats(), "durations": durations, "warnings": caught,
            "w": w.detach().tolist()}


def stop_stepping(p: dict) -> dict:
    """The last rank stops calling step() (uneven data) while the others go on."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=0.01), named_parameters=[("w", w)],
                                   cutoff=p["cutoff"], cutoff_options=p.get("options"),
                                   step_timeout=p["step_timeout"], stall_warning=p["stall_warning"])
    import warnings
    steps = p["steps"] - (p["fewer"] if rank == size - 1 else 0)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        try:
            for _ in range(steps):
                opt.zero_grad()
                w.sum().backward()
                opt.step()
                time.sleep(0.01)
            error = None
        except hvd.StepStalled as err:
            error = str(err)
    if rank == size - 1:
        time.sleep(p["step_timeout"] + 3)  # alive but not stepping, until the others gave up
    stalls = [str(w.message) for w in log if "has waited" in str(w.message)]
    return {"error": error, "seconds": time.monotonic() - started, "stall_warnings": stalls}


def extra_optimizer(p: dict) -> dict:
    """Rank 0 alone builds a second optimizer; the shared one must keep working."""
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="none")
    error = None
    if hvd.rank() == 0:
        v = torch.nn.Parameter(torch.zeros(3))
        extra = hvd.DistributedOptimizer(torch.optim.SGD([v], lr=1.0), named_parameters=[("v", v)],
                                         cutoff="none", step_timeout=3, stall_warning=1)
        v.sum().backward()
        try:
            extra.step()
        except hvd.StepStalled as err:
            error = str(err)
    for _ in range(3):
        opt.zero_grad()
        w.sum().backward()
        opt.step()
    return {"error": error, "w": w.detach().tolist()}


def close_one(p: dict) -> dict:
    """The last rank closes (or drops) its optimizer while the others still step it."""
    rank, size = hvd.rank(), hvd.size()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([w], lr=1.0), named_parameters=[("w", w)],
                                   cutoff="static", cutoff_options={"seconds": 0.5})
    started = time.monotonic()
    try:
        for step in range(p["steps"]):
            if rank == size - 1 and step == p["close_at"]:
                if p["drop"]:
                    del opt
                    import gc
                    gc.collect()
                else:
                    opt.close()
                time.sleep(3)
                return {"error": None}
            opt.zero_grad()
            w.sum().backward()
            opt.step()
    except RuntimeError as err:
        return {"error": str(err), "seconds": time.monotonic() - started}
    return {"error": None}


SCENARIOS = {f.__name__: f for f in (identical, mean_of_contributors, none_matches_horovod,
                                     straggler, quorum, close_at_end, count_zero, mismatch, death, pause, lag,
                                     stop_stepping, extra_optimizer, close_one)}

if __name__ == "__main__":
    scenario, outdir, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    hvd.init()
    write(outdir, SCENARIOS[scenario](params))
