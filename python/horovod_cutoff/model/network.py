"""The run-time model: a deep generative dynamical model of the N worker times of each step.

Generative story, per step t (every worker shares the same weights, so one model serves any
N; inputs are log times minus a running reference ``ref`` of log times, so it serves any
time scale):

    z_t ~ Normal(prior(g_{t-1}, z_{t-1}))                 global latent, learned transition
    log x_{t,n} - ref_{t-1} ~ Mixture_k Normal(loc_{n,k} + load_n . z_t, scale_{n,k})
                              with (logits, loc, scale, load)_n = emission(h_{t-1,n}, g_{t-1})
    h_{t,n} = GRU_worker([features(x_{t,n}), z_t, g_{t-1}], h_{t-1,n})   one cell, shared weights
    g_t     = GRU_global([pooled worker embeddings, pooled statistics, z_t], g_{t-1})

The amortised posterior q(z_t | g_{t-1}, z_{t-1}, pooled features of x_t) is trained with
the prior by maximising the ELBO. A cut worker's time is censored: its likelihood is the
survival term log P(x > c) from a torch.distributions cdf, never an imputed value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.distributions import (
    Categorical,
    ExpTransform,
    MixtureSameFamily,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

Y_CLAMP = 6.0      # normalised log times beyond +-6 (x400) carry no more information
MIN_SCALE = 0.005  # log-space floor of a component's sd
REF_RATE = 0.1     # how fast the running reference of log times follows the step median
MIN_SURVIVAL = 1e-300  # the survival term's floor (double precision), only hit by absurd states


def _mlp(inputs: int, outputs: int, width: int = 48) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.ELU(), nn.Linear(width, outputs))


@dataclass
class State:
    """The filter's state for B independent clusters of N workers."""

    h: torch.Tensor    # [B, N, H] per-worker recurrent state
    g: torch.Tensor    # [B, G] global recurrent state
    z: torch.Tensor    # [B, D] the last global latent (posterior mean when filtering)
    z_sd: torch.Tensor  # [B, D] its posterior sd (for predictive sampling)
    ref: torch.Tensor  # [B] running reference of log seconds; NaN before the first step
    steps: int = 0


@dataclass
class Emission:
    """Per-worker parameters of the next step's log-time mixture (before the latent shift)."""

    logits: torch.Tensor  # [..., N, K]
    loc: torch.Tensor     # [..., N, K] normalised log seconds
    scale: torch.Tensor   # [..., N, K]
    load: torch.Tensor    # [..., N, D] loading of each worker on the global latent


def log_time_mixture(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> MixtureSameFamily:
    """The distribution of log x: a mixture of Normals (so x is a log-normal mixture)."""
    return MixtureSameFamily(Categorical(logits=logits, validate_args=False),
                             Normal(loc, scale, validate_args=False), validate_args=False)


def time_distribution(logits: torch.Tensor, loc: torch.Tensor,
                      scale: torch.Tensor) -> TransformedDistribution:
    """The distribution of x in seconds: exp of the log-time mixture (a log-normal mixture)."""
    return TransformedDistribution(log_time_mixture(logits, loc, scale), [ExpTransform()],
                                   validate_args=False)


def censored_log_likelihood(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                            times: torch.Tensor, censored: torch.Tensor) -> torch.Tensor:
    """Per-element log-likelihood of ``times`` (seconds) under the log-normal mixture:
    log f(x) where observed, log P(X > c) = log(1 - F(c)) where censored at c.

    Both come from torch.distributions objects: ``log_prob`` of the exp-transformed mixture
    and the ``cdf`` of the mirrored log-time mixture (P(log X > v) = P(-log X < -v)), in
    double precision so the tail of the survival term keeps its accuracy. NaN times give NaN.
    """
    safe = torch.where(torch.isnan(times), torch.ones_like(times), times).clamp_min(1e-30)
    observed = time_distribution(logits, loc, scale).log_prob(safe)
    mirror = log_time_mixture(logits.double(), -loc.double(), scale.double())
    survival = mirror.cdf(-torch.log(safe.double())).clamp_min(MIN_SURVIVAL)
    out = torch.where(censored, torch.log(survival).to(observed.dtype), observed)
    return torch.where(torch.isnan(times), torch.full_like(out, float("nan")), out)


class RunTimeModel(nn.Module):
    """One set of weights for any number of workers and any time scale (see module docs)."""

    FEATURES = 3  # normalised log time (0 if absent), censored flag, present flag
    STATS = 3     # pooled: mean normalised log time, fraction censored, fraction present

    def __init__(self, hidden: int = 24, global_hidden: int = 24, latent: int = 4,
                 components: int = 3, embed: int = 24):
        super().__init__()
        self.hparams = dict(hidden=hidden, global_hidden=global_hidden, latent=latent,
                            components=components, embed=embed)
        f, s = self.FEATURES, self.STATS
        self.H, self.G, self.D, self.K = hidden, global_hidden, latent, components
        self.worker_embed = _mlp(f + hidden, embed)
        self.worker_cell = nn.GRUCell(f + latent + global_hidden, hidden)
        self.global_cell = nn.GRUCell(embed + s + latent, global_hidden)
        self.prior_net = _mlp(global_hidden + latent, 2 * latent)
        self.posterior_net = _mlp(global_hidden + latent + embed + s, 2 * latent)
        self.emission_net = _mlp(hidden + global_hidden, 3 * components + latent)

    # ----- state -------------------------------------------------------------------------
    def initial_state(self, batch: int, workers: int) -> State:
        p = next(self.parameters())
        zeros = lambda *shape: torch.zeros(*shape, dtype=p.dtype)  # noqa: E731
        return State(zeros(batch, workers, self.H), zeros(batch, self.G), zeros(batch, self.D),
                     torch.ones(batch, self.D, dtype=p.dtype),
                     torch.full((batch,), float("nan"), dtype=p.dtype))

    # ----- pieces --------------------------------------------------------------------------
    def _gaussian(self, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mu, raw = out.chunk(2, dim=-1)
        return mu, nn.functional.softplus(raw) + 1e-3

    def prior(self, g: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The learned nonlinear transition p(z_t | g_{t-1}, z_{t-1})."""
        return self._gaussian(self.prior_net(torch.cat([g, z], -1)))

    def emission(self, h: torch.Tensor, g: torch.Tensor) -> Emission:
        """Next step's per-worker mixture parameters from the states (h [..., N, H], g [..., G])."""
        g = g.unsqueeze(-2).expand(*h.shape[:-1], g.shape[-1])
        out = self.emission_net(torch.cat([h, g], -1))
        K = self.K
        logits, loc, raw, load = out.split([K, K, K, self.D], dim=-1)
        return Emission(logits, loc, nn.functional.softplus(raw) + MIN_SCALE, load)

    def _features(self, times: torch.Tensor, censored: torch.Tensor, ref: torch.Tensor):
        """Normalised inputs of one observation; also the step's median log time."""
        present = ~torch.isnan(times)
        v = torch.log(torch.where(present, times, torch.ones_like(times)).clamp_min(1e-30))
        v_nan = torch.where(present, v, torch.full_like(v, float("nan")))
        median = torch.nanmedian(v_nan, dim=-1).values  # NaN where nobody is present
        ref = torch.where(torch.isnan(ref), median, ref)
        y = torch.where(present, (v - ref.unsqueeze(-1)).clamp(-Y_CLAMP, Y_CLAMP), torch.zeros_like(v))
        pf = present.to(v.dtype)
        cf = (censored & present).to(v.dtype)
        feats = torch.stack([y, cf, pf], -1)
        count = pf.sum(-1).clamp_min(1.0)
        stats = torch.stack([(y * pf).sum(-1) / count, cf.sum(-1) / count, pf.mean(-1)], -1)
        return feats, stats, present, ref, median

    def step(self, state: State, times: torch.Tensor, censored: torch.Tensor,
             sample: bool = False, generator: Optional[torch.Generator] = None,
             score: bool = True) -> Tuple[State, Dict[str, torch.Tensor]]:
        """Filters one observation (times [B, N] seconds, NaN absent; censored [B, N] bool).

        Returns the new state and, per cluster, the step's log-likelihood (sum over present
        workers, survival term for cut ones) under the emission with the posterior latent,
        and the KL of posterior from prior. ``sample`` draws the latent (training); otherwise
        the posterior mean is used (filtering). ``score=False`` skips the likelihood and KL
        (filtering only needs the new state).
        """
        first = torch.isnan(state.ref)
        feats, stats, present, ref_prev, median = self._features(times, censored, state.ref)
        e = self.worker_embed(torch.cat([feats, state.h], -1))
        pf = feats[..., 2:3]
        pooled = (e * pf).sum(-2) / pf.sum(-2).clamp_min(1.0)
        q_mu, q_sd = self._gaussian(self.posterior_net(torch.cat([state.g, state.z, pooled, stats], -1)))
        if sample:
            noise = torch.randn(q_mu.shape, generator=generator, dtype=q_mu.dtype)
            z = q_mu + q_sd * noise
        else:
            z = q_mu
        out: Dict[str, torch.Tensor] = {}
        if score:
            p_mu, p_sd = self.prior(state.g, state.z)
            em = self.emission(state.h, state.g)
            shift = (em.load * z.unsqueeze(-2)).sum(-1, keepdim=True)
            x_norm = torch.exp(torch.log(torch.where(present, times, torch.ones_like(times)).clamp_min(1e-30))
                               - ref_prev.unsqueeze(-1))
            x_norm = torch.where(present, x_norm, torch.full_like(x_norm, float("nan")))
            ll = censored_log_likelihood(em.logits, em.loc + shift, em.scale, x_norm, censored & present)
            ll = torch.where(present, ll, torch.zeros_like(ll)).sum(-1)
            kl = kl_divergence(Normal(q_mu, q_sd, validate_args=False),
                               Normal(p_mu, p_sd, validate_args=False)).sum(-1)
            valid = ~first & present.any(-1)
            ll = torch.where(valid, ll, torch.zeros_like(ll))
            kl = torch.where(valid, kl, torch.zeros_like(kl))
            out = {"loglik": ll, "kl": kl, "workers": (present & valid.unsqueeze(-1)).sum(-1)}
        # Recurrent updates: absent workers keep their state.
        g_in = state.g.unsqueeze(-2).expand(*state.h.shape[:-1], self.G)
        z_in = z.unsqueeze(-2).expand(*state.h.shape[:-1], self.D)
        cell_in = torch.cat([feats, z_in, g_in], -1)
        B, N = times.shape
        h_new = self.worker_cell(cell_in.reshape(B * N, -1), state.h.reshape(B * N, -1)).reshape(B, N, -1)
        h = torch.where(present.unsqueeze(-1), h_new, state.h)
        g = self.global_cell(torch.cat([pooled, stats, z], -1), state.g)
        ref = torch.where(torch.isnan(median), ref_prev, ref_prev + REF_RATE * (median - ref_prev))
        new = State(h, g, z, q_sd, ref, state.steps + 1)
        return new, out

    def elbo(self, times: torch.Tensor, censored: torch.Tensor, generator: Optional[torch.Generator] = None,
             sample: bool = True) -> Dict[str, torch.Tensor]:
        """The ELBO of sequences times [B, T, N] (seconds, NaN absent) with censored [B, T, N]:
        sums over steps of log-likelihood minus KL, per cluster, plus worker-step counts."""
        B, T, N = times.shape
        state = self.initial_state(B, N)
        ll = torch.zeros(B, dtype=times.dtype)
        kl = torch.zeros(B, dtype=times.dtype)
        count = torch.zeros(B, dtype=times.dtype)
        for t in range(T):
            state, out = self.step(state, times[:, t], censored[:, t], sample=sample, generator=generator)
            ll, kl, count = ll + out["loglik"], kl + out["kl"], count + out["workers"]
        return {"elbo": ll - kl, "loglik": ll, "kl": kl, "workers": count}

    # ----- prediction ----------------------------------------------------------------------
    def next_latent(self, state: State, z_noise: torch.Tensor,
                    transition_noise: torch.Tensor) -> torch.Tensor:
        """S samples of next step's latent for a single cluster (state batch 1):
        z_t ~ q (mean, sd kept by the filter), then z_{t+1} ~ prior(g_t, z_t). Noise [S, D]."""
        g = state.g[0].expand(z_noise.shape[0], -1)
        return self.draw_latent(g, state.z[0], state.z_sd[0], z_noise, transition_noise)

    def draw_latent(self, g: torch.Tensor, z: torch.Tensor, z_sd: torch.Tensor,
                    z_noise: torch.Tensor, transition_noise: torch.Tensor) -> torch.Tensor:
        """The next latent as the predictive draws it, for any leading shape: z_t = z + z_sd *
        z_noise from the filter's posterior, then z_{t+1} ~ prior(g, z_t)."""
        mu, sd = self.prior(g, z + z_sd * z_noise)
        return mu + sd * transition_noise
