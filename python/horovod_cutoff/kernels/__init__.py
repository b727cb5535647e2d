"""Fast paths of the predictor's hot path (new times in, next cutoff out): a fused Triton
kernel for the coordinator's GPU (``triton_predictor``) and a CPU path (``cpu``). Both compute
exactly what the PyTorch reference ``model.inference.hot_path(..., bins=GRID_BINS, spread=...)``
computes (filter one step, S posterior-predictive samples scaled by the calibration's spread,
the grid argmax) and are tested against it.

Every fast predictor has the same interface:

    p = Predictor(model, workers, samples=256, overhead=0.0, objective="step", bins=GRID_BINS, seed=0)
    cutoff = p.step(times, censored, rate=None, noise=None, spread=1.0)   # times [N] s, NaN absent
    p.workers, p.samples   # N and S it was built for
    p.last_log_samples()   # that prediction's log samples [S, N] (the CPU path: present workers only)
    p.prepare()            # draws the next call's noise; off the hot path (after the cutoff is out)
    p.set_overhead(0.009)  # the overhead the objective charges from the next call on (measured live)
    version = p.load_weights(model)   # swap weights between calls without stopping (double buffer)
    state = p.state()      # the recurrent state as a model.network.State (for tests)

``noise`` (a ``model.inference.Noise``) overrides the internal draw: tests pass the same noise
to the reference and to the kernel.
"""

from __future__ import annotations

import os
from typing import Optional

from ..model.inference import GRID_BINS
from ..model.network import RunTimeModel


def make_predictor(model: RunTimeModel, workers: int, samples: int = 256, overhead: float = 0.0,
                   objective: str = "step", bins: int = GRID_BINS, seed: int = 0,
                   device: Optional[str] = None):
    """The fast predictor for ``device`` (default: the CPU path; the Triton kernel when
    ``device`` is "cuda..." or HOROVOD_CUTOFF_PREDICTOR=triton).

    The CPU path is the default even on a GPU coordinator: the first runs of the compiled Triton
    kernels on an H100 (Triton 3.6) still left the reference at N=16 and in the log samples at
    N=1024 (README, P2), so they are opt-in until that GPU test passes."""
    import torch

    if device is None:
        choice = os.environ.get("HOROVOD_CUTOFF_PREDICTOR", "cpu").strip().lower()
        if choice not in ("cpu", "triton"):
            raise ValueError(f"HOROVOD_CUTOFF_PREDICTOR must be 'cpu' or 'triton', got {choice!r}")
        if choice == "triton" and not torch.cuda.is_available():
            raise ValueError("HOROVOD_CUTOFF_PREDICTOR=triton needs a CUDA device, and none is available")
        device = "cuda" if choice == "triton" else "cpu"
    if str(device).startswith("cuda"):
        from .triton_predictor import TritonPredictor

        return TritonPredictor(model, workers, samples, overhead, objective, bins, seed, device=device)
    from .cpu import CpuPredictor

    return CpuPredictor(model, workers, samples, overhead, objective, bins, seed)


__all__ = ["make_predictor", "GRID_BINS"]
