"""What the examples share: the straggler trace every run meets, one step of plain Horovod or
of a cutoff optimizer, a run's metrics from ``opt.cutoff_stats()``, the progress bar and the
one-screen summary."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

EXAMPLE_TRACE = "example"  # examples/train.py's Markov trace: each worker slows x5 in sticky spells
STEP_MS = 30.0             # a healthy worker's injected step time, milliseconds
POLICIES = ("none", "static", "backup", "elfving", "adaptive", "predictive")


def trace_names() -> List[str]:
    from horovod_cutoff.traces import SCENARIOS

    return [EXAMPLE_TRACE] + list(SCENARIOS)


def straggler_trace(name: Optional[str], steps: int, workers: int, seed: int = 42,
                    step_ms: float = STEP_MS) -> Optional[np.ndarray]:
    """[steps, workers] seconds each rank is held per step, or None for no stragglers:
    ``example`` (train.py's trace) or a shipped scenario, rescaled so a healthy step takes
    ``step_ms`` (the scenarios' 0.2 s would make a live comparison take minutes)."""
    if name is None:
        return None
    if name == EXAMPLE_TRACE:
        from train import straggler_trace as markov_trace

        return markov_trace(steps, workers, seed) * (step_ms / 30.0)
    from horovod_cutoff.traces import generate
    from horovod_cutoff.traces.generators import BASE

    return generate(name, workers, steps, seed) * (step_ms / 1e3 / BASE)


def policy_options(policy: str, workers: int, given: Optional[dict] = None) -> dict:
    """The policy's parameters: those given, else the simulator's defaults (static: the 0.9
    quantile of recent times, backup: one backup worker), so live and simulated runs agree."""
    if given:
        return dict(given)
    from horovod_cutoff.sim import default_params

    return default_params(policy, workers)


def parse_cutoffs(text: str) -> List[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise SystemExit(f"--cutoff: unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    return names


def take_step(optimizer, closure, cutoff: Optional[str]):
    """One step. Plain Horovod's step(closure) reduces *before* calling the closure, so it
    would apply unreduced gradients: the plain loop is what a Horovod user writes there."""
    if cutoff is None:
        loss = closure()
        optimizer.step()
        return loss
    return optimizer.step(closure)


def close(optimizer, hvd) -> None:
    """Closes a cutoff optimizer, the coordinator's last: the others' arrival-channel clients
    are connected to the store it hosts, and losing it first makes c10d print errors."""
    if not hasattr(optimizer, "close"):
        return
    if hvd.rank() != 0:
        optimizer.close()
    hvd.barrier()
    if hvd.rank() == 0:
        optimizer.close()


class TrainClock:
    """Seconds of training: wall time since start, less the time spent paused (evaluation)."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.paused_s = 0.0

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - began

    def __call__(self) -> float:
        return time.perf_counter() - self.start - self.paused_s


def wasted_compute(stats: Sequence[dict], trace: Optional[np.ndarray]) -> float:
    """Seconds of rank compute discarded because cut: each censored (step, rank) worked until
    its cut (its recorded time) but never longer than that step asked of it, the trace's
    injected time plus the rank's own compute (the median uncut time beyond the trace)."""
    if not stats:
        return 0.0
    times = np.array([s["times"] for s in stats], dtype=float)
    cut = np.array([s["censored"] for s in stats], dtype=bool)
    if not cut.any():
        return 0.0
    if trace is None:
        injected = np.zeros_like(times)
    else:
        injected = trace[np.array([s["step"] for s in stats]) % trace.shape[0]][:, :times.shape[1]]
    done = ~cut & np.isfinite(times)
    own = float(np.median(np.clip(times[done] - injected[done], 0.0, None))) if done.any() else 0.0
    return float(np.minimum(times[cut], injected[cut] + own).sum())


def run_metrics(label: str, stats: Optional[Sequence[dict]], trace: Optional[np.ndarray],
                seconds: float, steps: int, workers: int) -> Dict[str, float]:
    """Gradients/s, steps/s and wasted compute of one run (stats None: plain Horovod, where
    every rank contributes to every step and nothing is cut)."""
    if stats is None:
        gradients, wasted, cut_steps = steps * workers, 0.0, 0
    else:
        gradients = int(sum(s["contributors"] for s in stats))
        wasted = wasted_compute(stats, trace)
        cut_steps = int(sum(any(s["censored"]) for s in stats))
    return {"run": label, "seconds": seconds, "steps": steps, "gradients": gradients,
            "gradients_per_s": gradients / seconds, "steps_per_s": steps / seconds,
            "mean_contributors": gradients / steps, "cut_steps": cut_steps,
            "wasted_s": wasted, "wasted_fraction": wasted / (workers * seconds)}


def progress(total: int, desc: str, enabled: bool):
    """A bar on stderr; forced on where asked (under horovodrun stderr is a pipe, which tqdm
    would otherwise take for a log file), off elsewhere."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=not enabled,
                leave=False, mininterval=0.5, ncols=90)


def _seconds(value: Optional[float]) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def print_summary(title: str, runs: Sequence[dict], target: Optional[tuple] = None,
                  extra: Sequence[tuple] = ()) -> None:
    """One screen: a row per run, ratios to the first run (the baseline: plain Horovod or
    ``none``). ``target``: (header, key) of a time-to-target column; ``extra``: (header, key,
    width, format) columns of the caller's own."""
    base = runs[0]
    head = (f"{'run':<11}{'train s':>8}{'steps/s':>8}{'grads/s':>8}{'wasted s':>9}"
            + (f"{target[0]:>14}" if target else "")
            + "".join(f"{h:>{w}}" for h, _, w, _ in extra) + f"{'grads/s x':>10}"
            + (f"{'to-target x':>12}" if target else ""))
    print(f"\n{title}")
    print(head)
    print("-" * len(head))
    for r in runs:
        row = (f"{r['run']:<11}{r['seconds']:8.1f}{r['steps_per_s']:8.1f}{r['gradients_per_s']:8.1f}"
               f"{r['wasted_s']:9.2f}")
        if target:
            row += f"{_seconds(r.get(target[1])):>14}"
        row += "".join(f"{format(r[k], f):>{w}}" for _, k, w, f in extra)
        row += f"{r['gradients_per_s'] / base['gradients_per_s']:9.2f}x"
        if target:
            reached, base_reached = r.get(target[1]), base.get(target[1])
            faster = f"{base_reached / reached:.2f}x" if reached and base_reached else "-"
            row += f"{faster:>12}"
        print(row)
    print(f"ratios are to {base['run']}; wasted s: rank compute discarded because cut (all "
          "ranks together); train s: seconds of training, evaluation excluded")
