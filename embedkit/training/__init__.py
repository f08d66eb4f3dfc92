"""Training: :func:`fit` (the loop), gradient caching, and TOML recipes that run it."""

from embedkit.training.fit import FitResult, FitSettings, fit
from embedkit.training.recipe import RunConfig, load_config, run_training

__all__ = ["FitResult", "FitSettings", "RunConfig", "fit", "load_config", "run_training"]
