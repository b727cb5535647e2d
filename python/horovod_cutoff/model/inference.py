"""Reference inference: the hot path in plain PyTorch (new times in, next cutoff out).

This is the specification a fused kernel is tested against: every random number is passed
in (``Noise``), so a kernel given the same noise must give the same samples and cutoff.

    filter:   state <- model.step(state, times, censored)            (posterior mean latent)
    predict:  z_t^s ~ q, z_{t+1}^s ~ prior(g_t, z_t^s)                 (S samples)
              k_{s,n} ~ Categorical(softmax(logits_n)) by inverse cdf of uniform u_{s,n}
              log x_{s,n} = ref + loc_{n,k} + load_n . z_{t+1}^s + scale_{n,k} * eps_{s,n}
    cutoff:   the exact argmax over the sorted samples of the chosen objective
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .network import RunTimeModel, State

OBJECTIVES = ("step", "ratio", "lambda")


@dataclass
class Noise:
    """Every random number one prediction uses, for S samples of N workers, latent size D."""

    z: torch.Tensor           # [S, D] standard normal: the current latent's posterior draw
    transition: torch.Tensor  # [S, D] standard normal: the transition's draw
    uniform: torch.Tensor     # [S, N] uniform [0, 1): mixture component choice
    normal: torch.Tensor      # [S, N] standard normal: within-component draw

    @staticmethod
    def draw(samples: int, workers: int, latent: int, generator: Optional[torch.Generator] = None,
             dtype: torch.dtype = torch.float32) -> "Noise":
        return Noise(torch.randn(samples, latent, generator=generator, dtype=dtype),
                     torch.randn(samples, latent, generator=generator, dtype=dtype),
                     torch.rand(samples, workers, generator=generator, dtype=dtype),
                     torch.randn(samples, workers, generator=generator, dtype=dtype))


@torch.no_grad()
def predictive_log_times(model: RunTimeModel, state: State, noise: Noise,
                         spread: float = 1.0) -> torch.Tensor:
    """S posterior-predictive samples of next step's N log times (log seconds), [S, N].

    ``spread``, the online calibration's factor (``model.calibration``), widens (> 1) or
    narrows each worker's samples about its predictive mean log time
    m_n = ref + sum_k pi_nk loc_nk + load_n . mean_s z^s: L' = m_n + spread * (L - m_n).
    Monotone per worker, so the cross-worker correlation the latent carries is kept."""
    em = model.emission(state.h[0], state.g[0])                       # [N, K] / [N, D]
    z_next = model.next_latent(state, noise.z, noise.transition)       # [S, D]
    cum = torch.softmax(em.logits, -1).cumsum(-1)                      # [N, K]
    # Inverse-cdf choice of the component, K-1 comparisons: k = #{j < K-1: u > cum_j}.
    loc, scale = em.loc[:, 0].expand_as(noise.uniform), em.scale[:, 0].expand_as(noise.uniform)
    for j in range(1, model.K):
        beyond = noise.uniform > cum[:, j - 1]
        loc = torch.where(beyond, em.loc[:, j], loc)
        scale = torch.where(beyond, em.scale[:, j], scale)
    shift = z_next @ em.load.T                                         # [S, N]
    out = state.ref[0] + loc + shift + scale * noise.normal
    if spread != 1.0:
        mean = _predictive_mean(state, em, z_next)
        out = mean + spread * (out - mean)
    return out


def _predictive_mean(state: State, em, z_next: torch.Tensor) -> torch.Tensor:
    """Each worker's predictive mean log time [N] (over the mixture and the S latent draws):
    the centre the calibration's spread scales about."""
    return state.ref[0] + (torch.softmax(em.logits, -1) * em.loc).sum(-1) + em.load @ z_next.mean(0)


def best_cutoff(samples: torch.Tensor, overhead: float, objective: str = "step",
                rate: Optional[float] = None) -> Tuple[float, float]:
    """The exact argmax over candidate cutoffs at the sampled times (samples [S, N] seconds,
    absent workers' columns already removed), and the objective there.

    ``step``: E[#{n: x_n <= c}] / (E[min(c, max_n x_n)] + o), the per-step ratio with the
    step's true duration (a step ends when its last worker is done, if before c).
    ``ratio`` (the paper's per-step ratio): E[#{n: x_n <= c}] / (c + o).
    ``lambda`` (the long-run rate): E[#{x_n <= c}] - rate * (E[min(c, max_n x_n)] + o), with
    ``rate`` the running throughput in gradients per second (``step`` while it is unknown).
    Between two sampled times E[k] is flat and the duration does not fall, so the argmax is
    one of them; all S*N are evaluated after one sort (for the last of equal values, the
    count includes all of them).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    # numpy on the host: its SIMD sort is ~15x faster than torch's on CPU, and at these sizes
    # per-op overhead dominates; the arithmetic is the same either way.
    x = samples.detach().cpu().numpy().astype(np.float64)
    S = x.shape[0]
    flat = np.sort(x.reshape(-1))
    expected = np.arange(1, flat.size + 1, dtype=np.float64) / S
    if objective == "ratio":
        value = expected / (flat + overhead)
    else:
        maxima = np.sort(x.max(axis=1))                                    # [S]
        prefix = np.concatenate([[0.0], np.cumsum(maxima)])
        within = np.searchsorted(maxima, flat, side="right")               # maxima <= c
        duration = (prefix[within] + flat * (S - within)) / S + overhead   # E[min(c, max)] + o
        if objective == "lambda" and rate is not None:
            value = expected - rate * duration
        else:
            value = expected / duration
    # Equal values: keep the last of each run (it counts every equal sample).
    value[:-1][flat[:-1] == flat[1:]] = -np.inf
    j = int(np.argmax(value))
    return float(flat[j]), float(value[j])


GRID_BINS = 4096  # candidate bins of the grid argmax (its loss against the exact one: bench P1)


@torch.no_grad()
def best_cutoff_grid(log_samples: torch.Tensor, overhead: float, objective: str = "step",
                     rate: Optional[float] = None, bins: int = GRID_BINS) -> Tuple[float, float]:
    """The argmax of ``best_cutoff``'s objective over at most ``bins`` candidates, without a
    sort, from log samples [S, N] (log seconds, absent workers' columns removed): the shape a
    fused kernel computes (histograms, prefix sums, one scan).

    The range [lo, hi] of the log samples is cut into ``bins`` equal bins; a value v falls in
    bin b = clamp(ceil((v - lo) / width) - 1, 0, bins - 1), whose upper edge is
    lo + (b + 1) * width. Per bin: the sample count, the largest sample, and the count and sum
    (in seconds) of the per-sample maxima max_n x_{s,n} that fall there. The candidates are
    the largest sample at or below each edge (a prefix max), where the objective is *exact*:
    every sample and every maximum at or below an edge is at or below that candidate. So the
    only loss against the exact argmax is the coarser candidate set. Returns (cutoff seconds,
    objective there). Arithmetic in float64.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    v = log_samples.detach().to(torch.float64)
    S = v.shape[0]
    lo, hi = v.min(), v.max()
    if not bool(hi > lo):  # every sample equal: the one candidate
        c = float(torch.exp(hi))
        k = float(v.shape[1])
        dur = c + overhead
        return c, (k - rate * dur) if (objective == "lambda" and rate is not None) else k / dur
    width = (hi - lo) / bins
    ids = lambda x: torch.clamp(torch.ceil((x - lo) / width).long() - 1, 0, bins - 1)  # noqa: E731
    flat = v.reshape(-1)
    b = ids(flat)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, torch.ones_like(flat))
    top = torch.full((bins,), -torch.inf, dtype=torch.float64).scatter_reduce_(0, b, flat, "amax")
    m = v.max(dim=1).values                                                      # [S]
    bm = ids(m)
    m_count = torch.zeros(bins, dtype=torch.float64).index_add_(0, bm, torch.ones_like(m))
    m_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, bm, torch.exp(m))
    cand = torch.cummax(top, 0).values                                           # log seconds
    c = torch.exp(cand)
    expected = torch.cumsum(count, 0) / S
    duration = (torch.cumsum(m_sum, 0) + c * (S - torch.cumsum(m_count, 0))) / S + overhead
    if objective == "ratio":
        value = expected / (c + overhead)
    elif objective == "lambda" and rate is not None:
        value = expected - rate * duration
    else:
        value = expected / duration
    value = torch.where(torch.isfinite(cand), value, torch.full_like(value, -torch.inf))
    j = int(torch.argmax(value))
    return float(c[j]), float(value[j])


QUORUM_PAIRS = 1 << 13  # (k, c) pairs best_rule scores: every k, QUORUM_PAIRS / N cutoffs
QUORUM_CUTOFFS = (16, 128)  # at least, at most that many candidate cutoffs
# Order statistics the joint choice works on, at most: beyond, every m-th arrival (and the
# last) stands for the m before it, so its cost stays flat in N (at N=1024: 7 ms -> ~1 ms a
# step; bench P9 needs the coordinator's service thread light).
ORDER_ROWS = 128


def order_rows(workers: int, limit: int = ORDER_ROWS) -> np.ndarray:
    """The arrivals (0-based) the joint choice keeps of ``workers``: all of them up to
    ``limit``, else every m-th and the last, m = ceil(workers / limit)."""
    if workers <= limit:
        return np.arange(workers)
    m = -(-workers // limit)
    return np.unique(np.append(np.arange(m - 1, workers, m), workers - 1))


def order_statistics(log_samples: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """[N, S] from S samples of N log times [S, N]: row j holds the samples of the (j+1)-th
    arrival, sorted (``rows``: only those arrivals, in that order). float32 stays float32
    (several times faster to sort and exponentiate)."""
    L = np.asarray(log_samples)
    L = L if L.dtype == np.float32 else L.astype(np.float64)
    arrivals = np.sort(L, axis=1)
    return np.sort((arrivals if rows is None else arrivals[:, rows]).T, axis=1)


def best_rule(order_logs: np.ndarray, overhead: float, cutoff: float, objective: str = "step",
              rate: Optional[float] = None, weights: Optional[np.ndarray] = None,
              rows: Optional[np.ndarray] = None) -> Tuple[float, Optional[int], float, float]:
    """The best step-end rule "min(c, k-th arrival)" for predicted arrivals ``order_logs``
    [N, S] (order_statistics of the present workers' log samples), against the time-only
    rule at ``cutoff`` (the hot path's choice, k = N). Per sample, a rule yields
    count_s = min(k, #{n: x_sn <= c}) in duration_s = min(c, x_s(k)); ``step`` scores
    E[count] / (E[duration] + o), ``lambda`` E[count] - rate * (E[duration] + o): best_cutoff's
    objectives, of which these are the k = N case (``lambda`` without a rate scores as ``step``).
    ``weights`` [N, S]: each sample's probability (calibration.OrderCalibration; None: 1 / S).
    ``rows``: the arrivals (0-based, order_rows) the rows are, when thinned: each then counts
    for the arrivals since the previous row (a slight undercount, the same for the time-only
    rule and the quorums, so they compare on equal terms), and k is one of them.

    Candidates: every k < N, at M cutoffs log-spaced over the samples' range (M about
    QUORUM_PAIRS / N; the last one, the largest sample, is "no cutoff"). With
    F_j(c) = P(x_(j) <= c): E[count] = sum_{j <= k} F_j(c) and
    E[duration] = E[x_(j); x_(j) <= c] + c (1 - F_j(c)) at j = k, all from one histogram of
    the order statistics over the grid (its bins by arithmetic on the logs: no search).
    Returns (c, k, value, time-only value): k is None and c is ``cutoff`` unless some quorum
    scores better than the time-only rule; c is inf where it never binds.
    """
    L = order_logs
    N, S = L.shape
    x = np.exp(L)
    p = np.full(L.shape, 1.0 / S) if weights is None else np.asarray(weights, dtype=np.float64)
    stands_for = np.ones(N) if rows is None else np.diff(np.asarray(rows), prepend=-1)
    use_rate = objective == "lambda" and rate is not None

    def score(count, duration):
        return count - rate * (duration + overhead) if use_rate else count / (duration + overhead)

    cut = min(cutoff, float(x[-1, -1]))
    time_only = float(score(((p * (x <= cut)).sum(1) * stands_for).sum(),
                            (p[-1] * np.minimum(cut, x[-1])).sum()))
    lo, hi = float(L[0, 0]), float(L[-1, -1])
    if N < 2 or not hi > lo:
        return cutoff, None, time_only, time_only
    M = int(np.clip(QUORUM_PAIRS // N, *QUORUM_CUTOFFS))
    width = (hi - lo) / (M - 1)
    c = np.exp(lo + width * np.arange(M))
    c[-1] = float(x[-1, -1])  # exactly the largest sample: "no cutoff"
    at = np.clip(np.ceil((L - L.dtype.type(lo)) / L.dtype.type(width)), 0, M - 1).astype(np.intp)
    at += np.arange(0, N * M, M)[:, None]  # the bin of each sample of each order statistic
    at = at.ravel()
    below = np.bincount(at, p.ravel(), N * M).reshape(N, M).cumsum(1)          # F_j(c)
    mass = np.bincount(at, (p * x).ravel(), N * M).reshape(N, M).cumsum(1)    # E[x_(j); <= c]
    count = (below * stands_for[:, None]).cumsum(0)
    value = score(count, mass + c * (1.0 - below))                            # [k, c]
    k, j = np.unravel_index(int(np.argmax(value[:-1])), (N - 1, M))
    if not value[k, j] > time_only:
        return cutoff, None, time_only, time_only
    quorum = int(k) + 1 if rows is None else int(rows[k]) + 1
    return (math.inf if j == M - 1 else float(c[j])), quorum, float(value[k, j]), time_only


@torch.no_grad()
def hot_path(model: RunTimeModel, state: State, times: torch.Tensor, censored: torch.Tensor,
             noise: Noise, overhead: float, objective: str = "step",
             rate: Optional[float] = None, bins: Optional[int] = None,
             spread: float = 1.0) -> Tuple[float, State, torch.Tensor]:
    """One step of the predictor: filter (times [N] seconds, NaN absent; censored [N]),
    sample next step's times with ``noise``, return (cutoff, new state, samples [S, N]).
    ``bins``: the grid argmax (``best_cutoff_grid``, what the fast paths compute); None: exact.
    ``spread``: the online calibration's factor (``predictive_log_times``)."""
    state, _ = model.step(state, times.unsqueeze(0), censored.unsqueeze(0), score=False)
    log_samples = predictive_log_times(model, state, noise, spread)
    present = ~torch.isnan(times)
    kept = log_samples if bool(present.all()) else log_samples[:, present]
    if bins is None:
        c, _ = best_cutoff(torch.exp(kept), overhead, objective, rate)
    else:
        c, _ = best_cutoff_grid(kept, overhead, objective, rate, bins)
    return c, state, torch.exp(log_samples)


# predictive_trace's joint check: a worker over this many times the last step's median
# time is a straggler.
STRAGGLER = 1.5


@torch.no_grad()
def predictive_trace(model: RunTimeModel, times: np.ndarray, censored: Optional[np.ndarray] = None,
                     samples: int = 128, seed: int = 0, start: int = 1, calibrate: bool = True,
                     finetune: bool = False) -> dict:
    """One-step-ahead predictive checks along a trace [T, N] (seconds, NaN absent): for every
    step t >= 1 and worker n, the predictive log density of x_{t,n} given steps < t (a Monte
    Carlo average over S latent draws of the per-worker log-normal mixture), whether x_{t,n}
    fell in the central 50% and 90% predictive intervals, its PIT (the predictive probability
    below it), and the predictive mean.
    ``calibrate``: with the online spread calibration the predictive policy runs (from step 0,
    as live). ``finetune``: with the emission refits the predictive policy runs, on its
    schedule (model.finetune.EmissionWindow), seeded: the predictive the policy acts on.
    Returns arrays [T, N] (NaN before ``start`` and for absent or censored cells), and the
    spread factor per step.

    The joint check, per step [T] (NaN where not checked): a straggler is a worker slower than
    STRAGGLER times the previous step's median; ``p_no_straggler`` is the probability the
    predictive's joint draws give a step with none, ``no_straggler`` whether the step had none
    (checked only where every present worker was observed), ``mean_stragglers`` and
    ``stragglers`` the predicted and seen counts. The per-worker figures can all be right while
    these are not: the quorum rule depends on how slowdowns come together.
    ``p_no_straggler_learned`` is the same probability from the draws the joint choice uses,
    their dependence re-learned from the steps before (model/dependence.py); NaN until it has
    learned (dependence.MIN_HISTORY steps)."""
    from torch.distributions import Categorical, MixtureSameFamily, Normal

    from .calibration import SpreadCalibration, pit
    from .dependence import EmpiricalCopula, SlowdownGroups
    from .finetune import EmissionWindow, refit_emission

    T, N = times.shape
    censored = np.zeros((T, N), dtype=bool) if censored is None else censored
    g = torch.Generator().manual_seed(seed)
    state = model.initial_state(1, N)
    shape = (T, N)
    loglik, in50, in90, mean, pits = (np.full(shape, np.nan) for _ in range(5))
    p_none, none, predicted_count, count, p_none_learned = (np.full(T, np.nan) for _ in range(5))
    copula, groups = EmpiricalCopula(seed), SlowdownGroups(seed + 1)
    spreads = np.ones(T)
    calibration = SpreadCalibration() if calibrate else None
    pretrained, window = model, EmissionWindow(seed=seed) if finetune else None
    x_all = torch.as_tensor(times, dtype=torch.float32)
    c_all = torch.as_tensor(censored)
    for t in range(T):
        spread = calibration.spread if calibration is not None else 1.0
        spreads[t] = spread
        if t >= 1 and state.steps > 0:
            noise = Noise.draw(samples, N, model.D, g)
            draws = predictive_log_times(model, state, noise, spread)                 # [S, N]
            x = x_all[t]
            with np.errstate(divide="ignore", invalid="ignore"):
                last = np.log(times[t - 1])
            groups.observe(last, censored[t - 1])
            learned = groups.apply(copula.apply(last, censored[t - 1], draws.numpy()))
            if calibration is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    calibration.update(draws.numpy(), np.log(x.numpy()), c_all[t].numpy())
        if t >= max(start, 1) and state.steps > 0:
            em = model.emission(state.h[0], state.g[0])
            z_next = model.next_latent(state, noise.z, noise.transition)          # [S, D]
            loc = state.ref[0] + em.loc.unsqueeze(0) + (z_next @ em.load.T).unsqueeze(-1)  # [S, N, K]
            centre = _predictive_mean(state, em, z_next)                          # [N]
            mix = MixtureSameFamily(Categorical(logits=em.logits.unsqueeze(0).expand_as(loc),
                                                validate_args=False),
                                    Normal(loc, em.scale.unsqueeze(0).expand_as(loc), validate_args=False),
                                    validate_args=False)
            ok = ~torch.isnan(x) & ~c_all[t]
            v = torch.log(torch.where(ok, x, torch.ones_like(x)))
            # The calibrated density: v = m + f (L - m), so p(v) = p_L(m + (v - m) / f) / f.
            pre = (centre + (v - centre) / spread).unsqueeze(0)
            lp = mix.log_prob(pre) - math.log(spread) - v                            # density in seconds
            ll = torch.logsumexp(lp, 0) - np.log(samples)
            q = torch.quantile(draws, torch.tensor([0.05, 0.25, 0.75, 0.95]), dim=0)  # [4, N]
            okn = ok.numpy()
            loglik[t, okn] = ll.numpy()[okn]
            in50[t, okn] = ((v >= q[1]) & (v <= q[2])).numpy()[okn]
            in90[t, okn] = ((v >= q[0]) & (v <= q[3])).numpy()[okn]
            pits[t, okn] = pit(draws.numpy(), v.numpy())[okn]
            mean[t] = torch.exp(draws).mean(0).numpy()
            seen = ~torch.isnan(x)
            before = x_all[t - 1][~torch.isnan(x_all[t - 1])]
            if bool((ok == seen).all()) and bool(seen.any()) and before.numel():
                slow = math.log(STRAGGLER) + float(torch.log(before).median())
                drawn = (draws[:, seen] > slow).sum(1).double()            # [S]
                p_none[t] = float((drawn == 0).double().mean())
                if copula.ready:
                    p_none_learned[t] = float(((learned[:, seen.numpy()] > slow).sum(1) == 0).mean())
                predicted_count[t] = float(drawn.mean())
                count[t] = float((v[seen] > slow).sum())
                none[t] = float(count[t] == 0)
        if (~torch.isnan(x_all[t]) & ~c_all[t]).any():
            if window is not None:  # as Predictive._finetune: record, then refit when due
                window.add(state if state.steps > 0 else None, times[t], censored[t])
                if window.refit_due():
                    window.refit_started()
                    model = refit_emission(pretrained, window, seed=seed + t) or model
            state, _ = model.step(state, x_all[t:t + 1], c_all[t:t + 1], score=False)
    return {"loglik": loglik, "in50": in50, "in90": in90, "pit": pits, "mean": mean, "spread": spreads,
            "p_no_straggler": p_none, "no_straggler": none, "mean_stragglers": predicted_count,
            "stragglers": count, "p_no_straggler_learned": p_none_learned}
