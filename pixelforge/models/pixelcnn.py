"""PixelCNN family: an exact autoregressive likelihood over 8-bit pixels with a gated PixelCNN (van den
Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders") and a 256-way softmax or a
discretised logistic mixture output (Salimans et al. 2017, "PixelCNN++").

Likelihood. The trainer's images in [-1, 1] are mapped to their 8-bit values k = round((x + 1) * 127.5)
in 0..255, and the model is the product over pixels in raster order (and channels R, G, B within a
pixel) of p(k_d | k_<d). `log_likelihood` returns the exact negative log-likelihood in bits per
dimension, -log2 p(k) / (C H W), over these 8-bit values: no dequantisation noise, no bound. A
uniform model scores exactly 8.

Sampling is autoregressive, pixel by pixel. The plain way reruns the whole network for each of the
H W pixels: O((H W)^2 L) work for L layers (`sample_full_recompute`, kept as the reference). `sample`
instead keeps padded per-layer buffers (`SamplingCache`, after Ramachandran et al. 2017): each row of
the vertical stack is computed once, from the k//2 + 1 rows above it, when the row starts, and each
pixel of the horizontal stack once, from the columns to its left. A whole image then costs O(H W L),
about one forward pass of arithmetic, in H W small steps (on a CPU each step is bound by the fixed
cost of small convolutions, so images sampled together in one batch cost much less each). Both run the same
convolutions on the same values and give the same images (the tests check it on the CPU; a GPU
choosing other kernels for other shapes could round differently and, rarely, move a draw that lands
on a CDF boundary). Measured by bench/pixelcnn_sample_speed.py.

Randomness: every categorical draw inverts the CDF at a uniform number from the image's own generator
(all of an image's uniforms are drawn up front), so image i depends only on its seed, whatever the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..condition import Cond
from ..condition.text_embed import (TEXT_BOUNDS, TextFields, check_text_fields, make_text_conditioner, text_vector,
                                   unused_text_fields)
from ..sampling import PerSampleGenerator
from .nets.pixelcnn_nets import LEVELS, GatedPixelCNN, MixtureHead, SamplingCache, SoftmaxHead
from .common import check_seeds, discretized_logistic_logprob, inverse_cdf_sample, seeded_init
from .family import FamilyModule
from .limits import DEPTH, IMAGE_SIZE, NUM_CLASSES, WIDTH, check_bounds
from .optim import OptimConfig
from .options import OptionSpec, option_defaults

OUTPUTS = ("softmax256", "logistic_mixture")


@dataclass(frozen=True)
class PixelCNNConfig(TextFields):
    """The network's shape and output distribution.

    num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1, which add a learned
        bias inside every gate (paper eq. 4).
    kernel_size: odd; the vertical stack uses (k//2 + 1) x k windows, the horizontal 1 x (k//2 + 1).
    output: "softmax256", a 256-way categorical per channel (RGB: G sees R, B sees R and G of the same
        pixel), or "logistic_mixture", a discretised mixture of n_mixtures logistics per pixel whose
        G and B means depend linearly on the pixel's R (and G) values (PixelCNN++ sec. 2.2); far fewer
        output maps than 3 x 256 for RGB.
    label_dropout: share of training conditions (labels, prompts) emptied ("no label", the absent
        prompt), so one network also learns the unconditional model used when none is given (and
        that classifier-free guidance contrasts with).
    text_encoder, text_dim, text_tokens: the prompt's encoder (condition/text_embed.py TextFields); its
        pooled vector joins the label embedding in every gate's bias.
    """

    image_size: int = 28
    channels: int = 1
    num_classes: int = 0
    hidden_channels: int = 64
    num_layers: int = 8
    kernel_size: int = 5
    output: str = "softmax256"
    n_mixtures: int = 5
    label_dropout: float = 0.1

    # Size fields and their valid ranges (limits.py).
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "hidden_channels": WIDTH, "num_layers": DEPTH,
        "kernel_size": (3, 63), "n_mixtures": (1, 64), **TEXT_BOUNDS,
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of: {', '.join(OUTPUTS)}")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {self.kernel_size}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        check_text_fields(self)

    def unused_fields(self) -> tuple[str, ...]:
        """The text fields a model without text ignores (`pixelforge info` leaves them out)."""
        return unused_text_fields(self)


# --- 8-bit values and the discretised logistic mixture --------------------------------------------


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit values 0..255 (int64), exactly the inverse of the data pipeline's k / 127.5 - 1."""
    return ((x + 1) * 127.5).round().clamp(0, LEVELS - 1).long()


def from_levels(k: torch.Tensor) -> torch.Tensor:
    return k.float() / 127.5 - 1


def split_mixture(params: torch.Tensor, channels: int, k: int):
    """(B, P, *rest) -> mixture logits (B, K, *rest), means and log scales (B, K, C, *rest), coefficients
    (B, K, C (C - 1) / 2, *rest) in (-1, 1)."""
    b, rest = params.shape[0], params.shape[2:]
    kc = k * channels
    logits = params[:, :k]
    means = params[:, k : k + kc].reshape(b, k, channels, *rest)
    log_scales = params[:, k + kc : k + 2 * kc].reshape(b, k, channels, *rest).clamp(min=-7.0)
    coeffs = torch.tanh(params[:, k + 2 * kc :].reshape(b, k, -1, *rest))
    return logits, means, log_scales, coeffs


def coupled_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PixelCNN++ channel coupling: mean_G += a x_R, mean_B += b x_R + c x_G (x holds the pixel's values).

    means (B, K, C, ...), coeffs (B, K, C (C - 1) / 2, ...), x broadcastable to means -> (B, K, C, ...).
    """
    out, idx = [means[:, :, 0]], 0
    for c in range(1, means.shape[2]):
        m = means[:, :, c]
        for d in range(c):
            m = m + coeffs[:, :, idx] * x[:, :, d]
            idx += 1
        out.append(m)
    return torch.stack(out, dim=2)


def discretized_logistic_log_prob(k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(value k) for a logistic(mean, scale) on [-1, 1] cut into 256 bins, the end bins open
    (common.discretized_logistic_logprob on the level's value, in the mean's precision)."""
    return discretized_logistic_logprob(k.to(mean.dtype) / 127.5 - 1, mean, log_scale)


def mixture_log_prob(params: torch.Tensor, k: torch.Tensor, n_mixtures: int) -> torch.Tensor:
    """params (B, P, H, W), values k (B, C, H, W) -> log p(pixel) (B, H, W), all channels of a pixel jointly."""
    logits, means, log_scales, coeffs = split_mixture(params, k.shape[1], n_mixtures)
    means = coupled_means(means, coeffs, from_levels(k)[:, None])
    per_component = discretized_logistic_log_prob(k[:, None], means, log_scales).sum(dim=2)  # (B, K, H, W)
    return torch.logsumexp(per_component + logits.log_softmax(dim=1), dim=1)


# --- the family --------------------------------------------------------------------------------------


class PixelCNNModel(FamilyModule):
    """Gated PixelCNN p(x) = prod_d p(x_d | x_<d) over 8-bit values, trained by maximum likelihood."""

    Config = PixelCNNConfig
    family = "pixelcnn"
    default_lr = 1e-3  # the CLI's --lr when not given
    capabilities = ("log_likelihood", "guidance")
    inputs = ("labels", "text")  # the Cond fields it takes (see FamilyModule.takes)
    compress_note = ("its sampler runs the network once per pixel through a cache of each layer's rows (SamplingCache), "
                     "which a graph of the whole network cannot keep: it would redo the whole image at every pixel")
    option_specs = (
        OptionSpec("temperature", "float", 1.0, min=0.01, max=5.0,
                   help="divides the logits (mixture: its logits; the logistic scales are multiplied by it); "
                   "below 1: cleaner, less varied images"),
        OptionSpec("guidance", "float", 1.0, min=0.0, max=20.0,
                   help="classifier-free guidance on each pixel's logits, uncond + w (cond - uncond) "
                   "(softmax256 output, samples with a label or prompt; 1: none)"),
    )
    sample_options = option_defaults(option_specs)

    def __init__(self, config: PixelCNNConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)  # self.train_generator draws: label dropout only
        self.config = config
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed):  # weight initialisation only; training randomness uses self.train_generator
            self.net = GatedPixelCNN(
                channels=config.channels,
                hidden=config.hidden_channels,
                num_layers=config.num_layers,
                kernel_size=config.kernel_size,
                num_classes=config.num_classes,
                with_vector=config.text_dim > 0,
            )
            if config.output == "softmax256":
                self.head = SoftmaxHead(config.hidden_channels, config.channels)
            else:
                self.head = MixtureHead(config.hidden_channels, config.channels, config.n_mixtures)
            # prompt -> a vector joining the label embedding in every gate's bias
            self.text_cond = make_text_conditioner(config, config.hidden_channels)

    # --- likelihood --------------------------------------------------------------------------------
    def _labels(self, cond: Cond | None, n: int) -> torch.Tensor | None:
        if self.config.num_classes == 0 or cond is None or cond.labels is None:
            return None
        labels = cond.labels.to(self.device)
        if labels.shape != (n,):
            raise ValueError(f"expected {n} labels, got shape {tuple(labels.shape)}")
        return labels

    def _conditions(self, cond: Cond | None, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What the network takes from a Cond of n samples: (labels (n,) or None, prompt vector (n, F) or
        None); a text model without a prompt gets the absent prompt's vector."""
        return self._labels(cond, n), text_vector(self.text_cond, cond, n, self.device)

    def _taken(self, cond: Cond | None) -> Cond | None:
        """The fields of cond this model conditions on (labels, the prompt), or None where it gives none."""
        if cond is None:
            return None
        fields = {}
        if self.config.num_classes and cond.labels is not None:
            fields["labels"] = cond.labels
        if self.text_cond is not None and cond.text is not None:
            fields.update(text=cond.text, text_tokens=cond.text_tokens, text_mask=cond.text_mask, present=cond.present)
        return Cond(**fields).to(self.device) if fields else None

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> log p of its 8-bit values in nats, (B,); vector: the prompt's (B, F)."""
        k = to_levels(x)  # (B, C, H, W) in 0..255
        xq = from_levels(k)
        h = self.net(xq, labels, vector)  # (B, F, H, W)
        # the likelihood in fp32 whatever the network ran in: under bf16 autocast (train.precision) a sum of
        # C*H*W log-probabilities in bfloat16 keeps 3 significant digits, too few to train on
        if self.config.output == "softmax256":
            logp = self.head(h, xq).float().log_softmax(dim=2)  # (B, C, 256, H, W)
            return logp.gather(2, k[:, :, None]).squeeze(2).sum(dim=(1, 2, 3))
        return mixture_log_prob(self.head(h).float(), k, self.config.n_mixtures).sum(dim=(1, 2))

    def bits_per_dim(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                     vector: torch.Tensor | None = None) -> torch.Tensor:
        """-log2 p(x) / (C H W), (B,): the exact negative log-likelihood over 8-bit values."""
        return -self.log_prob(x, labels, vector) / (x[0].numel() * math.log(2))

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """One optimiser update on a batch x (B, C, H, W) in [-1, 1]; the loss is the mean bits/dim."""
        self.train()
        cond = self._taken(cond)
        if cond is not None:  # condition dropout: labels and prompt emptied together
            cond = cond.drop(self.config.label_dropout, self.train_generator)
        loss = self.parallel(lambda: self.bits_per_dim(x, *self._conditions(cond, x.shape[0]))).mean()
        grad_norm = self.update(self.optimizers()["net"], loss, step)
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Bits/dim (B,); exact, so the generator goes unused."""
        return self.log_likelihood(x, cond)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """Exact negative log-likelihood in bits per dimension (B,) of x (B, C, H, W) in [-1, 1], over
        its 8-bit values (round((x + 1) * 127.5)); without labels a conditional model uses "no label",
        without a prompt a text model the absent prompt."""
        self.eval()
        x = x.to(self.device)
        return self.bits_per_dim(x, *self._conditions(cond, x.shape[0]))

    # --- sampling ------------------------------------------------------------------------------------
    def _draw_pixel(self, h: torch.Tensor, u: torch.Tensor, temperature: float, guidance: float = 1.0) -> torch.Tensor:
        """Features h (n, F, 1, 1) of one pixel and its uniforms u (n, D) -> its values (n, C) in [-1, 1].

        Guided: h is (2n, F, 1, 1), the n conditioned rows then the same n emptied (or negative); the values
        drawn from the guided logits go to both halves, so both condition on the same pixels."""
        cfg = self.config
        n, c = u.shape[0], cfg.channels
        guided = h.shape[0] == 2 * n
        x = torch.zeros(h.shape[0], c, 1, 1, device=h.device)  # the pixel's channels drawn so far
        if cfg.output == "softmax256":
            for ch in range(c):  # R, then G given R, then B given R and G
                logits = self.head(h, x)[:, ch, :, 0, 0]  # (n or 2n, 256)
                if guided:
                    cond_logits, uncond_logits = logits.chunk(2)
                    logits = uncond_logits + guidance * (cond_logits - uncond_logits)
                k = inverse_cdf_sample(torch.softmax(logits / temperature, dim=-1), u[:, ch])
                x[:, ch, 0, 0] = from_levels(k).repeat(2) if guided else from_levels(k)
            return x[:n, :, 0, 0]
        logits, means, log_scales, coeffs = split_mixture(self.head(h)[:, :, 0, 0], c, cfg.n_mixtures)
        comp = inverse_cdf_sample(torch.softmax(logits / temperature, dim=-1), u[:, 0])  # (n,)
        rows = torch.arange(n, device=h.device)
        means, log_scales, coeffs = means[rows, comp][:, None], log_scales[rows, comp], coeffs[rows, comp][:, None]
        x = x[:, None, :, 0, 0]  # (n, 1, C)
        for ch in range(c):
            mean = coupled_means(means, coeffs, x)[:, 0, ch]  # uses only the channels < ch already drawn
            v = u[:, 1 + ch].clamp(1e-5, 1 - 1e-5)
            value = mean + log_scales[:, ch].exp() * temperature * (v.log() - (-v).log1p())  # logistic by inversion
            x[:, 0, ch] = from_levels(to_levels(value.clamp(-1, 1)))
        return x[:, 0]

    @torch.no_grad()
    def _sample(self, n, cond, seed, seeds, callback, temperature, cached: bool, guidance: float = 1.0,
                negative: Cond | None = None) -> torch.Tensor:
        self.eval()
        cfg = self.config
        seeds = check_seeds(n, seed, seeds)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        guidance = float(guidance)
        if not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        dev, c, s = self.device, cfg.channels, cfg.image_size
        per_pixel = c if cfg.output == "softmax256" else 1 + c  # uniforms per pixel
        gen = PerSampleGenerator(seeds, dev)
        u = torch.stack([torch.rand((s, s, per_pixel), generator=g, device=dev) for g in gen.generators])  # (n, H, W, D)
        given = self._taken(cond)
        guided = guidance != 1.0 and given is not None
        if guided:
            if cfg.output != "softmax256":
                raise ValueError(f"guidance works on the softmax256 output; this model's output is {cfg.output!r}")
            other = given.empty() if negative is None else self._taken(negative)
            if other is None or other.given_fields() != given.given_fields():
                raise ValueError(f"the negative condition must give the same fields as the condition {given.given_fields()}")
            given = Cond.cat([given, other])  # every image with its condition, then without it (or with the negative)
        rows = 2 * n if guided else n
        labels, vector = self._conditions(given, rows)
        x = torch.zeros(rows, c, s, s, device=dev)  # pixels not yet drawn stay 0; nothing reads them
        biases = self.net.cond_biases(labels, rows, dev, vector)
        cache = SamplingCache(self.net, (rows, c, s, s), biases, dev) if cached else None
        for i in range(s):
            if cache is not None:
                cache.start_row(i)
            for j in range(s):
                h = cache.pixel(j) if cache is not None else self.net(x, labels, vector)[:, :, i : i + 1, j : j + 1]
                value = self._draw_pixel(h, u[:, i, j], temperature, guidance)  # (n, C)
                x[:, :, i, j] = value.repeat(2, 1) if guided else value
                if cache is not None:
                    cache.write(j, x[:, :, i, j])
            if callback is not None:
                callback(i, s)
        return x[:n]

    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        callback=None,
        temperature: float = 1.0,
        guidance: float = 1.0,
        negative: Cond | None = None,
    ) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1], pixel by pixel with the sampling cache; image i uses seed + i
        (or seeds[i]) and nothing else; callback(row, H) after each row.

        guidance w != 1 with a label or a prompt runs each image twice, with its condition and with the
        empty one ("no label", the absent prompt; the model learns both through label_dropout), and
        draws every value from the softmax of uncond + w (cond - uncond): classifier-free guidance (Ho &
        Salimans 2022) applied to the per-pixel logits, as autoregressive image models do.
        Unconditional samples ignore it. negative: what the second run is conditioned on instead of
        the empty condition (a negative prompt, say); the same fields and batch as cond."""
        return self._sample(n, cond, seed, seeds, callback, temperature, cached=True, guidance=guidance, negative=negative)

    def sample_full_recompute(
        self,
        n: int,
        cond: Cond | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        callback=None,
        temperature: float = 1.0,
        guidance: float = 1.0,
        negative: Cond | None = None,
    ) -> torch.Tensor:
        """The same images as `sample`, rerunning the whole network for every pixel: the slow reference."""
        return self._sample(n, cond, seed, seeds, callback, temperature, cached=False, guidance=guidance, negative=negative)
