"""Per-sample random streams: image i's noise depends only on its own seed, whatever the batch."""

from __future__ import annotations

import torch


class PerSampleGenerator:
    """One torch.Generator per sample (after EDM's StackedRandomGenerator)."""

    def __init__(self, seeds: list[int], device: torch.device | str):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s) % (1 << 63)) for s in seeds]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(len(seeds), *shape) standard normal draws, row i from generator i."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} but {len(self.generators)} seeds")
        return self.randn(tuple(x.shape[1:]), dtype=x.dtype)
