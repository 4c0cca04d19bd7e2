"""Autoencoder family: the KL-regularised first stage of latent diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", sec. 3.1 and appendix G: "KL-f4"), trained as a run of its own
and then frozen inside a diffusion run (`--set latent=RUN`, models/diffusion.py).

The loss of one image, per pixel of D = C*H*W:

    |x - x_hat|_1 / D  +  edge_weight * |grad x - grad x_hat|_1 / D  +  kl_weight * KL(q(z|x) || N(0, I)) / D

with x_hat decoded from a z drawn from q(z|x). kl_weight defaults to LDM's 1e-6 (its KL is summed over the
latent and its reconstruction over the pixels, so dividing both by D keeps LDM's balance): the KL only keeps
the latents from drifting to huge values, it does not make them N(0, I); latent diffusion rescales them by
the std it measures on the data (DiffusionConfig.latent).

Why an image-gradient L1 term and neither LPIPS nor a discriminator: an L1 (or L2) loss alone averages what
it cannot place exactly and blurs edges; LDM keeps them sharp with LPIPS and a patch GAN. LPIPS needs VGG or
AlexNet weights, which nothing here may download; a patch discriminator needs a second network and
optimiser, a warm-up and an adaptive weight, doubles the cost of a step and is the least stable part of
the recipe on a CPU budget of minutes. The L1 distance between the images' horizontal and vertical
differences (finite differences: one subtraction each, so no filter library is worth a dependency) costs
almost nothing, is deterministic, and penalises exactly a blurred or displaced edge. docs/latent.md says
what it gives and what is left (the discriminator).

An autoencoder alone has no prior over its latents. So that it keeps the family contract, `sample()`
decodes z ~ N(m, s^2) per latent channel, m and s the running mean and std of the training latents (buffers):
these are NOT meant as samples (they show what the decoder makes of typical latent values); the diffusion
family trained in its latent space is the generator. `reconstruct` (the capability "reconstruct") is what
this family is for; `pixelforge evaluate` adds the held-out PSNR and SSIM of a run that has it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..condition import Cond
from ..distributed import all_gather_cat
from ..fields import from_fields
from ..sampling import PerSampleGenerator
from .common import check_seeds, seeded_init
from .family import FamilyModule
from .limits import BLOCKS, CHANNEL_MULT, IMAGE_SIZE, LEVELS, WIDTH, check_bounds
from .nets.autoencoder import KLAutoencoder
from .optim import OptimConfig
from .options import OptionSpec

STATS_DECAY = 0.99  # running mean and std of the training latents (what sample() draws from)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder and weights of its loss (see the module docstring).

    channel_mult: widths per resolution; the side shrinks 2 ** (len(channel_mult) - 1) times (the default
        (1, 2, 2): 4x, LDM's f4, so 32x32 RGB images become 8x8x4 latents).
    latent_channels: channels of the latent grid (LDM's KL-f4: 3; the default 4 as in Stable Diffusion).
    kl_weight: weight of the KL term per pixel (LDM: 1e-6).
    edge_weight: weight of the L1 distance between the images' finite differences (0: plain L1).
    """

    image_size: int = 32
    channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    kl_weight: float = 1e-6
    edge_weight: float = 1.0

    # Size fields and their valid ranges (limits.py).
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "base_channels": WIDTH, "channel_mult": (LEVELS, CHANNEL_MULT),
        "num_res_blocks": BLOCKS, "latent_channels": (1, 64),
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)  # also turns JSON's lists into tuples
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by {self.downsample} for channel_mult "
                             f"{self.channel_mult}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("kl_weight", "edge_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number of at least 0, got {value!r}")

    @property
    def downsample(self) -> int:
        """f: image side / latent side."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_side(self) -> int:
        return self.image_size // self.downsample


def make_first_stage(c: AutoencoderConfig) -> KLAutoencoder:
    """The encoder-decoder network an AutoencoderConfig describes (the autoencoder family's `net`, and the
    frozen `autoencoder` of a latent diffusion model)."""
    return KLAutoencoder(c.channels, c.latent_channels, base_channels=c.base_channels, channel_mult=c.channel_mult,
                         num_res_blocks=c.num_res_blocks)


def check_latent_fields(config) -> None:
    """A model config's `latent` (the autoencoder run it was made on) and `autoencoder` (that run's config, or
    None): latent a string; autoencoder None (then latent empty) or the fields of an AutoencoderConfig of the
    config's own image_size and channels, which it becomes (frozen and hashable, so configs compare equal however
    it was written). Every family that works in an autoencoder's latents (diffusion, the GAN) checks them so."""
    if not isinstance(config.latent, str):
        raise ValueError(f"latent must be the name or folder of an autoencoder run, got {config.latent!r}")
    if config.autoencoder is None:
        if config.latent:
            raise ValueError(f"latent {config.latent!r}: the autoencoder's config is read from that run when a run is "
                             "created (pixelforge train ... --set latent=RUN, pixelforge.runs.new_run_config)")
        return
    if not isinstance(config.autoencoder, (AutoencoderConfig, dict)):
        raise ValueError(f"autoencoder must be an object of autoencoder config fields or null, got {config.autoencoder!r}")
    ae = dataclasses.asdict(config.autoencoder) if isinstance(config.autoencoder, AutoencoderConfig) else dict(config.autoencoder)
    for name in ("image_size", "channels"):
        if ae.setdefault(name, getattr(config, name)) != getattr(config, name):
            raise ValueError(f"autoencoder {name} {ae[name]} differs from the model's {getattr(config, name)}: the "
                             "autoencoder must be trained on images of the run's size and channels")
    object.__setattr__(config, "autoencoder", from_fields(AutoencoderConfig, ae, "autoencoder"))


def latent_shape(config) -> tuple[int, int, int]:
    """(C, H, W) of what a model config's network sees: its autoencoder's latents, or its images without one."""
    ae = config.autoencoder
    if isinstance(ae, AutoencoderConfig):
        return ae.latent_channels, ae.latent_side, ae.latent_side
    return config.channels, config.image_size, config.image_size


LATENT_CACHE_BYTES = 256 * 2**20  # at most this many bytes of cached latents per model (then images are encoded as before)


class LatentCache:
    """A frozen first stage's posterior means of the training images, computed once an image (a model in latents).

    A model in an autoencoder's latents encodes every training batch, and the same images come back every epoch
    through an encoder that does not change: keeping each image's mean, keyed by a hash of its pixels, saves
    the encoder's forward pass on every later step (on a CPU about a third of a latent GAN's step at 32x32).
    An image that augmentation changed is another key. Each image is encoded alone, in a batch of one: a
    convolution's result can differ in its last bits with the batch size, so encoding alone makes an image's
    latents the same whatever batch it first came in, and a resumed run (which starts with an empty cache) trains
    on the very latents an uninterrupted one did. Past `max_bytes` new images are still encoded alone and not
    kept. Not saved, and a copy of the model (the trainer's EMA copy) starts with an empty cache."""

    def __init__(self, max_bytes: int = LATENT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._means: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self.encoded = 0  # images the encoder ran on (the misses), for tests and figures

    def __deepcopy__(self, memo) -> "LatentCache":
        return type(self)(self.max_bytes)

    def __len__(self) -> int:
        return len(self._means)

    @torch.no_grad()
    def means(self, first_stage: KLAutoencoder, x: torch.Tensor) -> torch.Tensor:
        """Images x (B, C, H, W) -> the means of q(z|x) (B, c, h, w) in float32, on the first stage's device."""
        device = next(first_stage.parameters()).device
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = []
        for image, array in zip(x, pixels):
            key = hashlib.blake2b(array.tobytes(), digest_size=16).digest()
            mean = self._means.get(key)
            if mean is None:
                mean = first_stage.eval().encode(image[None].to(device, torch.float32))[0][0].float()  # (c, h, w)
                self.encoded += 1
                size = mean.numel() * mean.element_size()
                if self._bytes + size <= self.max_bytes:
                    self._means[key] = mean
                    self._bytes += size
            out.append(mean)
        return torch.stack(out)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of x (B, C, H, W) along the width (B, C, H, W - 1) and the height (B, C, H - 1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class AutoencoderModel(FamilyModule):
    """q(z|x) and a decoder trained on L1 + edge L1 + a tiny KL; the first stage of latent diffusion."""

    Config = AutoencoderConfig
    family = "autoencoder"
    default_lr = 1e-3  # the CLI's --lr when not given
    capabilities = ("reconstruct",)
    inputs = ()  # unconditional: it encodes whatever it is given
    option_specs: tuple[OptionSpec, ...] = ()
    sample_options: dict = {}
    sample_note = ("an autoencoder's samples are decoded random latents, not meant as images: train a diffusion run "
                   "in its latents (pixelforge train DATA --set latent=RUN; a GAN too, with --model gan) to generate; "
                   "pixelforge evaluate RUN gives its reconstruction PSNR and SSIM")

    def __init__(self, config: AutoencoderConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)  # self.train_generator draws the posterior samples
        self.config = config
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed):  # weight initialisation only
            self.net = make_first_stage(config)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))  # (latent_channels,)
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    def per_sample_terms(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The loss terms of each image, (B,) each, per pixel (see the module docstring), and the posterior means."""
        cfg = self.config
        mean, logvar = self.net.encode(x)  # (B, c, h, w) each
        eps = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
        x_hat = self.net.decode(mean + (0.5 * logvar).exp() * eps)  # (B, C, H, W)
        dims = x[0].numel()
        l1 = (x - x_hat).abs().flatten(1).mean(1)
        (gx, gy), (hx, hy) = image_gradients(x), image_gradients(x_hat)
        edge = ((gx - hx).abs().flatten(1).sum(1) + (gy - hy).abs().flatten(1).sum(1)) / dims
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1) / dims
        loss = l1 + cfg.edge_weight * edge + cfg.kl_weight * kl
        return {"loss": loss, "l1": l1, "edge": edge, "kl": kl, "mean": mean.detach()}

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """One update on the batch's mean loss; also moves the running latent statistics sample() uses."""
        self.train()
        terms = self.parallel(self.per_sample_terms, x, self.train_generator)
        loss = terms["loss"].mean()
        grad_norm = self.update(self.optimizers()["net"], loss, step)
        with torch.no_grad():  # over every process's batch, so all hold the same buffers
            z = all_gather_cat(terms["mean"].float()).transpose(0, 1).flatten(1)  # (latent_channels, B * h * w)
            self.latent_mean.lerp_(z.mean(1), 1 - STATS_DECAY)
            self.latent_std.lerp_(z.std(1), 1 - STATS_DECAY)
        means = {k: float(terms[k].detach().mean()) for k in ("l1", "edge", "kl")}
        return {"loss": float(loss.detach()), **means, "grad_norm": grad_norm}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Per-sample training loss (B,) with the posterior draws from generator."""
        self.eval()
        return self.per_sample_terms(x, generator)["loss"]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> decoded posterior means (B, C, H, W) in [-1, 1]."""
        self.eval()
        mean, _ = self.net.encode(x.to(self.device))
        return self.net.decode(mean).clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, cond: Cond | None = None, *, seed: int = 0, seeds: list[int] | None = None,
               callback=None) -> torch.Tensor:
        """n decodings (n, C, H, W) in [-1, 1] of z ~ N(latent_mean, latent_std^2) per channel; image i uses
        seed + i (or seeds[i]). Not meant as samples (see the module docstring): the latent diffusion run
        trained on this autoencoder is the generator."""
        self.eval()
        seeds = check_seeds(n, seed, seeds)
        c = self.config
        eps = PerSampleGenerator(seeds, self.device).randn((c.latent_channels, c.latent_side, c.latent_side))
        z = self.latent_mean[:, None, None] + self.latent_std[:, None, None] * eps  # (n, c, h, w)
        images = self.net.decode(z).clamp(-1, 1)
        if callback is not None:
            callback(0, 1)
        return images
