"""bench P9's stand-in for a large cluster (no ranks): it must pass the cutoff service's
calls on to the policy it wraps, or P9 measures a policy that refits on the service's thread."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from p9_coordinator import SimulatedCluster  # noqa: E402


def test_the_simulated_cluster_passes_serve_live_and_close_to_its_policy():
    cluster = SimulatedCluster("predictive", workers=16)
    cluster.serve_live()  # the service's call as it starts
    assert cluster.inner._live and cluster.inner._background is not None  # refits off-thread
    cluster.observe(np.full(1, 0.05), np.zeros(1, dtype=bool))
    assert len(cluster.answer_seconds) == 1 and np.isfinite(cluster.inner.cutoff())
    cluster.close()  # the service's call as it stops
    assert cluster.inner._background is None
