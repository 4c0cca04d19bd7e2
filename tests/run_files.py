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


def assert_holds_ae32(run_dir) -> None:
    """A latent run's config names the bundled autoencoder ae-32 (4x8x8 latents) and its last checkpoint's EMA
    weights hold ae-32's network tensor for tensor."""
    from pixelforge.runs import BUNDLED_MODELS_DIR, RunConfig, load_weights

    model = RunConfig.load(run_dir / "config.json").model_config()
    assert model.latent == str((BUNDLED_MODELS_DIR / "ae-32").resolve()) and model.net_shape == (4, 8, 8)
    tensors = checkpoint_tensors(run_dir)
    for name, t in load_weights(BUNDLED_MODELS_DIR / "ae-32").items():
        if name.startswith("net."):
            assert torch.equal(tensors[f"ema/autoencoder.{name[4:]}"], t), name
