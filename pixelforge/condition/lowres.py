"""The low-resolution image as a spatial condition: what a super-resolution diffusion model (an upscaler) is
conditioned on, made the same way in training and in sampling.

A training image x (B, C, S, S) is downsampled by `scale` with an antialiased filter (`down`), rounded to 8 bits
(what a PNG input holds) and brought back to the output size with `up`; the result enters the diffusion UNet
as extra input channels (`Cond.spatial`, (B, C, S, S), through the same zero-initialised layer an edge map
takes: models/diffusion.py spatial_input). A user's low-resolution image goes through `up` alone. The filters
are PyTorch's `F.interpolate` modes; with `antialias=True` its bicubic and bilinear downsampling are the same
filters as Pillow's `Image.resize` (the kernel widened by the scale), so a picture shrunk with Pillow looks like
a training input. docs/upscale.md has the whole path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..fields import from_fields

SCALES = (2, 3, 4)  # the upscaling factors a model can be trained for (`--scale`)
DOWN_FILTERS = ("bicubic", "bilinear", "area")  # antialiased: each output pixel averages all it covers
UP_FILTERS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class LowresConfig:
    """How an upscaler's condition is made from an image of the model's size (recorded in config.json, so
    sampling uses the training pipeline).

    scale: the upscaling factor; the low-resolution side is image_size / scale (which must divide it).
    down: the antialiased filter that makes the low-resolution training input (DOWN_FILTERS): "bicubic"
        (Keys' cubic with a = -0.5 stretched over the scale, as Pillow's BICUBIC), "bilinear" (a triangle,
        Pillow's BILINEAR), "area" (the mean of each scale x scale block).
    up: the filter that brings the low-resolution image back to the output size for the network (UP_FILTERS);
        the model then learns what this filter cannot restore.
    """

    scale: int = 2
    down: str = "bicubic"
    up: str = "bicubic"

    def __post_init__(self):
        if isinstance(self.scale, bool) or self.scale not in SCALES:
            raise ValueError(f"lowres.scale (--scale) must be one of {', '.join(map(str, SCALES))}, got {self.scale!r}")
        if self.down not in DOWN_FILTERS:
            raise ValueError(f"lowres.down must be one of {', '.join(DOWN_FILTERS)}, got {self.down!r}")
        if self.up not in UP_FILTERS:
            raise ValueError(f"lowres.up must be one of {', '.join(UP_FILTERS)}, got {self.up!r}")

    FIELDS: ClassVar[tuple[str, ...]] = ("scale", "down", "up")


def lowres_config(value: "LowresConfig | dict | None") -> LowresConfig | None:
    """A config's `lowres` field (an object of LowresConfig fields, as JSON gives it, or one) -> LowresConfig, or
    None; a ValueError naming the field for anything else."""
    return None if value is None else from_fields(LowresConfig, value, "lowres")


def low_side(image_size: int, cfg: LowresConfig) -> int:
    """The low-resolution side of a model of image_size; a ValueError unless scale divides it."""
    if image_size % cfg.scale:
        raise ValueError(f"lowres.scale {cfg.scale} (--scale) must divide image_size {image_size}: the low-resolution "
                         f"input is image_size / scale on a side (choose --image-size {image_size - image_size % cfg.scale}, "
                         "say)")
    return image_size // cfg.scale


def resize(x: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """x (B, C, h, w) float -> (B, C, H, W) with an F.interpolate mode, size a side or (H, W); antialiased where it
    shrinks (bicubic and bilinear as Pillow's filters, area as block means)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def downsample(x: torch.Tensor, cfg: LowresConfig) -> torch.Tensor:
    """Images (B, C, S, S) in [-1, 1] -> their low-resolution versions (B, C, S / scale, S / scale) in [-1, 1],
    filtered with cfg.down and rounded to the 256 levels of an 8-bit image (what a PNG input holds)."""
    low = resize(x.float(), low_side(x.shape[-1], cfg), cfg.down).clamp(-1, 1)
    return ((low + 1) * 127.5).round() / 127.5 - 1


def upsample(low: torch.Tensor, size: int | tuple[int, int], cfg: LowresConfig) -> torch.Tensor:
    """Low-resolution images (B, C, h, w) in [-1, 1] -> (B, C, H, W) with cfg.up (size: a side or (H, W)), clamped
    to [-1, 1]: the condition the network takes and the base its output is added to."""
    return resize(low.float(), size, cfg.up).clamp(-1, 1)


def lowres_condition(x: torch.Tensor, cfg: LowresConfig) -> torch.Tensor:
    """A training image's condition: x (B, C, S, S) in [-1, 1] downsampled and brought back, (B, C, S, S)."""
    return upsample(downsample(x, cfg), x.shape[-1], cfg)
