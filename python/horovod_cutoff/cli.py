"""The ``horovod-cutoff`` command line: simulate, generate, plot, bench (a stable contract)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np


class CommandError(Exception):
    """A bad argument or input: reported in one line, exit status 2."""


def _parse_params(pairs: List[str]) -> Dict[str, Any]:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--param must look like name=value, got {pair!r}")
        if key == "overhead":
            raise CommandError(f"overhead is set with --overhead, not --param {pair}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _check_policy(name: str, allowed: List[str]) -> None:
    if name not in allowed:
        raise CommandError(f"--policy must be one of {', '.join(allowed)}; got {name!r}")


def cmd_simulate(args) -> int:
    from .sim import policy_names, simulate, simulate_all
    from .traces import load_trace

    _check_policy(args.policy, policy_names() + ["all"])
    params = _parse_params(args.param)
    times, censored = load_trace(args.trace, with_censoring=True)
    if censored.any():
        # A recorded trace knows a cut worker's time only as "beyond the cutoff".
        print(f"horovod-cutoff: warning: {args.trace}: {censored.mean():.1%} of times are "
              "censored (lower bounds); the replay takes them as exact", file=sys.stderr)
    if args.exclude and args.policy != "all":
        raise CommandError("--exclude only applies to --policy all")
    if args.model is not None and args.policy != "predictive":
        raise CommandError("--model only applies to --policy predictive")
    if args.policy == "all":
        if args.param:
            raise CommandError("--param needs a single --policy, not 'all'")
        results = simulate_all(times, args.overhead, args.warmup, args.carry_lag, args.lag,
                               progress=True, exclude=args.exclude or (), arrivals=args.arrivals)
    else:
        if args.model is not None:
            params["model"] = args.model
        results = [simulate(times, args.policy, args.overhead, args.warmup, args.carry_lag,
                            args.lag, params=params, progress=True, arrivals=args.arrivals)]
    if args.json:
        out = results if args.policy == "all" else results[0]
        print(json.dumps(_json_safe(out)))
    else:
        print(f"{'policy':<18} {'grads/s':>10} {'/oracle':>8} {'contrib':>8} {'step s':>8}")
        for r in results:
            print(f"{r['policy']:<18} {r['gradients_per_second']:10.2f} "
                  f"{r['ratio_to_oracle']:8.4f} "
                  f"{r['mean_contributors']:8.2f} {r['mean_step_seconds']:8.4f}")
    return 0


def cmd_generate(args) -> int:
    from .traces import save_trace
    from .traces.generators import generate

    times = generate(args.scenario, args.workers, args.steps, args.seed)
    path = save_trace(args.output, times)
    print(f"wrote {path}: {times.shape[0]} steps x {times.shape[1]} workers ({args.scenario})")
    return 0


def cmd_plot(args) -> int:
    from . import plots
    from .policies import POLICIES
    from .sim import build_policy, replay, simulate_all
    from .traces import load_trace

    params = _parse_params(args.param)
    if args.kind != "policies":
        _check_policy(args.policy, list(POLICIES) + ["recorded"])
    times = load_trace(args.trace)
    if args.kind == "policies":
        results = simulate_all(times, args.overhead, args.warmup, progress=True)
        path = plots.plot_policies(args.output, results, title=Path(args.trace).name)
    else:
        censored = None
        if args.policy == "recorded":
            cutoffs, censored = _recorded(args.trace, times)
        else:
            policy = build_policy(args.policy, args.overhead, **params)
            trail = replay(times, policy, args.overhead, record=True, progress=True)["trail"]
            # The cutoff each row finally ran under (a replayed row keeps its last try: inf,
            # waiting for everyone, after a try nobody made).
            cutoffs = np.full(times.shape[0], np.nan)
            cutoffs[trail[:, 0].astype(int)] = trail[:, 1]
        title = f"{Path(args.trace).name}: {args.policy}"
        if args.kind == "trace":
            path = plots.plot_trace(args.output, times, cutoffs=cutoffs, censored=censored,
                                    title=title)
        else:
            path = plots.plot_cutoffs(args.output, times, cutoffs, title=title)
    print(f"wrote {path}")
    return 0


def _recorded(trace: str, times: np.ndarray) -> tuple:
    """The cutoffs and censoring flags a live run recorded (traces.recorder writes them)."""
    from .traces import load_trace

    need = f"{trace}: --policy recorded needs a live recording (.npz with a 'cutoff' array)"
    if Path(trace).suffix.lower() != ".npz":
        raise CommandError(need)
    with np.load(trace, allow_pickle=False) as data:
        if "cutoff" not in data:
            raise CommandError(need)
        cutoffs = np.asarray(data["cutoff"], dtype=float)
    if cutoffs.shape != (times.shape[0],):
        raise CommandError(f"{trace}: 'cutoff' has shape {cutoffs.shape}, the trace has "
                           f"{times.shape[0]} steps")
    return cutoffs, load_trace(trace, with_censoring=True)[1]


def cmd_train(args) -> int:
    from .model.train import main as train_main

    rest = list(args.train_args)
    if rest[:1] == ["--"]:  # argparse keeps the separator main() inserted before REMAINDER
        rest = rest[1:]
    return train_main(rest) or 0


def benchmarks_dir() -> Path:
    env = os.environ.get("HOROVOD_CUTOFF_BENCHMARKS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "benchmarks"


_DECLARED_ID = re.compile(r"""^ID\s*=\s*["']([A-Za-z][A-Za-z0-9]*)["']""", re.MULTILINE)


def discover_benchmarks() -> Dict[str, Path]:
    """Benchmark id (e.g. "P3") -> file: the file's own top-level ``ID = "..."`` if it declares
    one, else the head of its name, benchmarks/<id>_<name>.py. Files are read, not imported."""
    found = {}
    folder = benchmarks_dir()
    if not folder.is_dir():
        raise CommandError(f"no benchmarks folder at {folder} (set HOROVOD_CUTOFF_BENCHMARKS)")
    for path in sorted(folder.glob("*.py")):
        head = path.stem.split("_", 1)[0]
        if path.stem.startswith("_") or not head[:1].isalpha():
            continue
        declared = _DECLARED_ID.search(path.read_text(errors="replace"))
        found.setdefault((declared.group(1) if declared else head).upper(), path)
    return found


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"hvdcut_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    """The processor's model name (benchmarks report it with their figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> Dict[str, Any]:
    """What the figures were measured on (no host names)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}


def cmd_bench(args) -> int:
    available = discover_benchmarks()
    wanted = [i.upper() for i in args.ids] or sorted(available)
    unknown = [i for i in wanted if i not in available]
    if unknown:
        raise CommandError(f"unknown benchmark id(s) {unknown}; known: {sorted(available)}")
    command = " ".join(shlex.quote(a) for a in ["horovod-cutoff"] + sys.argv[1:])
    machine = _machine()
    failed = 0
    for bench_id in wanted:
        try:
            results = _load(available[bench_id]).run(quick=args.quick)
        except Exception as err:  # one broken benchmark must not hide the others
            results = {"id": bench_id, "value": None, "unit": None, "target": None,
                       "met": False, "error": f"{type(err).__name__}: {err}"}
            failed += 1
        for result in results if isinstance(results, list) else [results]:
            result.setdefault("device", machine["cpu"])
            result.update(command=command, quick=args.quick, machine=machine)
            if args.json:
                print(json.dumps(_json_safe(result)), flush=True)
            else:
                mark = "met" if result.get("met") else "NOT met"
                print(f"{result['id']}: {result.get('value')} {result.get('unit') or ''} "
                      f"(target {result.get('target')}: {mark})", flush=True)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from .traces.generators import SCENARIOS

    parser = argparse.ArgumentParser(prog="horovod-cutoff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="replay a trace under a policy; metrics vs the oracle")
    sim.add_argument("--trace", required=True, help=".npy, .npz (key 'times') or .csv")
    sim.add_argument("--policy", required=True,
                     help="a registered policy, oracle, static_hindsight, backup_hindsight, "
                          "hybrid_hindsight (the best fixed cutoff and quorum), or all")
    sim.add_argument("--overhead", type=float, default=0.0, help="fixed seconds per step")
    sim.add_argument("--warmup", type=int, default=0, help="leading steps left out of the metrics")
    sim.add_argument("--carry-lag", action="store_true",
                     help="plain loop: a cut worker's unfinished time carries into its next step")
    sim.add_argument("--arrivals", action="store_true",
                     help="the engine with its arrival channel: a step ends at min(cutoff, "
                          "quorum-th arrival), and if nobody arrived by the cutoff nobody is cut: "
                          "it ends at the quorum-th (or last) arrival (no step without "
                          "contributors); "
                          "the hindsight yardsticks are priced by the same rule")
    sim.add_argument("--lag", type=int, default=0,
                     help="steps between the data a cutoff is chosen from and its use (live: 1)")
    sim.add_argument("--param", action="append", metavar="NAME=VALUE", help="policy parameter")
    sim.add_argument("--model", help="a saved model for --policy predictive")
    sim.add_argument("--exclude", action="append", metavar="POLICY",
                     help="with --policy all: leave this policy out (e.g. predictive on a long "
                          "trace: its reference inference costs milliseconds a step)")
    sim.add_argument("--json", action="store_true", help="print JSON")
    sim.set_defaults(run=cmd_simulate)

    gen = sub.add_parser("generate", help="write a scenario trace")
    gen.add_argument("scenario", help=f"one of {', '.join(SCENARIOS)}")
    gen.add_argument("--workers", type=int, required=True)
    gen.add_argument("--steps", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("-o", "--output", required=True)
    gen.set_defaults(run=cmd_generate)

    plot = sub.add_parser("plot", help="write a PNG: trace heatmap, policy bars, or cutoffs")
    plot.add_argument("kind", choices=["trace", "policies", "cutoffs"])
    plot.add_argument("--trace", required=True)
    plot.add_argument("--policy", default="adaptive",
                      help="for trace/cutoffs: whose cutoffs; 'recorded' for a live recording's")
    plot.add_argument("--param", action="append", metavar="NAME=VALUE")
    plot.add_argument("--overhead", type=float, default=0.0)
    plot.add_argument("--warmup", type=int, default=0)
    plot.add_argument("-o", "--output", required=True, help="PNG path")
    plot.set_defaults(run=cmd_plot)

    train = sub.add_parser("train", add_help=False,
                           help="pretrain the predictive policy's model (train --help for options)")
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(run=cmd_train)

    bench = sub.add_parser("bench", help="run the benchmarks behind the targets")
    bench.add_argument("ids", nargs="*", help="e.g. P1 P5 (default: all)")
    bench.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    bench.add_argument("--json", action="store_true", help="one JSON object per target")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser (options, --help) lives with the model
        argv = ["train", "--"] + argv[1:]
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError) as err:
        # ValueError covers TraceError and policies' argument errors: one line, no traceback.
        print(f"horovod-cutoff: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"horovod-cutoff: error: {args.command}: out of memory (try a smaller trace)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
