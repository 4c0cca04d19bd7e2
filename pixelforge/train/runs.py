"""Moved to pixelforge.runs.store (loading a run needs it, not the training loop); kept for older imports."""

from ..runs.store import (
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

__all__ = ["BUNDLED_MODELS_DIR", "DEFAULT_MODEL", "bundled_models", "check_run_name", "default_runs_dir", "export_run",
           "load_weights", "resolve_run", "weights_file", "weights_hash", "weights_shapes"]
