"""A ControlNet for the UNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): a trainable copy of a frozen UNet's input blocks and middle block, steered by a spatial condition,
whose outputs reach the frozen UNet through zero-initialised 1x1 convolutions."""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNet


class HintEncoder(nn.Module):
    """The condition (B, hint_channels, H, W) -> features (B, out_channels, H, W) added to the copy's first
    feature map: 3x3 convolutions with SiLU (ControlNet's input hint block, without its downsampling: the
    hint here is at the network's own resolution), ending in a zero-initialised 3x3 convolution, so the copy
    first sees exactly the base's features."""

    def __init__(self, hint_channels: int, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        ch = hint_channels
        for width in widths:
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.SiLU()]
            ch = width
        self.convs = nn.Sequential(*layers)
        self.zero_out = zero_conv(ch, out_channels, 3)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.zero_out(self.convs(hint))


class ControlNet(nn.Module):
    """The residuals a frozen UNet `base` adds to its skip connections and its middle output (UNet.forward's
    `control`), from x_in, the noise level, the base's conditions and a hint (B, hint_channels, H, W).

    copy: a UNet of the base's shape with its input blocks and middle block only (encoder_only), whose
    weights a new adapter run copies from the base (the same names); it takes the same labels, condition
    vector and tokens as the base. The hint enters through HintEncoder, added to the copy's conv_in output.
    zero_convs: one zero-initialised 1x1 convolution per skip connection and one for the middle output, so
    at the start every residual is zero and the adapted network's output is the base's, bit for bit."""

    def __init__(self, base: UNet, copy: UNet, *, hint_channels: int, hint_widths: tuple[int, ...]):
        super().__init__()
        if tuple(copy.skip_channels) != tuple(base.skip_channels) or copy.mid_channels != base.mid_channels:
            raise ValueError("the ControlNet's copy must have the shape of the UNet it controls")
        self.copy = copy
        self.hint = HintEncoder(hint_channels, hint_widths, base.skip_channels[0])
        self.zero_convs = nn.ModuleList(zero_conv(ch, ch, 1) for ch in (*base.skip_channels, base.mid_channels))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None, *,
                vector: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None, hint: torch.Tensor) -> list[torch.Tensor]:
        """x (B, C, H, W), c_noise (B,), hint (B, hint_channels, H, W) -> one residual per skip connection of the
        base, each of its shape, then one of the middle output's shape."""
        emb, ctx = self.copy.embed(c_noise, labels, vector=vector, tokens=tokens, token_mask=token_mask,
                                   batch=x.shape[0])
        h, skips = self.copy.encode(x, emb, ctx, vector=vector, added=self.hint(hint.to(x.dtype)))
        return [conv(f) for conv, f in zip(self.zero_convs, (*skips, h))]


def zero_conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    """ControlNet's "zero convolution": weights and bias start at zero, so its output does until training
    moves them (the gradient to its weights is not zero: it is the input's features)."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


__all__ = ["ControlNet", "HintEncoder", "zero_conv"]
