"""The learned policy: filter the run-time model's recurrent state with each step's times,
draw S posterior-predictive samples of next step's N times, and cut at the exact argmax of
the expected throughput over the sampled times (DESIGN "The cutoff").

Objectives (``objective=``, model/inference.best_cutoff): ``step`` (default), the per-step
ratio E[#{x_n <= c}] / (E[min(c, max x)] + o) with the step's true duration; ``ratio``, the
paper's E[#{x_n <= c}] / (c + o), which charges a step its full cutoff even when everyone is
done earlier and so cuts needlessly on a straggler-free cluster; ``lambda``,
E[#{x_n <= c}] - lam * (E[min(c, max x)] + o) with lam the running throughput this policy
has seen, the long-run form. All three are compared by benchmarks/p6_simulator.py.
Weights: the shipped pretrained ones unless ``model=FILE``. The model adapts in context
through its recurrent state; no training runs inside the policy (background fine-tuning on
the run's own history is left for later). If the model fails or yields a non-finite
cutoff, the policy warns once and from then on answers with the adaptive policy, which
shadows every observation so it is ready at once.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..model.inference import OBJECTIVES, Noise, hot_path
from ..model.network import RunTimeModel, State
from ..model.weights import load_model, weights_hash
from .adaptive import AdaptiveLogNormal
from .base import Policy, check_step, non_negative_seconds

RATE_DECAY = 0.99  # the running throughput's memory (lambda objective), per step


class Predictive(Policy):
    name = "predictive"

    def __init__(self, overhead: float = 0.0, samples: int = 256, seed: int = 0,
                 model: Union[str, Path, RunTimeModel, None] = None, objective: str = "step"):
        self.overhead = non_negative_seconds(overhead, "overhead")
        if isinstance(samples, bool) or int(samples) != samples or int(samples) < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.samples, self.seed, self.objective = int(samples), int(seed), objective
        self.model = model if isinstance(model, RunTimeModel) else load_model(model)
        self.model_source = "object" if isinstance(model, RunTimeModel) else str(model or "default")
        self.hash = weights_hash(self.model)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.fallback = AdaptiveLogNormal(overhead=self.overhead)
        self.failed: Optional[str] = None
        self.state: Optional[State] = None
        self._cutoff = math.inf
        self._gradients = self._seconds = 0.0
        self.last_samples: Optional[torch.Tensor] = None

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        times, censored = check_step(times, censored)
        self.fallback.observe(times, censored)
        present = ~np.isnan(times)
        made = present & ~censored
        if not made.any():  # nobody made it: only lower bounds; keep state (next step waits for all)
            return
        self._gradients = RATE_DECAY * self._gradients + float(made.sum())
        self._seconds = RATE_DECAY * self._seconds + float(times[present].max()) + self.overhead
        if self.failed is not None:
            return
        try:
            if self.state is None or self.state.h.shape[1] != times.size:
                self.state = self.model.initial_state(1, times.size)
            noise = Noise.draw(self.samples, times.size, self.model.D, self.generator)
            rate = self._gradients / self._seconds if self._seconds > 0 else None
            c, self.state, samples = hot_path(
                self.model, self.state, torch.as_tensor(times, dtype=torch.float32),
                torch.as_tensor(censored), noise, self.overhead, self.objective, rate)
            if not (math.isfinite(c) and c > 0):
                raise FloatingPointError(f"the model gave cutoff {c}")
            self.last_samples = samples
            self._cutoff = c
        except Exception as err:  # any model failure: warn once, then the adaptive policy answers
            self.failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"predictive policy: the run-time model failed ({self.failed}); "
                          "falling back to the adaptive policy", RuntimeWarning, stacklevel=2)

    def cutoff(self) -> float:
        return self.fallback.cutoff() if self.failed is not None else self._cutoff

    def config(self) -> dict:
        return {"policy": self.name, "overhead": self.overhead, "samples": self.samples,
                "seed": self.seed, "objective": self.objective, "model_sha256": self.hash}
