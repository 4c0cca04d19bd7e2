"""A plain UNet denoiser backbone: residual blocks, self-attention at low resolutions,
noise-level and label embeddings (after the DDPM++/EDM architectures, scaled down)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...condition import LabelEmbedding, no_labels
from .cross_attention import SpatialCrossAttention


def _groups(ch: int) -> int:
    # GroupNorm with up to 32 groups, each of at least 4 channels: tiny test configs still work.
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 4:
            return g
    return 1


def _heads(ch: int, head_dim: int = 32) -> int:
    # about one head per head_dim channels, and a count that divides ch (a pruned width need not be a
    # multiple of head_dim); every width where ch // head_dim divides ch (all that could run before) keeps it
    heads = max(1, ch // head_dim)
    while ch % heads:
        heads -= 1
    return heads


_LAYOUT = 4  # side of the coarse layout a condition vector is read out as (position_embedding)


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise condition c_noise (Vaswani et al. 2017 / EDM)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        args = c_noise.float()[:, None] * 1000.0 * self.freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the embedding as a per-channel scale and shift (adaptive GN)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map."""

    def __init__(self, ch: int, head_dim: int = 32):
        super().__init__()
        self.heads = _heads(ch, head_dim)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)  # each (B, nh, HW, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """Maps (x_in, c_noise, labels) to a network output F of x_in's shape.

    channel_mult gives the width at each resolution (base_channels * m); the image side is halved
    between levels, so image_size must be divisible by 2 ** (len(channel_mult) - 1).
    level_channels, stem_channels: explicit widths of each level and of the first feature map (conv_in's
    output) in place of base_channels * channel_mult and base_channels (a pruned network: compress/prune.py);
    empty and 0 keep those. base_channels still sets the noise-level embedding (emb_dim = 4 * base_channels).
    context_dim > 0 adds cross-attention to condition tokens (B, T, context_dim) wherever there is
    self-attention (attn_resolutions and the middle), whose queries carry their place when
    cross_attn_position is set; `vector` (B, 4 * base_channels), a pooled condition, is added to the
    noise-level embedding as the label embedding is.
    position_embedding adds a learned per-pixel embedding to conv_in's output (DiffusionConfig says why),
    and, where a condition vector is given, that vector read out as a coarse 4x4 layout (a linear map,
    zero at the start) and upsampled onto the same feature map.
    spatial_channels > 0 takes `spatial` (B, spatial_channels, H, W), channels concatenated to x (an edge
    map and its flag): as a separate zero-initialised convolution added to conv_in's output, which is the
    same as extra input channels of conv_in with zero weights, but leaves conv_in's weights, their names
    and every other initial weight as in a network without them.
    encoder_only builds the input blocks and the middle alone (embed and encode; no forward): a ControlNet's
    trainable copy, whose weights then have the names of the full network's (nets/controlnet.py).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (8,),
        dropout: float = 0.0,
        num_classes: int = 0,
        context_dim: int = 0,
        cross_attn_position: bool = True,
        spatial_channels: int = 0,
        position_embedding: bool = False,
        encoder_only: bool = False,
        level_channels: tuple[int, ...] = (),
        stem_channels: int = 0,
    ):
        super().__init__()
        emb_dim = base_channels * 4
        if level_channels and len(level_channels) != len(channel_mult):
            raise ValueError(f"level_channels {tuple(level_channels)} must give one width per level of channel_mult "
                             f"{tuple(channel_mult)}")
        widths = tuple(level_channels) or tuple(base_channels * m for m in channel_mult)  # each level's width
        stem = stem_channels or base_channels  # conv_in's output
        self.emb_dim = emb_dim

        def cross(ch: int) -> SpatialCrossAttention | None:
            if context_dim <= 0:
                return None
            return SpatialCrossAttention(ch, context_dim, position=cross_attn_position)

        self.noise_embed = FourierEmbedding(base_channels)
        self.emb_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes > 0 else None

        self.conv_in = nn.Conv2d(in_channels, stem, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [stem]
        ch, res = stem, image_size
        for level, cout in enumerate(widths):
            for _ in range(num_res_blocks):
                attn = res in attn_resolutions
                self.down.append(_Level(ResBlock(ch, cout, emb_dim, dropout), AttnBlock(cout) if attn else None,
                                        cross=cross(cout) if attn else None))
                ch = cout
                skip_ch.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(_Level(None, None, nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
                skip_ch.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = AttnBlock(ch)
        self.mid_cross = cross(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.skip_channels = tuple(skip_ch)  # channels of each skip connection, then the middle's: what `control` adds to
        self.mid_channels = ch
        if encoder_only:  # a ControlNet's trainable copy (nets/controlnet.py): the input blocks and the middle alone
            self.up = self.norm_out = self.conv_out = self.spatial_in = self.position = self.vector_layout = None
            self._position_layers(stem, image_size, emb_dim, position_embedding)
            return
        self.up = nn.ModuleList()
        for level, cout in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                attn = res in attn_resolutions
                self.up.append(_Level(ResBlock(ch + skip_ch.pop(), cout, emb_dim, dropout), AttnBlock(cout) if attn else None,
                                      cross=cross(cout) if attn else None))
                ch = cout
            if level > 0:
                self.up.append(_Level(None, None, nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.spatial_in = _zero_conv(spatial_channels, stem, 3) if spatial_channels > 0 else None  # built last
        self._position_layers(stem, image_size, emb_dim, position_embedding)

    def _position_layers(self, stem: int, image_size: int, emb_dim: int, position_embedding: bool) -> None:
        # (1, stem, S, S), added to conv_in's output; zero at the start (draws nothing, so every other
        # initial weight is as without it)
        self.position = nn.Parameter(torch.zeros(1, stem, image_size, image_size)) if position_embedding else None
        # the condition vector read out as a coarse layout (stem, 4, 4), upsampled onto the same map:
        # a linear path from "at the top left" in the vector to features at the top left (zero at the start)
        self.vector_layout = nn.Linear(emb_dim, stem * _LAYOUT * _LAYOUT) if position_embedding else None
        if self.vector_layout is not None:
            nn.init.zeros_(self.vector_layout.weight)
            nn.init.zeros_(self.vector_layout.bias)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        vector: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        spatial: torch.Tensor | None = None,
        control: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """F(x, c_noise; conditions) of x's shape. control: a ControlNet's residuals (nets/controlnet.py), one
        per skip connection (skip_channels) and a last one for the middle output, added to them."""
        if self.up is None:
            raise ValueError("an encoder-only UNet (a ControlNet's copy) has no output blocks: call embed and encode")
        emb, ctx = self.embed(c_noise, labels, vector=vector, tokens=tokens, token_mask=token_mask, batch=x.shape[0])
        h, skips = self.encode(x, emb, ctx, vector=vector, spatial=spatial)
        if control is not None:
            if len(control) != len(skips) + 1:
                raise ValueError(f"control: {len(control)} residuals given, the UNet takes {len(skips) + 1} "
                                 "(one per skip connection and one for the middle)")
            skips = [s + r for s, r in zip(skips, control)]
            h = h + control[-1]
        return self.decode(h, skips, emb, ctx)

    def embed(self, c_noise: torch.Tensor, labels: torch.Tensor | None = None, *, vector: torch.Tensor | None = None,
              tokens: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
              batch: int) -> tuple[torch.Tensor, tuple | None]:
        """The block embedding (B, emb_dim): noise level, label and condition vector; and the cross-attention
        context (tokens, token_mask), None for a network without cross-attention."""
        emb = self.emb_mlp(self.noise_embed(c_noise))  # (B, emb_dim)
        if self.label_embed is not None:
            if labels is None:
                labels = no_labels(batch, c_noise.device)
            emb = emb + self.label_embed(labels)
        if vector is not None:
            emb = emb + vector
        emb = F.silu(emb)
        ctx = (tokens, token_mask) if self.mid_cross is not None else None
        if ctx is not None and tokens is None:
            raise ValueError("this network cross-attends to condition tokens: tokens and token_mask are required")
        return emb, ctx

    def encode(self, x: torch.Tensor, emb: torch.Tensor, ctx: tuple | None, *, vector: torch.Tensor | None = None,
               spatial: torch.Tensor | None = None,
               added: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The input blocks and the middle: x (B, C, H, W) -> (middle output, skip connections). added
        (B, stem, H, W): features added to conv_in's output (a ControlNet's condition)."""
        h = self.conv_in(x)  # (B, stem, H, W), stem: stem_channels or base_channels
        if self.spatial_in is not None:
            h = h + self.spatial_in(_required_spatial(spatial, self.spatial_in.in_channels, x))
        if added is not None:
            h = h + added
        if self.position is not None:
            h = h + self.position.to(h.dtype)
            if vector is not None:
                layout = self.vector_layout(vector).view(x.shape[0], -1, _LAYOUT, _LAYOUT)  # (B, stem, 4, 4)
                h = h + F.interpolate(layout.to(h.dtype), size=h.shape[-2:], mode="bilinear", align_corners=False)
        skips = [h]
        for lvl in self.down:
            h = lvl(h, emb, ctx)
            skips.append(h)
        h = self.mid_attn(self.mid1(h, emb))
        if ctx is not None:
            h = self.mid_cross(h, *ctx)
        h = self.mid2(h, emb)
        return h, skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, ctx: tuple | None) -> torch.Tensor:
        """The output blocks: the middle output and the skip connections -> F (B, C, H, W)."""
        skips = list(skips)
        for lvl in self.up:
            if lvl.block is not None:
                h = torch.cat([h, skips.pop()], dim=1)
            h = lvl(h, emb, ctx)
        return self.conv_out(F.silu(self.norm_out(h)))


def _zero_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A convolution of the spatial condition whose weights start at zero (ControlNet's "zero convolution",
    Zhang et al. 2023): a new network starts as one without the condition, and `--init-from` keeps that."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - stride) // 2, bias=False)
    nn.init.zeros_(conv.weight)
    return conv


def _required_spatial(spatial: torch.Tensor | None, channels: int, x: torch.Tensor) -> torch.Tensor:
    """spatial (B, channels, H, W) of x's batch and size, or a ValueError saying what is expected."""
    want = (x.shape[0], channels, *x.shape[2:])
    if spatial is None or tuple(spatial.shape) != want:
        got = "none" if spatial is None else tuple(spatial.shape)
        raise ValueError(f"this network takes a spatial condition of shape {want}, got {got}")
    return spatial.to(x.dtype)


class _Level(nn.Module):
    """One step of the ladder: a residual block (+ attention, + cross-attention), or a resampling layer."""

    def __init__(self, block: ResBlock | None, attn: AttnBlock | None, resample: nn.Module | None = None, *,
                 cross: SpatialCrossAttention | None = None):
        super().__init__()
        # cross is None in models without conditioning tokens, which so keep their weight names
        self.block, self.attn, self.resample, self.cross = block, attn, resample, cross

    def forward(self, h: torch.Tensor, emb: torch.Tensor, ctx: tuple | None = None) -> torch.Tensor:
        if self.resample is not None:
            return self.resample(h)
        h = self.block(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None and ctx is not None:
            h = self.cross(h, *ctx)
        return h
