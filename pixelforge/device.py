"""Device selection: CUDA when present, else CPU (or what the user names); under torchrun, each
process's own GPU (LOCAL_RANK)."""

from __future__ import annotations

import os

import torch


def _local_gpu() -> torch.device:
    """'cuda', or 'cuda:LOCAL_RANK' in a process torchrun started (one GPU per process on each machine)."""
    local_rank = os.environ.get("LOCAL_RANK", "")
    if local_rank.isdigit() and int(local_rank) < torch.cuda.device_count():
        return torch.device("cuda", int(local_rank))
    return torch.device("cuda")


def pick_device(name: str | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps if available, else cpu; otherwise the named device, checked.
    'auto' and 'cuda' (without an index) mean GPU LOCAL_RANK in a process torchrun started."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return _local_gpu()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is None:
        return _local_gpu()
    return dev
