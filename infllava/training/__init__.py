"""Training: LLaVA data and labels, typed config, stages, the loop, checkpoints."""

from .config import ConfigError, RunConfig, load_config
from .trainer import train

__all__ = ["ConfigError", "RunConfig", "load_config", "train"]
