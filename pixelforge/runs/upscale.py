"""A new upscaler run's model fields (`pixelforge train DATA --model upscale --scale S`): a diffusion run whose
condition is each image's low-resolution version (condition/lowres.py; docs/upscale.md)."""

from __future__ import annotations

import dataclasses

from ..condition.lowres import LowresConfig, low_side, lowres_config
from ..data.types import DataConfig

UPSCALE_MODEL = "upscale"  # the --model name of an upscaler; its runs are of the diffusion family
SIGMA_DATA_IMAGES = 1000  # training images the residual's spread is measured on, spread over the set


def upscale_fields(lowres: LowresConfig | dict | None, scale: int | None, data: DataConfig) -> dict:
    """The diffusion model fields of an upscaler of `data`: `lowres` (its filters as given, the scale `scale`,
    default 2), no condition dropout
    (an upscaler is always given its input, so an unconditional model is never asked for: dropout would only
    spend training on it) and `sigma_data`, EDM's data spread, set to the standard deviation of what the model
    diffuses, the residual x - up(down(x)), measured on the prepared training images (loaded and cached here, so
    the training finds them ready): about 0.2 for the bundled digits at scale 2, well under the 0.5 of whole
    images, so EDM's preconditioning scales the residual as it scales images."""
    from ..condition.lowres import lowres_condition
    from ..data import load_dataset, to_model

    cfg = lowres_config(lowres) or LowresConfig()
    if scale is not None:
        cfg = dataclasses.replace(cfg, scale=scale)
    low_side(data.image_size, cfg)  # a clear error before loading anything
    images = load_dataset(data, progress=False).images
    images = images[:: max(1, len(images) // SIGMA_DATA_IMAGES)][:SIGMA_DATA_IMAGES]
    x = to_model(images, data)  # (N, C, S, S) in [-1, 1]: what the model sees
    std = float((x - lowres_condition(x, cfg)).std())
    if not std > 0:
        raise ValueError(f"{data.source}: its images lose nothing when downsampled by {cfg.scale} (the residual is 0): "
                         "there is nothing for an upscaler to learn")
    return {"lowres": {"scale": cfg.scale, "down": cfg.down, "up": cfg.up}, "label_dropout": 0.0,
            "sigma_data": round(std, 4)}
