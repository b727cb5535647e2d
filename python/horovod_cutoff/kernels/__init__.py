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
    version = p.load_weights(model)   # swap weights between calls without stopping (double buffer)
    state = p.state()      # the recurrent state as a model.network.State (for tests)

``noise`` (a ``model.inference.Noise``) overrides the internal draw: tests pass the same noise
to the reference and to the kernel.
"""

from __future__ import annotations

from typing import Optional

from ..model.inference import GRID_BINS
from ..model.network import RunTimeModel


def make_predictor(model: RunTimeModel, workers: int, samples: int = 256, overhead: float = 0.0,
                   objective: str = "step", bins: int = GRID_BINS, seed: int = 0,
                   device: Optional[str] = None):
    """The fast predictor for ``device`` (default: the Triton kernel when CUDA and Triton are
    usable, the CPU path otherwise)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        from .triton_predictor import TritonPredictor

        return TritonPredictor(model, workers, samples, overhead, objective, bins, seed, device=device)
    from .cpu import CpuPredictor

    return CpuPredictor(model, workers, samples, overhead, objective, bins, seed)


__all__ = ["make_predictor", "GRID_BINS"]
