"""A DiT denoiser backbone (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"):
patchify, transformer blocks with adaLN-Zero conditioning on the noise level and label, unpatchify.

Same call as the UNet: forward(x, c_noise, labels) -> F of x's shape, so the diffusion family's EDM
preconditioning wraps either one unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...condition import LabelEmbedding, no_labels
from .cross_attention import CrossAttention, sincos_2d
from .unet import FourierEmbedding, _required_spatial, _zero_conv


def sincos_pos_embed_2d(dim: int, side: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (DiT / MAE): (side * side, dim), half for rows, half for columns."""
    return sincos_2d(dim, side, side)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, D) normalised elsewhere; shift, scale (B, D) from the conditioning vector."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every other)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c, with residual gates (adaLN-Zero, DiT sec. 3.2).

    The modulation layer starts at zero, so every gate is 0 and each block starts as the identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, context_dim: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        # cross-attention to condition tokens between self-attention and MLP, as in PixArt-alpha (Chen et al. 2023)
        self.cross = CrossAttention(dim, context_dim, num_heads) if context_dim > 0 else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: tuple | None = None) -> torch.Tensor:  # x (B, T, D), c (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross is not None and ctx is not None:
            x = self.cross(x, *ctx)  # ctx: tokens (B, S, context_dim), token_mask (B, S)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN, then a linear map of each token to its patch of pixels (p * p * C values)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Maps (x_in, c_noise, labels) to a network output F of x_in's shape.

    The image is cut into (image_size / patch_size)^2 patches, each a token of hidden_size; c is the
    noise-level embedding plus the label embedding (label -1: "no label", for classifier-free guidance)
    plus `vector` (B, hidden_size), a pooled condition, where given. context_dim > 0 adds
    cross-attention to condition tokens (B, S, context_dim) in every block. spatial_channels > 0 takes
    `spatial` (B, spatial_channels, H, W) (an edge map and its flag), patchified by its own
    zero-initialised convolution and added to the patch tokens (as extra input channels of patch_embed).
    adaLN-Zero initialisation makes the initial output exactly zero.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int = 0,
        context_dim: int = 0,
        spatial_channels: int = 0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.patch_size, self.in_channels = patch_size, in_channels
        self.side = image_size // patch_size  # tokens per row
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, self.side)[None], persistent=False)
        self.noise_embed = FourierEmbedding(256)
        self.noise_mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.label_embed = LabelEmbedding(num_classes, hidden_size) if num_classes > 0 else None
        self.emb_dim = hidden_size
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, dropout, context_dim) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self._init_weights()
        # built last, so every other initial weight is that of a network without it
        self.spatial_embed = _zero_conv(spatial_channels, hidden_size, patch_size, patch_size) if spatial_channels > 0 else None

    def _init_weights(self) -> None:
        # As in the DiT reference code: Xavier for linear layers, small normals for the embeddings,
        # then zeros for every modulation and the output layer (the "Zero" of adaLN-Zero).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.noise_mlp[0], self.noise_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.embed.weight, std=0.02)
        for block in [*self.blocks, self.final]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for block in self.blocks:
            if block.cross is not None:  # zero output projection: each cross-attention starts as the identity
                nn.init.zeros_(block.cross.proj.weight)
                nn.init.zeros_(block.cross.proj.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) tokens -> (B, C, H, W) image."""
        b, p, c, s = x.shape[0], self.patch_size, self.in_channels, self.side
        x = x.reshape(b, s, s, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, s, p, s, p)
        return x.reshape(b, c, s * p, s * p)

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
    ) -> torch.Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D), T = side^2
        if self.spatial_embed is not None:
            s = self.spatial_embed(_required_spatial(spatial, self.spatial_embed.in_channels, x))  # (B, D, side, side)
            h = h + s.flatten(2).transpose(1, 2)
        c = self.noise_mlp(self.noise_embed(c_noise))  # (B, D)
        if self.label_embed is not None:
            if labels is None:
                labels = no_labels(x.shape[0], x.device)
            c = c + self.label_embed(labels)
        if vector is not None:
            c = c + vector
        ctx = None
        if self.blocks and self.blocks[0].cross is not None:
            if tokens is None:
                raise ValueError("this network cross-attends to condition tokens: tokens and token_mask are required")
            ctx = (tokens, token_mask)
        for block in self.blocks:
            h = block(h, c, ctx)
        return self.unpatchify(self.final(h, c))

