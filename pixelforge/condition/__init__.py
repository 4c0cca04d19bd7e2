"""Conditions: typed inputs that steer a model (class labels now; text, images and audio later)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Cond:
    """What a sample is conditioned on; None fields mean "not given".

    labels: (B,) int64 class indices; the value -1 means "no label" (the empty condition that
    classifier-free guidance contrasts against).
    """

    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Cond":
        return Cond(labels=None if self.labels is None else self.labels.to(device))

    def __len__(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[0])

    def index(self, idx: torch.Tensor | slice) -> "Cond":
        return Cond(labels=None if self.labels is None else self.labels[idx])

    def empty(self) -> "Cond":
        """The same batch with every condition dropped (for classifier-free guidance)."""
        return Cond(labels=None if self.labels is None else torch.full_like(self.labels, -1))

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        if any(c.labels is None for c in conds):
            return Cond()
        return Cond(labels=torch.cat([c.labels for c in conds]))


class LabelEmbedding(nn.Module):
    """Class label -> vector; row `num_classes` is the learned "no label" embedding (label -1)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        idx = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return self.embed(idx)
