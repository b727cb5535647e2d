"""The partial, deadline-bounded reduction of one optimizer step, on top of the csrc engine.

Per step: this rank offers its gradients (or nothing, if the step ended first: the engine's
C++ threads have then submitted zeros for it); one fused Horovod allreduce sums gradients, the
contributor count and every rank's time; every rank divides by the count. The policy runs
elsewhere (service.py, on the coordinator); its cutoff and quorum travel inside the
reductions, so the cutoff of step t is chosen from the times of steps up to t-2 or earlier.

With more than one rank, a step ends at min(cutoff, k-th arrival) and never with nobody while
ranks compute: the engine announces arrivals through a TCPStore the coordinator hosts (DESIGN
"Arrivals"). Its address travels in step 0's reduction; ``HOROVOD_CUTOFF_STORE_ADDR`` and
``HOROVOD_CUTOFF_STORE_PORT`` override what the coordinator advertises.
"""

from __future__ import annotations

import collections
import fcntl
import json
import math
import os
import socket
import struct
import threading
import time
import warnings
import weakref
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence

import torch

from . import _C
from .policies import CutoffPolicy
from .service import CutoffService

Outcome = _C.Outcome
StepResult = _C.StepResult


class StepAbandoned(Exception):
    """Raised inside a closure when this rank was cut: the rest of the step is skipped."""


class CutoffConfigMismatch(RuntimeError):
    """Ranks were set up with different cutoff configurations or models."""


class StepStalled(RuntimeError):
    """A reduction did not complete within ``step_timeout`` seconds."""


def fingerprint(config: Dict[str, Any]) -> int:
    """24 bits of the configuration: exactly representable in the fused buffer's float32."""
    text = json.dumps(config, sort_keys=True, default=str)
    return (zlib.crc32(text.encode()) & 0xFFFFFF) or 1


# Engines are named from what every rank shares (the parameters' names and shapes), plus how
# many engines of that shape this process made before: an optimizer built on one rank only can then
# never shift the names of the optimizers built on every rank.
_engines_made: Dict[int, int] = collections.Counter()
_engines_lock = threading.Lock()


def _engine_name(config_fingerprint: int) -> str:
    with _engines_lock:
        k = _engines_made[config_fingerprint]
        _engines_made[config_fingerprint] += 1
    return f"{config_fingerprint:06x}.{k}"


def _interface_address(interface: str) -> str:
    """The IPv4 address of a network interface (Linux)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("256s", interface.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, request)[20:24])  # SIOCGIFADDR


def store_address() -> str:
    """The IPv4 address the coordinator advertises for its arrival channel: the one every rank
    reaches. HOROVOD_CUTOFF_STORE_ADDR if set; else the address of the interface Horovod's
    Gloo uses (HOROVOD_GLOO_IFACE, set by horovodrun); else the address that routes to
    horovodrun's rendezvous server; else this host's name resolved."""
    explicit = os.environ.get("HOROVOD_CUTOFF_STORE_ADDR")
    try:
        if explicit:
            return socket.gethostbyname(explicit)
    except OSError as err:
        raise ValueError(f"HOROVOD_CUTOFF_STORE_ADDR={explicit!r} does not resolve to an IPv4 "
                         f"address: {err}") from None
    interface = os.environ.get("HOROVOD_GLOO_IFACE")
    if interface:
        try:
            return _interface_address(interface)
        except OSError:
            pass  # not an IPv4 interface: try the route below
    rendezvous = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR")
    if rendezvous:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((rendezvous, 1))  # UDP: sends nothing, picks the outgoing address
                return s.getsockname()[0]
        except OSError:
            pass
    return socket.gethostbyname(socket.gethostname())


def store_port() -> int:
    """HOROVOD_CUTOFF_STORE_PORT (the coordinator hosts the channel there), or 0: any free port."""
    text = os.environ.get("HOROVOD_CUTOFF_STORE_PORT", "0")
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"HOROVOD_CUTOFF_STORE_PORT must be a port number in [0, 65535], got {text!r}")
    return port


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


class _AbandonHooks:
    """Lets a cut rank abandon its closure: raises StepAbandoned at the next forward of a module
    that owns a wrapped parameter, or at the next gradient of one, once the step is cut.

    Scoped: only the thread running the closure, only the wrapped parameters' modules. The
    gradient hooks hold the reduction weakly, so they never keep a dropped optimizer alive.
    """

    def __init__(self, reduction: "PartialReduction", params: Sequence[torch.Tensor]):
        self._param_ids = frozenset(id(p) for p in params)
        self._armed: Optional[tuple] = None  # (step, thread id) while a closure runs
        ref = weakref.ref(reduction)
        armed = weakref.ref(self)

        def on_gradient(grad: torch.Tensor) -> None:
            hooks, red = armed(), ref()
            if hooks is not None and red is not None and hooks._armed is not None:
                if red.engine.is_cut(hooks._armed[0]):
                    raise StepAbandoned()

        self._handles = [p.register_hook(on_gradient) for p in params if p.requires_grad]

    @contextmanager
    def armed(self, engine: Any, step: int) -> Iterator[None]:
        me = threading.get_ident()
        owns = self._param_ids

        def pre_forward(module: torch.nn.Module, args: Any) -> None:
            if threading.get_ident() != me:
                return
            if any(id(p) in owns for p in module._parameters.values() if p is not None):
                if engine.is_cut(step):
                    raise StepAbandoned()

        self._armed = (step, me)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_forward)
        try:
            yield
        finally:
            handle.remove()
            self._armed = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _shut_down(engine: Any, service: Optional[CutoffService], hooks: List[Any]) -> None:
    """Finalizer of a PartialReduction: must not reference it."""
    for h in hooks:
        h.remove()
    if service is not None:
        service.stop()
    engine.close()


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
        *,
        step_timeout: Optional[float],
        stall_warning: float,
        max_lag: int,
        coordinator: int,
        stats_window: Optional[int],
        watchdog_steps: int,
        fallback: Optional[Callable[[], CutoffPolicy]] = None,
        sparse_as_dense: bool = False,
        arrivals: bool = True,
    ):
        if not params:
            raise ValueError("params: the optimizer has no parameters")
        self.params = list(params)
        self.names = list(names)
        self.rank, self.size = rank, size
        self.step_timeout = step_timeout
        self.stall_warning = stall_warning
        self.max_lag = max_lag
        self.sparse_as_dense = sparse_as_dense
        self.step_index = 0
        self.stats: Deque[Dict[str, Any]] = collections.deque(maxlen=stats_window)
        self._last: Optional[StepResult] = None
        self._basis = -1  # the step the current step's cutoff was chosen from
        self._lag_warned = False
        sparse = [n for n, p in zip(self.names, self.params) if p.grad is not None and p.grad.is_sparse]
        if sparse and not sparse_as_dense:
            raise ValueError(f"sparse gradients (parameters {sparse}) are not supported with cutoff=; "
                             "pass sparse_as_dense=True")
        dtype = _buffer_dtype(self.params)
        numel = sum(p.numel() for p in self.params)
        self.config = {
            "cutoff": policy_config,
            "world": size,
            "coordinator": coordinator,
            "arrivals": bool(arrivals),
            "dtype": dtype,
            "params": [[n, list(p.shape)] for n, p in zip(self.names, self.params)],
        }
        self.fingerprint = fingerprint(self.config)
        # The name must match across ranks even when the cutoff settings do not (step 0 then
        # reports the mismatch on every rank), so it comes from the reduction's shape alone.
        shape = {k: self.config[k] for k in ("world", "dtype", "params")}
        # Step 0 waits for everyone: there is nothing to predict from, it checks the config, and
        # it carries the arrival channel's address.
        channel = arrivals and size > 1
        host = (store_address() if rank == coordinator
                else os.environ.get("HOROVOD_CUTOFF_STORE_ADDR", "")) if channel else ""
        self.engine = _C.Engine(_engine_name(fingerprint(shape)), rank, size, numel, dtype,
                                _device_index(self.params), self.fingerprint, math.inf,
                                coordinator=coordinator, max_lag=max_lag,
                                watchdog_steps=watchdog_steps, arrivals=channel,
                                store_host=host, store_port=store_port() if channel else 0)
        self.service = (CutoffService(self.engine, policy, fallback, workers=size).start()
                        if rank == coordinator else None)
        self._hooks = _AbandonHooks(self, self.params)
        self._finalizer = weakref.finalize(self, _shut_down, self.engine, self.service, [self._hooks])

    # ---- the step -------------------------------------------------------------------------

    def run(self, closure: Optional[Callable[[], Any]] = None) -> tuple:
        """Runs step ``step_index``: returns (closure's loss or None, its StepResult, outcome).

        Whatever goes wrong on this rank, its contribution goes in (zeros if need be) before
        the error propagates, so the other ranks never wait for it.
        """
        step = self.step_index
        loss = None
        try:
            if closure is not None and not self.engine.is_cut(step):
                # A step already reduced (this rank is behind) is applied without its closure.
                try:
                    with self._hooks.armed(self.engine, step), torch.enable_grad():
                        loss = closure()
                except StepAbandoned:
                    loss = None
            grads = self._grads()
        except BaseException:
            self.engine.withdraw(step)
            raise
        outcome = self.engine.contribute(step, grads)
        result = self._wait_and_take(step, grads)
        self.step_index += 1
        if result.contributed:
            outcome = Outcome.CONTRIBUTED
        elif outcome == Outcome.CONTRIBUTED:  # GPU: the device finished after the deadline
            outcome = Outcome.CUT
        self._record(result, outcome)
        return loss, result, outcome

    def is_cut(self) -> bool:
        """True once the current step can no longer take this rank's gradients."""
        return self.engine.is_cut(self.step_index)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.engine.pause()
        try:
            yield
        finally:
            self.engine.resume()

    def close(self) -> None:
        self._finalizer()

    # ---- internals ------------------------------------------------------------------------

    def _grads(self) -> List[torch.Tensor]:
        grads = []
        for name, p in zip(self.names, self.params):
            if p.grad is None:  # unused this step: contributes zeros, receives the average
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                if not self.sparse_as_dense:
                    raise ValueError(f"parameter {name!r} has a sparse gradient, not supported with "
                                     "cutoff=; pass sparse_as_dense=True")
                p.grad = p.grad.to_dense()
            grads.append(p.grad)
        return grads

    def _wait_and_take(self, step: int, grads: List[torch.Tensor]) -> StepResult:
        started = time.monotonic()
        warned = False
        while not self.engine.wait(step, 0.2):  # short waits keep Ctrl-C responsive
            waited = time.monotonic() - started
            if not warned and waited > self.stall_warning:
                warnings.warn(self._stall_message(step, waited), RuntimeWarning, stacklevel=4)
                warned = True
            if self.step_timeout is not None and waited > self.step_timeout:
                raise StepStalled(self._stall_message(step, waited) +
                                  f" Giving up (step_timeout={self.step_timeout} s).")
        self._warn_if_lagging(step)
        result = self.engine.take(step, grads)
        if step == 0:
            self._check_config(result.fingerprints)
        return result

    def _stall_message(self, step: int, waited: float) -> str:
        head = f"horovod_cutoff: rank {self.rank} has waited {waited:.0f} s for step {step} to be reduced."
        last = self._last
        if last is None:
            return (f"{head} No step of this optimizer has completed yet: was it built on every rank, "
                    "with the same parameters? Horovod's stall inspector (on rank 0) names the "
                    "missing ranks.")
        behind = [(r, int(b)) for r, b in enumerate(last.behind) if b > 0]
        if behind:
            who = ", ".join(f"rank {r} ({b} steps behind)" for r, b in behind)
            return (f"{head} At step {last.step}: {who}. A rank at its lag bound "
                    f"(max_lag={self.max_lag}) is no longer cut: every rank waits until it calls step().")
        return (f"{head} No rank was behind at step {last.step}: a rank stopped calling step() "
                "(uneven data, an early exit, or a pause under cutoff='none'). Give every rank the same "
                "number of steps; Horovod's stall inspector (on rank 0) names the missing ranks.")

    def _warn_if_lagging(self, step: int) -> None:
        behind = self.engine.open_step() - step  # reduced steps this rank has not applied yet
        if behind >= self.max_lag and not self._lag_warned:
            warnings.warn(
                f"horovod_cutoff: rank {self.rank} is {behind} steps behind the reductions "
                f"(max_lag={self.max_lag}): it is no longer cut, so the other ranks wait for it "
                "until it catches up. Is it much slower than the others, or paused without "
                "opt.paused()?", RuntimeWarning, stacklevel=5)
            self._lag_warned = True
        elif behind <= 1:
            self._lag_warned = False

    def _check_config(self, fingerprints) -> None:
        if len(set(int(f) for f in fingerprints)) == 1:
            return
        groups: Dict[int, List[int]] = {}
        for r, f in enumerate(fingerprints):
            groups.setdefault(int(f), []).append(r)
        described = "; ".join(f"ranks {rs} have fingerprint {f:06x}" for f, rs in groups.items())
        raise CutoffConfigMismatch(
            f"horovod_cutoff: ranks disagree on the cutoff configuration or the model ({described}); "
            f"this rank ({self.rank}) has {json.dumps(self.config['cutoff'], default=str)}. "
            "Construct DistributedOptimizer with the same cutoff arguments and model on every rank."
        )

    def _record(self, result: StepResult, outcome: Any) -> None:
        self._last = result
        self.stats.append({
            "step": result.step,
            "cutoff": result.cutoff,
            "quorum": result.quorum,
            "cutoff_basis": self._basis,
            "contributors": result.count,
            "times": result.times,
            "censored": result.censored,
            "step_seconds": result.seconds,
            "submitted_at": result.submitted_at,
            "announced_at": result.announced_at,
            "started": result.started,
            "ended_by_quorum": result.ended_by_quorum,
            "outcome": outcome.name.lower(),
            "paused": result.paused,
            "behind": result.behind,
            "next_cutoff": result.next_cutoff,
        })
        self._basis = result.cutoff_basis
