"""The partial, deadline-bounded reduction of one optimizer step, on top of the csrc engine.

Per step: this rank offers its gradients (or nothing, if the cutoff passed: the engine's C++
timer has then submitted zeros for it); one fused Horovod allreduce sums gradients, the
contributor count and every rank's time; every rank divides by the count. The coordinator
(rank 0) feeds the times to the policy and hands the engine the cutoff that the next
reduction carries to every rank. Because the cutoff travels inside a reduction, the cutoff
of step t is chosen from the times of steps up to t-2 (one step of lag, no extra collective).
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import _C
from .policies import CutoffPolicy

Outcome = _C.Outcome


class StepAbandoned(Exception):
    """Raised inside a closure when this rank was cut: the rest of the step is skipped."""


class CutoffConfigMismatch(RuntimeError):
    """Ranks were set up with different cutoff configurations or models."""


def _fingerprint(config: Dict[str, Any]) -> int:
    # 24 bits: exactly representable in the float32 slot of the fused buffer.
    text = json.dumps(config, sort_keys=True, default=str)
    return (zlib.crc32(text.encode()) & 0xFFFFFF) or 1


def _buffer_dtype(params: Sequence[torch.Tensor]) -> str:
    dtypes = {p.dtype for p in params}
    if not all(d.is_floating_point for d in dtypes):
        raise ValueError("params: every parameter must be a floating-point tensor")
    return "float64" if torch.float64 in dtypes else "float32"


def _device_index(params: Sequence[torch.Tensor]) -> int:
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError(f"params: all parameters must live on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu":
        return -1
    if device.type == "cuda":
        if not _C.cuda_built:
            raise ValueError("params are on CUDA but horovod_cutoff was built without CUDA "
                             "(run scripts/setup.sh on the GPU machine)")
        return device.index if device.index is not None else torch.cuda.current_device()
    raise ValueError(f"params: unsupported device type {device.type!r} (cpu or cuda)")


class PartialReduction:
    """One optimizer's sequence of deadline-bounded reductions (see module docstring)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        names: Sequence[str],
        policy: CutoffPolicy,
        policy_config: Dict[str, Any],
        rank: int,
        size: int,
        engine_name: str,
        step_timeout: Optional[float] = None,
    ):
        if not params:
            raise ValueError("params: the optimizer has no parameters")
        if step_timeout is not None and not (float(step_timeout) > 0):
            raise ValueError(f"step_timeout must be a positive number of seconds or None, got {step_timeout}")
        self.params = list(params)
        self.policy = policy
        self.rank, self.size = rank, size
        self.step_timeout = None if step_timeout is None else float(step_timeout)
        self.step_index = 0
        self.stats: List[Dict[str, Any]] = []
        self._fallback_warned = False
        dtype = _buffer_dtype(self.params)
        numel = sum(p.numel() for p in self.params)
        self.config = {
            "cutoff": policy_config,
            "world": size,
            "dtype": dtype,
            "params": [[n, list(p.shape)] for n, p in zip(names, self.params)],
        }
        self.fingerprint = _fingerprint(self.config)
        # Step 0 waits for everyone: there is nothing to predict from, and it checks the config.
        self.engine = _C.Engine(engine_name, rank, size, numel, dtype, _device_index(self.params),
                                self.fingerprint, math.inf)
        if rank == 0:
            self._hand_cutoff_to_engine()
        self._closure_step: Optional[int] = None
        self._hooks = [p.register_hook(self._abandon_if_cut) for p in self.params if p.requires_grad]

    # ---- the step -------------------------------------------------------------------------

    def run(self, closure: Optional[Callable[[], Any]] = None) -> tuple:
        """Runs step ``step_index``: returns (closure's loss or None, result dict)."""
        step = self.step_index
        loss = None
        if closure is not None and not self.engine.is_cut(step):
            # A step already reduced (this rank is behind) is applied without its closure.
            try:
                with self._abandon_on_cut(step), torch.enable_grad():
                    loss = closure()
            except StepAbandoned:
                loss = None
        grads = self._grads()
        outcome = self.engine.contribute(step, grads)
        result = self._wait_and_take(step, grads)
        result["outcome"] = outcome.name.lower()
        self.step_index += 1
        self._record(result)
        return loss, result

    def is_cut(self) -> bool:
        """True once the current step can no longer take this rank's gradients."""
        return self.engine.is_cut(self.step_index)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.engine.close()

    # ---- internals ------------------------------------------------------------------------

    def _grads(self) -> List[torch.Tensor]:
        for p in self.params:
            if p.grad is None:  # unused this step: contributes zeros, receives the average
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    def _wait_and_take(self, step: int, grads: List[torch.Tensor]) -> Dict[str, Any]:
        started = time.monotonic()
        while not self.engine.wait(step, 0.2):  # short waits keep Ctrl-C responsive
            waited = time.monotonic() - started
            if self.step_timeout is not None and waited > self.step_timeout:
                raise RuntimeError(
                    f"horovod_cutoff: step {step} not reduced after {waited:.0f} s "
                    f"(step_timeout={self.step_timeout}); a rank may have stopped calling step()"
                )
        result = self.engine.take(step, grads)
        if step == 0:
            self._check_config(result["fingerprints"])
        return result

    def _check_config(self, fingerprints: List[int]) -> None:
        if len(set(fingerprints)) == 1:
            return
        groups: Dict[int, List[int]] = {}
        for r, f in enumerate(fingerprints):
            groups.setdefault(f, []).append(r)
        described = "; ".join(f"ranks {rs} have fingerprint {f:06x}" for f, rs in groups.items())
        raise CutoffConfigMismatch(
            f"horovod_cutoff: ranks disagree on the cutoff configuration or the model ({described}); "
            f"this rank ({self.rank}) has {json.dumps(self.config['cutoff'], default=str)}. "
            "Construct DistributedOptimizer with the same cutoff arguments and model on every rank."
        )

    def _record(self, result: Dict[str, Any]) -> None:
        self.stats.append({
            "step": result["step"],
            "cutoff": result["cutoff"],
            "contributors": result["count"],
            "times": result["times"],
            "censored": result["censored"],
            "step_seconds": result["seconds"],
            "submitted_at": result["submitted_at"],
            "outcome": result["outcome"],
            "next_cutoff": result["next_cutoff"],
        })
        if self.rank == 0:
            if result["step"] > 0:  # step 0 includes start-up costs: not a sample of the cluster
                self._observe(result["times"], result["censored"])
            self._hand_cutoff_to_engine()

    def _observe(self, times: List[float], censored: List[bool]) -> None:
        try:
            self.policy.observe(np.asarray(times, dtype=np.float64), np.asarray(censored, dtype=bool))
        except Exception as err:  # a broken policy must not stop training
            self._fall_back(f"observe() raised {type(err).__name__}: {err}")

    def _hand_cutoff_to_engine(self) -> None:
        if self._fallback_warned:
            return self.engine.set_next_cutoff(math.inf)
        try:
            c = float(self.policy.cutoff())
        except Exception as err:
            return self._fall_back(f"cutoff() raised {type(err).__name__}: {err}")
        if math.isnan(c) or c <= 0 or c == -math.inf:
            return self._fall_back(f"cutoff() returned {c}")
        self.engine.set_next_cutoff(c)

    def _fall_back(self, why: str) -> None:
        # Waiting for every worker is always correct; it is only slower.
        if not self._fallback_warned:
            warnings.warn(f"horovod_cutoff: the cutoff policy failed ({why}); "
                          "falling back to waiting for all workers", RuntimeWarning, stacklevel=3)
            self._fallback_warned = True
        self.engine.set_next_cutoff(math.inf)

    def _abandon_if_cut(self, grad: torch.Tensor) -> None:
        if self._closure_step is not None and self.engine.is_cut(self._closure_step):
            raise StepAbandoned()

    @contextmanager
    def _abandon_on_cut(self, step: int) -> Iterator[None]:
        def pre_hook(module: torch.nn.Module, args: Any) -> None:
            if self.engine.is_cut(step):
                raise StepAbandoned()

        self._closure_step = step
        handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()
            self._closure_step = None
