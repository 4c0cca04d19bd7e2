"""Bounds on the size fields of every family's config, and the parameter count checked before a model is built.

A run or model folder may come from anyone, and its config.json decides how much memory building the
model takes. Each family's Config declares its size fields in a `BOUNDS` table checked by
`check_bounds` in its __post_init__, so the CLI, the Python API and the server refuse the same
configs with the same message. The bounds are generous for real use (a 1024-pixel image, widths up to
2048, 100,000 classes, 64 blocks per level) but far below what exhausts memory; a config inside every
bound can still describe a very large network (2048 channels times a channel multiplier of 16), so
`check_model_size` also counts the parameters exactly, on PyTorch's "meta" device (no memory is
allocated), and refuses more than MAX_PARAMETERS.
"""

from __future__ import annotations

from typing import Any

import torch

# The most parameters a model may have: about 1.2 GB of fp32 weights, times four with EMA weights and
# Adam's two moments in training. The families' default configs have 1 to 4 million.
MAX_PARAMETERS = 300_000_000

# Common bounds, shared by the families' BOUNDS tables: (lowest, highest) allowed, inclusive.
IMAGE_SIZE = (1, 1024)
NUM_CLASSES = (0, 100_000)
WIDTH = (1, 2048)  # channels of a convolution or a transformer's width
BLOCKS = (0, 64)  # residual blocks per level
DEPTH = (1, 64)  # layers or transformer blocks
HEADS = (1, 64)
CHANNEL_MULT = (1, 16)  # each entry of channel_mult
LEVELS = (1, 8)  # len(channel_mult)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_range(name: str, value: Any, low: int, high: int) -> None:
    """A whole number in [low, high], else a ValueError naming the field and the valid range."""
    if not _is_int(value):
        raise ValueError(f"{name} must be a whole number in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def check_bounds(config: Any, bounds: dict[str, tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]]) -> None:
    """Check the fields that `bounds` names: `(low, high)` for a whole number, or `((min_len, max_len),
    (low, high))` for a list of whole numbers (its length, then each entry). Lists are kept as tuples."""
    for name, bound in bounds.items():
        value = getattr(config, name)
        if isinstance(bound[0], tuple):
            (min_len, max_len), (low, high) = bound  # type: ignore[misc]
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be a list of whole numbers, got {value!r}")
            if not min_len <= len(value) <= max_len:
                raise ValueError(f"{name} must have {min_len}..{max_len} entries, got {len(value)}")
            for i, v in enumerate(value):
                check_range(f"{name}[{i}]", v, low, high)
            object.__setattr__(config, name, tuple(value))  # JSON gives lists; keep configs hashable
        else:
            check_range(name, value, *bound)  # type: ignore[arg-type]


def meta_model(family: type, config: Any) -> torch.nn.Module:
    """`family(config)` built on the meta device: exact parameter and buffer shapes, no memory for them,
    whatever the config says (the bounds keep the number of modules small)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # families seed their initialisation
        return family(config, seed=0)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_model_size(family: type, config: Any, where: str = "config", limit: int | None = None) -> torch.nn.Module:
    """meta_model(family, config), or a ValueError naming `where` when its parameter count passes
    `limit` (default MAX_PARAMETERS)."""
    limit = MAX_PARAMETERS if limit is None else limit
    model = meta_model(family, config)
    n = parameter_count(model)
    if n > limit:
        raise ValueError(f"{where}: the model would have {n:,} parameters, more than the {limit:,} this version "
                         "builds (pixelforge.models.limits.MAX_PARAMETERS); check its size fields")
    return model
