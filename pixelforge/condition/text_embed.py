"""A prompt's encoder outputs -> what a network takes: a vector added to its noise-level (or latent)
embedding and, for networks with cross-attention, a sequence of condition tokens."""

from __future__ import annotations

import torch
from torch import nn


class TextConditioner(nn.Module):
    """pooled (B, text_dim), tokens (B, T, text_dim), mask (B, T) -> vector (B, vector_dim), and where
    context_dim > 0 tokens (B, 1 + T, context_dim) with their mask (B, 1 + T).

    The empty prompt of classifier-free guidance is an all-zero pooled vector with an all-False mask
    (sentence encoders give unit vectors, so zero never stands for a real prompt): it maps to a learned
    "no prompt" vector, and its tokens to nothing but a learned "no prompt" token. That token leads
    every sequence, so attention always has a token to attend to.
    """

    def __init__(self, text_dim: int, vector_dim: int, context_dim: int = 0):
        super().__init__()
        self.context_dim = context_dim
        self.vector = nn.Sequential(nn.Linear(text_dim, vector_dim), nn.SiLU(), nn.Linear(vector_dim, vector_dim))
        self.null_vector = nn.Parameter(torch.zeros(vector_dim))
        if context_dim > 0:
            self.token_proj = nn.Linear(text_dim, context_dim)
            self.null_token = nn.Parameter(torch.randn(context_dim) * 0.02)

    def forward(
        self, pooled: torch.Tensor, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        present = pooled.abs().amax(dim=1) > 0  # (B,) False for the empty prompt
        vector = torch.where(present[:, None], self.vector(pooled), self.null_vector.to(pooled.dtype))
        if self.context_dim == 0:
            return vector, None, None
        if tokens is None or mask is None:
            raise ValueError("per-token text states and their mask are needed for cross-attention")
        b = pooled.shape[0]
        null = self.null_token.to(tokens.dtype).expand(b, 1, -1)  # (B, 1, context_dim)
        out_tokens = torch.cat([null, self.token_proj(tokens)], dim=1)  # (B, 1 + T, context_dim)
        out_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask.bool() & present[:, None]], dim=1)
        return vector, out_tokens, out_mask
