"""Plain convolutional encoder and decoder (residual blocks, strided downsampling, nearest upsampling)
shared by the autoencoding families (vae.py, vqvae.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import _groups


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a skip; an optional embedding adds a per-channel shift."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _widths(base_channels: int, channel_mult: tuple[int, ...]) -> list[int]:
    return [base_channels * m for m in channel_mult]


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H / f, W / f), f = 2 ** (len(channel_mult) - 1).

    Level i has num_res_blocks residual blocks of base_channels * channel_mult[i] channels and (except
    the last) a stride-2 convolution. emb_dim > 0 takes a (B, emb_dim) embedding (e.g. a label's) that
    every block adds as a per-channel shift.
    """

    def __init__(self, in_channels: int, out_channels: int, *, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, emb_dim: int = 0):
        super().__init__()
        widths = _widths(base_channels, channel_mult)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            self.blocks.append(nn.ModuleList())
            for _ in range(num_res_blocks):
                self.blocks[-1].append(ResBlock(ch, width, emb_dim))
                ch = width
            last = level == len(widths) - 1
            self.downs.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(ch, ch, emb_dim)
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        self.top_channels = ch

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x)
        for blocks, down in zip(self.blocks, self.downs):
            for block in blocks:
                h = block(h, emb)
            h = down(h)
        h = self.mid(h, emb)  # (B, top_channels, H / f, W / f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """The Encoder's mirror: (B, in_channels, h, w) -> (B, out_channels, h * f, w * f)."""

    def __init__(self, in_channels: int, out_channels: int, *, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, emb_dim: int = 0):
        super().__init__()
        widths = _widths(base_channels, channel_mult)[::-1]
        ch = widths[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.mid = ResBlock(ch, ch, emb_dim)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level, width in enumerate(widths):
            self.blocks.append(nn.ModuleList())
            for _ in range(num_res_blocks):
                self.blocks[-1].append(ResBlock(ch, width, emb_dim))
                ch = width
            last = level == len(widths) - 1
            self.ups.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z), emb)
        for blocks, up in zip(self.blocks, self.ups):
            for block in blocks:
                h = block(h, emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class KLAutoencoder(nn.Module):
    """The first stage of latent diffusion (Rombach et al. 2022, "KL-reg" autoencoder): the Encoder gives
    the moments of q(z|x) = N(mean, diag exp(logvar)) on a grid f times smaller, the Decoder maps z back.

    x (B, channels, H, W) -> mean, logvar (B, latent_channels, H / f, W / f) -> x_hat (B, channels, H, W).
    """

    def __init__(self, channels: int, latent_channels: int, *, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int):
        super().__init__()
        net = dict(base_channels=base_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks)
        self.encoder = Encoder(channels, 2 * latent_channels, **net)
        self.decoder = Decoder(latent_channels, channels, **net)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1] -> (mean, logvar) of q(z|x), each (B, latent_channels, h, w)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps the same way

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_channels, h, w) -> images (B, C, H, W), about [-1, 1] (not clamped)."""
        return self.decoder(z)
