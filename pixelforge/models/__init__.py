"""Model families, one module each, all keeping the contract in DESIGN.md; FAMILIES maps names to classes.

Every family class is an nn.Module with: a frozen `Config` dataclass; `__init__(config, optim, *, seed)`;
`training_step(x, cond, step) -> dict[str, float]` (it owns its optimisers' updates);
`validation_loss(x, cond, generator) -> (B,) tensor`; `sample(n, cond=None, *, seed, **options)`
returning (n, C, H, W) in [-1, 1]; `optimizers() -> dict[str, Optimizer]`; `train_generator`
(its random stream, saved in checkpoints); and `capabilities`, a tuple naming optional abilities.
"""

from __future__ import annotations

from .diffusion import DiffusionConfig, DiffusionModel
from .optim import OptimConfig

FAMILIES: dict[str, type] = {
    "diffusion": DiffusionModel,
}


def get_family(name: str) -> type:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "get_family", "DiffusionConfig", "DiffusionModel", "OptimConfig"]
