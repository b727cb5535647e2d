"""A real small training under horovodrun, with and without a cutoff, on the same stragglers.

    horovodrun -np 2 -H localhost:2 --gloo python examples/train.py --cutoff adaptive,predictive

Each rank learns a synthetic classification task (a fixed random teacher network labels
Gaussian inputs) and is slowed by an injected straggler trace, so plain Horovod and each
cutoff policy (``--cutoff``, comma-separated; run one after the other in the same job) meet
exactly the same stragglers. Rank 0 prints wall time, gradients per second and the time
each run took to reach the target loss, all counted from the end of step 0, a warm-up that
waits for every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import horovod_cutoff.torch as hvd
import numpy as np
import torch
from horovod_cutoff.traces import StragglerInjector, record


def straggler_trace(steps: int, workers: int, seed: int) -> np.ndarray:
    """Log-normal step times around 30 ms; each worker has Markov slow spells (x5)."""
    rng = np.random.default_rng(seed)
    times = rng.lognormal(np.log(0.03), 0.15, size=(steps, workers))
    slow = np.zeros(workers, dtype=bool)
    for t in range(steps):
        flip = rng.random(workers) < np.where(slow, 0.3, 0.08)
        slow ^= flip
        times[t, slow] *= 5.0
    return times


def train(args, cutoff, options, trace):
    rank = hvd.rank()
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         cutoff=cutoff, cutoff_options=options)
    gen = torch.Generator().manual_seed(1000 + rank)
    held_out = torch.randn(2048, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        held_labels = teacher(held_out).argmax(1)
    injector = StragglerInjector(trace, rank, mode="sleep")
    reached, losses = None, []
    start = time.perf_counter()
    for step in range(args.steps):
        x = torch.randn(args.batch, 32, generator=gen)
        with torch.no_grad():
            y = teacher(x).argmax(1)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            # The injected straggler time; a cut rank stops waiting at once (closure form).
            injector.delay(step, abort=getattr(optimizer, "is_cut", None))
            return loss

        if cutoff is None:  # Horovod's step(closure) reduces before it calls the closure
            closure()
            optimizer.step()
        else:
            optimizer.step(closure)
        if step == 0:
            # Step 0 is the warm-up, outside the clock for every run alike: it waits for every
            # rank, so it carries their start-up skew (first calls into Horovod and autograd).
            start = time.perf_counter()
        if step % 10 == 9:
            # Evaluation between steps: paused() stops the cutoff's clock meanwhile.
            with getattr(optimizer, "paused", contextlib.nullcontext)(), torch.no_grad():
                held_loss = torch.nn.functional.cross_entropy(model(held_out), held_labels).item()
            losses.append(held_loss)
            if reached is None and held_loss <= args.target_loss:
                reached = time.perf_counter() - start
    wall = time.perf_counter() - start
    if hasattr(optimizer, "cutoff_stats"):
        stats = optimizer.cutoff_stats()
        contributions = sum(s["contributors"] for s in stats[1:])
        if args.record and rank == 0:  # replayable with `horovod-cutoff simulate --trace ...`
            record(args.record, stats)
        optimizer.close()
    else:
        contributions = (args.steps - 1) * hvd.size()
    return {"policy": cutoff or "horovod", "wall_s": wall, "gradients_per_s": contributions / wall,
            "time_to_target_s": reached, "final_loss": losses[-1] if losses else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutoff", default="adaptive,predictive",
                        help="policy names, comma-separated (none, static, backup, elfving, adaptive, "
                             "predictive), each run after plain Horovod on the same stragglers")
    parser.add_argument("--cutoff-options", default="{}", type=json.loads,
                        help="JSON keyword arguments for the policy")
    parser.add_argument("--steps", type=int, default=300,
                        help="per run, at least 2: the first is a warm-up the figures leave out")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--target-loss", type=float, default=0.7)
    parser.add_argument("--record", help="write the last cutoff run's per-step times (.npz)")
    parser.add_argument("--no-compare", action="store_true", help="skip the plain Horovod run")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit(f"--steps must be at least 2 (the first is a warm-up), got {args.steps}")

    hvd.init()
    torch.set_num_threads(1)
    trace = straggler_trace(args.steps, hvd.size(), seed=42)
    runs = [] if args.no_compare else [train(args, None, None, trace)]
    for policy in [p for p in args.cutoff.split(",") if p]:
        runs.append(train(args, policy, args.cutoff_options, trace))
    if hvd.rank() == 0:
        print(f"\n{hvd.size()} ranks, {args.steps} steps, injected straggler trace (same for all runs)")
        target = f"to loss<={args.target_loss:.2f}"
        print(f"{'optimizer':<12} {'wall s':>8} {'grads/s':>9} {target:>14} {'final loss':>11}")
        for r in runs:
            reach = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] else "not reached"
            print(f"{r['policy']:<12} {r['wall_s']:8.1f} {r['gradients_per_s']:9.1f} {reach:>14} "
                  f"{r['final_loss']:11.3f}")
        if not args.no_compare:
            for r in runs[1:]:
                gain = r["gradients_per_s"] / runs[0]["gradients_per_s"]
                print(f"{r['policy']}: gradients/s vs plain Horovod {gain:.2f}x")


if __name__ == "__main__":
    main()
