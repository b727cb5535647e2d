"""Traces of per-worker step times: the file format, scenario generators, recorder, injector."""

from typing import Any

from .format import TraceError, load_trace, save_trace, validate
from .generators import SCENARIOS, generate
from .recorder import record, stats_to_arrays


def __getattr__(name: str) -> Any:
    # The injector needs torch (a second and a half to import); the simulator and the command
    # line do not, so it loads on first use.
    if name == "StragglerInjector":
        from .injector import StragglerInjector

        return StragglerInjector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TraceError", "load_trace", "save_trace", "validate", "StragglerInjector",
           "SCENARIOS", "generate", "record", "stats_to_arrays"]
