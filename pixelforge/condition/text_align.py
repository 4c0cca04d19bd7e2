"""Contrastive alignment of a text conditioner's token pooling with the training images, before a text
run's first step (`text_align_steps`).

Why: a denoiser learns to use a condition only once the condition already tells its cases apart. A
class label does from the first step (each class its own embedding): the shapes UNet given the place
as a label moved its output to the place within 250 steps. A prompt's place does not: in the frozen
encoder's states it is a small part of a long sentence, and a pooling learnt through the denoiser's
loss alone kept the nine places within a fifth of the spread it gave the colours after 1,500 steps,
while samples stayed at chance. Trained first to tell each image's caption from the other captions of
a batch (CLIP's symmetric InfoNCE loss, Radford et al. 2021), against a small image encoder that sees
where things are, the pooling must separate every attribute visible in the images, the place included,
and is then frozen: the denoiser starts from a condition that separates its cases the way a label
does. It uses only the run's own images and captions (all their wordings); the image encoder is thrown
away afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.common import seeded_init
from ..progress import stage_bar

ALIGN_BATCH = 256  # image-caption pairs per step (fewer where the data has fewer images)
ALIGN_LR = 1e-3
_GRID = 4  # the image encoder's last feature map, flattened whole so that where a thing is counts


class _ImageEncoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, dim): stride-2 convolutions down to 4x4 (average-pooled to 4x4 for
    sizes that do not halve there), flattened rather than pooled, so the place is kept."""

    def __init__(self, channels: int, size: int, dim: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.GELU()]
        side, c = size, width
        while side > _GRID:
            layers += [nn.Conv2d(c, min(4 * width, 2 * c), 3, stride=2, padding=1), nn.GELU()]
            c, side = min(4 * width, 2 * c), (side + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * _GRID * _GRID, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.features(x), _GRID)  # (B, c, 4, 4)
        return self.head(h.flatten(1))


def align_token_pool(pool: nn.Module, images: torch.Tensor, pooled_tokens, wordings: torch.Tensor,
                     counts: torch.Tensor, *, steps: int, seed: int, device: torch.device,
                     progress: bool = True) -> float:
    """Train `pool` (a TokenAttentionPool: tokens (B, T, D), mask (B, T) -> (B, dim)) in place to match
    images to their captions; returns the last step's loss (ln(batch) is chance).

    images: (N, C, H, W) float in [-1, 1], the training images as the model sees them;
    pooled_tokens: (tokens (M, T, D), mask (M, T)), the embedded wordings;
    wordings (N, K), counts (N,): the rows of image i's wordings are wordings[i, :counts[i]].
    Each step draws a batch of images and one wording of each from a generator seeded with `seed`, so
    the result depends on the seed and the data alone.
    """
    tokens, mask = pooled_tokens
    n = images.shape[0]
    batch = min(ALIGN_BATCH, n)
    if batch < 2:
        raise ValueError(f"text alignment needs at least 2 training images, got {n}")
    dim = pool.out.out_features
    with seeded_init(seed):
        encoder = _ImageEncoder(images.shape[1], images.shape[-1], dim).to(device)
    log_scale = torch.tensor(float(torch.log(torch.tensor(10.0))), device=device, requires_grad=True)
    params = [*encoder.parameters(), *pool.parameters(), log_scale]
    was = [p.requires_grad for p in pool.parameters()]
    pool.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=ALIGN_LR, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    target = torch.arange(batch, device=device)
    loss = torch.tensor(float("nan"))
    bar = stage_bar(steps, "aligning text with images", unit="step", enabled=progress)
    try:
        for _ in range(steps):
            idx = torch.randperm(n, generator=gen)[:batch]  # (B,)
            k = (torch.rand(batch, generator=gen) * counts[idx]).long().clamp_(max=wordings.shape[1] - 1)
            rows = wordings[idx, k]  # (B,) one wording of each image
            z_image = F.normalize(encoder(images[idx].to(device)), dim=-1)  # (B, dim)
            z_text = F.normalize(pool(tokens[rows].to(device), mask[rows].to(device)), dim=-1)  # (B, dim)
            logits = z_image @ z_text.T * log_scale.exp().clamp(max=100.0)  # (B, B)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        bar.close()
        for p, g in zip(pool.parameters(), was):
            p.requires_grad_(g)
    return float(loss.item())
