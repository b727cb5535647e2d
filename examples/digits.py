"""Real training under horovodrun: an MLP learns scikit-learn's handwritten digits, plain
Horovod first, then each cutoff policy, all on the same injected stragglers.

    horovodrun -np 4 -H localhost:4 --gloo python examples/digits.py --cutoff adaptive,predictive

The digits (1,797 8x8 images, 10 classes) ship inside scikit-learn: nothing is downloaded.
A fifth is held out as the test set; each rank trains on its own shard of the rest. With the
defaults (300 steps, batch 32 per rank, one hidden layer of 128) every run reaches test
accuracy >= 0.95, the stated target (measured at 4 ranks: 0.961-0.975 at the end in 42 runs,
cut or not). Each rank is held per step by an injected straggler trace (``--stragglers``:
this example's Markov trace or a shipped scenario, ``--no-stragglers`` for a clean run).
Rank 0 shows a progress bar per run and a summary: gradients/s, steps/s, wasted compute,
time to the target accuracy, final accuracy, and the ratios to plain Horovod. Every figure
counts from the end of step 0, a warm-up that waits for every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import horovod_cutoff.torch as hvd
import numpy as np
import torch
from horovod_cutoff.traces import StragglerInjector, record

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _runs and train, also when imported
import _runs  # noqa: E402


def load_digits_split(rank: int, size: int, seed: int = 0):
    """(x_train, y_train) of this rank's shard and the shared (x_test, y_test), as tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel intensities are 0..16
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed,
                                                        stratify=y)
    shard = slice(rank, None, size)
    return (torch.from_numpy(x_train[shard]), torch.from_numpy(y_train[shard]),
            torch.from_numpy(x_test), torch.from_numpy(y_test))


def build_model(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def train(args, cutoff, trace, show_progress: bool = True, record_to=None) -> dict:
    """One run of ``args.steps`` steps (cutoff None: plain Horovod); its metrics, its test
    curve [(training seconds, loss, accuracy)] and the times to the targets."""
    rank, size = hvd.rank(), hvd.size()
    x_train, y_train, x_test, y_test = load_digits_split(rank, size)
    torch.manual_seed(args.seed)
    model = build_model(args.hidden)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    if cutoff is not None:
        options = _runs.policy_options(cutoff, size, args.cutoff_options)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             cutoff=cutoff, cutoff_options=options, stats_window=None)
    else:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    injector = StragglerInjector(trace, rank, mode="sleep") if trace is not None else None
    gen = torch.Generator().manual_seed(1000 + rank)
    curve, clock = [], _runs.TrainClock()
    label = cutoff or "horovod"

    def evaluate():
        # Between steps on every rank: paused() stops the cutoff's clock, ours too.
        with getattr(optimizer, "paused", contextlib.nullcontext)(), clock.paused(), torch.no_grad():
            out = model(x_test)
            loss = torch.nn.functional.cross_entropy(out, y_test).item()
            accuracy = (out.argmax(1) == y_test).float().mean().item()
        curve.append((clock(), loss, accuracy))

    with _runs.progress(args.steps, label, show_progress and rank == 0) as bar:
        for step in range(args.steps):
            idx = torch.randint(0, x_train.shape[0], (args.batch,), generator=gen)
            x, y = x_train[idx], y_train[idx]

            def closure():
                # The straggler time comes first: a slow rank's gradients are late. (After the
                # backward, plain Horovod would reduce during the wait, a head start no real
                # straggler gives it.) A cut rank stops waiting at once: the closure form.
                if injector is not None:
                    injector.delay(step, abort=getattr(optimizer, "is_cut", None))
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            _runs.take_step(optimizer, closure, cutoff)
            if step == 0:
                # Step 0 is the warm-up, outside the clock for every run alike: it waits for
                # every rank, so it carries their start-up skew (1.6 s measured in a process's
                # first run: first calls into Horovod and autograd), not the policy's work.
                clock.restart()
            bar.update()
            if step % args.eval_every == args.eval_every - 1 or step == args.steps - 1:
                evaluate()
                bar.set_postfix_str(f"acc {curve[-1][2]:.3f}")
    seconds = clock()
    stats = optimizer.cutoff_stats() if cutoff is not None else None
    if record_to is not None and stats is not None and rank == 0:
        record(record_to, stats)  # replayable with `horovod-cutoff simulate --trace ...`
    _runs.close(optimizer, hvd)
    result = _runs.run_metrics(label, stats and stats[1:], trace, seconds, args.steps - 1, size)
    result.update(
        curve=curve, final_loss=curve[-1][1], final_accuracy=curve[-1][2],
        time_to_accuracy_s=next((t for t, _, a in curve if a >= args.target_accuracy), None),
        time_to_loss_s=next((t for t, loss, _ in curve if loss <= args.target_loss), None))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutoff", default="adaptive,predictive",
                        help=f"policies, comma-separated ({', '.join(_runs.POLICIES)}), each run "
                             "after plain Horovod on the same stragglers")
    parser.add_argument("--cutoff-options", default="{}", type=json.loads,
                        help="JSON keyword arguments for every policy (default: each one's own)")
    parser.add_argument("--stragglers", default=_runs.EXAMPLE_TRACE, metavar="SCENARIO",
                        help=f"the injected trace: {', '.join(_runs.trace_names())}")
    parser.add_argument("--no-stragglers", action="store_true", help="a clean run: nothing injected")
    parser.add_argument("--step-ms", type=float, default=_runs.STEP_MS,
                        help="a healthy rank's injected step time (the trace is rescaled to it)")
    parser.add_argument("--steps", type=int, default=300,
                        help="per run, at least 2: the first is a warm-up the figures leave out")
    parser.add_argument("--batch", type=int, default=32, help="per rank")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=10,
                        help="steps between test evaluations (each is a pause: the step after "
                             "it waits for every rank)")
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--target-loss", type=float, default=0.2, help="test cross-entropy")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation")
    parser.add_argument("--trace-seed", type=int, default=42)
    parser.add_argument("--record", help="write the last cutoff run's per-step times (.npz)")
    parser.add_argument("--no-compare", action="store_true", help="skip the plain Horovod run")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.steps < 2:
        raise SystemExit(f"--steps must be at least 2 (the first is a warm-up), got {args.steps}")
    if args.stragglers not in _runs.trace_names():
        raise SystemExit(f"--stragglers must be one of {', '.join(_runs.trace_names())}")
    policies = _runs.parse_cutoffs(args.cutoff)
    hvd.init()
    torch.set_num_threads(1)
    name = None if args.no_stragglers else args.stragglers
    trace = _runs.straggler_trace(name, args.steps, hvd.size(), args.trace_seed, args.step_ms)
    runs = [] if args.no_compare else [train(args, None, trace)]
    for i, policy in enumerate(policies):
        last = i == len(policies) - 1
        runs.append(train(args, policy, trace, record_to=args.record if last else None))
    if hvd.rank() == 0 and runs:
        title = (f"digits: {hvd.size()} ranks, {args.steps} steps each, stragglers: {name or 'none'}"
                 " (the same for every run)")
        _runs.print_summary(title, runs, (f"to acc>={args.target_accuracy:.2f}", "time_to_accuracy_s"),
                            extra=[("final acc", "final_accuracy", 10, ".3f")])


if __name__ == "__main__":
    main()
