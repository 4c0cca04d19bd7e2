"""Training: run config, the generic loop, checkpoints and run folders."""

from .config import RunConfig, TrainConfig
from .loop import TrainResult, build_model, train

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "build_model", "train"]
