"""What several families share: the per-image seed list, seeded weight initialisation that leaves
torch's global random state alone, categorical draws by inverting the CDF, and the discretised
logistic likelihood of 8-bit pixels."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

HALF_BIN = 1.0 / 255.0  # half the distance between neighbouring 8-bit levels in [-1, 1]


def check_seeds(n: int, seed: int, seeds: list[int] | None) -> list[int]:
    """The seed of each of n images: seeds as given (one per image, checked), else seed + i."""
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds given for {n} images")
    return seeds


def autoencoder_edit(image: torch.Tensor, edited: torch.Tensor, reconstruction: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """An autoencoder family's edit (VAE, VQ-VAE), images (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1]:
    the input plus the change the edit made in the latent space (decoded edit minus decoded input), within
    the mask (B, 1, H, W), 1: repaint; everywhere without one). Adding the change rather than taking the
    decoded edit keeps what the autoencoder cannot reproduce (fine detail), so strength 0, where the
    edit is the input's own latent, returns the input exactly, and kept pixels are the input's own."""
    change = edited - reconstruction
    if mask is not None:
        change = change * mask
    return (image + change).clamp(-1, 1)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Weights created inside draw from torch's CPU generator seeded with `seed`; torch's global random
    state is restored on exit, so building a model never changes what later code draws."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor, *, scale_u: bool = False) -> torch.Tensor:
    """Categorical draws by inverting the CDF: probs (..., K) non-negative rows, u (...) uniform in [0, 1)
    -> (...) int64, the first index whose cumulative probability exceeds u (so a zero-probability entry
    is never drawn). scale_u: u is taken as a share of the row's summed mass (rows that do not sum to
    exactly 1 after rounding or top-k filtering)."""
    cdf = probs.cumsum(dim=-1)
    target = u * cdf[..., -1] if scale_u else u
    idx = torch.searchsorted(cdf, target.unsqueeze(-1).contiguous(), right=True)[..., 0]
    return idx.clamp_max(probs.shape[-1] - 1)


def discretized_logistic_logprob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for 8-bit values x in [-1, 1] under a logistic(mean, scale) discretised into
    the bins [x - 1/255, x + 1/255], the end bins open to infinity (PixelCNN++, Salimans et al. 2017, eq. 2).

    Middle bins use sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)) in log space,
    exact and stable wherever the bin sits in the tails; the 256 probabilities sum to 1.
    """
    centred = x - mean
    inv_s = torch.exp(-log_scale)
    plus = inv_s * (centred + HALF_BIN)  # upper bin edge
    minus = inv_s * (centred - HALF_BIN)  # lower bin edge
    middle = F.logsigmoid(plus) + F.logsigmoid(-minus) + torch.log(-torch.expm1(minus - plus))
    return torch.where(x < -1 + HALF_BIN, F.logsigmoid(plus), torch.where(x > 1 - HALF_BIN, F.logsigmoid(-minus), middle))
