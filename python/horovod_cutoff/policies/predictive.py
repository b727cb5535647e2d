"""The learned policy: filter the run-time model's recurrent state with each step's times,
draw S posterior-predictive samples of next step's N times, and cut at the argmax of the
expected throughput over the sampled times (DESIGN "The cutoff").

The hot path runs in kernels/ (``fast=True``, default): C++ on the CPU, a fused Triton kernel
on a GPU, both with the grid argmax (model/inference.best_cutoff_grid: within 0.1% of the
exact one, bench P1). ``fast=False`` runs the PyTorch reference with the exact argmax.
``samples=None`` (default) scales S with N (``samples_for``). The predictive's spread is
calibrated online (model/calibration.py; ``calibrate=False`` turns it off).

Quorum (``quorum=True``, default): from the same samples the policy also chooses a pair
(c, k), ending the step at min(c, k-th arrival), numpy on the policy's own step after the hot
path's cutoff (policies/quorum.py), and answers the quorum only when it beats the time-only
cutoff by the objective; ``quorum()`` is None otherwise. With ``calibrate`` the predicted
order statistics it rests on are recalibrated online (the model's joint draws place the late
arrivals badly where slowdowns persist or come in groups). The ``ratio`` objective has no
quorum form.

Objectives (``objective=``, model/inference.best_cutoff): ``step`` (default), the per-step
ratio E[#{x_n <= c}] / (E[min(c, max x)] + o) with the step's true duration; ``ratio``, the
paper's E[#{x_n <= c}] / (c + o), which charges a step its full cutoff even when everyone is
done earlier and so cuts needlessly on a straggler-free cluster; ``lambda``,
E[#{x_n <= c}] - lam * (E[min(c, max x)] + o) with lam the running throughput this policy
has seen, the long-run form. All three are compared by benchmarks/p6_simulator.py.
Weights: the shipped pretrained ones unless ``model=FILE``; ``load_weights`` swaps others in
mid-run. The model adapts in context through its recurrent state; with ``finetune`` (default
on) it also refits its emission on the run's own last steps every ``finetune_every`` steps
(model/finetune.py): in the simulator between two steps, deterministic; under the live cutoff
service on a background thread (``serve_live``), the new weights swapping in at the first
step after the refit ends, so the service never waits for it. If the model fails or yields a
non-finite cutoff, the policy warns once and from then on answers with the adaptive policy,
which shadows every observation so it is ready at once.
"""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..kernels import make_predictor
from ..model.calibration import SpreadCalibration
from ..model.finetune import EVERY, EmissionWindow, refit_emission
from ..model.inference import GRID_BINS, OBJECTIVES, Noise, hot_path
from ..model.network import RunTimeModel, State
from ..model.weights import load_model, weights_hash
from .adaptive import AdaptiveLogNormal
from .base import Policy, check_step
from .quorum import QuorumChoice

AUTO_DRAWS, AUTO_RANGE = 16384, (64, 256)  # samples=None: S = AUTO_DRAWS / N within the range
RATE_DECAY = 0.99  # the running throughput's memory (lambda objective), per step
# Live, a refit starts only once this many times its predecessor's duration has passed since
# that one ended: fine-tuning takes at most a tenth of one of the coordinator's cores.
LIVE_REFIT_SPACING = 9.0


class Predictive(Policy):
    name = "predictive"

    def __init__(self, overhead: Optional[float] = None, samples: Optional[int] = None, seed: int = 0,
                 model: Union[str, Path, RunTimeModel, None] = None, objective: str = "step",
                 calibrate: bool = True, fast: bool = True, quorum: bool = True,
                 finetune: bool = True, finetune_every: int = EVERY):
        self._take_overhead(overhead)
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, float))
                                    or int(samples) != samples or int(samples) < 1):
            raise ValueError(f"samples must be a positive integer or None (auto), got {samples!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.samples = None if samples is None else int(samples)
        self.seed, self.objective = int(seed), objective
        self.model = model if isinstance(model, RunTimeModel) else load_model(model)
        self.model_source = "object" if isinstance(model, RunTimeModel) else str(model or "default")
        self.hash = weights_hash(self.model)
        self.fast = bool(fast)
        if not isinstance(quorum, (bool, np.bool_)):
            raise ValueError(f"quorum must be True or False, got {quorum!r}")
        self.choose_quorum = bool(quorum) and objective != "ratio"
        if not isinstance(finetune, (bool, np.bool_)):
            raise ValueError(f"finetune must be True or False, got {finetune!r}")
        if isinstance(finetune_every, bool) or not isinstance(finetune_every, (int, np.integer)) \
                or finetune_every < 1:
            raise ValueError(f"finetune_every must be a positive number of steps, got {finetune_every!r}")
        self._quorum: Optional[int] = None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.fallback = AdaptiveLogNormal(overhead=self.overhead)
        self.failed: Optional[str] = None
        self._state: Optional[State] = None  # the reference path's filter state
        self._predictor = None               # the fast path (kernels/), built once N is known
        self._cutoff = math.inf
        self._gradients = self._seconds = 0.0
        self._last_log: Optional[np.ndarray] = None  # [S, N] the last prediction's log samples
        self.calibration = SpreadCalibration() if calibrate else None
        self.joint = (QuorumChoice(self.overhead, objective, calibrate, self.seed)
                      if self.choose_quorum else None)
        self.pretrained = self.model  # each refit starts from these weights
        self.finetune_every = int(finetune_every)
        self.window = EmissionWindow(seed=self.seed, every=self.finetune_every) if finetune else None
        self.refits = 0               # refits whose weights were swapped in
        self._before: Optional[State] = None  # the filter state the last prediction came from
        self._background: Optional[ThreadPoolExecutor] = None  # serve_live(): refits off-thread
        self._refit: Optional[Future] = None
        self._next_refit_at = 0.0   # live: monotonic time before which no refit starts
        self._live = False          # serve_live() was called: a training thread shares our GIL

    def samples_for(self, workers: int) -> int:
        """S for N workers: as given, or (None) AUTO_DRAWS / N within AUTO_RANGE: about the same
        number of draws per step at any N (the objective averages its error over the workers),
        so the coordinator's work stays flat: 256 samples up to 64 workers, 64 from 256 on."""
        if self.samples is not None:
            return self.samples
        low, high = AUTO_RANGE
        return max(low, min(high, AUTO_DRAWS // max(1, int(workers))))

    def load_weights(self, model: Union[str, Path, RunTimeModel]) -> str:
        """Swaps in other weights of the same shape (e.g. retrained ones) between two
        observations, keeping the filter's state: the fast path double-buffers them, so the
        cutoff service need not stop. Returns the new weights' hash."""
        new = model if isinstance(model, RunTimeModel) else load_model(model)
        if new.hparams != self.model.hparams:
            raise ValueError(f"model has hyper-parameters {new.hparams}, this policy's has "
                             f"{self.model.hparams}: only weights of the same shape swap in")
        if self._predictor is not None:
            self._predictor.load_weights(new)
        self.model, self.pretrained, self.hash = new, new, weights_hash(new)
        self.model_source = "object" if isinstance(model, RunTimeModel) else str(model)
        self._refit = None  # a refit under way started from the old weights: never swap it in
        return self.hash

    def set_overhead(self, seconds: float) -> None:
        super().set_overhead(seconds)
        self.fallback.set_overhead(self.overhead)
        if self.joint is not None:
            self.joint.overhead = self.overhead
        if self._predictor is not None:
            self._predictor.set_overhead(self.overhead)

    @property
    def state(self) -> Optional[State]:
        """The model's filter state (of whichever path runs it)."""
        return self._predictor.state() if self._predictor is not None else self._state

    def observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        times, censored = check_step(times, censored)
        self._let_training_run()
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
            spread = self.calibration.spread if self.calibration is not None else 1.0
            rate = self._gradients / self._seconds if self._seconds > 0 else None
            step = self._fast_step if self.fast else self._reference_step
            c, log_samples = step(times, censored, rate, spread)
            if not (math.isfinite(c) and c > 0):
                raise FloatingPointError(f"the model gave cutoff {c}")
            k = None
            if self.joint is not None:  # the quorum this step ran under: no lag
                self._let_training_run()
                c, k = self.joint.choose(times, censored, log_samples, c, self._quorum, rate)
            self._cutoff, self._quorum = c, k
            if self.window is not None:
                self._let_training_run()
                self._finetune(times, censored)
            # The calibration learns from this step after the cutoff is out: one step late, off
            # the latency path; then keep this prediction's samples for the next step.
            if self.calibration is not None and self._last_log is not None \
                    and self._last_log.shape[1] == times.size:
                self._let_training_run()
                with np.errstate(divide="ignore", invalid="ignore"):
                    self.calibration.update(self._last_log, np.log(times), censored)
            self._last_log = log_samples
        except Exception as err:  # any model failure: warn once, then the adaptive policy answers
            self.failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"predictive policy: the run-time model failed ({self.failed}); "
                          "falling back to the adaptive policy", RuntimeWarning, stacklevel=2)

    def serve_live(self) -> None:
        """Called by the live cutoff service: from now on refits run on a background thread,
        so observe() never waits for one (the simulator keeps them inline and deterministic)."""
        self._live = True
        if self.window is not None and self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="predictive-refit")
            # A process's first torch optimizer imports torch._dynamo: seconds holding the GIL,
            # which on the refit thread stalled the service for 0.46 s. Pay it here, before
            # training (a training job has usually paid it already, for its own optimizer).
            torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    def _let_training_run(self) -> None:
        """Live, between the policy's phases: drops the GIL for a moment, so that the
        coordinator's training thread, if it is waiting for it, goes first. The policy's Python
        work (about 1.6 ms a step at 4 workers) otherwise held rank 0's own step back: measured
        on the digits example at np=4, rank 0 computed 0.6-0.9 ms a step slower than the other
        ranks without this, 0.0-0.8 ms with it (adaptive: 0.2-0.6 ms). The simulator has no one
        to yield to."""
        if self._live:
            time.sleep(0)

    def close(self) -> None:
        """Stops the background refits (a refit under way finishes; its result is dropped)."""
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
            self._background, self._refit = None, None

    def _finetune(self, times: np.ndarray, censored: np.ndarray) -> None:
        """Records this step for the emission refits; starts one when due, swaps one in when done."""
        same_workers = self._before is not None and self._before.h.shape[1] == times.size
        self.window.add(self._before if same_workers else None, times, censored)
        self._before = self.state
        if self._refit is not None and self._refit.done():
            refit, self._refit = self._refit, None
            error = refit.exception()
            if error is not None:
                self._swap(error)
            else:
                new, seconds = refit.result()
                self._next_refit_at = time.monotonic() + LIVE_REFIT_SPACING * seconds
                self._swap(new)
        if not self.window.refit_due() or self._refit is not None or \
                (self._background is not None and time.monotonic() < self._next_refit_at):
            return
        self.window.refit_started()
        seed = self.seed + self.refits + 1
        if self._background is None:
            try:
                new = refit_emission(self.pretrained, self.window, seed=seed)
            except Exception as err:  # noqa: BLE001  (handed to _swap, which warns)
                new = err
            self._swap(new)
        else:  # the window is copied now: the thread fits what was seen, observe() goes on
            self._refit = self._background.submit(_timed_refit, self.pretrained,
                                                  self.window.snapshot(), seed)

    def _swap(self, new: Union[RunTimeModel, BaseException, None]) -> None:
        """Puts a refit's weights in use. A refit that failed costs only the fine-tuning:
        warn once, keep the weights in use and stop refitting; None (the fit went
        non-finite) just keeps the weights in use."""
        if isinstance(new, BaseException):
            warnings.warn(f"predictive policy: refitting the emission failed ({type(new).__name__}: "
                          f"{new}); fine-tuning stops, the model goes on with its current weights",
                          RuntimeWarning, stacklevel=3)
            self.window = None
            return
        if new is None:
            return
        if self._predictor is not None:
            self._predictor.load_weights(new)
        self.model, self.hash = new, weights_hash(new)
        self.refits += 1

    def _fast_step(self, times: np.ndarray, censored: np.ndarray, rate,
                   spread: float) -> Tuple[float, np.ndarray]:
        """kernels/: the C++ path (the Triton kernel where HOROVOD_CUTOFF_PREDICTOR=triton).
        Returns the cutoff and the prediction's log samples [S, N]."""
        if self._predictor is None or self._predictor.workers != times.size:
            self._predictor = make_predictor(self.model, times.size, self.samples_for(times.size),
                                             self.overhead, self.objective, GRID_BINS, self.seed)
        c = self._predictor.step(times.astype(np.float32), censored, rate=rate, spread=spread)
        self._predictor.prepare()  # the next step's noise, while nothing waits for us
        log_samples = np.asarray(self._predictor.last_log_samples())
        present = ~np.isnan(times)
        if log_samples.shape[1] != times.size:  # a path that keeps present workers' columns only
            full = np.full((log_samples.shape[0], times.size), np.nan, dtype=log_samples.dtype)
            full[:, present] = log_samples
            log_samples = full
        return float(c), log_samples

    def _reference_step(self, times: np.ndarray, censored: np.ndarray, rate,
                        spread: float) -> Tuple[float, np.ndarray]:
        """The PyTorch reference (model/inference.py), with the exact argmax."""
        if self._state is None or self._state.h.shape[1] != times.size:
            self._state = self.model.initial_state(1, times.size)
        noise = Noise.draw(self.samples_for(times.size), times.size, self.model.D, self.generator)
        c, self._state, samples = hot_path(
            self.model, self._state, torch.as_tensor(times, dtype=torch.float32),
            torch.as_tensor(censored), noise, self.overhead, self.objective, rate, spread=spread)
        return c, torch.log(samples).numpy()

    def cutoff(self) -> float:
        return self.fallback.cutoff() if self.failed is not None else self._cutoff

    def quorum(self) -> Optional[int]:
        return self.fallback.quorum() if self.failed is not None else self._quorum

    def config(self) -> dict:
        return {"policy": self.name, "overhead": self._overhead_config(), "samples": self.samples,
                "seed": self.seed, "objective": self.objective, "model_sha256": self.hash,
                "calibrate": self.calibration is not None, "fast": self.fast,
                "quorum": self.choose_quorum, "finetune": self.window is not None,
                "finetune_every": self.finetune_every}


def _timed_refit(pretrained: RunTimeModel, window: EmissionWindow,
                 seed: int) -> Tuple[Optional[RunTimeModel], float]:
    """refit_emission on the background thread, with its wall time (the live spacing)."""
    started = time.monotonic()
    return refit_emission(pretrained, window, seed=seed), time.monotonic() - started
