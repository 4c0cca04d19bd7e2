"""Optimiser settings and the one update step every family uses inside its own training_step."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..distributed import rank_seed


@dataclass(frozen=True)
class OptimConfig:
    """Adam settings shared by the families; each family builds its own optimiser(s) from them.

    beta1, beta2: Adam's betas; None takes the family's `default_betas` (0.9, 0.999; a GAN 0, 0.99).
        A run's config.json writes the values used (RunConfig.resolved).
    warmup_steps: the learning rate rises linearly from 0 to lr over this many steps.
    grad_clip: clip the global gradient norm to this value (0 turns clipping off).
    lr_scaling: how the rate follows the effective batch (train.batch_size, over all processes and
        micro-batches): "none" (lr as given), "linear" (lr * batch / lr_base_batch, Goyal et al. 2017)
        or "sqrt" (lr * sqrt(batch / lr_base_batch), the rule often preferred for Adam).
    lr_base_batch: the batch size `lr` is meant for when it is scaled.
    cooldown_steps, cooldown_end: a linear cool-down (the "warm-up, stable, decay" schedule): the rate falls
        from lr to 0 over the cooldown_steps steps that end at step cooldown_end (the run's last, train.steps
        or a budget's expected steps), and stays 0 after it; 0 steps: no cool-down (the rate stays at lr).
        `--cooldown FRACTION` sets both from the run's steps (new_run_config's `cooldown`).
    """

    lr: float = 2e-4
    beta1: float | None = None
    beta2: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    lr_scaling: str = "none"
    lr_base_batch: int = 64
    cooldown_steps: int = 0
    cooldown_end: int = 0

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {self.lr_scaling!r}")
        if not 1 <= self.lr_base_batch <= 65_536:
            raise ValueError(f"optim.lr_base_batch must be in [1, 65536], got {self.lr_base_batch}")
        for name in ("beta1", "beta2"):
            beta = getattr(self, name)
            if beta is not None and not 0 <= beta < 1:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps and grad_clip must not be negative")
        if not 0 <= self.cooldown_steps <= self.cooldown_end:
            raise ValueError(f"optim.cooldown_steps must be at least 0 and at most optim.cooldown_end (the step it ends "
                             f"at), got {self.cooldown_steps} and {self.cooldown_end}")


DEFAULT_BETAS = (0.9, 0.999)
LR_SCALINGS = ("none", "linear", "sqrt")


def scaled_lr(cfg: OptimConfig, batch: int) -> float:
    """The peak rate a run with effective batch `batch` trains at under cfg.lr_scaling."""
    ratio = batch / cfg.lr_base_batch
    return cfg.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def adam_betas(cfg: OptimConfig, default: tuple[float, float] = DEFAULT_BETAS) -> tuple[float, float]:
    """cfg's betas, each unset one taken from `default` (the family's)."""
    return (default[0] if cfg.beta1 is None else cfg.beta1, default[1] if cfg.beta2 is None else cfg.beta2)


def make_adam(params, cfg: OptimConfig, default_betas: tuple[float, float] = DEFAULT_BETAS,
              lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam over params with the run's settings; lr_scale multiplies cfg.lr for this optimiser alone (kept in its
    param group, where `update` reads it at every step, so checkpoints carry it)."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr * lr_scale, betas=adam_betas(cfg, default_betas),
                                 weight_decay=cfg.weight_decay)
    if lr_scale != 1.0:
        for group in optimizer.param_groups:
            group["lr_scale"] = lr_scale
    return optimizer


def with_cooldown_end(cfg: OptimConfig, end: int) -> OptimConfig:
    """cfg with its cool-down moved to end at step `end` (a resumed run given a new total of steps or minutes),
    over the same share of the run; cfg itself where it has none."""
    if not cfg.cooldown_steps:
        return cfg
    end = max(1, int(end))
    return dataclasses.replace(cfg, cooldown_steps=min(end, max(1, round(cfg.cooldown_steps * end / cfg.cooldown_end))),
                               cooldown_end=end)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup_steps, then constant, then (with a cool-down) a linear fall to 0
    over the cfg.cooldown_steps steps before cfg.cooldown_end."""
    rate = cfg.lr if cfg.warmup_steps <= 0 else cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.cooldown_steps > 0:
        rate *= min(1.0, max(0.0, (cfg.cooldown_end - step) / cfg.cooldown_steps))
    return rate


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int, cfg: OptimConfig,
           micro: tuple[int, int] = (0, 1), scaler: torch.amp.GradScaler | None = None) -> float:
    """zero_grad, backward, clip, set the warm-up learning rate, step; returns the gradient norm.

    micro (index, count): gradient accumulation over a step's `count` micro-batches, each loss the mean
    over its own micro-batch: the first zeroes the gradients, each adds that of loss / count, and only
    the last clips and steps (the others return nan).
    scaler: fp16 training's gradient scaler (precision.grad_scaler): each micro-batch's loss is scaled
    before backward (the scale stays the same within a step), the summed gradients are unscaled before
    clipping, and the step is skipped where they overflowed (the returned norm is then inf or nan); under
    DDP every process sees the same averaged gradients, so all skip alike."""
    index, count = micro
    if index == 0:
        optimizer.zero_grad(set_to_none=True)
    part = loss / count if count > 1 else loss
    (part if scaler is None else scaler.scale(part)).backward()
    if index < count - 1:
        return math.nan
    if scaler is not None:
        scaler.unscale_(optimizer)  # the norm and the clipping see the true gradients
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if cfg.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped where a gradient is inf or nan
        scaler.update()
    return grad_norm


def training_stream(current: torch.Generator | None, device: torch.device, seed: int, rank: int = 0) -> torch.Generator:
    """A family's training random stream on `device`: the current one, or a new one seeded from the
    family's seed (seed + 1, apart from weight initialisation) when there is none on that device yet;
    process `rank` of a distributed training draws its own stream derived from that seed and the rank.
    The trainer saves and restores its state, so a resumed run draws the same numbers."""
    if current is None or current.device != device:
        return torch.Generator(device=device).manual_seed(rank_seed(seed + 1, rank))
    return current
