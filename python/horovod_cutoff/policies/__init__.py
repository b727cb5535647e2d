"""Cutoff policies: one name-to-class registry, the same objects live and in the simulator.

``make_policy("static", seconds=0.2)`` builds one by name; any object with
``observe(times, censored)`` and ``cutoff()`` is accepted wherever a policy is.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from .adaptive import AdaptiveLogNormal
from .base import CutoffPolicy, Policy, check_step
from .elfving import Elfving
from .simple import BackupWorkers, NoCutoff, StaticCutoff

POLICIES: Dict[str, Callable[..., Any]] = {
    "none": NoCutoff,
    "static": StaticCutoff,
    "backup": BackupWorkers,
    "elfving": Elfving,
    "adaptive": AdaptiveLogNormal,
}


def register(name: str, factory: Callable[..., Any]) -> None:
    """Add a policy under ``name`` (later issues plug the learned policies in here)."""
    POLICIES[name] = factory


def make_policy(spec: Any, **params: Any) -> CutoffPolicy:
    """A policy from a registered name plus keyword parameters, or an object passed through.

    Raises ValueError naming ``cutoff`` for an unknown name or an object that lacks the
    interface, and the policy's own ValueError (naming its argument) for bad parameters.
    """
    if isinstance(spec, str):
        if spec not in POLICIES:
            raise ValueError(
                f"cutoff must be one of {sorted(POLICIES)} or a policy object, got {spec!r}")
        try:
            return POLICIES[spec](**params)
        except TypeError as err:  # an unexpected keyword: say which policy rejected it
            raise ValueError(f"bad parameters for cutoff={spec!r}: {err}") from None
    if params:
        raise ValueError("cutoff parameters are only accepted with a policy name, not an object")
    if not isinstance(spec, CutoffPolicy):
        raise ValueError(
            "cutoff must be a policy name or an object with observe(times, censored) and "
            f"cutoff(), "
            f"got {type(spec).__name__}"
        )
    return spec


__all__ = ["CutoffPolicy", "Policy", "POLICIES", "register", "make_policy", "check_step",
           "NoCutoff", "StaticCutoff", "BackupWorkers", "Elfving", "AdaptiveLogNormal"]

from .predictive import Predictive  # noqa: E402  (registered after the baselines it falls back to)

register("predictive", Predictive)
