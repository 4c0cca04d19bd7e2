"""Plain GAN networks: a residual generator with class-conditional normalisation and a residual
discriminator with spectral normalisation and a projection head (after SNGAN, Miyato et al. 2018,
and the projection discriminator, Miyato & Koyama 2018). Both also take an optional condition vector
(a prompt's, B x vector_dim) the way they take a label: gains and shifts in G, a projection in D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def gan_levels(image_size: int) -> tuple[int, int]:
    """(start side, number of 2x levels): the generator starts at image_size halved while it stays even
    and at least 4 (32 -> 4 with 3 levels, 28 -> 7 with 2, 8 -> 4 with 1)."""
    side, levels = image_size, 0
    while side % 2 == 0 and side >= 8:
        side, levels = side // 2, levels + 1
    return side, levels


def gan_widths(image_size: int, base_channels: int) -> list[int]:
    """Channels at each level: base_channels at full size, doubling (up to 8x) each time the side halves.
    widths[k] belongs to side start * 2**k."""
    _, levels = gan_levels(image_size)
    return [base_channels * 2 ** min(levels - k, 3) for k in range(levels + 1)]


def _groups(ch: int) -> int:
    # GroupNorm with up to 32 groups of at least 8 channels (one group for tiny widths).
    for g in (32, 16, 8, 4, 2):
        if ch % g == 0 and ch // g >= 8:
            return g
    return 1


class ConditionalNorm(nn.Module):
    """GroupNorm without its own affine, then a per-class scale and shift: (1 + gamma_y) h + beta_y.

    GroupNorm rather than BigGAN's conditional BatchNorm: it normalises each image alone, so a
    sample never depends on the rest of its batch and training and sampling behave the same (no
    running statistics to drift from the EMA weights). An unconditional network has one "class".
    vector_dim > 0: a condition vector adds a linear map of itself to gamma and beta (BigGAN's
    shared-embedding form), zero at the start like the class table.
    """

    def __init__(self, ch: int, num_classes: int, vector_dim: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, affine=False)
        self.embed = nn.Embedding(max(num_classes, 1), 2 * ch)
        nn.init.zeros_(self.embed.weight)  # starts as plain GroupNorm
        self.vector = nn.Linear(vector_dim, 2 * ch) if vector_dim else None
        if self.vector is not None:
            nn.init.zeros_(self.vector.weight)
            nn.init.zeros_(self.vector.bias)

    @staticmethod
    def new_classes_row(source: torch.Tensor) -> torch.Tensor:
        """The row every class of a run of another class count starts from, given the table of the run it starts
        from (train/loop.py _init_from): the mean of that run's classes' gains and shifts. G has no "no label"
        row; the mean starts each new class halfway between the source's, none favoured."""
        return source.mean(dim=0, keepdim=True)

    def forward(self, h: torch.Tensor, y: torch.Tensor, vector: torch.Tensor | None = None) -> torch.Tensor:
        # h (B, C, H, W), y (B,) in 0..K-1, vector (B, vector_dim) or None
        gamma_beta = self.embed(y)  # (B, 2C)
        if self.vector is not None and vector is not None:
            gamma_beta = gamma_beta + self.vector(vector)
        gamma, beta = gamma_beta[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + gamma) + beta


class GBlock(nn.Module):
    """Norm-ReLU-up-conv, norm-ReLU-conv, plus an upsampled 1x1 shortcut (SNGAN's generator block).
    up=False: the same at the same side, with an identity shortcut (the extra blocks of GANConfig.depth)."""

    def __init__(self, cin: int, cout: int, num_classes: int, vector_dim: int = 0, *, up: bool = True):
        super().__init__()
        self.up = up
        self.norm1 = ConditionalNorm(cin, num_classes, vector_dim)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = ConditionalNorm(cout, num_classes, vector_dim)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if up or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, vector: torch.Tensor | None = None) -> torch.Tensor:
        # (B, cin, S, S) -> (B, cout, 2S, 2S), or (B, cout, S, S) where not up
        h = F.relu(self.norm1(x, y, vector))
        if self.up:
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), y, vector)))
        return self.skip(x) + h


class Generator(nn.Module):
    """G(z, y, vector): z (B, z_dim), y (B,) class indices or None, vector (B, vector_dim) or None ->
    images (B, C, S, S) in [-1, 1]."""

    def __init__(self, *, image_size: int, channels: int, z_dim: int, base_channels: int, num_classes: int,
                 vector_dim: int = 0, depth: int = 1):
        super().__init__()
        self.num_classes = num_classes
        widths = gan_widths(image_size, base_channels)
        self.start = gan_levels(image_size)[0]
        self.fc = nn.Linear(z_dim, widths[0] * self.start**2)
        # each level: one block that doubles the side, then depth - 1 at the side it reached
        self.blocks = nn.ModuleList(GBlock(widths[k - 1] if j == 0 else widths[k], widths[k], num_classes, vector_dim, up=j == 0)
                                    for k in range(1, len(widths)) for j in range(depth))
        self.norm_out = nn.GroupNorm(_groups(widths[-1]), widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
        if y is None or self.num_classes == 0:
            y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)  # the one "class" of an unconditional G
        h = self.fc(z).reshape(z.shape[0], -1, self.start, self.start)  # (B, widths[0], start, start)
        for block in self.blocks:
            h = block(h, y, vector)
        return torch.tanh(self.conv_out(F.relu(self.norm_out(h))))


class DBlock(nn.Module):
    """ReLU-conv twice then 2x2 average pooling, plus a 1x1 shortcut; every weight spectrally normalised.

    The first block of the network takes raw pixels, so it skips the leading ReLU (SNGAN's
    "optimized block"). The shortcut pools before its 1x1 convolution: the two commute, and pooling
    first is cheaper. `extra` channels given to forward (the minibatch standard deviation's) are seen by the
    first convolution only, so the shortcut stays the identity where cin == cout.
    """

    def __init__(self, cin: int, cout: int, *, down: bool, first: bool = False, extra: int = 0):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = spectral_norm(nn.Conv2d(cin + extra, cout, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1)) if cin != cout or down else nn.Identity()

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, cin, S, S) and extra (B, extra, S, S) or None -> (B, cout, S/2, S/2) when down, else (B, cout, S, S)."""
        h = x if self.first else F.relu(x)
        if extra is not None:
            h = torch.cat([h, extra.to(h.dtype)], dim=1)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        return self.skip(x) + h


def minibatch_std(h: torch.Tensor, group: int, parts: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): a channel holding, for each group of images, the standard deviation of their
    features over the group, averaged over channels and positions (ProGAN/StyleGAN's minibatch standard deviation,
    Karras et al. 2018), for D to see beside the features. A generator that makes the same image whatever its z gives
    D a channel of zeros to tell it by.

    Groups are contiguous runs of the largest size <= group that divides N / parts: where h is `parts` equal parts
    one after the other (D judging B real and B generated images in one batch: parts 2), no group mixes two parts.
    """
    n = h.shape[0]
    if parts < 1 or n % parts:
        raise ValueError(f"minibatch_std: a batch of {n} does not split into {parts} equal parts")
    g = max(k for k in range(1, min(group, n // parts) + 1) if (n // parts) % k == 0)
    x = h.float().reshape(n // g, g, *h.shape[1:])  # (N/g, g, C, H, W)
    # the variance written out: torch's var over this middle dimension took 10 ms a call on a 2-core CPU (a latent
    # GAN's training step took 1.32x as long with it); written out, it is not among the profiler's largest items
    var = (x - x.mean(dim=1, keepdim=True)).square().mean(dim=1)  # (N/g, C, H, W)
    s = (var + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (N/g,)
    return s.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, *h.shape[2:])  # (N, 1, H, W) float32


class Discriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)>: the projection discriminator (Miyato & Koyama 2018).

    phi(x) (B, C) is the ReLU feature map summed over space; labels -1 ("no label") and an
    unconditional D use the first term alone. vector_dim > 0 adds the same projection term for a
    condition vector v (B, vector_dim): <W v, phi(x)>, W spectrally normalised like the class table.
    mbstd_group > 0 gives the last block (at the smallest side) minibatch_std's channel too.
    Returns one logit per image (B,).
    """

    def __init__(self, *, image_size: int, channels: int, base_channels: int, num_classes: int, vector_dim: int = 0,
                 depth: int = 1, mbstd_group: int = 0):
        super().__init__()
        self.num_classes, self.mbstd_group = num_classes, mbstd_group
        widths = gan_widths(image_size, base_channels)
        blocks, cin = [], channels
        for k in range(len(widths) - 1, 0, -1):  # side start * 2**k -> start * 2**(k-1)
            for _ in range(depth - 1):  # depth - 1 blocks at this side, then the one that halves it
                blocks.append(DBlock(cin, widths[k], down=False, first=not blocks))
                cin = widths[k]
            blocks.append(DBlock(cin, widths[k - 1], down=True, first=not blocks))
            cin = widths[k - 1]
        # one more block at the start side, on the minibatch standard deviation's channel too where there is one
        blocks.append(DBlock(cin, widths[0], down=False, first=not blocks, extra=1 if mbstd_group else 0))
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(widths[0], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[0])) if num_classes > 0 else None
        self.vector = spectral_norm(nn.Linear(vector_dim, widths[0], bias=False)) if vector_dim else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, vector: torch.Tensor | None = None,
                parts: int = 1) -> torch.Tensor:
        """parts: x is that many equal batches one after the other (real, then generated): minibatch_std's groups
        stay within each."""
        h = self.blocks[:-1](x)  # (B, C', S, S) at the smallest side
        extra = minibatch_std(h, self.mbstd_group, parts) if self.mbstd_group else None
        phi = F.relu(self.blocks[-1](h, extra)).sum(dim=(2, 3))  # (B, C)
        out = self.linear(phi).squeeze(1)  # (B,)
        if self.embed is not None and y is not None:
            has_label = (y >= 0).to(phi.dtype)
            out = out + has_label * (self.embed(y.clamp(min=0)) * phi).sum(dim=1)
        if self.vector is not None and vector is not None:
            out = out + (self.vector(vector) * phi).sum(dim=1)
        return out
