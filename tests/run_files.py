"""What tests read of a run through the command line and its folder: a command's output, the logged losses and
the last checkpoint's tensors."""

from __future__ import annotations

import contextlib
import csv
import io

import torch

from pixelforge.cli import main
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint


def cli(*args) -> str:
    """stdout of `pixelforge ARGS`, which must exit with 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 0, out.getvalue()
    return out.getvalue()


def run_losses(run_dir) -> list[str]:
    """The loss column of a run's metrics.csv, as written."""
    return [r["loss"] for r in csv.DictReader((run_dir / "metrics.csv").open())]


def checkpoint_tensors(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of a run's last checkpoint, named "part/name" (model/..., ema/..., optimiser states)."""
    parts, _ = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return {f"{part}/{name}": t for part, tensors in parts.items() for name, t in tensors.items()}
