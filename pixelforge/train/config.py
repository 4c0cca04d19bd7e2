"""Moved to pixelforge.runs.config (loading a run needs it, not the training loop); kept for older imports."""

from ..runs.config import RUN_FORMAT_VERSION, RunConfig, TrainConfig, build_model, new_run_config

__all__ = ["RUN_FORMAT_VERSION", "RunConfig", "TrainConfig", "build_model", "new_run_config"]
