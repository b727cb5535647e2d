"""bench P2's PyTorch reference path (its baseline figure), run on the CPU: on a GPU machine it
is the last thing P2 times, so an error there loses the whole benchmark."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from horovod_cutoff.model import load_model  # noqa: E402
from horovod_cutoff.model.inference import best_cutoff_grid  # noqa: E402
from p2_gpu_predictor import OVERHEAD, _grid_argmax_on, _reference_us  # noqa: E402


def test_the_reference_hot_path_runs_and_times_every_call():
    # Regression: it imported GRID_BINS from horovod_cutoff.model, which does not export it, and
    # only a GPU run reached that line.
    times = _reference_us(load_model(), workers=8, samples=16, iters=2, device="cpu")
    assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times)


def test_the_device_side_grid_argmax_is_the_reference_one():
    log_samples = torch.randn(64, 9, generator=torch.Generator().manual_seed(0)) * 0.4 - 1.0
    want, _ = best_cutoff_grid(log_samples, OVERHEAD, "step", None, 256)
    assert math.isclose(_grid_argmax_on(log_samples, OVERHEAD, 256), want, rel_tol=1e-9)
