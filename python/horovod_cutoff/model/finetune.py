"""Refitting the emission on the run's own recent steps (the optional fine-tuning of DESIGN
"The run-time model").

The pretrained model infers each run's dynamics in context, from its recurrent state. Where
pretraining did not teach it a run's habits (a regime family it never saw; a few workers whose
sticky slowdowns it only ever sees censored) the emission maps the right state to the wrong
distribution: on examples/train.py's trace at 4 workers the shipped weights predict that a
worker cut last step will most likely be fast again, when it stays slow 70% of the time.

Only the emission net is refit, to what the policy uses: the predictive distribution of the
next step. Its inputs, the filter's state before each step, are recorded as the filter runs
(``EmissionWindow``), so a refit is a feed-forward fit of the censored log-likelihood on a
table of rows, with the latent drawn as the predictive draws it (model.draw_latent), not a
replay of the recurrence: 0.3-0.5 s of one core, whatever N (rows are subsampled per
step). Fitting with the step's posterior latent instead, which has seen the step, teaches the
emission to lean on a latent the prediction does not have: measured, it lost 5-13% of
throughput on examples/train.py's trace where this form gains. Each refit
starts from the pretrained emission, so errors do not compound from one refit to the next.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Deque, Optional, Tuple

import numpy as np
import torch

from .network import RunTimeModel, State, censored_log_likelihood

FIRST = 100          # steps seen before the first refit
EVERY = 100          # steps between refits (the predictive's default ``finetune_every``)
WINDOW = 400         # steps a refit learns from (the most recent)
ROWS_PER_STEP = 16   # workers sampled from each step: the cost stays flat in N
ITERATIONS = 50      # Adam steps per refit (100, or 4096-row batches, gained nothing measurable)
LEARNING_RATE = 3e-3
BATCH_ROWS = 1024    # rows per Adam step (all of them when the window holds fewer)


class EmissionWindow:
    """The last ``window`` steps as emission-fit rows: (h_{t-1,n}, g_{t-1}, ref_{t-1}, the
    filter's latent z_{t-1} and its sd, x_{t,n}, censored_{t,n}) for up to ``rows_per_step``
    present workers n of each step; and the refit schedule both the policy and
    model.inference.predictive_trace follow: a refit once ``every`` steps have been offered
    since the last one (or since the start) and at least FIRST steps are held. (So the first
    refit comes at max(FIRST, every) steps: a very large ``every`` means no refit at all.)"""

    def __init__(self, window: int = WINDOW, rows_per_step: int = ROWS_PER_STEP, seed: int = 0,
                 every: int = EVERY):
        if int(window) < 1 or int(rows_per_step) < 1:
            raise ValueError(f"window and rows_per_step must be >= 1, got {window}, {rows_per_step}")
        self.rows_per_step, self.every = int(rows_per_step), int(every)
        self._steps: Deque[Tuple[np.ndarray, ...]] = deque(maxlen=int(window))
        self._rng = np.random.default_rng(seed)
        self._since_refit = 0  # steps offered since the last refit started

    def __len__(self) -> int:
        return len(self._steps)

    def refit_due(self) -> bool:
        return len(self) >= FIRST and self._since_refit >= self.every

    def refit_started(self) -> None:
        self._since_refit = 0

    def add(self, before: Optional[State], times: np.ndarray, censored: np.ndarray) -> None:
        """Offers one step's times with ``before``, the filter state its prediction came from
        (None: there was none, e.g. the first step); every offer counts toward the schedule."""
        self._since_refit += 1
        if before is None:
            return
        present = np.flatnonzero(~np.isnan(times))
        if present.size == 0 or not np.isfinite(float(before.ref[0])):
            return  # the first step (no reference yet) or nobody: nothing the emission predicted
        if present.size > self.rows_per_step:
            present = np.sort(self._rng.choice(present, self.rows_per_step, replace=False))
        h = before.h[0].detach().numpy()[present]
        latent = np.concatenate([before.z[0].detach().numpy(), before.z_sd[0].detach().numpy()])
        self._steps.append((h, before.g[0].detach().numpy().copy(), float(before.ref[0]), latent,
                            times[present].astype(np.float32), censored[present].copy()))

    def snapshot(self) -> "EmissionWindow":
        """A copy of the rows as they are now (for a refit on another thread)."""
        copy_ = EmissionWindow(self._steps.maxlen, self.rows_per_step, every=self.every)
        copy_._steps.extend(self._steps)  # rows are never modified once added
        return copy_

    def table(self) -> Tuple[torch.Tensor, ...]:
        """Every row as tensors: h [R, H], g [R, G], latent [R, 2D] (z_{t-1} then its sd),
        x normalised by exp(ref) [R], censored [R]."""
        counts = [s[0].shape[0] for s in self._steps]
        rep = lambda i: np.repeat(np.stack([s[i] for s in self._steps]), counts, axis=0)  # noqa: E731
        h = np.concatenate([s[0] for s in self._steps])
        ref = np.repeat(np.array([s[2] for s in self._steps]), counts)
        x = np.concatenate([s[4] for s in self._steps]) / np.exp(ref)
        c = np.concatenate([s[5] for s in self._steps])
        return (torch.from_numpy(h).float(), torch.from_numpy(rep(1)).float(),
                torch.from_numpy(rep(3)).float(), torch.from_numpy(x).float(), torch.from_numpy(c))


def emission_loss(model: RunTimeModel, h: torch.Tensor, g: torch.Tensor, latent: torch.Tensor,
                  x: torch.Tensor, censored: torch.Tensor,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mean negative censored log-likelihood of the rows under the model's predictive: one
    draw of the next latent per row, as the predictive draws it, then the emission."""
    z_prev, z_sd = latent.chunk(2, dim=-1)
    noise = torch.randn((2,) + z_prev.shape, generator=generator, dtype=z_prev.dtype)
    with torch.no_grad():  # only the emission is fit
        z = model.draw_latent(g, z_prev, z_sd, noise[0], noise[1])
    em = model.emission(h.unsqueeze(1), g)  # each row a cluster of one worker: [R, 1, ...]
    shift = (em.load * z.unsqueeze(1)).sum(-1, keepdim=True)
    return -censored_log_likelihood(em.logits, em.loc + shift, em.scale, x.unsqueeze(1),
                                    censored.unsqueeze(1)).mean()


def refit_emission(pretrained: RunTimeModel, window: EmissionWindow,
                   iterations: Optional[int] = None, lr: float = LEARNING_RATE, seed: int = 0,
                   batch_rows: Optional[int] = None) -> Optional[RunTimeModel]:
    """A copy of ``pretrained`` whose emission net is refit on ``window``'s rows; None when the
    window is empty or the fit does not stay finite (the caller keeps its weights)."""
    if len(window) == 0:
        return None
    with torch.enable_grad():  # callers may filter under no_grad (model.inference.predictive_trace)
        return _fit(pretrained, window, iterations, lr, seed, batch_rows)


def _fit(pretrained: RunTimeModel, window: EmissionWindow, iterations: Optional[int], lr: float,
         seed: int, batch_rows: Optional[int]) -> Optional[RunTimeModel]:
    h, g, latent, x, c = window.table()
    model = copy.deepcopy(pretrained)
    params = list(model.emission_net.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rows, batch = h.shape[0], batch_rows or BATCH_ROWS
    for _ in range(ITERATIONS if iterations is None else int(iterations)):
        idx = torch.randperm(rows, generator=generator)[:batch] if rows > batch else slice(None)
        loss = emission_loss(model, h[idx], g[idx], latent[idx], x[idx], c[idx], generator)
        if not torch.isfinite(loss):
            return None
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model
