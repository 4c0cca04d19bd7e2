"""A GPT-style transformer over token sequences (Radford et al. 2019; laid out as in nanoGPT): token and
learned position embeddings, pre-norm blocks, a linear head. causal=True is an autoregressive model
(decoded one token at a time with a key/value cache); causal=False a bidirectional one (MaskGIT)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# One [keys, values] pair per block, each (B, nh, T_past, hs); an empty list before the first call.
KVCache = list[list[torch.Tensor]]


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal: position t attends to positions <= t only."""

    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
        if cache is not None:
            if cache:  # keys and values of the tokens before these ones
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        past = k.shape[2] - t
        if self.causal and past and t > 1:
            raise ValueError("a causal model extends a key/value cache one token at a time")
        # With a cache and one new token, that token may see every cached one: no mask is needed.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal and past == 0)  # (B, nh, T, hs)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class TokenTransformer(nn.Module):
    """tokens (B, T) in [0, vocab_size) -> logits (B, T, num_outputs); T <= seq_len.

    The head starts at zero, so an untrained model predicts the uniform distribution over its outputs.
    """

    def __init__(self, *, vocab_size: int, num_outputs: int, seq_len: int, d_model: int = 128, depth: int = 4,
                 heads: int = 4, causal: bool = True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} must be divisible by heads {heads}")
        self.seq_len, self.causal = seq_len, causal
        self.tok_embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(seq_len, d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads, causal) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_outputs)
        # GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1 / sqrt(2 * depth).
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * depth))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * depth))
        nn.init.zeros_(self.head.weight)

    def new_cache(self) -> KVCache:
        return [[] for _ in self.blocks]

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """With a cache, tokens continue the sequence the cache holds (positions start after it).

        prefix: a condition vector (B, d_model) added to the embedding of position 0 (the start token),
        so every later position sees it through attention; ignored when position 0 is not among tokens."""
        start = cache[0][0].shape[2] if cache and cache[0] else 0
        t = tokens.shape[1]
        if start + t > self.seq_len:
            raise ValueError(f"sequence of {start + t} tokens is longer than seq_len {self.seq_len}")
        h = self.tok_embed(tokens) + self.pos_embed[start : start + t]  # (B, T, D)
        if prefix is not None and start == 0:
            h = torch.cat([h[:, :1] + prefix[:, None].to(h.dtype), h[:, 1:]], dim=1)
        for i, block in enumerate(self.blocks):
            h = block(h, cache[i] if cache is not None else None)
        return self.head(self.ln_f(h))  # (B, T, num_outputs)
