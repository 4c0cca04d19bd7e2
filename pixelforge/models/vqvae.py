"""VQ-VAE family: a vector-quantised autoencoder (van den Oord et al. 2017, "Neural Discrete Representation
Learning") whose grids of code indices are the tokens that the transformer family models.

Use on its own (what a token model needs):

    vq = VQVAEModel(config)                      # or a trained one: pixelforge.load(run).model
    idx = vq.encode_indices(x)                   # (B, latent_side, latent_side) int64 in [0, codebook_size)
    x_hat = vq.decode_indices(idx)               # (B, C, H, W) in [-1, 1]

A VQ-VAE alone has no prior over code grids. So that it still keeps the family contract, `sample()`
draws each grid position independently from the code frequencies seen at that position during
training (a per-position unigram prior): the images show what the codes can express, not convincing
samples. The transformer family, trained on `encode_indices` of the data, is the real prior.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..condition import Cond
from ..sampling import PerSampleGenerator
from .nets.autoencoder import Decoder, Encoder
from .common import autoencoder_edit, check_seeds, seeded_init
from .family import FamilyModule, NetworkCall
from .limits import BLOCKS, IMAGE_SIZE, WIDTH, check_bounds
from ..distributed import all_gather_cat, broadcast_module_state_
from .optim import OptimConfig
from .options import OptionSpec

CODEBOOK_UPDATES = ("ema", "loss")


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape of the autoencoder and settings of its codebook.

    downsample: the side shrinks by this factor (a power of 2) from image to code grid: 28x28 images
        with 4 give a 7x7 grid, 8x8 images with 2 a 4x4 grid. Each halving doubles the width.
    base_channels: width at full resolution; num_res_blocks: residual blocks per resolution.
    codebook_size: K, the number of codes (the token vocabulary); code_dim: D, the length of a code.
    beta: weight of the commitment term ||z_e - sg(e)||^2 (eq. 3; 0.25 in the paper).
    codebook_update: "ema" - each code is the exponential moving average of the encoder outputs
        assigned to it (paper appendix A.1), no gradient; "loss" - codes are parameters trained by the
        codebook term ||sg(z_e) - e||^2 of eq. 3. The encoder gets the straight-through gradient in both.
    ema_decay: decay of the EMA codebook and of the usage statistics (code counts, per-position frequencies).
    dead_code_threshold: a code whose average usage falls below this share of the uniform usage
        (1/K of a batch's encoder outputs) is restarted at a random encoder output of the batch (as in
        Jukebox, Dhariwal et al. 2020), so the codebook does not collapse onto a few codes; 0: off.
    """

    image_size: int = 32
    channels: int = 3
    base_channels: int = 32
    num_res_blocks: int = 1
    downsample: int = 4
    codebook_size: int = 256
    code_dim: int = 32
    beta: float = 0.25
    codebook_update: str = "ema"
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.03

    # Size fields and their valid ranges (limits.py).
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "base_channels": WIDTH, "num_res_blocks": BLOCKS, "downsample": (1, 64),
        "codebook_size": (2, 65_536), "code_dim": (1, 4096),
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of 2 (1, 2, 4, 8, ...), got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by downsample {self.downsample}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook_update must be one of: {', '.join(CODEBOOK_UPDATES)}; got {self.codebook_update!r}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.beta < 0:
            raise ValueError(f"beta must not be negative, got {self.beta}")
        if not 0 <= self.dead_code_threshold < 1:
            raise ValueError(f"dead_code_threshold must be in [0, 1), got {self.dead_code_threshold}")


def _choose(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """k indices into range(n): distinct when k <= n."""
    if k <= n:
        return torch.randperm(n, generator=generator, device=generator.device)[:k]
    return torch.randint(0, n, (k,), generator=generator, device=generator.device)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup in a codebook of K vectors, with EMA updates, usage statistics and
    dead-code restarts. Every piece of state is a registered buffer (or, with update="loss", the
    codebook parameter), so checkpoints hold all of it and a resumed run continues exactly.
    """

    def __init__(self, codebook_size: int, code_dim: int, *, update: str, decay: float,
                 dead_code_threshold: float, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.update, self.decay, self.eps = update, decay, eps
        self.dead_code_threshold = dead_code_threshold
        init = torch.randn(codebook_size, code_dim)  # replaced by encoder outputs at the first training step
        if update == "ema":
            self.register_buffer("codebook", init)  # (K, D) = embed_sum / smoothed cluster_size
            self.register_buffer("embed_sum", init.clone())  # (K, D) EMA of the sum of outputs assigned to each code
        else:
            self.codebook = nn.Parameter(init)
        # (K,) EMA of how many encoder outputs each code received per batch: usage, and the EMA denominator.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> (N,) int64 index of the closest code (squared Euclidean distance), in fp32 even
        under bf16 autocast (train.precision), whose rounding would blur which code is closest."""
        e = self.codebook.detach()
        z = z.float()
        with torch.autocast(z.device.type, enabled=False):
            dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(1)[None]  # (N, K)
        return dist.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices of any shape -> their code vectors (*idx.shape, D)."""
        return F.embedding(idx, self.codebook)

    @torch.no_grad()
    def initialize(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Data-dependent start: codes are random encoder outputs of the first batch, each counted as
        used its uniform share, so no code begins far from the data (and dead)."""
        n = z.shape[0]
        self.codebook.data.copy_(z[_choose(n, self.codebook_size, generator)])
        self.cluster_size.fill_(n / self.codebook_size)
        if self.update == "ema":
            self.embed_sum.copy_(self.codebook * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def update_statistics(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Fold one batch of encoder outputs z (N, D) and their codes idx (N,) into the EMAs; returns the
        batch's counts (K,). With update="ema" the codes become embed_sum / cluster_size, the counts
        Laplace-smoothed so an unused code never divides by zero (as in Sonnet's VectorQuantizerEMA)."""
        onehot = F.one_hot(idx, self.codebook_size).to(z.dtype)  # (N, K)
        counts = onehot.sum(0)
        self.cluster_size.lerp_(counts, 1 - self.decay)
        if self.update == "ema":
            self.embed_sum.lerp_(onehot.t() @ z, 1 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        return counts

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Move each code used less than dead_code_threshold of its uniform share to a random encoder
        output of the batch z (N, D); returns the restarted indices. A restarted code counts as used at
        the threshold, so one that still wins no outputs is moved again at the next step."""
        if self.dead_code_threshold <= 0:
            return torch.zeros(0, dtype=torch.long, device=z.device)
        floor = self.dead_code_threshold * z.shape[0] / self.codebook_size
        dead = (self.cluster_size < floor).nonzero().flatten()
        if len(dead):
            new = z[_choose(z.shape[0], len(dead), generator).to(z.device)]
            self.codebook.data[dead] = new
            self.cluster_size[dead] = floor
            if self.update == "ema":
                self.embed_sum[dead] = new * floor
        return dead


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution given by counts (K,): 1 (one code) .. K (all equally)."""
    p = counts / counts.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


class VQVAEModel(FamilyModule):
    """x -> encoder -> z_e -> nearest code e -> decoder -> x_hat, trained with
    ||x - x_hat||^2 + beta ||z_e - sg(e)||^2 (+ ||sg(z_e) - e||^2 with codebook_update="loss")
    and the straight-through gradient through the quantiser (paper eq. 3)."""

    Config = VQVAEConfig
    family = "vqvae"
    default_lr = 5e-4  # the CLI's --lr when not given
    capabilities = ("edit",)
    inputs: tuple[str, ...] = ()  # unconditional: it takes no Cond field
    # No sampling options: sample() draws from the per-position code frequencies (see the module docstring).
    option_specs: tuple[OptionSpec, ...] = ()
    sample_options: dict = {}
    # The options edit() takes, declared like the sampling options.
    edit_option_specs = (
        OptionSpec("strength", "float", 0.5, min=0.0, max=1.0,
                   help="the share of code positions redrawn from the per-position code prior (within the mask when "
                        "one is given): 0 returns the input, 1 redraws every one"),
    )

    # What a compressed run replaces (compress/): the decoder on quantised codes (sampling, edit) and the encoder
    # (edit); the nearest-code search and the codebook stay in PyTorch between them.
    network_call = NetworkCall("decode_latents", ("e",), ("decoder",))
    other_calls = (NetworkCall("encode", ("x",), ("encoder",), ("z_e",)),)

    def __init__(self, config: VQVAEConfig, optim: OptimConfig | None = None, *, seed: int = 0,
                 seed_weights: bool = True):
        """seed_weights=False draws the initial weights from the random stream as it is: for a family
        that builds this model as a part, inside its own seeded_init (the transformer)."""
        super().__init__(seed)  # self.train_generator draws: codebook initialisation, dead-code restarts
        self.config = config
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed) if seed_weights else contextlib.nullcontext():  # weight initialisation only
            self._build(config)

    def _build(self, config: VQVAEConfig) -> None:
        """The networks and the codebook, their initial values drawn from the current random stream."""
        levels = int(math.log2(config.downsample))
        net = dict(base_channels=config.base_channels, channel_mult=tuple(2**i for i in range(levels + 1)),
                   num_res_blocks=config.num_res_blocks)
        self.encoder = Encoder(config.channels, config.code_dim, **net)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim, update=config.codebook_update,
                                         decay=config.ema_decay, dead_code_threshold=config.dead_code_threshold)
        self.decoder = Decoder(config.code_dim, config.channels, **net)
        # (h * w, K) EMA of how often each code appears at each grid position: the prior sample() draws from.
        self.register_buffer("code_frequencies", torch.zeros(self.latent_side**2, config.codebook_size))

    # --- the tokeniser: what the transformer family uses ------------------------------------------
    @property
    def codebook_size(self) -> int:
        """K: code indices are 0..K-1."""
        return self.config.codebook_size

    @property
    def latent_side(self) -> int:
        """Side of the code grid: image_size // downsample."""
        return self.config.image_size // self.config.downsample

    def encode(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> encoder outputs z_e (B, D, h, w), before quantisation. cond is
        ignored (unconditional): it is there for the network-call signature compress/ exports."""
        return self.encoder(x)

    def decode_latents(self, e: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """Quantised codes e (B, D, h, w) -> decoder outputs (B, C, H, W), before the clamp. cond is ignored."""
        return self.decoder(e)

    def example_call_inputs(self, method: str, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Example arguments of `decode_latents` (codebook vectors at random codes) or `encode` (images uniform
        in [-1, 1]) for a batch of b (compress/: export and parity), on the CPU."""
        c = self.config
        if method == "encode":
            return {"x": torch.rand(b, c.channels, c.image_size, c.image_size, generator=generator) * 2 - 1}
        idx = torch.randint(c.codebook_size, (b, self.latent_side, self.latent_side), generator=generator)
        return {"e": self.quantizer.lookup(idx.to(self.device)).permute(0, 3, 1, 2).detach().cpu()}

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_e (B, D, h, w) -> (nearest codes e (B, D, h, w), their indices (B, h, w)).

        The search is not differentiable; e carries a gradient to the codebook only with codebook_update="loss"."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        idx = self.quantizer.nearest(flat.detach())
        return self.quantizer.lookup(idx).reshape(b, h, w, d).permute(0, 3, 1, 2), idx.reshape(b, h, w)

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> code indices (B, latent_side, latent_side), int64 in [0, K)."""
        return self.quantize(self.encode(x.to(self.device)))[1]

    @torch.no_grad()
    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) (or flattened, (B, h * w)) -> images (B, C, H, W) clamped to [-1, 1]."""
        idx = idx.to(self.device).long().reshape(idx.shape[0], self.latent_side, self.latent_side)
        e = self.quantizer.lookup(idx).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decode_latents(e).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """Images -> their quantised reconstructions (B, C, H, W) in [-1, 1]."""
        return self.decode_indices(self.encode_indices(x))

    # --- loss and training ----------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample terms of the loss (each (B,)), plus the encoder outputs and their codes."""
        z_e = self.encode(x)  # (B, D, h, w)
        e, idx = self.quantize(z_e)
        z_q = z_e + (e - z_e).detach()  # straight-through: the decoder's gradient flows to the encoder
        x_hat = self.decoder(z_q)
        terms = {
            "recon": (x_hat - x).square().flatten(1).mean(1),
            "commit": (z_e - e.detach()).square().flatten(1).mean(1),
        }
        if self.config.codebook_update == "loss":
            terms["codebook"] = (z_e.detach() - e).square().flatten(1).mean(1)
        terms["loss"] = terms["recon"] + self.config.beta * terms["commit"] + terms.get("codebook", 0.0)
        return {**terms, "z_e": z_e, "idx": idx}

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """One optimiser update, then the codebook's EMA update and dead-code restarts on the same batch."""
        self.train()
        q, gen = self.quantizer, self.train_generator
        # Distributed, the codebook's statistics, start and restarts see the whole batch of every process
        # (all_gather_cat: in rank order, the identity in one process), and a random choice is rank 0's for all.
        if not bool(q.initialized):
            with torch.no_grad():
                q.initialize(all_gather_cat(self.encode(x).permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)), gen)
            broadcast_module_state_(q)
        out = self.parallel(self._forward, x)
        loss = out["loss"].mean()
        grad_norm = self.update(self.optimizers()["net"], loss, step)

        # (B*h*w, D) in fp32: under bf16 autocast the encoder's output is bfloat16, the codebook statistics never are
        z = all_gather_cat(out["z_e"].detach().float().permute(0, 2, 3, 1).reshape(-1, self.config.code_dim))
        idx = all_gather_cat(out["idx"])  # (B, h, w)
        counts = q.update_statistics(z, idx.flatten())
        with torch.no_grad():
            position_freq = F.one_hot(idx.flatten(1), self.codebook_size).float().mean(0)  # (h*w, K)
            self.code_frequencies.lerp_(position_freq, 1 - self.config.ema_decay)
            dead = q.restart_dead_codes(z, gen)
            if len(dead):  # the same codes on every process: their statistics agree
                broadcast_module_state_(q)
            self.code_frequencies[:, dead] = 0  # a moved code no longer means what was counted
        figures = {"loss": float(loss.detach()), "grad_norm": grad_norm}
        figures.update({k: float(out[k].mean().detach()) for k in ("recon", "commit", "codebook") if k in out})
        figures.update(perplexity=perplexity(counts), used_codes=float((counts > 0).sum()), restarted=float(len(dead)))
        return figures

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Per-sample reconstruction MSE + beta * commitment (+ the codebook term), (B,); deterministic."""
        self.eval()
        return self._forward(x)["loss"]

    @torch.no_grad()
    def codebook_usage(self, x: torch.Tensor) -> dict[str, float]:
        """How the codes of a batch of images spread over the codebook: perplexity (1..K), used_codes
        (distinct codes), used_fraction (used_codes / K)."""
        idx = self.encode_indices(x)
        counts = torch.bincount(idx.flatten(), minlength=self.codebook_size).float()
        used = int((counts > 0).sum())
        return {"perplexity": perplexity(counts), "used_codes": used, "used_fraction": used / self.codebook_size}

    # --- sampling -------------------------------------------------------------------------------
    def _prior(self) -> torch.Tensor:
        """(h*w, K) the per-position code frequencies sample() draws from (uniform where none were seen)."""
        probs = self.code_frequencies.clone()
        probs[probs.sum(1) <= 0] = 1.0
        return probs

    @torch.no_grad()
    def edit(self, image: torch.Tensor, mask: torch.Tensor | None = None, *, strength: float = 0.5,
             cond: Cond | None = None, seed: int = 0, seeds: list[int] | None = None, callback=None) -> torch.Tensor:
        """Image to image by encode-decode: image (n, C, H, W) in [-1, 1] -> (n, C, H, W) in [-1, 1].

        Each code position of the input's grid is redrawn from the per-position prior with probability
        `strength` (image i's draws from seeds[i], default seed + i), only where the mask (n, 1, H, W; 1:
        repaint), max-pooled to the code grid, covers it when one is given; the result is the input plus the
        decoded change (models.common.autoencoder_edit). Strength 0 returns the input. cond is ignored."""
        self.eval()
        n = image.shape[0]
        seeds = check_seeds(n, seed, seeds)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        x = image.to(self.device)
        idx = self.encode_indices(x).flatten(1)  # (n, h*w)
        probs = self._prior()
        drawn, chosen = [], []
        for g in PerSampleGenerator(seeds, self.device).generators:
            drawn.append(torch.multinomial(probs, 1, generator=g)[:, 0])
            chosen.append(torch.rand(idx.shape[1], generator=g, device=self.device) < strength)
        redraw = torch.stack(chosen)  # (n, h*w) bool
        m = mask.to(self.device) if mask is not None else None
        if m is not None:
            redraw &= F.max_pool2d(m, self.config.downsample).flatten(1) > 0
        edited = torch.where(redraw, torch.stack(drawn), idx)
        out = autoencoder_edit(x, self.decode_indices(edited), self.decode_indices(idx), m)
        if callback is not None:
            callback(0, 1)
        return out

    @torch.no_grad()
    def sample(self, n: int, cond: Cond | None = None, *, seed: int = 0, seeds: list[int] | None = None,
               callback=None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1] decoded from code grids whose positions are drawn
        independently from the training code frequencies at that position (uniform before training).
        Image i uses seed + i (or seeds[i]) and nothing else. cond is ignored: the model is unconditional."""
        self.eval()
        seeds = check_seeds(n, seed, seeds)
        probs = self._prior()  # (h*w, K)
        gen = PerSampleGenerator(seeds, self.device)
        idx = torch.stack([torch.multinomial(probs, 1, generator=g)[:, 0] for g in gen.generators])  # (n, h*w)
        images = self.decode_indices(idx)
        if callback is not None:
            callback(0, 1)
        return images
