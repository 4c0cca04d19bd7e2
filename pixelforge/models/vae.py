"""VAE family: a convolutional variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational
Bayes") with a beta knob (Higgins et al. 2017), KL warm-up (Sønderby et al. 2016), an optional class
condition, and a discretised likelihood so that its bound is a true figure in bits per dimension.

Why a discretised likelihood: pixels are 8-bit, so a model of them must give probabilities to the 256
levels, not a density. Each level k of a channel (x = k / 127.5 - 1 in [-1, 1]) gets the mass of a
logistic or Gaussian p(. | z) over its bin [x - 1/255, x + 1/255], the two end bins stretched to
-inf and +inf (Salimans et al. 2017, PixelCNN++ sec. 2.1): the masses sum to 1 and -log P is an honest
code length. (A continuous density evaluated at the pixel values would give a "likelihood" that grows
without bound as the variance shrinks.) The decoder predicts a mean and a log-scale per pixel.

The negative ELBO, E_q[-log P(x|z)] + KL(q(z|x) || p(z)), divided by D ln 2 (D = C*H*W), is an upper
bound on -log2 P(x) / D: "bits/dim" below are this bound (lower is better; the exact value would be
lower still). `log_likelihood(x, samples=k)` tightens it with k importance samples (Burda et al. 2016).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..condition import Cond, LabelEmbedding, no_labels
from ..condition.text_embed import (TEXT_BOUNDS, TextFields, check_text_fields, make_text_conditioner, text_vector,
                                   unused_text_fields)
from ..sampling import PerSampleGenerator
from .nets.autoencoder import Decoder, Encoder
from .common import HALF_BIN, autoencoder_edit, check_seeds, discretized_logistic_logprob, seeded_init
from .family import FamilyModule, NetworkCall
from .limits import BLOCKS, CHANNEL_MULT, IMAGE_SIZE, LEVELS, NUM_CLASSES, WIDTH, check_bounds
from .optim import OptimConfig
from .options import OptionSpec, option_defaults

LIKELIHOODS = ("discretized_logistic", "discretized_gaussian")
MIN_LOG_SCALE = -7.0  # scales far below the bin half-width 1/255 ~ e^-5.5 gain nothing and destabilise training


@dataclass(frozen=True)
class VAEConfig(TextFields):
    """Shape of the networks, the latent code and the objective.

    num_classes: 0 for an unconditional model; otherwise a label embedding feeds the encoder and the
        decoder, q(z|x, y) and p(x|z, y) (a conditional VAE, Sohn et al. 2015).
    channel_mult: widths per resolution; the encoder halves the side len(channel_mult) - 1 times, then a
        linear layer maps the features to the latent_dim means and log-variances of q(z|x).
    latent_dim: length of the latent vector z; the prior is N(0, I).
    beta: weight of the KL term in training (beta-VAE); validation and log_likelihood always use 1.
    kl_warmup_steps: the KL weight rises linearly from 0 to beta over this many steps (0: beta at once).
    likelihood: "discretized_logistic" (PixelCNN++) or "discretized_gaussian" p(x|z) over 256 levels
        a channel, with a per-pixel mean and scale from the decoder (see the module docstring).
    label_dropout: share of training conditions (labels, prompts) emptied ("no label", the absent
        prompt), so a conditional model also learns to sample and reconstruct without one.
    text_encoder, text_dim, text_tokens: the prompt's encoder (condition/text_embed.py TextFields); its
        pooled vector joins the label embedding (summed where both are given) in the encoder and decoder.
    """

    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_dim: int = 32
    beta: float = 1.0
    kl_warmup_steps: int = 1000
    likelihood: str = "discretized_logistic"
    label_dropout: float = 0.1

    # Size fields and their valid ranges (limits.py).
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "base_channels": WIDTH,
        "channel_mult": (LEVELS, CHANNEL_MULT), "num_res_blocks": BLOCKS, "latent_dim": (1, 4096),
        "kl_warmup_steps": (0, 10**9), **TEXT_BOUNDS,
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)  # also turns JSON's lists into tuples
        factor = 2 ** (len(self.channel_mult) - 1)
        if not self.channel_mult or self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by {factor} for channel_mult {self.channel_mult}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of: {', '.join(LIKELIHOODS)}; got {self.likelihood!r}")
        if self.beta < 0 or self.kl_warmup_steps < 0:
            raise ValueError(f"beta and kl_warmup_steps must not be negative, got {self.beta} and {self.kl_warmup_steps}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        check_text_fields(self)

    def unused_fields(self) -> tuple[str, ...]:
        """The text fields a model without text ignores (`pixelforge info` leaves them out)."""
        return unused_text_fields(self)


def discretized_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, likelihood: str) -> torch.Tensor:
    """log P(x) per element for 8-bit data x in [-1, 1] under a logistic or Gaussian (mean, scale)
    discretised into the bins [x - 1/255, x + 1/255], the end bins extended to infinity (PixelCNN++ eq. 2)."""
    if likelihood == "discretized_logistic":
        return discretized_logistic_logprob(x, mean, log_scale)  # shared with PixelCNN++'s mixture
    log_cdf = torch.special.log_ndtr
    inv_scale = torch.exp(-log_scale)
    lo = (x - mean - HALF_BIN) * inv_scale  # bin edges in standard units
    hi = (x - mean + HALF_BIN) * inv_scale
    # log(F(b) - F(a)) = log F(b) + log(1 - exp(log F(a) - log F(b))), computed in the lower tail where
    # log F is accurate: the mass of (a, b) equals that of (-b, -a) for a symmetric distribution.
    flip = (lo + hi) > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_mid = log_cdf(b) + torch.log(-torch.expm1((log_cdf(a) - log_cdf(b)).clamp(max=-1e-12)))
    log_bottom = log_cdf(hi)  # x = -1: all the mass below its upper edge
    log_top = log_cdf(-lo)  # x = +1: all the mass above its lower edge
    return torch.where(x < -1 + HALF_BIN, log_bottom, torch.where(x > 1 - HALF_BIN, log_top, log_mid))


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """The KL weight at a training step: linear warm-up from 0 to beta (Sønderby et al. 2016)."""
    return beta if warmup_steps <= 0 else beta * min(1.0, (step + 1) / warmup_steps)


class VAEModel(FamilyModule):
    """q(z|x) = N(mu, diag sigma^2) from a conv encoder, p(z) = N(0, I), p(x|z) discretised from a conv
    decoder; trained on the negative ELBO with a warmed-up beta on the KL, reported in bits/dim."""

    Config = VAEConfig
    family = "vae"
    default_lr = 1e-3  # the CLI's --lr when not given
    capabilities = ("log_likelihood", "edit")
    inputs = ("labels", "text")  # the Cond fields it takes (see FamilyModule.takes)
    option_specs = (
        OptionSpec("temperature", "float", 1.0, min=0.0, max=5.0,
                   help="scale of the prior's standard deviation (below 1: typical, blander images; 0: z = 0)"),
    )
    sample_options = option_defaults(option_specs)
    # The options edit() takes beyond those of sample(), declared once like them.
    edit_option_specs = (
        OptionSpec("strength", "float", 0.5, min=0.0, max=1.0,
                   help="how far the latent moves from the input's towards a new draw of the prior: 0 returns the "
                        "input, 1 a new image"),
    )

    # What a compressed run replaces (compress/): the decoder (sampling, edit, likelihood) and the encoder (edit),
    # each with the condition embedding and the linear map on its side of z.
    network_call = NetworkCall("decode", ("z",), ("from_latent", "decoder", "label_embed", "text_cond"),
                               ("mean", "log_scale"))
    other_calls = (NetworkCall("encode", ("x",), ("encoder", "to_posterior", "label_embed", "text_cond"), ("mu", "logvar")),)

    def __init__(self, config: VAEConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)  # self.train_generator draws: posterior samples, label dropout
        self.config = config
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed):  # weight initialisation only; training randomness uses self.train_generator
            self._build(config)

    def _build(self, c: VAEConfig) -> None:
        """The networks, their weights drawn from the current random stream."""
        emb_dim = 4 * c.base_channels if c.num_classes or c.text_dim else 0
        net = dict(base_channels=c.base_channels, channel_mult=c.channel_mult, num_res_blocks=c.num_res_blocks, emb_dim=emb_dim)
        top = c.base_channels * c.channel_mult[-1]
        self.side = c.image_size // 2 ** (len(c.channel_mult) - 1)  # feature side where the latent is read and written
        self.label_embed = LabelEmbedding(c.num_classes, emb_dim) if c.num_classes else None
        self.encoder = Encoder(c.channels, top, **net)
        # The label also joins the linear maps to and from z: a per-channel shift alone cannot say *where*
        # strokes go, so without this a conditional decoder learns to ignore its label and read z alone.
        self.to_posterior = nn.Linear(top * self.side**2 + emb_dim, 2 * c.latent_dim)  # -> (mu, log sigma^2)
        self.from_latent = nn.Linear(c.latent_dim + emb_dim, top * self.side**2)
        self.decoder = Decoder(top, 2 * c.channels, **net)  # -> (mean, raw log-scale) per pixel
        self.text_cond = make_text_conditioner(c, emb_dim)  # prompt -> a vector added to the label embedding

    # --- the model ------------------------------------------------------------------------------
    def _embed(self, cond: Cond | None, b: int) -> torch.Tensor | None:
        """(B, emb_dim) condition embedding: the label's ("no label" (-1) where missing) plus the prompt's
        vector (the absent prompt where missing); None if unconditional."""
        emb = text_vector(self.text_cond, cond, b, self.device)
        if self.label_embed is None:
            return emb
        labels = cond.labels if cond is not None and cond.labels is not None else None
        if labels is None:
            labels = no_labels(b)
        label_emb = self.label_embed(labels.to(self.device))
        return label_emb if emb is None else label_emb + emb

    def encode(self, x: torch.Tensor, cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [-1, 1] -> q(z|x) as (mu, logvar), each (B, latent_dim)."""
        emb = self._embed(cond, x.shape[0])
        h = self.encoder(x, emb).flatten(1)  # (B, top * side * side)
        mu, logvar = self.to_posterior(h if emb is None else torch.cat([h, emb], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, cond: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, latent_dim) -> p(x|z) as (mean, log_scale), each (B, C, H, W); mean is the image."""
        emb = self._embed(cond, z.shape[0])
        h = self.from_latent(z if emb is None else torch.cat([z, emb], dim=1)).reshape(z.shape[0], -1, self.side, self.side)
        mean, raw = self.decoder(h, emb).chunk(2, dim=1)
        log_scale = MIN_LOG_SCALE + F.softplus(raw - MIN_LOG_SCALE)  # a soft floor: the gradient never vanishes
        return mean, log_scale

    def example_call_inputs(self, method: str, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Example arguments of `decode` (z from the prior) or `encode` (images uniform in [-1, 1]) for a batch
        of b (compress/: export and parity), on the CPU."""
        c = self.config
        if method == "encode":
            return {"x": torch.rand(b, c.channels, c.image_size, c.image_size, generator=generator) * 2 - 1}
        return {"z": torch.randn(b, c.latent_dim, generator=generator)}

    def _terms(self, x: torch.Tensor, cond: Cond | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample -log P(x|z) with one z ~ q(z|x) drawn from generator, and the analytic KL; nats, (B,) each."""
        mu, logvar = self.encode(x, cond)
        eps = torch.randn(mu.shape, generator=generator, device=generator.device).to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps  # reparameterisation
        mean, log_scale = self.decode(z, cond)
        recon = -discretized_log_prob(x, mean, log_scale, self.config.likelihood).flatten(1).sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
        return recon, kl

    @property
    def dims(self) -> int:
        """D = C * H * W: the denominator of bits/dim."""
        return self.config.channels * self.config.image_size**2

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """One update on -ELBO with the KL weighted by kl_weight(step); figures in bits/dim."""
        self.train()
        gen = self.train_generator
        cfg = self.config
        if cond is not None and self.takes():
            cond = cond.drop(cfg.label_dropout, gen)
        recon, kl = self.parallel(self._terms, x, cond, gen)
        w = kl_weight(step, cfg.beta, cfg.kl_warmup_steps)
        to_bpd = 1.0 / (self.dims * math.log(2))
        loss = ((recon + w * kl) * to_bpd).mean()
        grad_norm = self.update(self.optimizers()["net"], loss, step)
        recon_bpd, kl_bpd = float(recon.mean().detach()) * to_bpd, float(kl.mean().detach()) * to_bpd
        return {"loss": float(loss.detach()), "recon": recon_bpd, "kl": kl_bpd, "bits_per_dim": recon_bpd + kl_bpd,
                "kl_weight": w, "grad_norm": grad_norm}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Per-sample negative ELBO (beta = 1) in bits/dim, (B,), with one z ~ q(z|x) from generator."""
        self.eval()
        recon, kl = self._terms(x, cond, generator)
        return (recon + kl) / (self.dims * math.log(2))

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, cond: Cond | None = None, *, samples: int = 1, seed: int = 0) -> torch.Tensor:
        """Upper bound on -log2 P(x) / D per image, (B,), in bits/dim (x 8-bit data in [-1, 1]).

        samples=1: the negative ELBO (the same figure as validation_loss, with one posterior sample drawn
        from torch.Generator().manual_seed(seed)); samples=k > 1: the importance-weighted bound
        -log (1/k) sum_i P(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016), tighter as k grows.
        """
        x = x.to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if samples == 1:
            return self.validation_loss(x, cond, gen)
        self.eval()
        mu, logvar = self.encode(x, cond)
        std = (0.5 * logvar).exp()
        log_w = []
        for _ in range(samples):
            eps = torch.randn(mu.shape, generator=gen, device=self.device)
            z = mu + std * eps
            mean, log_scale = self.decode(z, cond)
            log_px = discretized_log_prob(x, mean, log_scale, self.config.likelihood).flatten(1).sum(1)
            log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(1)
            log_qz = -0.5 * (eps.square() + math.log(2 * math.pi) + logvar).sum(1)
            log_w.append(log_px + log_pz - log_qz)
        log_px_bound = torch.logsumexp(torch.stack(log_w), dim=0) - math.log(samples)
        return -log_px_bound / (self.dims * math.log(2))

    # --- images ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> decoder means at the posterior means, (B, C, H, W) in [-1, 1]."""
        self.eval()
        x = x.to(self.device)
        mu, _ = self.encode(x, cond)
        return self.decode(mu, cond)[0].clamp(-1, 1)

    @torch.no_grad()
    def edit(self, image: torch.Tensor, mask: torch.Tensor | None = None, *, strength: float = 0.5,
             cond: Cond | None = None, seed: int = 0, seeds: list[int] | None = None, callback=None,
             temperature: float = 1.0) -> torch.Tensor:
        """Image to image by encode-decode: image (n, C, H, W) in [-1, 1] -> (n, C, H, W) in [-1, 1].

        The input's posterior mean mu moves towards a draw eps of the prior (image i's from seeds[i], default
        seed + i): z = sqrt(1 - s^2) mu + s eps, which keeps z's scale where mu is prior-like; the result is
        the input plus the decoded change (models.common.autoencoder_edit), within the mask (n, 1, H, W; 1:
        repaint) where one is given. Strength 0 returns the input, 1 an image from the prior alone."""
        self.eval()
        seeds = check_seeds(image.shape[0], seed, seeds)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        x = image.to(self.device)
        c = cond.to(self.device) if cond is not None else None
        mu, _ = self.encode(x, c)
        eps = PerSampleGenerator(seeds, self.device).randn((self.config.latent_dim,)) * float(temperature)
        z = math.sqrt(1.0 - strength**2) * mu + strength * eps
        out = autoencoder_edit(x, self.decode(z, c)[0], self.decode(mu, c)[0],
                               mask.to(self.device) if mask is not None else None)
        if callback is not None:
            callback(0, 1)
        return out

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, cond: Cond | None = None) -> torch.Tensor:
        """Decode `steps` evenly spaced points on the line between the posterior means of x1 and x2.

        x1, x2: (B, C, H, W) -> (B, steps, C, H, W); single images (C, H, W) -> (steps, C, H, W). The
        ends are the reconstructions of x1 and x2. cond (one label per pair) applies along the whole path.
        """
        if steps < 2:
            raise ValueError(f"steps must be at least 2, got {steps}")
        single = x1.dim() == 3
        x1, x2 = (x1[None], x2[None]) if single else (x1, x2)
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        self.eval()
        b = x1.shape[0]
        mu, _ = self.encode(torch.cat([x1, x2]).to(self.device), None if cond is None else Cond.cat([cond, cond]))
        mu1, mu2 = mu.chunk(2)  # (B, latent_dim) each
        t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]  # (1, steps, 1)
        z = torch.lerp(mu1[:, None], mu2[:, None], t).flatten(0, 1)  # (B * steps, latent_dim)
        path_cond = None
        if cond is not None and cond.given_fields():
            path_cond = cond.to(self.device).index(torch.arange(b, device=self.device).repeat_interleave(steps))
        images = self.decode(z, path_cond)[0].clamp(-1, 1).unflatten(0, (b, steps))
        return images[0] if single else images

    @torch.no_grad()
    def sample(self, n: int, cond: Cond | None = None, *, seed: int = 0, seeds: list[int] | None = None,
               callback=None, temperature: float = 1.0) -> torch.Tensor:
        """n decoder means (n, C, H, W) in [-1, 1] at z ~ N(0, temperature^2 I); image i uses seed + i (or
        seeds[i]) and nothing else. A conditional model samples "no label" where cond gives none."""
        self.eval()
        seeds = check_seeds(n, seed, seeds)
        if not temperature >= 0:
            raise ValueError(f"temperature must not be negative, got {temperature}")
        z = PerSampleGenerator(seeds, self.device).randn((self.config.latent_dim,)) * float(temperature)
        images = self.decode(z, cond.to(self.device) if cond is not None else None)[0].clamp(-1, 1)
        if callback is not None:
            callback(0, 1)
        return images
