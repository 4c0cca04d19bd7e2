"""Cross-attention from image features to condition tokens (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", sec. 3.3): queries from the image, keys and values
from the tokens of a prompt (or any other tokenised condition). Shared by the UNet and the DiT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """x (B, N, D) attends to tokens (B, T, Dc) where token_mask (B, T) is True; returns x + attention.

    The output projection starts at zero, so a fresh block is the identity and adding cross-attention
    to a network leaves its initial output unchanged. Every row of token_mask must hold at least one
    True (the conditioner always supplies a learned "no condition" token), since attention over no
    token is undefined.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention width {dim} must be divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """query_pos (N, D), optional: added to the normalised queries' input, so each place of the
        image can ask the tokens for something different ("at the top left")."""
        b, n, d = x.shape
        hs = d // self.num_heads
        xq = self.norm(x) if query_pos is None else self.norm(x) + query_pos.to(x.dtype)
        q = self.q(xq).reshape(b, n, self.num_heads, hs).transpose(1, 2)  # (B, nh, N, hs)
        k, v = self.kv(tokens).reshape(b, -1, 2, self.num_heads, hs).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask[:, None, None, :])  # (B, nh, N, hs)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, d))


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (DiT / MAE) of a rows x cols grid: (rows * cols, dim),
    half of the channels for the row, half for the column; position t = row * cols + col. Not cached:
    a model built on the "meta" device (parameter counts) would leave meta tensors in a cache, and it
    costs microseconds beside a forward pass."""
    if dim % 4:
        raise ValueError(f"width {dim} must be divisible by 4 for the 2D sin-cos position embedding")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")  # (rows, cols) each

    def embed(pos: torch.Tensor) -> torch.Tensor:  # (rows*cols,) -> (rows*cols, dim/2)
        args = pos.reshape(-1, 1) * omega[None]
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([embed(r), embed(c)], dim=1).float()


class SpatialCrossAttention(nn.Module):
    """CrossAttention over the H*W positions of a feature map (B, C, H, W).

    position: the queries carry each feature's place (sincos_2d). A convolutional network sees every
    place alike, so without it a prompt's "at the top left" has nothing to bind to: the shapes-text
    model trained without it put shapes anywhere (11% of places right, chance level; MODEL.md).
    """

    def __init__(self, ch: int, context_dim: int, head_dim: int = 32, *, position: bool = False):
        super().__init__()
        heads = max(1, ch // head_dim)
        self.attn = CrossAttention(ch, context_dim, heads if ch % heads == 0 else 1)
        self.position = position and ch % 4 == 0

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        pos = sincos_2d(c, hh, ww).to(h.device) if self.position else None  # (HW, C)
        return self.attn(seq, tokens, token_mask, pos).transpose(1, 2).reshape(b, c, hh, ww)
