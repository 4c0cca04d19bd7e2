"""What every family implements the same way: its device, its training random stream and (unless it
owns several) one Adam over all its parameters. docs/design.md describes the whole contract."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .optim import DEFAULT_BETAS, make_adam, training_stream


class NetworkCall(NamedTuple):
    """The one network call of a family's sampling that compress/ can export or run in another precision:
    the method's name, the names of its tensor arguments (each (B, ...)) before a last `cond` argument,
    and the submodules it runs (their weights are those of the exported graph)."""

    method: str
    args: tuple[str, ...]
    modules: tuple[str, ...]


class FamilyModule(nn.Module):
    """Base of the family classes. `seed` seeds the training random stream (see training_stream);
    a family that owns several optimisers, or shares another model's stream, overrides
    `optimizers` or `train_generator`. `default_betas`: Adam's betas where the run's OptimConfig
    leaves them unset."""

    default_betas: tuple[float, float] = DEFAULT_BETAS
    network_call: NetworkCall | None = None  # None: nothing of the family can be exported yet

    @staticmethod
    def upgrade_config(run: dict) -> dict:
        """A run config dict (config.json) as this version reads it: a family whose config fields
        moved overrides this to migrate folders written by earlier versions."""
        return run

    def __init__(self, seed: int = 0):
        super().__init__()
        self._seed = seed
        self._optimizer: torch.optim.Optimizer | None = None
        self._generator: torch.Generator | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def train_generator(self) -> torch.Generator:
        """The random stream of training, saved in checkpoints so a resumed run draws the same numbers."""
        self._generator = training_stream(self._generator, self.device, self._seed)
        return self._generator

    def takes(self) -> tuple[str, ...]:
        """The conditions this model takes, of those its family declares in `inputs`: labels only with
        num_classes > 0, text only with text_dim > 0 (the config's text encoder width)."""
        cfg = self.config
        needs = {"labels": getattr(cfg, "num_classes", 0), "text": getattr(cfg, "text_dim", 0)}
        return tuple(f for f in getattr(self, "inputs", ()) if needs.get(f, 1) > 0)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizer is None:
            self._optimizer = make_adam(self.parameters(), self.optim_config, self.default_betas)
        return {"net": self._optimizer}
