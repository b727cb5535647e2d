"""The predictor's hot path on the CPU, new times in -> next cutoff out (target P1): the C++
extension (csrc/predictor.cc; its kernels, csrc/predictor_kernels.cc, built for the x86-64
baseline and for AVX2, give the same bits) with the GIL released. Given the same ``Noise`` it
computes what the PyTorch reference ``model.inference.hot_path(..., bins=bins, spread=...)``
computes (tests/test_kernels_cpu.py); benchmarks/p1_cpu_predictor.py times the two.

Calls on one predictor are serialised (the cutoff service makes them from one thread);
``load_weights`` may come from any thread while a step runs: it fills the spare copy of the
weights and swaps, and the step finishes on the copy it started with.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np
import torch

from .. import _C
from ..model.inference import GRID_BINS, OBJECTIVES, Noise
from ..model.network import RunTimeModel, State


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _weights(model: RunTimeModel) -> dict:
    """The model's parameters as float32 arrays by state_dict name (the C++ side lays them out)."""
    if not isinstance(model, RunTimeModel):
        raise ValueError(f"model must be a RunTimeModel, got {type(model).__name__}")
    return {name: t.detach().to("cpu", torch.float32).contiguous().numpy()
            for name, t in model.state_dict().items()}


def _overhead_seconds(value) -> float:
    """The constructor's and set_overhead()'s check: finite seconds >= 0, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not (math.isfinite(value) and value >= 0):
        raise ValueError(f"overhead must be finite seconds >= 0, got {value!r}")
    return float(value)


class CpuPredictor:
    """See kernels/__init__.py for the interface every fast predictor shares. ``isa``: the
    kernels, "auto" (AVX2 where the CPU has it), "avx2" or "baseline"."""

    def __init__(self, model: RunTimeModel, workers: int, samples: int = 256, overhead: float = 0.0,
                 objective: str = "step", bins: int = GRID_BINS, seed: int = 0, isa: str = "auto"):
        self.workers = _positive_int(workers, "workers")
        self.samples = _positive_int(samples, "samples")
        self.bins = _positive_int(bins, "bins")
        overhead = _overhead_seconds(overhead)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if isa not in ("auto", "avx2", "baseline"):
            raise ValueError(f"isa must be 'auto', 'avx2' or 'baseline', got {isa!r}")
        self.overhead, self.objective, self.seed = overhead, objective, int(seed)
        weights = _weights(model)
        self.latent = model.D
        self._impl = _C.Predictor(weights, self.workers, self.samples, self.overhead,
                                  OBJECTIVES.index(objective), self.bins, self.seed, isa)

    def step(self, times, censored, rate: Optional[float] = None, noise: Optional[Noise] = None,
             spread: float = 1.0) -> float:
        """Filters one step (times [N] seconds, NaN absent; censored [N] bool) and returns the
        next cutoff in seconds. ``rate``: the lambda objective's running throughput (None:
        unknown). ``noise`` replaces the drawn noise (tests). ``spread``: the online
        calibration's factor (``model.inference.predictive_log_times``)."""
        if rate is None:
            rate = math.nan
        elif isinstance(rate, bool) or not isinstance(rate, numbers.Real) or \
                not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be None or finite gradients per second >= 0, got {rate!r}")
        if isinstance(spread, bool) or not isinstance(spread, numbers.Real) or \
                not (math.isfinite(spread) and spread > 0):
            raise ValueError(f"spread must be a finite number > 0, got {spread!r}")
        if noise is not None:
            self._set_noise(noise)
        try:
            return self._impl.step(times, censored, rate, spread)
        except TypeError as err:  # pybind11 could not read them as numbers
            raise ValueError(f"times and censored must be numeric arrays of {self.workers} values: "
                             f"{err}") from None

    def set_overhead(self, seconds: float) -> None:
        """The per-step overhead the objective charges from the next step on."""
        self.overhead = _overhead_seconds(seconds)
        self._impl.set_overhead(self.overhead)

    def prepare(self) -> None:
        """Draws the next step's noise now, off the hot path (a step without it draws first)."""
        self._impl.prepare()

    def load_weights(self, model: RunTimeModel) -> int:
        """Swaps in new weights of the same sizes between steps (a step running on another
        thread finishes on the old ones); returns the new version."""
        return self._impl.load_weights(_weights(model))

    @property
    def version(self) -> int:
        """The weights' version: 1 for the constructor's, one more for each load."""
        return self._impl.version

    @property
    def isa(self) -> str:
        """The kernels in use: "avx2" or "baseline" (the x86-64 baseline); both give the same bits."""
        return self._impl.isa

    def state(self) -> State:
        """The recurrent state as model.network.State (batch 1)."""
        h, g, z, z_sd, ref, steps = self._impl.state()
        return State(torch.from_numpy(h).unsqueeze(0), torch.from_numpy(g).unsqueeze(0),
                     torch.from_numpy(z).unsqueeze(0), torch.from_numpy(z_sd).unsqueeze(0),
                     torch.tensor([ref], dtype=torch.float32), int(steps))

    def last_log_samples(self) -> torch.Tensor:
        """The last step's log samples [S, present workers] (tests)."""
        return torch.from_numpy(self._impl.last_log_samples())

    def next_noise(self) -> Noise:
        """The noise the next step will use (drawn now if it was not): for tests."""
        S, N, D = self.samples, self.workers, self.latent
        z, transition, uniform, normal = (torch.from_numpy(a) for a in self._impl.next_noise())
        return Noise(z.view(S, D), transition.view(S, D), uniform.view(S, N), normal.view(S, N))

    def _set_noise(self, noise: Noise) -> None:
        S, N, D = self.samples, self.workers, self.latent
        parts = {"noise.z": (noise.z, (S, D)), "noise.transition": (noise.transition, (S, D)),
                 "noise.uniform": (noise.uniform, (S, N)), "noise.normal": (noise.normal, (S, N))}
        arrays = []
        for name, (value, shape) in parts.items():
            array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                               dtype=np.float32)
            if array.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(array.shape)}")
            arrays.append(np.ascontiguousarray(array))
        self._impl.set_noise(*arrays)


__all__ = ["CpuPredictor"]
