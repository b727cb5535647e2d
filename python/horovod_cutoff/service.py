"""The coordinator's cutoff service: runs the policy on its own thread, off every rank's
critical path (DESIGN "One step, as data", step 6).

The engine hands it every completed reduction (times and censoring flags); the service feeds
them to the policy in order and gives the engine the next cutoff (and quorum, for a policy
that answers one) whenever it has one. The
latest answer wins; a stale one is reused; the engine falls back to waiting for all if no
answer comes for ``watchdog_steps`` steps. A policy that raises or answers NaN, inf or <= 0
is replaced by a fallback (waiting for every worker unless told otherwise), with one warning;
so is one whose quorum is not a number of workers in [1, N].

It also measures the per-step overhead o the objective charges (DESIGN "The cutoff"): what a
step costs beyond its compute, the reduction, the optimizer and Python, as the coordinator
sees it (``OverheadMeter``); a policy built without an overhead is told it as it changes.
Uncharged, the objective counts waiting for a worker as costlier than it is (on the example's
trace a step costs about 9 ms beyond its 75 ms of compute).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import deque
from typing import Any, Callable, Optional

import numpy as np

from .policies import CutoffPolicy, NoCutoff

# How long one wait for new observations lasts: bounds how late the thread notices stop().
_POLL_SECONDS = 0.2


class OverheadMeter:
    """The per-step overhead: the median, over the last ``window`` steps, of a step's wall time
    on the coordinator less the time its compute ended (its last arrival, or the cut). The
    median keeps a step slowed by something else (a checkpoint, a pause) out of it."""

    WINDOW = 64   # steps in the median: the overhead follows a change within a few dozen
    FIRST = 5     # steps before a first estimate

    def __init__(self, window: int = WINDOW, first: int = FIRST):
        self._samples: deque = deque(maxlen=window)
        self.first = first

    def add(self, seconds: float, times: np.ndarray) -> None:
        ended = np.nanmax(times) if np.isfinite(times).any() else math.nan
        if math.isfinite(seconds) and math.isfinite(ended):
            self._samples.append(max(0.0, float(seconds) - float(ended)))

    @property
    def seconds(self) -> Optional[float]:
        """The estimate, or None before ``first`` steps."""
        if len(self._samples) < self.first:
            return None
        return float(np.median(self._samples))


class CutoffService:
    """One thread on the coordinator rank that turns observed steps into cutoffs."""

    def __init__(self, engine: Any, policy: CutoffPolicy,
                 fallback: Optional[Callable[[], CutoffPolicy]] = None, workers: int = 1):
        self.engine = engine
        self.workers = workers
        self.policy = policy
        self._fallback = fallback or NoCutoff
        self.failed: Optional[str] = None  # why the policy was replaced, if it was
        self.observed = 0
        self.overhead = OverheadMeter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="horovod-cutoff-service",
                                        daemon=True)

    def start(self) -> "CutoffService":
        _serve_live(self.policy)
        self._answer(basis=-1)  # the policy's cutoff before any observation
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _close(self.policy)

    # ---- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.engine.next_observations(_POLL_SECONDS)
            except Exception:  # the engine was closed under us: nothing left to serve
                return
            last = None
            for result in batch:
                if result.paused:  # a pause inside the step: its times are not a sample
                    continue
                self.overhead.add(result.seconds, result.times)
                self._tell_overhead()
                self._observe(result.times, result.censored)
                last = result.step
            if last is not None:
                self._answer(basis=last)

    def _observe(self, times: np.ndarray, censored: np.ndarray) -> None:
        try:
            self.policy.observe(times, censored)
            self.observed += 1
        except Exception as err:  # a broken policy must not stop training
            self._fall_back(f"observe() raised {type(err).__name__}: {err}")

    def _tell_overhead(self) -> None:
        o = self.overhead.seconds
        if o is None or not getattr(self.policy, "overhead_measured", False) \
                or o == self.policy.overhead:
            return
        try:
            self.policy.set_overhead(o)
        except Exception as err:  # a broken policy must not stop training
            self._fall_back(f"set_overhead() raised {type(err).__name__}: {err}")

    def _answer(self, basis: int) -> None:
        for _ in range(3):  # the policy, its fallback, then NoCutoff, which cannot fail
            try:
                c = float(self.policy.cutoff())
                quorum = getattr(self.policy, "quorum", None)
                k = quorum() if quorum is not None else None
            except Exception as err:
                self._fall_back(f"cutoff() or quorum() raised {type(err).__name__}: {err}")
                continue
            if math.isnan(c) or c <= 0:
                self._fall_back(f"cutoff() returned {c}")
                continue
            if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer))
                                  or not 1 <= k <= self.workers):
                self._fall_back(f"quorum() returned {k!r}, not a number of workers in "
                                f"[1, {self.workers}]")
                continue
            self.engine.set_next_cutoff(c, basis, 0 if k is None else int(k))
            return

    def _fall_back(self, why: str) -> None:
        _close(self.policy)  # its background work (predictive's refits) ends with it
        if self.failed is not None:  # the fallback itself failed: wait for all
            self.policy = NoCutoff()
            return
        self.failed = why
        replacement = self._fallback()
        warnings.warn(f"horovod_cutoff: the cutoff policy failed ({why}); falling back to "
                      f"{getattr(replacement, 'name', type(replacement).__name__)!r}",
                      RuntimeWarning, stacklevel=2)
        self.policy = replacement
        _serve_live(replacement)


def _serve_live(policy: Any) -> None:
    """Tells a policy with long work (predictive's refits) that it serves live, so it moves
    that work off the service's thread."""
    live = getattr(policy, "serve_live", None)
    if live is not None:
        live()


def _close(policy: Any) -> None:
    """Stops a policy's background work, if it has any. Its errors never escape: the service
    is stopping, or replacing the policy because it failed already."""
    close = getattr(policy, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001  (nothing left to do with the policy)
            pass
