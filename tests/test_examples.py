"""What the examples' figures count, measured in one process (Horovod at size 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Step 0 alone is held 1 s; every later step 1 ms. Both examples must leave step 0 out.
RUNS = """
import argparse, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import horovod_cutoff.torch as hvd
import digits, train
hvd.init()
trace = np.full((6, 1), 0.001)
trace[0] = 1.0
# A cutoff no step misses, so the count is exact: adaptive's, learned from 1 ms steps, cut
# a step the machine's load slowed to 11 ms in about 1 run of 5 (a lone rank has no arrival
# channel: its deadline alone ends the step).
args = digits.build_parser().parse_args(["--steps", "6", "--eval-every", "3",
                                         "--cutoff-options", '{"seconds": 30}'])
for cutoff in (None, "static"):
    r = digits.train(args, cutoff, trace, show_progress=False)
    print(json.dumps({"example": "digits", "cutoff": cutoff, "seconds": r["seconds"],
                      "steps": r["steps"], "gradients": r["gradients"]}))
args = argparse.Namespace(steps=6, batch=32, target_loss=0.0, record=None)
for cutoff in (None, "static"):
    r = train.train(args, cutoff, cutoff and {"seconds": 30}, trace)
    print(json.dumps({"example": "train", "cutoff": cutoff, "seconds": r["wall_s"],
                      "gradients": r["gradients_per_s"] * r["wall_s"]}))
"""


def test_the_examples_figures_leave_out_the_warm_up_step():
    # Step 0 waits for every rank, so it carries their start-up skew (1.6 s measured in a
    # process's first run), which would be charged to whichever run comes first.
    job = subprocess.run([sys.executable, "-c", RUNS, str(ROOT / "examples")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert job.returncode == 0, job.stderr[-3000:]
    runs = [json.loads(line) for line in job.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == 4, job.stdout
    for run in runs:
        assert run["seconds"] < 0.8, run  # the 1 s of step 0 is not in the figures
        assert round(run["gradients"]) == 5, run
        if "steps" in run:
            assert run["steps"] == 5, run


@pytest.mark.multirank
@pytest.mark.parametrize("script,args,title", [
    ("train.py", ["--steps", "40"], "2 ranks"),
    ("digits.py", ["--steps", "40", "--eval-every", "20", "--cutoff", "predictive"], "digits: 2 ranks"),
    ("synthetic_benchmark.py", ["--num-iters", "2", "--num-batches-per-iter", "4",
                                "--num-warmup-batches", "2", "--model", "mlp",
                                "--cutoff", "predictive", "--stragglers", "example"], "predictive"),
])
def test_each_example_runs_under_horovodrun_as_the_readme_launches_it(launch_horovodrun, script,
                                                                       args, title):
    # Two real ranks over Gloo, plain Horovod first and then the policies, to the one-screen
    # summary rank 0 prints (the README's `make example` runs train.py this way at np=4).
    job = launch_horovodrun(2, [str(ROOT / "examples" / script), *args], 240,
                            f"horovodrun {script}", stderr=subprocess.PIPE, cwd=ROOT)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert title in job.stdout, job.stdout[-3000:]
