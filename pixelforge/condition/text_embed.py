"""A prompt's encoder outputs -> what a network takes: a vector added to its noise-level (or latent)
embedding and, for networks with cross-attention, a sequence of condition tokens."""

from __future__ import annotations

import torch
from torch import nn


class TextConditioner(nn.Module):
    """pooled (B, text_dim), tokens (B, T, text_dim), mask (B, T), present (B,) -> vector (B, vector_dim),
    and where context_dim > 0 tokens (B, 1 + T, context_dim) with their mask (B, 1 + T).

    A sample whose prompt is absent (`present` False: the empty condition of classifier-free guidance,
    or a dropped one in training) gets a learned "no prompt" vector, and its tokens are nothing but a
    learned "no prompt" token. That token leads every sequence, so attention always has a token to
    attend to.
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
        self, pooled: torch.Tensor, tokens: torch.Tensor | None, mask: torch.Tensor | None, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        present = present.bool()  # (B,)
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


# Bounds of the text fields a family's config carries (models/limits.py check_bounds): the encoder's
# width (0: no text conditioning) and its fixed token length.
TEXT_BOUNDS = {"text_dim": (0, 4096), "text_tokens": (2, 512)}


def check_text_fields(config) -> None:
    """text_encoder (a name or local folder) and text_dim (its width) go together: both or neither."""
    if not isinstance(config.text_encoder, str):
        raise ValueError(f"text_encoder must be a text encoder's name or folder, got {config.text_encoder!r}")
    if bool(config.text_encoder) != bool(config.text_dim):
        raise ValueError("text_encoder and text_dim go together: set both (text conditioning) or neither, "
                         f"got {config.text_encoder!r} and {config.text_dim}")


def text_inputs(cond, b: int, text_dim: int, device: torch.device):
    """A Cond's prompt as TextConditioner's arguments (pooled, tokens, mask, present) for B samples;
    a Cond without text (or none at all) is the absent prompt for every sample."""
    if cond is None or cond.text is None:
        return (torch.zeros(b, text_dim, device=device), torch.zeros(b, 0, text_dim, device=device),
                torch.zeros(b, 0, dtype=torch.bool, device=device), torch.zeros(b, dtype=torch.bool, device=device))
    tokens, mask = cond.text_tokens, cond.text_mask
    if tokens is None:
        tokens, mask = cond.text.new_zeros(b, 0, text_dim), torch.zeros(b, 0, dtype=torch.bool, device=device)
    return cond.text, tokens, mask, cond.present
