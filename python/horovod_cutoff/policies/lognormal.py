"""Helpers shared by the model-free adaptive policies: censored log-time statistics and the
expected-throughput argmax for independent per-worker log-normal predictions."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

# scipy.special's ufuncs, not scipy.stats objects: the per-call overhead of the latter is
# larger than the arithmetic here, and these run every step.
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
COARSE, FINE = 96, 64


def inverse_mills(alpha: np.ndarray) -> np.ndarray:
    """pdf(alpha) / sf(alpha) of the standard Normal, stable for large alpha."""
    alpha = np.asarray(alpha, dtype=float)
    safe = np.clip(alpha, -30.0, 30.0)
    exact = np.exp(-0.5 * safe**2 - _LOG_SQRT_2PI - special.log_ndtr(-safe))
    # Far in the tail the ratio is alpha + 1/alpha to within 1e-6 (and the formula overflows).
    return np.where(alpha > 30.0, alpha + 1.0 / np.maximum(alpha, 30.0), exact)


def impute_censored_log(log_c: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """E[log x | log x > log c] under N(mu, sd): what a cut worker's log time is expected to be.

    Using the cutoff itself would bias every estimate towards short times.
    """
    return np.maximum(mu + sd * inverse_mills((log_c - mu) / sd), log_c)


def _rate(log_c: np.ndarray, mu: np.ndarray, sd: np.ndarray, overhead: float) -> np.ndarray:
    expected = special.ndtr((log_c[:, None] - mu[None, :]) / sd[None, :]).sum(axis=1)
    return expected / (np.exp(log_c) + overhead)


def best_cutoff(mu: np.ndarray, sd: np.ndarray, overhead: float) -> float:
    """argmax_c sum_n P(x_n <= c) / (c + o) for x_n ~ LogNormal(mu_n, sd_n).

    A coarse log-spaced grid over the predictive range, then a fine grid around its best
    point (the objective is smooth; the refinement recovers what the coarse grid loses).
    """
    lo, hi = float(np.min(mu - 3.5 * sd)), float(np.max(mu + 3.5 * sd))
    coarse = np.linspace(lo, hi, COARSE)
    i = int(np.argmax(_rate(coarse, mu, sd, overhead)))
    step = coarse[1] - coarse[0] if COARSE > 1 else 0.0
    fine = np.linspace(coarse[i] - step, coarse[i] + step, FINE)
    rate = _rate(fine, mu, sd, overhead)
    return float(np.exp(fine[int(np.argmax(rate))]))
