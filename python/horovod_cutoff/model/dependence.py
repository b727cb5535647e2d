"""The dependence between workers in a prediction's joint draws, learned online from the run's
own steps, for the joint (cutoff, quorum) choice (policies/quorum.py).

The run-time model draws each worker's time independently given one cluster-wide latent. Its
marginals are calibrated (calibration.py), but where slowdowns come in groups its joint draws
are wrong where the quorum looks: on the rack scenario (racks of 8 share slowdowns) it gives a
step with no straggler 8.5% where 45% are seen (bench FIDELITY's joint check), so the quorum
there was chosen too low and lost to the time-only cutoff. Two corrections, applied in turn,
each keeping every worker's predictive marginal:

- ``EmpiricalCopula`` (the "Schaake shuffle": Clark et al. 2004, "The Schaake shuffle: a method
  for reconstructing space-time variability in forecasted precipitation fields"): each step
  leaves a vector of the PITs of its observed times under the prediction made for it; the
  next prediction's samples are re-drawn as each worker's own predictive quantiles at the
  levels of a recent step's PIT vector, so the draws move together as the workers' surprises
  did.
- ``SlowdownGroups``: workers that become stragglers in the same steps (a rack, a switch) are
  found from the run's history (connected components of "their lasting slowdowns began
  together at least twice, and their straggler indicators correlate"), and in each sample a
  group's members share one member's mode, straggler or not, each keeping its own draw
  within that mode. A group then enters and leaves a slowdown together, as it does, instead
  of member by member.

Until MIN_HISTORY steps are seen both pass the draws through (and the quorum waits). On the
rack scenario (64 workers, 2000 steps, o = 0.02 s, arrivals, `bench P5A`) they take
predictive from 0.968 to 0.972 of the oracle after 100 steps, 0.965 to 0.971 from step 0
(trace seeds 1 and 2 alike: +0.004 to +0.005); on the other shipped scenarios they move it by
-0.0004 to +0.0011. They cost the joint choice about 0.4 ms a step at N=64, S=256 and 1.2 ms
at N=1024, S=64 (`bench QUORUM`). The joint check (`bench FIDELITY`) reports the joint they
give beside the model's.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .inference import STRAGGLER

HISTORY = 256       # steps of PIT vectors (copula) and straggler indicators (groups) kept
MIN_HISTORY = 32    # steps seen before either correction applies (the quorum waits for it)
REGROUP_EVERY = 16  # steps between two groupings (a correlation over the history)
GROUP_CORRELATION = 0.5  # two workers' straggler indicators correlated above this, and
GROUP_ONSETS = 2         # as many steps where both became stragglers at once: one group
MEDIAN_DRAWS = 1024  # samples the groups' straggler threshold is taken from


class _LastRows:
    """The last ``keep`` rows of N values added, in a ring (in no particular order: both users
    treat them as a set), reset when N changes."""

    def __init__(self, keep: int, dtype=np.float64):
        self.keep, self.dtype = int(keep), dtype
        self._rows, self._added = np.zeros((self.keep, 0), dtype=dtype), 0

    def add(self, row: np.ndarray) -> None:
        if row.size != self._rows.shape[1]:
            self.reset(row.size)
        self._rows[self._added % self.keep] = row
        self._added += 1

    def reset(self, width: int) -> None:
        self._rows, self._added = np.zeros((self.keep, width), dtype=self.dtype), 0

    @property
    def rows(self) -> np.ndarray:
        return self._rows[:min(self._added, self.keep)]


class EmpiricalCopula:
    """The joint of the next draws from the PIT vectors of the last HISTORY observed steps."""

    def __init__(self, seed: int = 0, history: int = HISTORY, min_history: int = MIN_HISTORY):
        self.history, self.min_history = int(history), int(min_history)
        self.rng = np.random.default_rng(seed)
        self._pits = _LastRows(self.history, np.float32)
        self._last: Optional[np.ndarray] = None  # [S, N] the last prediction's log samples

    @property
    def ready(self) -> bool:
        """Whether apply() re-draws the joint (MIN_HISTORY steps seen), or passes it through."""
        return self._pits.rows.shape[0] >= self.min_history

    def apply(self, log_times: np.ndarray, censored: np.ndarray, log_samples: np.ndarray) -> np.ndarray:
        """Records where the step just observed (``log_times`` [N], NaN for an absent worker;
        ``censored``: known only to exceed the time given) fell in the last prediction, then
        returns the next prediction's ``log_samples`` [S, N] with their joint re-drawn (the
        same array, until MIN_HISTORY steps are known)."""
        last, self._last = self._last, log_samples
        S, N = log_samples.shape
        if last is None or last.shape != log_samples.shape:
            self._pits.reset(N)
            return log_samples
        self._pits.add(self._pit(last, log_times, censored))
        pits = self._pits.rows
        if pits.shape[0] < self.min_history:
            return log_samples
        # Each past step's vector as evenly as S allows (all of them once where S = HISTORY),
        # the rest at random: less noise than S draws with replacement.
        kept = pits.shape[0]
        every = np.tile(np.arange(kept), S // kept)
        levels = pits[np.concatenate([every, self.rng.choice(kept, S - every.size, replace=False)])]
        # Sample s of worker n: its own draw of rank floor(S u_sn). In int32 on the transposed
        # (contiguous) sort: 4x faster at N=1024 than int64 and take_along_axis.
        rank = (levels * S).astype(np.int32)
        np.minimum(rank, S - 1, out=rank)
        rank += np.arange(N, dtype=np.int32) * S
        return np.sort(np.ascontiguousarray(log_samples.T), axis=1).reshape(-1).take(rank)

    def _pit(self, samples: np.ndarray, log_times: np.ndarray, censored: np.ndarray) -> np.ndarray:
        """[N] the PIT of each observed time under its samples: with b of the S below it, the
        middle of the b-th of S + 1 equal bins (under calibration b is uniform on 0..S, so
        every level then maps to each of the next draws alike; (b + 0.5) / S put the top two
        ranks on the largest draw, twice its share, and added stragglers: on heavy_tail a step
        without one fell from 25% to 13%). A censored time's PIT is uniform above that of its
        bound, an absent worker's uniform."""
        S, N = samples.shape
        u = (np.count_nonzero(samples < log_times, axis=0) + 0.5) / (S + 1)
        if censored.any():
            u = np.where(censored, u + (1.0 - u) * self.rng.random(N), u)
        absent = np.isnan(log_times)
        return np.where(absent, self.rng.random(N), u) if absent.any() else u


class SlowdownGroups:
    """Groups of workers that straggle together, and a sample's members sharing one mode."""

    def __init__(self, seed: int = 0, history: int = HISTORY, min_history: int = MIN_HISTORY,
                 every: int = REGROUP_EVERY, correlation: float = GROUP_CORRELATION):
        self.history, self.min_history, self.every = int(history), int(min_history), int(every)
        self.correlation = float(correlation)
        self.rng = np.random.default_rng(seed)
        self._stragglers = _LastRows(self.history, bool)  # the history's indicators
        self._onsets = _LastRows(self.history, bool)      # ... where a lasting one began
        self._late: Optional[np.ndarray] = None  # [2, N] the last two steps' indicators
        self._steps = 0
        self.labels: Optional[np.ndarray] = None  # [N] each worker's group
        self._layout: Optional[tuple] = None  # the groups of 2 or more, as apply() indexes them

    def observe(self, log_times: np.ndarray, censored: np.ndarray) -> None:
        """One step's straggler indicators: over STRAGGLER times its median, or cut."""
        if self.labels is not None and self.labels.size != log_times.size:
            self.labels, self._layout = None, None
        with np.errstate(invalid="ignore"):
            late = (log_times > math.log(STRAGGLER) + np.nanmedian(log_times)) | censored
        if self._late is None or self._late.shape[1] != late.size:
            self._late = np.ones((2, late.size), dtype=bool)  # no onset on the first steps
        # An onset: late in this step and the last, not in the one before. A slowdown lasts
        # (a rack's: 5 steps on average); a routine cut of a healthy worker, at random, does
        # not, and counted alone it gave chance pairs at N=1024.
        self._stragglers.add(late)
        self._onsets.add(late & self._late[1] & ~self._late[0])
        self._late = np.stack([self._late[1], late])
        self._steps += 1
        seen = self._stragglers.rows
        if seen.shape[0] >= self.min_history and (self.labels is None or self._steps % self.every == 0):
            self.labels = self.group(seen, self._onsets.rows, self.correlation)
            self._layout = _layout(self.labels)

    @staticmethod
    def group(stragglers: np.ndarray, onsets: np.ndarray, correlation: float = GROUP_CORRELATION,
              common_onsets: int = GROUP_ONSETS) -> np.ndarray:
        """[N] group labels from indicators [steps, N] (``onsets``: became one that step):
        the connected components of "became stragglers together in ``common_onsets`` steps or
        more, and correlated above ``correlation``". Slowing down in the same step is what a
        rack does; the correlation alone also links workers whose slow spells overlapped by
        chance (a rare event's correlation is noisy: up to 0.52 on the Markov scenario).
        Onsets are rare, so the pairs with common ones come from a sparse product and only
        those get a correlation: the cost follows the stragglers, not N^2."""
        N = stragglers.shape[1]
        labels = np.arange(N)
        candidates = np.flatnonzero(onsets.sum(0) >= common_onsets)
        if candidates.size < 2:
            return labels
        started = sparse.csr_matrix(onsets[:, candidates], dtype=np.float32)
        common = sparse.triu((started.T @ started).tocsr(), k=1).tocoo()
        pair = common.data >= common_onsets
        i, j = common.row[pair], common.col[pair]
        if i.size == 0:
            return labels
        late = stragglers[:, candidates]
        steps = late.shape[0]
        count = late.sum(0).astype(np.float64)
        both = np.count_nonzero(late[:, i] & late[:, j], axis=0)
        spread = count * (steps - count)
        r = (both * steps - count[i] * count[j]) / np.sqrt(np.maximum(spread[i] * spread[j], 1e-12))
        linked = r > correlation
        graph = sparse.coo_matrix((np.ones(int(linked.sum())), (i[linked], j[linked])),
                                  shape=(candidates.size,) * 2)
        _, components = connected_components(graph, directed=False)
        labels[candidates] = N + components  # apart from the singletons' own labels
        return labels

    def apply(self, log_samples: np.ndarray) -> np.ndarray:
        """``log_samples`` [S, N] with each group's members sharing, per sample, the mode
        (straggler or not: over STRAGGLER times the samples' median) of one member drawn at
        random: a member of the other mode takes one of its own draws of that mode at random
        (it keeps its own where it has none). Only the grouped workers' columns are touched."""
        if self._layout is None or self.labels.size != log_samples.shape[1]:
            return log_samples
        grouped, local, by_group, first, members = self._layout
        S = log_samples.shape[0]
        # The threshold from at most MEDIAN_DRAWS of the samples (a median within about
        # 1/sqrt(that) in probability): the full one took half of this method's time at N=1024.
        flat = log_samples.reshape(-1)
        threshold = math.log(STRAGGLER) + float(np.nanmedian(flat[::max(1, flat.size // MEDIAN_DRAWS)]))
        # Grouped workers' draws as rows [G, S] (contiguous: sorts and takes 3x faster), int32
        # indices (float to int64 has no fast conversion on AVX2).
        own = log_samples.T[grouped]
        was_late = own > threshold
        n_late = was_late.sum(1, dtype=np.int32)[:, None]
        n_fast = S - n_late - np.isnan(own).sum(1, dtype=np.int32)[:, None]  # NaN: absent
        along = np.arange(S, dtype=np.int32)
        # A random member of each group per sample: members are listed group by group, so
        # by_group[first + floor(U * members)].
        pick = by_group[first[:, None] + (self.rng.random((members.size, S), dtype=np.float32)
                                          * members[:, None]).astype(np.int32)]
        want = was_late.reshape(-1).take(pick * S + along)[local]
        # A sorted row has its fast draws first, then the late ones, then the NaN.
        u = self.rng.random(want.shape, dtype=np.float32)
        rank = np.where(want, n_fast + u * n_late, u * n_fast).astype(np.int32)
        np.minimum(rank, S - 1, out=rank)
        rank += np.arange(grouped.size, dtype=np.int32)[:, None] * S
        redrawn = np.sort(own, axis=1).reshape(-1).take(rank)
        swap = (was_late != want) & np.where(want, n_late > 0, n_fast > 0)
        out = np.array(log_samples, copy=True)
        out[:, grouped] = np.where(swap, redrawn, own).T
        return out


def _layout(labels: np.ndarray) -> Optional[tuple]:
    """For labels [N]: the workers in groups of 2 or more (``grouped``, G of them), each one's
    group (``local``, 0..M-1), the positions 0..G-1 listed group by group (``by_group``), where
    each group starts in that list (``first``) and its size (``members``); None if no group."""
    _, group, size = np.unique(labels, return_inverse=True, return_counts=True)
    grouped = np.flatnonzero(size[group] > 1)
    if grouped.size == 0:
        return None
    _, local, members = np.unique(group[grouped], return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(members)[:-1]]).astype(np.int32)
    return grouped, local, np.argsort(local, kind="stable").astype(np.int32), first, members.astype(np.int32)
