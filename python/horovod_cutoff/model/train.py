"""Pretraining the run-time model by maximising the censored ELBO on randomised scenarios.

Every batch is a fresh draw: one worker count, B traces of randomised families
(model/families.py), each censored by a cutoff policy run in the loop (the adaptive
policy, a quantile of the last step, or none), with some absent workers. ``main(argv)`` is
the ``horovod-cutoff train`` command; the shipped weights come from its defaults.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .families import FAMILIES, random_trace
from .network import RunTimeModel
from .weights import save_model

WORKER_CHOICES = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def censor_in_loop(times: np.ndarray, rng: np.random.Generator, overhead: float,
                   mode: Optional[str] = None) -> tuple:
    """(observed times, censored) of a trace [T, N] replayed under a policy (``mode``: none,
    quantile or adaptive; random if None): what that policy would have seen live. A step
    nobody makes is rerun waiting for all."""
    from ..policies.adaptive import AdaptiveLogNormal

    T, N = times.shape
    mode = mode or rng.choice(["none", "quantile", "adaptive"], p=[0.2, 0.5, 0.3])
    censored = np.zeros((T, N), dtype=bool)
    if mode == "none":
        return times.copy(), censored
    observed = times.copy()
    policy = AdaptiveLogNormal(alpha=float(rng.uniform(0.1, 0.4)), overhead=overhead) \
        if mode == "adaptive" else None
    q, widen = rng.uniform(0.4, 0.99), rng.uniform(0.8, 1.5)
    c = math.inf
    for t in range(T):
        x = times[t]
        present = ~np.isnan(x)
        if not np.any(present & (x <= c)):
            c = math.inf
        cut = present & (x > c)
        observed[t] = np.where(cut, c, x)
        censored[t] = cut
        if policy is not None:
            policy.observe(observed[t], cut)
            c = policy.cutoff()
        elif present.any():
            c = widen * float(np.quantile(observed[t][present], q))
    return observed, censored


def make_batch(rng: np.random.Generator, batch: int, steps: int, workers: Optional[int] = None,
               exclude: Sequence[str] = ()) -> tuple:
    """times [B, T, N] (NaN absent), censored [B, T, N] as float32 / bool tensors."""
    N = int(rng.choice(WORKER_CHOICES)) if workers is None else workers
    out_t = np.empty((batch, steps, N))
    out_c = np.empty((batch, steps, N), dtype=bool)
    for b in range(batch):
        _, x = random_trace(N, steps, rng, exclude)
        if rng.random() < 0.1:  # absent workers: a few whole columns and scattered cells
            x = x.copy()
            x[rng.random((steps, N)) < rng.uniform(0.0, 0.05)] = np.nan
            x[:, rng.random(N) < 0.1] = np.nan
            source, target = rng.integers(N), rng.integers(N)  # (this draw order made the shipped weights)
            x[:, target] = x[:, source]  # a column copied over another: duplicate or restored workers
        median = float(np.nanmedian(x)) if np.isfinite(x).any() else 1.0
        out_t[b], out_c[b] = censor_in_loop(x, rng, overhead=0.1 * median * rng.uniform(0, 1))
    return torch.tensor(out_t, dtype=torch.float32), torch.tensor(out_c)


def train(iterations: int = 1500, batch: int = 16, steps: int = 96, seed: int = 0,
          lr: float = 3e-3, exclude: Sequence[str] = (), minutes: float = 24.0,
          model: Optional[RunTimeModel] = None, out: Optional[Path] = None,
          log_every: int = 20, workers: Optional[int] = None,
          batch_source=None) -> tuple:
    """Trains (from ``model`` or a fresh one, seeded) and returns (model, history of the
    per-worker-step ELBO). Stops after ``iterations`` or ``minutes`` of wall time."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = model or RunTimeModel()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr * 0.05)
    history = []
    started = time.monotonic()
    for it in range(iterations):
        times, censored = batch_source(rng) if batch_source is not None else \
            make_batch(rng, batch, steps, workers, exclude)
        res = model.elbo(times, censored, generator=generator)
        per = res["elbo"].sum() / res["workers"].sum().clamp_min(1.0)
        if not torch.isfinite(per):
            continue  # a degenerate batch: skip it rather than poison the weights
        opt.zero_grad()
        (-per).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        history.append(per.item())
        if log_every and (it % log_every == 0 or it == iterations - 1):
            recent = np.mean(history[-log_every:])
            print(f"[train] it {it} elbo/worker-step {recent:.4f} "
                  f"kl/step {float(res['kl'].mean()) / steps:.4f} "
                  f"{time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
            if out is not None and it % (log_every * 10) == 0:
                save_model(model, out, meta={"iterations": it, "seed": seed, "exclude": list(exclude)})
        if time.monotonic() - started > minutes * 60:
            print(f"[train] stopping at it {it}: {minutes} minutes", file=sys.stderr, flush=True)
            break
    if out is not None:
        save_model(model, out, meta={"iterations": len(history), "seed": seed, "exclude": list(exclude),
                                     "final_elbo": float(np.mean(history[-50:])) if history else None})
    return model, history


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``horovod-cutoff train``: pretrain weights on the randomised scenario families."""
    p = argparse.ArgumentParser(prog="horovod-cutoff train", description=__doc__)
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file to write (.pt)")
    p.add_argument("--iterations", type=int, default=1300)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=64, help="steps per training sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time limit")
    p.add_argument("--exclude", nargs="*", default=[], choices=sorted(FAMILIES),
                   help="families left out of pretraining (generalisation figures)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.iterations, args.batch, args.steps, args.seed, args.lr, args.exclude, args.minutes,
          out=args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
