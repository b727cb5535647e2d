"""Drop-in for ``horovod.torch``: everything it exports, plus ``DistributedOptimizer(cutoff=...)``.

``import horovod_cutoff.torch as hvd`` and pass ``cutoff="static" | "backup" | "none" | ...``
(or a policy object). Without ``cutoff`` the optimizer is Horovod's own, unchanged.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import horovod.torch as _hvd
from horovod.torch import *  # noqa: F401,F403  (the drop-in promise: everything hvd has)
from horovod.torch import Average, Compression, global_process_set

from .policies import make_policy
from .reduce import CutoffConfigMismatch, PartialReduction, StepAbandoned  # noqa: F401

_engine_ids = itertools.count()


class _CutoffOptimizer:
    """Mixed into the user's optimizer class, as Horovod does, so isinstance/state_dict work."""

    def __init__(self, params, named_parameters, policy, policy_config, step_timeout):
        super(self.__class__, self).__init__(params)
        # Frozen parameters take no part: they get no gradient, as in plain Horovod.
        ordered = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        names = _parameter_names(ordered, named_parameters)
        self._reduction = PartialReduction(
            ordered, names, policy, policy_config, rank=_hvd.rank(), size=_hvd.size(),
            engine_name=f"opt{next(_engine_ids)}", step_timeout=step_timeout,
        )
        self._synchronized: Optional[Dict[str, Any]] = None
        self._should_synchronize = True

    def step(self, closure=None):
        """One data-parallel step bounded by the cutoff; the closure form lets a cut rank
        abandon its forward/backward and start the next step on time."""
        if self._synchronized is not None and closure is None:
            result, self._synchronized = self._synchronized, None
            loss = None
        elif not self._should_synchronize:
            raise RuntimeError("step() inside skip_synchronize() needs a synchronize() first")
        else:
            loss, result = self._reduction.run(closure)
        if result["count"] > 0:  # a step nobody made applies no update
            super(self.__class__, self).step()
        return loss

    def synchronize(self) -> None:
        """Reduces now (gradients become the average), for clipping before ``step()``."""
        if self._synchronized is None:
            _, self._synchronized = self._reduction.run(None)

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def cutoff_stats(self) -> List[Dict[str, Any]]:
        """Per step: cutoff, contributors, every rank's time, who was cut, step seconds."""
        return list(self._reduction.stats)

    def is_cut(self) -> bool:
        """True once this rank's current step can no longer contribute (for custom loops)."""
        return self._reduction.is_cut()

    def close(self) -> None:
        """Stops the deadline timer; the optimizer cannot step afterwards."""
        self._reduction.close()


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
    step_timeout: Optional[float] = None,
):
    """Horovod's DistributedOptimizer, plus ``cutoff``: a policy name or object.

    ``cutoff_options`` go to the named policy (e.g. ``{"seconds": 0.2}`` for "static",
    ``{"backup": 1}`` for "backup"). ``step_timeout`` bounds the wait for one reduction.
    """
    if cutoff is None:
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
        "sparse_as_dense": bool(sparse_as_dense),
        "process_set": process_set is not global_process_set,
    }
    for argument, bad in unsupported.items():
        if bad:
            raise ValueError(f"{argument} is not supported together with cutoff= (leave it at its default)")
    if cutoff_options is not None and not isinstance(cutoff_options, dict):
        raise ValueError("cutoff_options must be a dict of the policy's keyword arguments")
    policy = make_policy(cutoff, **(cutoff_options or {}))
    config = policy.config() if hasattr(policy, "config") else {"policy": type(policy).__name__}
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_CutoffOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, policy, config, step_timeout)
