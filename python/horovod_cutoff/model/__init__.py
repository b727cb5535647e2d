"""The learned run-time model behind the "predictive" policy: network (generative model and
censored ELBO), inference (the reference hot path), train (pretraining), weights (shipped
default weights and loading)."""

from .inference import Noise, best_cutoff, best_cutoff_grid, hot_path, predictive_log_times
from .network import RunTimeModel, State, censored_log_likelihood, time_distribution
from .weights import DEFAULT_WEIGHTS, load_model, save_model, weights_hash

__all__ = ["RunTimeModel", "State", "censored_log_likelihood", "time_distribution", "Noise",
           "best_cutoff", "best_cutoff_grid", "hot_path", "predictive_log_times", "DEFAULT_WEIGHTS",
           "load_model", "save_model", "weights_hash"]
