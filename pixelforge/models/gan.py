"""GAN family: hinge loss, spectrally normalised projection discriminator, lazy R1 penalty and
differentiable augmentation, around the plain networks in nets/gan_nets.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..condition import Cond, no_labels
from ..condition.text_embed import (TEXT_BOUNDS, TextFields, check_text_fields, make_text_conditioner, text_vector,
                                   unused_text_fields)
from ..distributed import all_gather_cat
from ..sampling import PerSampleGenerator
from .nets.gan_nets import Discriminator, Generator, gan_levels, gan_widths
from .augment import diff_augment, parse_policy
from .autoencoder import AutoencoderConfig, LatentCache, check_latent_fields, latent_shape, make_first_stage
from .common import check_seeds, seeded_init
from .family import FamilyModule, NetworkCall
from .limits import IMAGE_SIZE, NUM_CLASSES, WIDTH, check_bounds
from .optim import OptimConfig, make_adam
from .options import OptionSpec, option_defaults

# --- the family ----------------------------------------------------------------------------------

# The std of a latent GAN's latents as G and D see them: the autoencoder's latents, shifted and scaled per channel
# by the first training batch's mean and std (GANModel._training_latents), so that 2.5 standard deviations fit in
# G's tanh output (-1, 1): the tails it cannot reach would be about 1% of normally distributed values.
LATENT_STD = 0.4


@dataclass(frozen=True)
class GANConfig(TextFields):
    """Everything that fixes the networks' shape and the GAN's training objective.

    image_size: even and at least 8; the generator starts at image_size halved while it stays even and
        at least 4 (4x4 for 8, 16, 32, 64; 7x7 for 28) and doubles the side per block.
    num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1 condition G (per-class
        normalisation gains) and D (projection).
    z_dim: size of the latent z ~ N(0, I).
    base_channels: width at full resolution; it doubles (up to 8x) each time the side halves.
    depth: residual blocks per level of each network: the one that doubles (G) or halves (D) the side, and
        depth - 1 more at the same side. 1 is SNGAN's layout; a GAN in latents (8x8: one level) has few layers
        without more.
    r1_gamma: weight of the R1 penalty gamma/2 E||grad_x D(x)||^2 on real images (Mescheder et al.
        2018); 0 turns it off. With diffaugment, D sees T(x) and the gradient is taken with respect to
        the un-augmented x, through T.
    r1_every: lazy regularisation (StyleGAN2, Karras et al. 2020): the penalty is computed on one D
        update in r1_every and multiplied by r1_every, so its average strength is unchanged.
    diffaugment: comma-separated DiffAugment transforms ("color", "translation", "cutout"; models/augment.py)
        applied to every image D sees in training, real and generated, in D's updates and G's; "" turns
        augmentation off. Meant for small data sets.
    d_steps: discriminator updates per training step (each on the same real batch).
    d_lr_scale: D's learning rate as a multiple of G's (the run's OptimConfig.lr, warm-up included): the
        two time-scale update rule (TTUR, Heusel et al. 2017) where it is not 1. docs/gan-budget.md says
        what it gave on the shapes set.
    mbstd_group: D's minibatch standard deviation (nets/gan_nets.py minibatch_std) over groups of this many
        images; 0 turns it off (the layout of runs made before it).
    text_encoder, text_dim, text_tokens: the prompt's encoder (condition/text_embed.py TextFields); its
        pooled vector conditions G (normalisation gains and shifts) and D (projection) like a label.
    text_dropout: share of training prompts replaced by the absent prompt (G and D alike), so a text
        model also samples without one (labels of that sample are dropped with it).
    latent, autoencoder: a GAN in the latents of a frozen autoencoder run (models/autoencoder.py), as latent
        diffusion (DiffusionConfig.latent; docs/latent.md): G makes latents and D judges them (latent_channels
        x image_size / f on a side: `net_shape`), and sampling decodes G's latents to images. `latent` names the
        run when a run is created (`--set latent=ae-32`); its config is copied into `autoencoder` and its weights
        into the model when the training starts. diffaugment then acts on the latents (translation moves by
        whole latent pixels). docs/gan-budget.md says what it gave on the shapes set.
    Both optimisers take all their settings from the run's OptimConfig; its betas default to the
    family's `default_betas` (0, 0.99): GANs want little or no momentum (StyleGAN2).
    """

    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    z_dim: int = 128
    base_channels: int = 32
    depth: int = 1
    r1_gamma: float = 0.1
    r1_every: int = 4
    diffaugment: str = "color,translation,cutout"
    d_steps: int = 1
    d_lr_scale: float = 1.0
    mbstd_group: int = 0
    text_dropout: float = 0.1
    latent: str = ""
    autoencoder: AutoencoderConfig | dict | None = None

    # Size fields and their valid ranges (limits.py).
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "z_dim": (1, 4096), "base_channels": WIDTH,
        "depth": (1, 8), "r1_every": (1, 10_000), "d_steps": (1, 64), "mbstd_group": (0, 64),
        **TEXT_BOUNDS,
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        check_latent_fields(self)
        if gan_levels(self.net_shape[1])[1] < 1:
            if self.autoencoder is not None:
                raise ValueError(f"the autoencoder's latents are {self.net_shape[1]} on a side; a GAN in latents needs "
                                 "an even side of at least 8 (a 32x32 image through a 4x autoencoder)")
            raise ValueError(f"image_size must be even and at least 8 (e.g. 8, 16, 28, 32, 64), got {self.image_size}")
        for name in ("z_dim", "base_channels", "r1_every", "d_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_classes < 0 or self.r1_gamma < 0:
            raise ValueError("num_classes and r1_gamma must not be negative")
        if not 0 < self.d_lr_scale <= 100:
            raise ValueError(f"d_lr_scale must be above 0 and at most 100, got {self.d_lr_scale}")
        parse_policy(self.diffaugment)
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        check_text_fields(self)

    @property
    def net_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what G makes and D judges: the images', or the latents' with an autoencoder."""
        return latent_shape(self)

    def unused_fields(self) -> tuple[str, ...]:
        """The fields a model without text or latents ignores (`pixelforge info` leaves them out)."""
        return (unused_text_fields(self) + (() if self.text_dim else ("text_dropout",))
                + (() if self.autoencoder is not None else ("latent", "autoencoder")))


class GANModel(FamilyModule):
    """A hinge-loss GAN (Lim & Ye 2017; Miyato et al. 2018): G and D trained alternately, each with its own Adam.

    The trainer keeps an EMA copy of this whole module and samples from it: that copy's G is the
    "EMA generator" (its D is carried along unused).
    """

    Config = GANConfig
    family = "gan"
    default_lr = 5e-4  # the CLI's --lr when not given (both optimisers)
    default_betas = (0.0, 0.99)  # Adam's betas when the run's OptimConfig leaves them unset

    @staticmethod
    def upgrade_config(run: dict) -> dict:
        """Folders written before the betas moved to the run's optim settings kept them as the model
        field adam_betas, beside optim's beta1 and beta2 that the GAN ignored: adam_betas wins."""
        model = dict(run.get("model", {}))
        if "adam_betas" not in model:
            return run
        betas = model.pop("adam_betas")
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"model: adam_betas must be two numbers, got {betas!r}")
        return {**run, "model": model, "optim": {**run.get("optim", {}), "beta1": betas[0], "beta2": betas[1]}}
    capabilities = ()
    accumulates = False  # G's update must see the D its own step just updated (see FamilyModule)
    inputs = ("labels", "text")  # the Cond fields it takes (see FamilyModule.takes)
    # The keyword options sample() takes beyond n, cond and seeds, with their ranges and defaults.
    option_specs = (
        OptionSpec("truncation", "float", 1.0, min=0.0, max=2.0,
                   help="truncation of the latent (1: none; lower: safer, less varied)"),
    )
    sample_options = option_defaults(option_specs)
    # what a compressed run replaces (compress/): G and its prompt conditioner on a latent and a class per image
    network_call = NetworkCall("synthesize", ("z",), ("G", "text_g"))

    def __init__(self, config: GANConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)  # self.train_generator draws: z, augmentation, labels for unlabelled images
        self.config = config
        self.optim_config = optim or OptimConfig()
        net_channels, net_side, _ = config.net_shape  # the images', or an autoencoder's latents'
        shape = dict(image_size=net_side, channels=net_channels, base_channels=config.base_channels,
                     num_classes=config.num_classes, depth=config.depth)
        vector_dim = gan_widths(net_side, config.base_channels)[0] if config.text_dim else 0
        with seeded_init(seed):  # weight initialisation only; training randomness uses self.train_generator
            self.G = Generator(z_dim=config.z_dim, vector_dim=vector_dim, **shape)
            self.D = Discriminator(vector_dim=vector_dim, mbstd_group=config.mbstd_group, **shape)
            # prompt -> a vector for G and one for D, each trained by that network's optimiser
            self.text_g = make_text_conditioner(config, vector_dim)
            self.text_d = make_text_conditioner(config, vector_dim)
            # a latent GAN's frozen first stage, its weights copied in at the run's start (frozen_parts); built
            # last, so a pixel GAN draws the weights it always drew
            self.autoencoder = None if config.autoencoder is None else make_first_stage(config.autoencoder).requires_grad_(False)
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        if self.autoencoder is not None:
            # per-channel shift and scale of the latents (LATENT_STD), fixed by the first training batch and kept
            # from then on (buffers: checkpoints and exports carry them); scale 0 until that batch is seen
            self.register_buffer("latent_shift", torch.zeros(net_channels))  # (latent_channels,)
            self.register_buffer("latent_scale", torch.zeros(net_channels))
            self._latent_cache = LatentCache()  # the training images' latents, encoded once each
            # the network call that compress/ exports runs the decoder too
            self.network_call = NetworkCall("synthesize", ("z",), ("G", "text_g", "autoencoder"))

    # --- parts every family offers -------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg, betas = self.optim_config, self.default_betas
            # "g" first: the trainer logs its lr
            g, d = list(self.G.parameters()), list(self.D.parameters())
            if self.text_g is not None:
                g, d = g + list(self.text_g.parameters()), d + list(self.text_d.parameters())
            self._optimizers = {"g": make_adam(g, cfg, betas),
                                "d": make_adam(d, cfg, betas, lr_scale=self.config.d_lr_scale)}
        return self._optimizers

    # --- a GAN in an autoencoder's latents --------------------------------------------------------------
    def frozen_parts(self) -> tuple[tuple, ...]:
        """(run, module name in that run, own module): a latent GAN's autoencoder, the `net` of the run its config
        names, copied in when a run starts (runs/latent.py); none for a pixel GAN."""
        if self.autoencoder is None or not self.config.latent:
            return ()
        return ((self.config.latent, "net", self.autoencoder),)

    def _latent_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) (C, 1, 1) each; scale 1 before the first training batch has fitted it."""
        scale = torch.where(self.latent_scale > 0, self.latent_scale, torch.ones_like(self.latent_scale))
        return self.latent_shift[:, None, None], scale[:, None, None]

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> latents (B, c, h, w) as G and D see them: the autoencoder's posterior
        means, shifted and scaled (LATENT_STD)."""
        mean, _ = self.autoencoder.eval().encode(x.to(self.device, torch.float32))
        return self._affine_latents(mean)

    def _affine_latents(self, mean: torch.Tensor) -> torch.Tensor:
        """Posterior means (B, c, h, w) -> the latents G and D see: shifted and scaled per channel."""
        shift, scale = self._latent_affine()
        return (mean - shift) * scale

    @torch.no_grad()
    def _training_latents(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch's latents; the first batch also fixes the shift and scale, the mean and LATENT_STD / std
        of each channel of its latents (over every process's share)."""
        mean = self._latent_cache.means(self.autoencoder, x)  # (B, c, h, w), each image encoded once a run
        if float(self.latent_scale.max()) == 0.0:
            every = all_gather_cat(mean).float()  # (B x processes, c, h, w)
            std = every.std(dim=(0, 2, 3))  # (c,)
            if not bool(torch.isfinite(std).all()) or float(std.min()) <= 0:
                raise ValueError(f"the autoencoder's latents of the first batch have std {std.tolist()} per channel: "
                                 "it cannot be used for a latent GAN (train it longer, or check its run)")
            self.latent_shift.copy_(every.mean(dim=(0, 2, 3)))
            self.latent_scale.copy_(LATENT_STD / std)
        return self._affine_latents(mean)

    def to_images(self, out: torch.Tensor) -> torch.Tensor:
        """What G makes -> images (B, C, H, W), before the clamp to [-1, 1]: decoded latents, or G's images."""
        if self.autoencoder is None:
            return out
        shift, scale = self._latent_affine()
        return self.autoencoder.eval().decode(out / scale + shift)

    # --- labels and latents ----------------------------------------------------------------------
    def _labels(self, cond: Cond | None, b: int, generator: torch.Generator) -> tuple[torch.Tensor | None, ...]:
        """(labels D sees, labels G gets), each (B,) or None for an unconditional model.

        D sees the given labels, -1 ("no label") where there are none; G needs a class for every
        image, so unlabelled ones get a uniformly random class from `generator`.
        """
        k = self.config.num_classes
        if k == 0:
            return None, None
        given = cond.labels if cond is not None and cond.labels is not None else None
        y_d = no_labels(b, self.device) if given is None else given.to(self.device)
        if len(y_d) != b:
            raise ValueError(f"{len(y_d)} labels for {b} images")
        if int(y_d.max()) >= k:
            raise ValueError(f"label {int(y_d.max())} out of range; this model has classes 0..{k - 1}")
        drawn = torch.randint(k, (b,), generator=generator, device=self.device)
        return y_d, torch.where(y_d >= 0, y_d, drawn)

    def _z(self, b: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(b, self.config.z_dim, generator=generator, device=self.device)  # (B, z_dim)

    @staticmethod
    def _twice(y: torch.Tensor | None) -> torch.Tensor | None:
        return None if y is None else torch.cat([y, y])

    # --- training --------------------------------------------------------------------------------
    def discriminator_step(self, x: torch.Tensor, y_d, y_g, step: int, r1_now: bool,
                           cond: Cond | None = None) -> dict[str, float]:
        """One D update: hinge loss relu(1 - D(T(x))) + relu(1 + D(T(G(z)))), plus R1 when r1_now."""
        cfg, gen = self.config, self.train_generator
        b = x.shape[0]

        def losses() -> tuple[torch.Tensor, ...]:  # run through self.parallel: every use of D's weights inside
            with torch.no_grad():
                fake = self.G(self._z(b, gen), y_g, text_vector(self.text_g, cond, b, self.device))
            real = x.detach().requires_grad_(r1_now)  # (B, C, H, W): R1's gradient is taken here, before T
            real_in = diff_augment(real, cfg.diffaugment, gen)
            fake_in = diff_augment(fake, cfg.diffaugment, gen)
            v_d = text_vector(self.text_d, cond, b, self.device)  # (B, vector_dim) or None
            # one pass: one power iteration
            logits = self.D(torch.cat([real_in, fake_in]), self._twice(y_d), self._twice(v_d), parts=2)
            d_real, d_fake = logits[:b], logits[b:]
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            total, r1 = d_loss, torch.zeros(())
            if r1_now:
                # R1 = E||grad_x D(T(x))||^2 with respect to the real images x before augmentation, through
                # T, as the DiffAugment authors' StyleGAN2 code (and StyleGAN2-ADA's) take it; lazy: scaled by r1_every.
                (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
                r1 = grad.square().sum(dim=(1, 2, 3)).mean()
                total = d_loss + cfg.r1_gamma / 2 * cfg.r1_every * r1
            return total, d_loss, r1, d_real, d_fake

        total, d_loss, r1, d_real, d_fake = self.parallel(losses)
        grad_norm = self.update(self.optimizers()["d"], total, step)
        return {"d_loss": float(d_loss.detach()), "r1": float(r1.detach()), "d_grad_norm": grad_norm,
                "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}

    def generator_step(self, b: int, y_d, y_g, step: int, cond: Cond | None = None) -> dict[str, float]:
        """One G update: minimise -D(T(G(z))) (the hinge GAN's generator loss)."""
        cfg, gen = self.config, self.train_generator
        d_parts = [m for m in (self.D, self.text_d) if m is not None]
        for m in d_parts:
            m.requires_grad_(False)  # D's weights are not updated here: spare their gradients
        try:
            def loss() -> torch.Tensor:  # run through self.parallel: every use of G's weights inside
                fake = self.G(self._z(b, gen), y_g, text_vector(self.text_g, cond, b, self.device))
                logits = self.D(diff_augment(fake, cfg.diffaugment, gen), y_d, text_vector(self.text_d, cond, b, self.device))
                return -logits.mean()

            g_loss = self.parallel(loss)
            grad_norm = self.update(self.optimizers()["g"], g_loss, step)
        finally:
            for m in d_parts:
                m.requires_grad_(True)
        return {"g_loss": float(g_loss.detach()), "grad_norm": grad_norm}

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """d_steps D updates then one G update on a batch x (B, C, H, W) in [-1, 1]; returns figures to log.

        loss is G's loss (what the trainer logs); d_loss, d_real and d_fake (D's mean logits) are
        from the last D update; r1 is the penalty of this step's D updates that computed it, 0.0 on
        steps without one; grad_norm is G's, d_grad_norm D's (before clipping).
        """
        self.train()
        cfg = self.config
        if self.autoencoder is not None:
            x = self._training_latents(x)  # (B, c, h, w), encoded under no_grad: the autoencoder stays frozen
        if "text" in self.takes():  # prompt dropout: a dropped sample has no prompt (and no label)
            cond = cond.drop(cfg.text_dropout, self.train_generator)
        y_d, y_g = self._labels(cond, x.shape[0], self.train_generator)
        r1s = []
        for k in range(cfg.d_steps):
            r1_now = cfg.r1_gamma > 0 and (step * cfg.d_steps + k) % cfg.r1_every == 0  # counts D updates
            d = self.discriminator_step(x, y_d, y_g, step, r1_now=r1_now, cond=cond)
            if r1_now:
                r1s.append(d["r1"])
        g = self.generator_step(x.shape[0], y_d, y_g, step, cond=cond)
        return {"loss": g["g_loss"], **d, "r1": sum(r1s) / len(r1s) if r1s else 0.0, **g}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """D's hinge loss per image (B,): relu(1 - D(x_i)) + relu(1 + D(G(z_i))), z_i from `generator`.

        No augmentation. It measures how well D separates held-out real images from generated ones:
        it is not a sample-quality figure (lower is not better for G); a gap to the training d_loss
        shows D memorising the training set, the failure that DiffAugment counters. Use FID to judge
        or early-stop a GAN.
        """
        self.eval()
        b = x.shape[0]
        if self.autoencoder is not None:
            x = self.encode_latents(x)
        y_d, y_g = self._labels(cond, b, generator)
        v_g, v_d = (text_vector(t, cond, b, self.device) for t in (self.text_g, self.text_d))
        fake = self.G(self._z(b, generator), y_g, v_g)
        return F.relu(1 - self.D(x, y_d, v_d)) + F.relu(1 + self.D(fake, y_d, v_d))

    # --- sampling --------------------------------------------------------------------------------
    def synthesize(self, z: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """G(z; cond): latents z (B, z_dim) -> images (B, C, H, W), before the clamp to [-1, 1]. cond.labels
        (B,) is each image's class (never "no label": sample() draws one), None for an unconditional model;
        the prompt (absent where cond gives none) conditions a text model; a latent GAN's latents are decoded.
        The network call of sampling, which a compressed run replaces (compress/: an ONNX graph)."""
        y = cond.labels if cond is not None and self.config.num_classes else None
        return self.to_images(self.G(z, y, text_vector(self.text_g, cond, z.shape[0], z.device)))

    def example_call_inputs(self, method: str, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Example arguments of `synthesize` for a batch of b (compress/: export and parity), on the CPU: z
        from the prior, and a class for every image (G never sees "no label")."""
        out = {"z": torch.randn(b, self.config.z_dim, generator=generator)}
        if self.config.num_classes:
            out["labels"] = torch.randint(self.config.num_classes, (b,), generator=generator)
        return out

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        callback=None,
        truncation: float = 1.0,
    ) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]; image i's z (and class, where its label is -1) use seeds[i] only.

        truncation psi scales z toward the mean of its prior: z' = psi z (the truncation trick in
        StyleGAN's form, applied to z since this G has no mapping network). 1 leaves z as trained;
        smaller values trade variety for typical-looking images; 0 gives each class's "mean" image.
        A class-conditional model samples a random class for labels -1 or cond=None; a text model
        without a prompt (cond=None or no text) samples with the absent prompt.
        """
        self.eval()
        cfg = self.config
        seeds = check_seeds(n, seed, seeds)
        truncation = float(truncation)
        if not 0 <= truncation < float("inf"):
            raise ValueError(f"truncation must be a number >= 0 (1: none), got {truncation}")
        gen = PerSampleGenerator(seeds, self.device)
        z = gen.randn((cfg.z_dim,)) * truncation  # (n, z_dim); drawn first, so a seed's z does not depend on its label
        y = None
        k = cfg.num_classes
        if k > 0:
            given = cond.labels if cond is not None and cond.labels is not None else no_labels(n)
            given = given.to(self.device)
            if len(given) != n:
                raise ValueError(f"{len(given)} labels for {n} images")
            if int(given.max()) >= k:
                raise ValueError(f"label {int(given.max())} out of range; this model has classes 0..{k - 1}")
            drawn = torch.stack([torch.randint(k, (), generator=g, device=self.device) for g in gen.generators])
            y = torch.where(given >= 0, given, drawn)  # (n,)
        cond = cond.to(self.device) if cond is not None else None
        if y is not None:  # the drawn classes replace the given labels' "no label"
            cond = replace(cond, labels=y) if cond is not None else Cond(labels=y)
        x = self.synthesize(z, cond).clamp(-1, 1)
        if callback is not None:
            callback(0, 1)
        return x
