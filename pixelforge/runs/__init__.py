"""Runs on disk, below the API and the training loop: the run config (config.py), checkpoint files
(checkpoint.py), finding runs and reading their weights (store.py) and the model a config describes.
Loading a model for sampling (the API, export, the server) needs only this, never `pixelforge.train`."""

from .checkpoint import check_shapes, file_hash, list_checkpoints, load_checkpoint, load_state, read_tensors, state_shapes
from .config import RUN_FORMAT_VERSION, RunConfig, TrainConfig, build_model, new_run_config
from .store import (
    BUNDLED_MODELS_DIR,
    DEFAULT_MODEL,
    bundled_models,
    check_run_name,
    default_runs_dir,
    export_run,
    load_weights,
    resolve_run,
    weights_file,
    weights_hash,
    weights_shapes,
)

__all__ = [
    "BUNDLED_MODELS_DIR", "DEFAULT_MODEL", "RUN_FORMAT_VERSION", "RunConfig", "TrainConfig", "build_model",
    "bundled_models", "check_run_name", "check_shapes", "default_runs_dir", "export_run", "file_hash",
    "list_checkpoints", "load_checkpoint", "load_state", "load_weights", "new_run_config", "read_tensors",
    "resolve_run", "state_shapes", "weights_file", "weights_hash", "weights_shapes",
]
