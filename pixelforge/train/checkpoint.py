"""Moved to pixelforge.runs.checkpoint (loading a run needs it, not the training loop); kept for older imports."""

from ..runs.checkpoint import (
    FORMAT_VERSION,
    atomic_save_tensors,
    atomic_write_text,
    check_shapes,
    file_hash,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    load_state,
    read_tensors,
    save_checkpoint,
    state_shapes,
    tensor_shapes,
    unflatten_state,
)

__all__ = ["FORMAT_VERSION", "atomic_save_tensors", "atomic_write_text", "check_shapes", "file_hash", "flatten_state",
           "list_checkpoints", "load_checkpoint", "load_state", "read_tensors", "save_checkpoint", "state_shapes",
           "tensor_shapes", "unflatten_state"]
