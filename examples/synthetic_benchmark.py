"""Synthetic throughput under horovodrun, in the style of Horovod's
examples/pytorch/pytorch_synthetic_benchmark.py, plain Horovod and each cutoff policy in turn.

    horovodrun -np 4 -H localhost:4 --gloo python examples/synthetic_benchmark.py \\
        --cutoff adaptive,predictive --stragglers markov

Random images (3x32x32) and labels, fixed per rank; models sized for a CPU. Each timed
iteration of ``--num-batches-per-iter`` steps prints img/sec per CPU; with a cutoff only the
images whose gradients made their step count. ``--stragglers SCENARIO`` holds each rank for
its time in an injected trace (the same for every run); without it the comparison shows what
the cutoff machinery itself costs. Rank 0 shows a progress bar per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import horovod_cutoff.torch as hvd
import numpy as np
import torch
import torch.nn.functional as F
from horovod_cutoff.traces import StragglerInjector

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _runs  # noqa: E402


class _Block(torch.nn.Module):
    """A ResNet basic block: two 3x3 convolutions and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = (torch.nn.Identity() if stride == 1 and cin == cout else
                         torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                             torch.nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def build_model(name: str) -> torch.nn.Module:
    if name == "mlp":  # 1.8M parameters
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 512), torch.nn.ReLU(),
                                   torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    if name == "convnet":  # 0.55M parameters
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    if name == "resnet8":  # 0.08M parameters, the most compute per parameter
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            _Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    raise ValueError(f"--model must be one of {MODELS}, got {name!r}")


MODELS = ("mlp", "convnet", "resnet8")


def log(text: str, bar=None) -> None:
    """Rank 0 prints, above its progress bar if one is showing."""
    if hvd.rank() == 0:
        (bar.write if bar is not None else print)(text, file=sys.stdout)
        sys.stdout.flush()


def benchmark(args, cutoff, trace) -> dict:
    """One run: warmup, then ``num_iters`` timed iterations; img/sec per CPU per iteration and
    the run's metrics over the timed steps."""
    torch.manual_seed(0)
    model = build_model(args.model)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if cutoff is not None:
        optimizer = hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), cutoff=cutoff,
            cutoff_options=_runs.policy_options(cutoff, hvd.size(), args.cutoff_options),
            stats_window=None)
    else:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    gen = torch.Generator().manual_seed(hvd.rank())
    data = torch.randn(args.batch_size, 3, 32, 32, generator=gen)
    target = torch.randint(0, 10, (args.batch_size,), generator=gen)
    injector = StragglerInjector(trace, hvd.rank(), mode="sleep") if trace is not None else None
    label = cutoff or "horovod"
    step = 0

    def benchmark_step():
        nonlocal step

        def closure():
            # The straggler time comes first: a slow rank's gradients are late. (After the
            # backward, plain Horovod would reduce during the wait, a head start no real
            # straggler gives it.) A cut rank stops waiting at once: the closure form.
            if injector is not None:
                injector.delay(step, abort=getattr(optimizer, "is_cut", None))
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            return loss

        _runs.take_step(optimizer, closure, cutoff)
        step += 1
        bar.update()

    total = args.num_warmup_batches + args.num_iters * args.num_batches_per_iter
    per_iter, iter_seconds, img_secs = args.num_batches_per_iter, [], []
    with _runs.progress(total, label, hvd.rank() == 0) as bar:
        timeit.timeit(benchmark_step, number=args.num_warmup_batches)
        for i in range(args.num_iters):
            iter_seconds.append(timeit.timeit(benchmark_step, number=per_iter))
            # Images per CPU per second: with a cutoff, those whose gradients made their step.
            made = (hvd.size() * per_iter if cutoff is None else
                    sum(s["contributors"] for s in optimizer.cutoff_stats()[-per_iter:]))
            img_secs.append(args.batch_size * made / hvd.size() / iter_seconds[-1])
            log(f"[{label}] Iter #{i}: {img_secs[-1]:.1f} img/sec per CPU", bar)
    stats = optimizer.cutoff_stats()[args.num_warmup_batches:] if cutoff is not None else None
    _runs.close(optimizer, hvd)
    result = _runs.run_metrics(label, stats, trace, sum(iter_seconds),
                               args.num_iters * per_iter, hvd.size())
    mean, conf = float(np.mean(img_secs)), float(1.96 * np.std(img_secs))
    log(f"[{label}] Img/sec per CPU: {mean:.1f} +-{conf:.1f}")
    log(f"[{label}] Total img/sec on {hvd.size()} CPU(s): {hvd.size() * mean:.1f} +-{hvd.size() * conf:.1f}")
    result.update(img_sec_mean=mean, img_sec_conf=conf, total_img_sec=hvd.size() * mean)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="convnet", choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=32, help="input batch size (per rank)")
    parser.add_argument("--num-warmup-batches", type=int, default=10,
                        help="number of warm-up batches that don't count towards benchmark")
    parser.add_argument("--num-batches-per-iter", type=int, default=10,
                        help="number of batches per benchmark iteration")
    parser.add_argument("--num-iters", type=int, default=10, help="number of benchmark iterations")
    parser.add_argument("--cutoff", default="adaptive,predictive",
                        help=f"policies, comma-separated ({', '.join(_runs.POLICIES)}), each run "
                             "after plain Horovod")
    parser.add_argument("--cutoff-options", default="{}", type=json.loads,
                        help="JSON keyword arguments for every policy (default: each one's own)")
    parser.add_argument("--stragglers", metavar="SCENARIO", choices=_runs.trace_names(),
                        help=f"inject a trace: {', '.join(_runs.trace_names())} (default: none)")
    parser.add_argument("--step-ms", type=float, default=_runs.STEP_MS,
                        help="a healthy rank's injected step time (the trace is rescaled to it)")
    parser.add_argument("--no-compare", action="store_true", help="skip the plain Horovod run")
    args = parser.parse_args()
    policies = _runs.parse_cutoffs(args.cutoff)

    hvd.init()
    torch.set_num_threads(1)
    steps = args.num_warmup_batches + args.num_iters * args.num_batches_per_iter
    trace = _runs.straggler_trace(args.stragglers, steps, hvd.size(), step_ms=args.step_ms)
    log(f"Model: {args.model}, batch size: {args.batch_size}, CPUs: {hvd.size()}, "
        f"stragglers: {args.stragglers or 'none'}")
    runs = [] if args.no_compare else [benchmark(args, None, trace)]
    runs += [benchmark(args, policy, trace) for policy in policies]
    if hvd.rank() == 0 and runs:
        _runs.print_summary(f"synthetic {args.model}: {hvd.size()} ranks, {steps - args.num_warmup_batches}"
                            " timed steps each", runs,
                            extra=[("img/s/CPU", "img_sec_mean", 10, ".1f"),
                                   ("+-", "img_sec_conf", 7, ".1f")])


if __name__ == "__main__":
    main()
