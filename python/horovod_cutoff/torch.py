"""Drop-in for ``horovod.torch``: everything it exports, plus ``DistributedOptimizer(cutoff=...)``.

``import horovod_cutoff.torch as hvd`` and pass ``cutoff="static" | "backup" | "none" | ...``
(or a policy object). Without ``cutoff`` the optimizer is Horovod's own, unchanged.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import horovod.torch as _hvd
import torch
from horovod.torch import *  # noqa: F401,F403  (the drop-in promise: everything hvd has)
from horovod.torch import Average, Compression, global_process_set

from .policies import make_policy
from .policies.base import positive_seconds
from .reduce import (  # noqa: F401  (part of the API: what step() may raise)
    CutoffConfigMismatch,
    PartialReduction,
    StepAbandoned,
    StepStalled,
)


class _CutoffOptimizer:
    """Mixed into the user's optimizer class, as Horovod does, so isinstance/state_dict work."""

    def __init__(self, params, named_parameters, policy, policy_config, engine_options):
        super(self.__class__, self).__init__(params)
        # Frozen parameters take no part: they get no gradient, as in plain Horovod.
        ordered = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        names = _parameter_names(ordered, named_parameters)
        self._reduction = PartialReduction(ordered, names, policy, policy_config, rank=_hvd.rank(),
                                           size=_hvd.size(), **engine_options)
        self._synchronized: Optional[tuple] = None
        self._should_synchronize = True
        self._closure_warned = False

    def step(self, closure=None):
        """One data-parallel step bounded by the cutoff.

        The closure form lets a cut rank abandon its forward/backward and start the next step
        on time; it returns the closure's loss, or a NaN tensor on a rank whose closure was
        abandoned or skipped (cut, or behind: see ``cutoff_stats()[-1]["outcome"]``).
        """
        if self._synchronized is not None:
            # synchronize() already reduced this step: apply that result, run nothing again.
            (loss, result, _), self._synchronized = self._synchronized, None
            if closure is not None and not self._closure_warned:
                warnings.warn("horovod_cutoff: step(closure) after synchronize(): the step was "
                              "already reduced, so the closure was not called", RuntimeWarning,
                              stacklevel=2)
                self._closure_warned = True
            closure = None
        elif not self._should_synchronize:
            raise RuntimeError("step() inside skip_synchronize() needs a synchronize() first")
        else:
            loss, result, _ = self._reduction.run(closure)
        if result.count > 0:  # a step nobody made applies no update (its gradients are zero)
            super(self.__class__, self).step()
        if closure is not None and loss is None:
            return torch.tensor(float("nan"))
        return loss

    def synchronize(self) -> None:
        """Reduces now (gradients become the average), for clipping before ``step()``."""
        if self._synchronized is None:
            self._synchronized = self._reduction.run(None)

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stops the clock between steps (evaluation, checkpointing, an epoch boundary): this
        rank is not cut while inside, the next step waits for it, and the policy does not see
        the pause. Use it on every rank that pauses."""
        with self._reduction.paused():
            yield

    def cutoff_stats(self) -> List[Dict[str, Any]]:
        """Per step (the last ``stats_window``): cutoff, contributors, every rank's time, who
        was cut, step seconds, this rank's outcome, the step the cutoff was chosen from."""
        return list(self._reduction.stats)

    def is_cut(self) -> bool:
        """True once this rank's current step can no longer contribute (for custom loops)."""
        return self._reduction.is_cut()

    def close(self) -> None:
        """Stops the deadline timer; the optimizer cannot step afterwards. Dropping the
        optimizer does the same. Ranks still stepping it get an error naming this rank."""
        self._reduction.close()


# The dynamic subclass takes these methods; copying the instance-layout descriptors too would
# break vars(opt) and load_state_dict() (they belong to this helper class, not the optimizer).
_MIXIN = {k: v for k, v in _CutoffOptimizer.__dict__.items() if k not in ("__dict__", "__weakref__")}


def _parameter_names(ordered, named_parameters) -> List[str]:
    if named_parameters is None:
        return [f"param.{i}" for i in range(len(ordered))]
    try:
        pairs = list(named_parameters)
        by_id = {id(p): name for name, p in pairs}
    except (TypeError, ValueError):
        raise ValueError("named_parameters must be an iterable of (name, parameter) pairs") from None
    if len(by_id) != len({name for name, _ in pairs}):
        raise ValueError("named_parameters has duplicate names")
    missing = [i for i, p in enumerate(ordered) if id(p) not in by_id]
    if missing:
        raise ValueError(f"named_parameters does not name {len(missing)} of the optimizer's parameters")
    return [by_id[id(p)] for p in ordered]


def DistributedOptimizer(
    optimizer,
    named_parameters=None,
    compression=Compression.none,
    backward_passes_per_step: int = 1,
    op=Average,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups=None,
    sparse_as_dense: bool = False,
    process_set=global_process_set,
    cutoff: Any = None,
    cutoff_options: Optional[Dict[str, Any]] = None,
    step_timeout: Optional[float] = 600.0,
    stall_warning: float = 60.0,
    max_lag: int = 2,
    coordinator: int = 0,
    stats_window: Optional[int] = 1000,
    watchdog_steps: int = 100,
    arrivals: bool = True,
):
    """Horovod's DistributedOptimizer, plus ``cutoff``: a policy name or object.

    ``cutoff_options`` go to the named policy (e.g. ``{"seconds": 0.2}`` for "static",
    ``{"backup": 1}`` for "backup"). The rest bound what can go wrong (README, "Options"):
    ``step_timeout`` seconds one reduction may take before every waiting rank raises
    (None: wait forever), ``stall_warning`` seconds before a warning naming the suspects,
    ``max_lag`` unapplied results a lagging rank may hold before it stops being cut,
    ``coordinator`` the rank whose policy chooses the cutoff, ``stats_window`` steps kept by
    ``cutoff_stats()`` (None: all), ``watchdog_steps`` steps without a fresh cutoff after
    which every step waits for all. ``arrivals`` (default on, with more than one rank): a step
    ends at min(cutoff, the policy's k-th arrival) and never with nobody while ranks compute,
    through a TCPStore the coordinator hosts (README, "Arrivals"; False: cutoff alone).
    """
    if cutoff is None:
        given = dict(cutoff_options=cutoff_options, step_timeout=step_timeout,
                     stall_warning=stall_warning, max_lag=max_lag, coordinator=coordinator,
                     stats_window=stats_window, watchdog_steps=watchdog_steps,
                     arrivals=arrivals)
        defaults = inspect.signature(DistributedOptimizer).parameters
        for argument, value in given.items():
            if value != defaults[argument].default:
                raise ValueError(f"{argument} needs cutoff= (without it this is Horovod's own optimizer)")
        return _hvd.DistributedOptimizer(
            optimizer, named_parameters=named_parameters, compression=compression,
            backward_passes_per_step=backward_passes_per_step, op=op,
            gradient_predivide_factor=gradient_predivide_factor, num_groups=num_groups,
            groups=groups, sparse_as_dense=sparse_as_dense, process_set=process_set,
        )
    # The cutoff reduction is one fused Sum of the whole gradient; refuse what it can't honour.
    unsupported = {
        "compression": compression is not Compression.none,
        "backward_passes_per_step": backward_passes_per_step != 1,
        "op": op != Average,
        "gradient_predivide_factor": gradient_predivide_factor != 1.0,
        "num_groups": bool(num_groups),
        "groups": groups is not None,
        "process_set": process_set is not global_process_set,
    }
    for argument, bad in unsupported.items():
        if bad:
            raise ValueError(f"{argument} is not supported together with cutoff= (leave it at its default)")
    if cutoff_options is not None and not isinstance(cutoff_options, dict):
        raise ValueError("cutoff_options must be a dict of the policy's keyword arguments")
    size = _hvd.size()
    engine_options = dict(
        step_timeout=None if step_timeout is None else positive_seconds(step_timeout, "step_timeout"),
        stall_warning=positive_seconds(stall_warning, "stall_warning"),
        max_lag=_count(max_lag, "max_lag", 1),
        coordinator=_count(coordinator, "coordinator", 0),
        stats_window=None if stats_window is None else _count(stats_window, "stats_window", 1),
        watchdog_steps=_count(watchdog_steps, "watchdog_steps", 1),
        sparse_as_dense=bool(sparse_as_dense),
        arrivals=_flag(arrivals, "arrivals"),
    )
    if engine_options["coordinator"] >= size:
        raise ValueError(f"coordinator must be a rank in [0, {size}), got {coordinator}")
    policy = make_policy(cutoff, **(cutoff_options or {}))
    if not engine_options["arrivals"] and getattr(policy, "name", None) == "backup":
        raise ValueError("arrivals=False cannot run cutoff='backup': only the arrival channel "
                         "ends a step at the (N-b)-th arrival")
    check = getattr(policy, "check_workers", None)
    if check is not None:
        check(size)
    config = policy.config() if hasattr(policy, "config") else {"policy": type(policy).__name__}
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_MIXIN))
    return cls(optimizer.param_groups, named_parameters, policy, config, engine_options)


def _count(value: Any, argument: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{argument} must be an integer >= {least}, got {value!r}")
    return value


def _flag(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False, got {value!r}")
    return value
