"""The small digit classifier whose penultimate layer is pixelforge's domain feature space for MNIST-like data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DigitClassifierConfig:
    """Shape of the classifier; saved in the weights' card so the network is rebuilt from the files alone.

    widths: channels of the three stages (28x28, 14x14, 7x7); the last one is the feature dimension.
    num_classes: size of the logits.
    image_size: side of the (square, grayscale) input.
    """

    widths: tuple[int, int, int] = (32, 64, 128)
    num_classes: int = 10
    image_size: int = 28

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> DigitClassifierConfig:
        unknown = set(d) - {"widths", "num_classes", "image_size"}
        if unknown:
            raise ValueError(f"unknown digit classifier config keys {sorted(unknown)}; "
                             "valid keys: widths, num_classes, image_size")
        return cls(**{**d, **({"widths": tuple(d["widths"])} if "widths" in d else {})})


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitClassifier(nn.Module):
    """Conv-BN-ReLU stages with max pooling, global average pooling, one linear head.

    In eval mode BatchNorm uses its stored statistics, so an image's features never depend on the
    other images in its batch.
    """

    def __init__(self, config: DigitClassifierConfig = DigitClassifierConfig()):
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.body = nn.Sequential(
            *_conv_bn_relu(1, w1),               # (B, w1, 28, 28)
            nn.MaxPool2d(2),                     # (B, w1, 14, 14)
            *_conv_bn_relu(w1, w2),
            *_conv_bn_relu(w2, w2),
            nn.MaxPool2d(2),                     # (B, w2, 7, 7)
            *_conv_bn_relu(w2, w3),
            *_conv_bn_relu(w3, w3),              # (B, w3, 7, 7)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),                        # (B, w3)
        )
        self.head = nn.Linear(w3, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, S, S) in [0, 1] -> (features (B, widths[-1]) non-negative, logits (B, num_classes))."""
        h = self.body(x)
        return h, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, S, S) in [0, 1] -> logits (B, num_classes)."""
        return self.forward_features(x)[1]
