"""Model families, one module each, all keeping the contract in DESIGN.md; FAMILIES maps names to classes.

Every family class is an nn.Module with: a frozen `Config` dataclass; `__init__(config, optim, *, seed)`;
`training_step(x, cond, step) -> dict[str, float]` (it owns its optimisers' updates);
`validation_loss(x, cond, generator) -> (B,) tensor`; `sample(n, cond=None, *, seed, **options)`
returning (n, C, H, W) in [-1, 1], with `option_specs` declaring those options (kind, default, range;
models/options.py) and `sample_options` their defaults; `inputs`, the Cond fields it takes;
`optimizers() -> dict[str, Optimizer]`; `train_generator` (its random stream, saved in checkpoints);
and `capabilities`, a tuple naming optional abilities. docs/design.md has the details.
"""

from __future__ import annotations

from .autoencoder import AutoencoderConfig, AutoencoderModel
from .diffusion import DiffusionConfig, DiffusionModel
from .gan import GANConfig, GANModel
from .optim import OptimConfig
from .pixelcnn import PixelCNNConfig, PixelCNNModel
from .transformer import TokenTransformerModel, TransformerConfig
from .vae import VAEConfig, VAEModel
from .vqvae import VQVAEConfig, VQVAEModel

FAMILIES: dict[str, type] = {
    "diffusion": DiffusionModel,
    "gan": GANModel,
    "pixelcnn": PixelCNNModel,
    "transformer": TokenTransformerModel,
    "vae": VAEModel,
    "vqvae": VQVAEModel,
    "autoencoder": AutoencoderModel,
}


def get_family(name: str) -> type:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "get_family", "AutoencoderConfig", "AutoencoderModel", "DiffusionConfig", "DiffusionModel", "GANConfig", "GANModel", "OptimConfig", "PixelCNNConfig", "PixelCNNModel", "TokenTransformerModel", "TransformerConfig", "VAEConfig", "VAEModel", "VQVAEConfig", "VQVAEModel"]
