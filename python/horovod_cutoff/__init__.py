"""horovod-cutoff: Horovod data-parallel steps that end at a cutoff instead of waiting for stragglers.

The drop-in lives in :mod:`horovod_cutoff.torch`; policies, traces and the simulator do not
need Horovod and import without it.
"""

__version__ = "0.1.0"
