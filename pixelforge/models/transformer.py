"""Transformer family: a token transformer prior over the code grids of a VQ-VAE, trained in two stages
by one run (van den Oord et al. 2017 sec. 3.2 and Esser et al. 2021, "Taming Transformers", for the
two-stage recipe).

Stage 1 (steps 0 .. stage1_steps - 1) trains the VQ-VAE of models/vqvae.py with its own loss and
optimiser. At stage1_steps the VQ-VAE is frozen and stage 2 trains the prior on its codes of each batch:

- prior="autoregressive": a GPT-style causal transformer over the h*w raster of codes, the class label
  (or "no label") as the start token; sampling draws one code at a time with a key/value cache.
- prior="maskgit": a bidirectional transformer that predicts masked codes (Chang et al. 2022, "MaskGIT:
  Masked Generative Image Transformer"): training masks a cosine-scheduled share of the codes; sampling
  starts from an all-masked grid and fixes the most confident codes over decode_steps parallel steps.

Sampling decodes the sampled codes with the frozen VQ-VAE. Both optimisers are in optimizers(), and
the buffer `stage` (1 or 2) travels in checkpoints with the weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..condition import Cond
from ..fields import from_fields
from ..condition.text_embed import (TEXT_BOUNDS, TextFields, check_text_fields, make_text_conditioner, text_vector,
                                   unused_text_fields)
from ..sampling import PerSampleGenerator
from .nets.token_transformer import TokenTransformer
from .common import check_seeds, inverse_cdf_sample, seeded_init
from .family import FamilyModule
from .limits import DEPTH, HEADS, IMAGE_SIZE, NUM_CLASSES, WIDTH, check_bounds
from .optim import OptimConfig, make_adam
from .options import OptionSpec, option_defaults
from .vqvae import VQVAEConfig, VQVAEModel

PRIORS = ("autoregressive", "maskgit")
MASKGIT_CHOICE_TEMPERATURE = 4.5  # Gumbel noise on the confidences, annealed to 0 (MaskGIT's reference code)


@dataclass(frozen=True)
class TransformerConfig(TextFields):
    """The VQ-VAE, the prior over its codes, and when the one hands over to the other.

    vq: the VQ-VAE's config (models/vqvae.py, VQVAEConfig), as a dict of its fields or a VQVAEConfig;
        image_size and channels come from this config. The code grid is image_size / vq downsample on a
        side, so e.g. {"downsample": 2, "codebook_size": 64} gives 8x8 digits a 4x4 grid of 64 codes.
    stage1_steps: optimiser steps of the VQ-VAE before it is frozen and the prior trains (0: the prior
        trains from the first step, on whatever VQ-VAE the weights hold, e.g. after --init-from).
    prior: one of PRIORS, "autoregressive" or "maskgit" (see the module docstring).
    d_model, depth, heads: the prior transformer's width, number of blocks and attention heads.
    label_dropout: share of training conditions (labels, prompts) emptied ("no label", the absent
        prompt), so a conditional prior also samples without one.
    text_encoder, text_dim, text_tokens: the prompt's encoder (condition/text_embed.py TextFields); its
        pooled vector is added to the prior's start token (the VQ-VAE stays unconditional).
    decode_steps: MaskGIT's parallel decoding steps (unused by the autoregressive prior).
    """

    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    vq: VQVAEConfig | dict = field(default_factory=dict)
    stage1_steps: int = 3000
    prior: str = "autoregressive"
    d_model: int = 128
    depth: int = 4
    heads: int = 4
    label_dropout: float = 0.1
    decode_steps: int = 8

    # Size fields and their valid ranges (limits.py); vq's are the VQ-VAE's own.
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "d_model": WIDTH, "depth": DEPTH, "heads": HEADS,
        "decode_steps": (1, 1024), "stage1_steps": (0, 10**9), **TEXT_BOUNDS,
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)
        if not isinstance(self.vq, (VQVAEConfig, dict)):
            raise ValueError(f"vq must be an object of VQ-VAE config fields, got {self.vq!r}")
        vq = dataclasses.asdict(self.vq) if isinstance(self.vq, VQVAEConfig) else dict(self.vq)
        for name in ("image_size", "channels"):
            if vq.setdefault(name, getattr(self, name)) != getattr(self, name):
                raise ValueError(f"vq {name} {vq[name]} differs from the model's {getattr(self, name)}; set it once, at the top")
        # Kept as a (frozen, hashable) VQVAEConfig: configs compare equal however vq was written.
        object.__setattr__(self, "vq", from_fields(VQVAEConfig, vq, "vq"))
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; choose one of: {', '.join(PRIORS)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by heads {self.heads}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        check_text_fields(self)

    def unused_fields(self) -> tuple[str, ...]:
        """The text fields a model without text ignores (`pixelforge info` leaves them out)."""
        return unused_text_fields(self)


class FrozenCopy(nn.Module):
    """Buffers holding a module's parameters as they were when it was frozen.

    The trainer's EMA copy averages every parameter but copies buffers exactly. Restoring the VQ-VAE
    from these buffers before it is used keeps the EMA model's tokeniser identical to the frozen one
    whose codes the prior learned, instead of a running average of its stage-1 weights.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        for name, p in module.named_parameters():
            self.register_buffer(name.replace(".", "__"), torch.zeros_like(p))

    @torch.no_grad()
    def store(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            self.get_buffer(name.replace(".", "__")).copy_(p)

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            p.copy_(self.get_buffer(name.replace(".", "__")))


class TokenTransformerModel(FamilyModule):
    """A VQ-VAE (stage 1) and a transformer prior over its codes (stage 2), sampled as codes -> decoder."""

    Config = TransformerConfig
    family = "transformer"
    default_lr = 5e-4  # the CLI's --lr when not given; both stages
    capabilities = ()
    inputs = ("labels", "text")  # the Cond fields it takes (see FamilyModule.takes)
    compress_note = ("its prior draws codes in a loop around the transformer (autoregressive: one code a step through a "
                     "key-value cache that grows by a token each step, which one fixed graph does not hold)")
    option_specs = (
        OptionSpec("temperature", "float", 1.0, min=0.01, max=5.0,
                   help="divides the logits (1: the model's own distribution; lower: more typical codes)"),
        OptionSpec("top_k", "int", 0, min=0, max=65536, help="draw from the k most likely codes only (0: no limit)"),
    )
    sample_options = option_defaults(option_specs)

    def __init__(self, config: TransformerConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)
        self.config = config
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed):  # weight initialisation only: the VQ-VAE's, then the prior's
            self._build(config, seed)
        self.frozen_vq = FrozenCopy(self.vq)
        self.register_buffer("stage", torch.tensor(1))
        self._prior_optimizer: torch.optim.Optimizer | None = None

    def _build(self, config: TransformerConfig, seed: int) -> None:
        """The VQ-VAE and the prior, their weights drawn in that order from the current random stream."""
        self.vq = VQVAEModel(config.vq, self.optim_config, seed=seed, seed_weights=False)
        K, L = self.vq.codebook_size, self.vq.latent_side**2
        # Token ids: codes 0..K-1, then class labels K..K+C-1 as start tokens, K+C "no label", K+C+1 [MASK].
        self.codebook_size, self.seq_len = K, L
        self.no_label = K + config.num_classes
        self.mask_token = self.no_label + 1
        maskgit = config.prior == "maskgit"
        self.prior = TokenTransformer(
            vocab_size=self.no_label + 1 + maskgit,
            num_outputs=K,
            seq_len=L + maskgit,  # MaskGIT keeps the start token in front of all L codes
            d_model=config.d_model,
            depth=config.depth,
            heads=config.heads,
            causal=not maskgit,
        )
        # prompt -> a vector added to the start token's embedding (the prior's prefix)
        self.text_cond = make_text_conditioner(config, config.d_model)

    # --- parts every family offers -------------------------------------------------------------
    @property
    def train_generator(self) -> torch.Generator:
        """The one random stream of both stages (the VQ-VAE's: codebook starts and restarts, then label
        dropout and MaskGIT masks), saved in checkpoints."""
        return self.vq.train_generator

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._prior_optimizer is None:
            params = list(self.prior.parameters()) + (list(self.text_cond.parameters()) if self.text_cond is not None else [])
            self._prior_optimizer = make_adam(params, self.optim_config, self.default_betas)
        return {"vq": self.vq.optimizers()["net"], "prior": self._prior_optimizer}

    # --- the frozen tokeniser ---------------------------------------------------------------------
    def frozen_tokenizer(self) -> VQVAEModel:
        """The VQ-VAE in eval mode; from stage 2 on with exactly the weights it was frozen with."""
        if int(self.stage) == 2:
            self.frozen_vq.restore(self.vq)
        return self.vq.eval()

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> code sequences (B, h*w) in raster order."""
        return self.frozen_tokenizer().encode_indices(x).flatten(1)

    def _start_tokens(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """(n,) start token ids: K + label, or "no label" for label -1, no labels, or an unconditional model."""
        none = torch.full((n,), self.no_label, dtype=torch.long, device=device)
        if labels is None or self.config.num_classes == 0:
            return none
        labels = labels.to(device).long()
        return torch.where(labels < 0, none, self.codebook_size + labels)

    # --- losses -----------------------------------------------------------------------------------
    def _prefix(self, cond: Cond | None, n: int, device) -> torch.Tensor | None:
        """The prompt's vector (n, d_model) added to the start token; the absent prompt's without one;
        None for a model without text."""
        return text_vector(self.text_cond, None if cond is None else cond.to(device), n, device)

    def prior_bits(self, codes: torch.Tensor, start: torch.Tensor, generator: torch.Generator,
                   prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample prior loss in bits per token, (B,). Autoregressive: the exact negative log-likelihood
        of the code sequence. MaskGIT: cross-entropy on the masked codes, with a cosine-scheduled share
        masked (the ratio and the positions drawn from generator). prefix: the prompt's vector (B, d_model)."""
        b, L = codes.shape
        if self.config.prior == "autoregressive":
            # (B, L, K): position t predicts code t
            logits = self.prior(torch.cat([start[:, None], codes[:, :-1]], dim=1), prefix=prefix)
            return F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").mean(1) / math.log(2)
        r = torch.rand(b, device=codes.device, generator=generator)
        n_masked = torch.ceil(torch.cos(math.pi / 2 * r) * L).clamp(1, L)  # (B,) MaskGIT's cosine schedule gamma(r) = cos(pi r / 2)
        ranks = torch.rand(b, L, device=codes.device, generator=generator).argsort(1).argsort(1)
        masked = ranks < n_masked[:, None]  # (B, L) a random n_masked[i] positions of row i
        tokens = torch.where(masked, torch.full_like(codes, self.mask_token), codes)
        logits = self.prior(torch.cat([start[:, None], tokens], dim=1), prefix=prefix)[:, 1:]  # (B, L, K)
        ce = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")  # (B, L)
        return (ce * masked).sum(1) / masked.sum(1) / math.log(2)

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """Stage 1: one VQ-VAE update (its own loss and figures). Stage 2: one prior update on the frozen
        VQ-VAE's codes of x, its learning-rate warm-up counted from stage1_steps. figures["stage"] is 1 or 2;
        in stage 2 figures["lr"] is the prior's rate, which the trainer logs instead of the VQ-VAE's."""
        cfg = self.config
        if step < cfg.stage1_steps:
            return {**self.vq.training_step(x, Cond(), step), "stage": 1.0}
        if int(self.stage) == 1:  # the first stage-2 step: freeze the VQ-VAE as it is now
            self.frozen_vq.store(self.vq)
            self.stage.fill_(2)
        codes = self.encode_codes(x)  # (B, L)
        gen = self.train_generator
        if self.takes():  # a dropped label becomes the "no label" start token, a dropped prompt the absent one
            cond = cond.drop(cfg.label_dropout, gen)
        start = self._start_tokens(cond.labels, x.shape[0], x.device)
        self.prior.train()
        loss = self.parallel(lambda: self.prior_bits(codes, start, gen, self._prefix(cond, x.shape[0], x.device))).mean()
        grad_norm = self.update(self.optimizers()["prior"], loss, step - cfg.stage1_steps)
        lr = self.optimizers()["prior"].param_groups[0]["lr"]
        return {"loss": float(loss.detach()), "grad_norm": grad_norm, "lr": lr, "stage": 2.0}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Per-sample distortion + rate, (B,): the VQ-VAE's validation loss (reconstruction MSE + beta *
        commitment) plus the prior's bits per token on the VQ-VAE's codes (labels kept).

        One figure for both stages, so early stopping can watch it across the change: in stage 1 the
        prior is untrained (its zero head predicts uniformly: exactly log2 K bits) and the distortion
        falls; in stage 2 the distortion is fixed and the rate falls.
        """
        self.eval()
        vq = self.frozen_tokenizer()
        distortion = vq.validation_loss(x, Cond(), generator)
        codes = vq.encode_indices(x).flatten(1)
        start, prefix = self._start_tokens(cond.labels, x.shape[0], x.device), self._prefix(cond, x.shape[0], x.device)
        rate = self.prior_bits(codes, start, generator, prefix)
        return distortion + rate

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        callback=None,
        temperature: float = 1.0,
        top_k: int = 0,
    ) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]: codes drawn from the prior, decoded by the frozen VQ-VAE.
        Image i uses seed + i (or seeds[i]) and nothing else; callback(i, total) after each decoding step."""
        self.eval()
        seeds = check_seeds(n, seed, seeds)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if int(top_k) != top_k or top_k < 0:
            raise ValueError(f"top_k must be a whole number >= 0 (0: no limit), got {top_k}")
        gen = PerSampleGenerator(seeds, self.device)
        start = self._start_tokens(cond.labels if cond is not None else None, n, self.device)
        draw = dict(temperature=float(temperature), top_k=int(top_k), prefix=self._prefix(cond, n, self.device))
        if self.config.prior == "autoregressive":
            codes = self._sample_autoregressive(start, gen, callback, **draw)
        else:
            codes = self._sample_maskgit(start, gen, callback, **draw)
        return self.frozen_tokenizer().decode_indices(codes).clamp(-1, 1)

    def _sample_autoregressive(self, start, gen, callback, *, temperature, top_k, prefix=None) -> torch.Tensor:
        """Ancestral sampling of the L codes in raster order; each step feeds one token through the cache."""
        n, L = start.shape[0], self.seq_len
        codes = torch.empty(n, L, dtype=torch.long, device=start.device)
        cache, token = self.prior.new_cache(), start[:, None]
        for t in range(L):
            logits = self.prior(token, cache, prefix)[:, -1]  # (n, K): the distribution of code t (prefix: at t = 0)
            codes[:, t], _ = _draw(logits, _uniform(gen, ()), temperature, top_k)
            token = codes[:, t : t + 1]
            if callback is not None:
                callback(t, L)
        return codes

    def _sample_maskgit(self, start, gen, callback, *, temperature, top_k, prefix=None) -> torch.Tensor:
        """MaskGIT decoding (Chang et al. 2022, sec. 3.2): at each step sample every masked code, keep
        the most confident ones and re-mask the rest, cos(pi/2 * s/T) of the grid, until none is left."""
        n, L, T = start.shape[0], self.seq_len, self.config.decode_steps
        codes = torch.full((n, L), self.mask_token, dtype=torch.long, device=start.device)
        for s in range(T):
            unknown = codes == self.mask_token  # (n, L); the same count in every row
            n_unknown = int(unknown[0].sum())
            if n_unknown == 0:
                break
            logits = self.prior(torch.cat([start[:, None], codes], dim=1), prefix=prefix)[:, 1:]  # (n, L, K)
            sampled, probs = _draw(logits, _uniform(gen, (L,)), temperature, top_k)
            sampled = torch.where(unknown, sampled, codes)
            # Confidence: log-probability of the drawn code plus annealed Gumbel noise; fixed codes stay fixed.
            confidence = probs.gather(2, sampled[..., None])[..., 0].clamp_min(1e-30).log()
            gumbel = -(-_uniform(gen, (L,)).clamp(1e-20, 1 - 1e-7).log()).log()
            confidence = confidence + MASKGIT_CHOICE_TEMPERATURE * (1 - (s + 1) / T) * gumbel
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
            n_next = int(math.floor(L * math.cos(math.pi / 2 * (s + 1) / T)))
            n_next = max(0, min(n_next, n_unknown - 1))  # at least one new code per step
            remask = confidence.argsort(1).argsort(1) < n_next  # (n, L) the n_next least confident
            codes = torch.where(remask, torch.full_like(codes, self.mask_token), sampled)
            if callback is not None:
                callback(s, T)
        return codes


def _uniform(gen: PerSampleGenerator, shape: tuple[int, ...]) -> torch.Tensor:
    """(n, *shape) uniform draws in [0, 1), row i from sample i's own generator."""
    return torch.stack([torch.rand(shape, generator=g, device=gen.device) for g in gen.generators])


def _draw(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Categorical draws by inverting the CDF of softmax(logits / temperature) (top-k filtered) at the
    uniforms u: logits (..., K), u (...) -> (indices (...), probabilities (..., K))."""
    logits = logits.float() / temperature
    K = logits.shape[-1]
    if 0 < top_k < K:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = logits.softmax(-1)
    return inverse_cdf_sample(probs, u, scale_u=True), probs
