"""Traces of per-worker step times: the file format, scenario generators, recorder, injector."""

from .format import TraceError, load_trace, save_trace, validate
from .injector import StragglerInjector

__all__ = ["TraceError", "load_trace", "save_trace", "validate", "StragglerInjector"]
