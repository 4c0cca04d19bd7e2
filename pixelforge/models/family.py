"""What every family implements the same way: its device, its training random stream and (unless it
owns several) one Adam over all its parameters. docs/design.md describes the whole contract."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ..precision import autocast
from .optim import DEFAULT_BETAS, make_adam, training_stream, update


class NetworkCall(NamedTuple):
    """A network call of a family's sampling (or editing) that compress/ can export or run in another
    precision: the method's name, the names of its tensor arguments (each (B, ...)) before a last `cond`
    argument, the submodules it runs (their weights are those of the exported graph), and the names of
    what it returns: one tensor, or a tuple of as many."""

    method: str
    args: tuple[str, ...]
    modules: tuple[str, ...]
    outputs: tuple[str, ...] = ("out",)


class FamilyModule(nn.Module):
    """Base of the family classes. `seed` seeds the training random stream (see training_stream);
    a family that owns several optimisers, or shares another model's stream, overrides
    `optimizers` or `train_generator`. `default_betas`: Adam's betas where the run's OptimConfig
    leaves them unset."""

    default_betas: tuple[float, float] = DEFAULT_BETAS
    # whether a step may be split into micro-batches whose gradients add up (gradient accumulation): not
    # where one update's result feeds the next within a step (a GAN's D updates, then G against the new D)
    accumulates: bool = True
    network_call: NetworkCall | None = None  # None: nothing of the family can be exported yet
    # further calls exported beside network_call (an autoencoder's encoder, which edit runs), each a graph of its own
    other_calls: tuple[NetworkCall, ...] = ()
    compress_note: str = ""  # why a family without a network_call has none (compress's error says it)
    # what `pixelforge sample` tells a user of a family whose samples are not meant as images (else "")
    sample_note: str = ""

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
        # Set by the trainer (train.loop) through `distribute` and `set_micro_batch`; plain attributes
        # kept out of nn.Module's registry, so a wrapper around this very module is no submodule of it.
        self.__dict__["_ddp"] = None  # the DistributedDataParallel wrapper around the trained model, or None
        self.__dict__["_rank"] = 0
        self.__dict__["_micro"] = (0, 1)  # (this micro-batch, micro-batches per step)
        self.__dict__["_precision"] = "fp32"  # "bf16", "fp16": losses computed under autocast (set_precision)
        self.__dict__["_scalers"] = {}  # fp16: id(optimizer) -> its torch.amp.GradScaler (set_grad_scalers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def train_generator(self) -> torch.Generator:
        """The random stream of training, saved in checkpoints so a resumed run draws the same numbers."""
        self._generator = training_stream(self._generator, self.device, self._seed, self.__dict__["_rank"])
        return self._generator

    def takes(self) -> tuple[str, ...]:
        """The conditions this model takes, of those its family declares in `inputs`: labels only with
        num_classes > 0, text only with text_dim > 0 (the config's text encoder width), spatial only with
        spatial_channels > 0 (an edge map: the config's spatial_condition), audio only with audio_dim > 0."""
        cfg = self.config
        needs = {"labels": getattr(cfg, "num_classes", 0), "text": getattr(cfg, "text_dim", 0),
                 "spatial": getattr(cfg, "spatial_channels", 0), "audio": getattr(cfg, "audio_dim", 0)}
        return tuple(f for f in getattr(self, "inputs", ()) if needs.get(f, 1) > 0)

    def frozen_parts(self) -> tuple[tuple[str, str, nn.Module], ...]:
        """(source run, module name in that run, own module) for each part whose weights a new run copies
        from another run at its start and keeps frozen (latent diffusion's autoencoder); none by default."""
        return ()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizer is None:
            self._optimizer = make_adam(self.parameters(), self.optim_config, self.default_betas)
        return {"net": self._optimizer}

    # --- how a family's training_step computes its losses and updates ------------------------------
    def forward(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs): what DistributedDataParallel calls (see `parallel`)."""
        return fn(*args, **kwargs)

    def parallel(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs), a loss computation of training_step, run through the trainer's
        DistributedDataParallel wrapper when there is one, so that backward on its result averages the
        gradients over all processes; on a micro-batch before a step's last the gradients only add up
        locally (DDP's no_sync) and are averaged with the last one's. Called directly in one process.
        Under bf16 (set_precision) fn runs in bf16 autocast; backward, the weights and the optimiser stay fp32."""
        ddp = self.__dict__["_ddp"]
        with autocast(self.__dict__["_precision"], self.device):
            if ddp is None:
                return fn(*args, **kwargs)
            index, count = self.__dict__["_micro"]
            with ddp.no_sync() if index < count - 1 else contextlib.nullcontext():
                return ddp(fn, *args, **kwargs)

    def update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> float:
        """optim.update for this model's current micro-batch (gradient accumulation: only the last of a
        step's micro-batches steps the optimiser), through the optimiser's gradient scaler under fp16;
        returns the gradient norm (nan before the last)."""
        return update(optimizer, loss, step, self.optim_config, micro=self.__dict__["_micro"],
                      scaler=self.__dict__["_scalers"].get(id(optimizer)))


def distribute(model: nn.Module, wrapper: nn.Module | None, rank: int) -> None:
    """Train `model` as process `rank` of several: each family module in it (the transformer's VQ-VAE
    too) computes its losses through `wrapper` (DistributedDataParallel around model) and draws from
    the training random stream of its rank. Call before the first training step."""
    for m in model.modules():
        if isinstance(m, FamilyModule):
            m.__dict__["_ddp"] = wrapper
            m.__dict__["_rank"] = rank
            m._generator = None


def set_precision(model: nn.Module, precision: str) -> None:
    """Compute the training losses of every family module in `model` in `precision`: "fp32", "bf16" or
    "fp16" (autocast around each loss computation, see FamilyModule.parallel); a precision.PrecisionChoice's.
    fp16 also needs set_grad_scalers."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"training precision must be fp32, bf16 or fp16, got {precision!r}")
    for m in model.modules():
        if isinstance(m, FamilyModule):
            m.__dict__["_precision"] = precision


def set_grad_scalers(model: nn.Module, scalers: dict[str, torch.amp.GradScaler]) -> None:
    """Update each of model.optimizers() through scalers[its name] (fp16 training): every family module in
    `model` (the transformer's VQ-VAE too) finds the scaler of the optimiser it steps."""
    by_id = {id(opt): scalers[name] for name, opt in model.optimizers().items() if name in scalers}
    for m in model.modules():
        if isinstance(m, FamilyModule):
            m.__dict__["_scalers"] = by_id


def set_micro_batch(model: nn.Module, index: int, count: int) -> None:
    """The next training_step of `model` is micro-batch `index` of `count` in its step."""
    for m in model.modules():
        if isinstance(m, FamilyModule):
            m.__dict__["_micro"] = (index, count)
