"""DiffAugment: random, differentiable augmentations a GAN applies alike to real and generated images
before every discriminator call, so D cannot memorise a small training set.

Zhao, Liu, Lin, Zhu and Han 2020, "Differentiable Augmentation for Data-Efficient GAN Training"
(NeurIPS), section 3 and its policy "color,translation,cutout": brightness in [-0.5, 0.5), saturation
x[0, 2), contrast x[0.5, 1.5) (each about the image's own mean), translation by up to 1/8 of the side
with zero fill, and cutout of a square of half the side at a random centre. Written here from the
paper's description (a few lines per transform) rather than taken from a library: kornia, the
library with differentiable versions of these, is not a dependency of this project (nor installed
in its environment), and its random augmentations draw from the global RNG rather than a
`torch.Generator` passed in, which a run needs to resume exactly.

Every transform takes x (B, C, H, W) in [-1, 1] and a `torch.Generator` on x's device, draws one set
of parameters per image from it (and from nothing else), and returns a tensor of x's shape, dtype
and device through which gradients reach x.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One U[0, 1) draw per image, (B, 1, 1, 1) in x's dtype: drawn in float32 so the random stream
    does not depend on the precision the network runs in."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device).to(x.dtype)


def brightness(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Add one offset in [-0.5, 0.5) to every pixel of an image."""
    return x + (_uniform(x, g) - 0.5)


def saturation(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale each pixel's distance from its grey value (the channel mean) by a factor in [0, 2).

    A grayscale image has no saturation: it is returned unchanged, after the draw, so a 1-channel
    run's random stream is laid out like a colour run's."""
    factor = _uniform(x, g) * 2
    if x.shape[1] == 1:
        return x
    grey = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - grey) * factor + grey


def contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its mean value by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(x, g) + 0.5) + mean


def translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by a whole number of pixels, up to ratio of its side each way, filling with zeros."""
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b,), generator=g, device=x.device)  # (B,) rows down
    tx = torch.randint(-sx, sx + 1, (b,), generator=g, device=x.device)  # (B,) columns right
    padded = F.pad(x, [sx, sx, sy, sy])  # (B, C, H + 2 sy, W + 2 sx), zeros around
    rows = (torch.arange(h, device=x.device)[None] + sy - ty[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None] + sx - tx[:, None])[:, None, :]  # (B, 1, W)
    # Advanced indices separated by a slice put their broadcast dims first: (B, H, W, C).
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ratio of the side (all channels) at a random centre, clipped at the borders."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1), generator=g, device=x.device) - ch // 2  # (B, 1)
    left = torch.randint(0, w + (1 - cw % 2), (b, 1), generator=g, device=x.device) - cw // 2  # (B, 1)
    ys, xs = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    in_y = (ys >= top) & (ys < top + ch)  # (B, H)
    in_x = (xs >= left) & (xs < left + cw)  # (B, W)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


# The paper's policies, each a sequence of transforms applied in order.
POLICIES: dict[str, tuple[Transform, ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str, field: str = "diffaugment") -> tuple[str, ...]:
    """"color,translation,cutout" -> ("color", "translation", "cutout"); "" -> () (off).

    `field` names the config field in the error: a ValueError listing the valid values."""
    valid = f'"" (off) or a comma-separated list of {", ".join(POLICIES)}'
    if not isinstance(policy, str):
        raise ValueError(f"{field} must be a string: {valid}; got {policy!r}")
    names = tuple(p.strip() for p in policy.split(",")) if policy.strip() else ()
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"{field}: unknown transform(s) {', '.join(repr(p) for p in unknown)}; valid: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"{field}: each transform at most once, got {policy!r}; valid: {valid}")
    return names


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """x (B, C, H, W) in [-1, 1] through the policy's transforms in order (x itself for ""); differentiable."""
    for name in parse_policy(policy):
        for transform in POLICIES[name]:
            x = transform(x, generator)
    return x
