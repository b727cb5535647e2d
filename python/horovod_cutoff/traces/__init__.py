"""Traces of per-worker step times: the file format, scenario generators, recorder, injector."""

from .format import TraceError, load_trace, save_trace, validate
from .generators import SCENARIOS, generate
from .injector import StragglerInjector
from .recorder import record, stats_to_arrays

__all__ = ["TraceError", "load_trace", "save_trace", "validate", "StragglerInjector",
           "SCENARIOS", "generate", "record", "stats_to_arrays"]
