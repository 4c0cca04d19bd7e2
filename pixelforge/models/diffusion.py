"""Diffusion family: EDM preconditioning, loss and sampling (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models") around a plain backbone: a UNet or a DiT."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..condition import Cond, LabelEmbedding
from ..condition.audio import AudioConditioner, AudioEncoder, AudioFields, check_audio_fields, unused_audio_fields
from ..condition.edges import SketchFields, check_sketch_fields, unused_sketch_fields
from ..condition.lowres import LowresConfig, low_side, lowres_config
from ..condition.text_embed import (TEXT_BOUNDS, TextFields, check_text_fields, make_text_conditioner, text_condition,
                                   unused_text_fields)
from ..sampling import SAMPLERS, SCHEDULES, PerSampleGenerator, get_sampler, truncate_sigmas
from ..sampling.schedules import RHO_SCHEDULES
from .nets.controlnet import ControlNet
from .nets.dit import DiT
from .nets.unet import UNet
from .adapter import AdapterConfig, adapter_config
from .autoencoder import AutoencoderConfig, LatentCache, check_latent_fields, latent_shape, make_first_stage
from .distill import DistillConfig, distill_config, progressive_distillation_loss
from ..distributed import all_gather_cat
from .common import check_seeds, seeded_init
from .family import FamilyModule, NetworkCall
from .limits import BLOCKS, CHANNEL_MULT, DEPTH, HEADS, IMAGE_SIZE, LEVELS, NUM_CLASSES, WIDTH, check_bounds
from .optim import OptimConfig, make_adam
from .options import OptionSpec, option_defaults


BACKBONES = ("unet", "dit")


@dataclass(frozen=True)
class DiffusionConfig(TextFields, SketchFields, AudioFields):
    """Everything that fixes the network's shape and the diffusion parameterisation.

    num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1.
    attn_resolutions: feature-map sides (e.g. 16, 8) whose levels get self-attention.
    label_dropout: share of training labels replaced by "no label", so one network also learns the
        unconditional model that classifier-free guidance needs (Ho & Salimans 2022).
    label_lr_scale: the label embedding's learning rate as a multiple of the run's (warm-up and schedule
        included): a run started from another model's weights begins with every class at that model's "no
        label" row (train/loop.py _init_from), and a short run has few steps to tell its classes apart.
    P_mean, P_std: log-normal distribution of training noise levels, ln(sigma) ~ N(P_mean, P_std^2).
        EDM (Table 1) uses P_mean -1.2 for CIFAR-10 trained on 200 M images; the default 0.2 puts more
        of the training on the high noise levels where a digit's shape and class are decided, which
        on the bundled digits with a 4-minute CPU budget lowered FID from 1.01 to 0.44 (UNet) and
        from 6.7 to 1.7 (DiT; docs/families.md). Set -1.2 for EDM's original weighting.
    backbone: the network F, one of BACKBONES: "unet" (nets/unet.py; shaped by base_channels,
        channel_mult, num_res_blocks, attn_resolutions) or "dit" (nets/dit.py, a DiT transformer of
        Peebles & Xie 2023; shaped by patch_size, depth, num_heads and hidden_size, where 0 means
        4 * base_channels). dropout applies to both.
    text_encoder, text_dim, text_tokens: the prompt's encoder (condition/text_embed.py TextFields); its
        pooled vector joins the noise-level embedding and its tokens feed cross-attention.
    text_vector: False leaves the pooled vector out, so the prompt reaches the network only through
        cross-attention (as in Stable Diffusion 1); a network given both can learn everything global
        (colour, background) from the vector and leave the tokens unused.
    cross_attn_position: the UNet's cross-attention queries carry their place (a fixed 2D sine-cosine
        embedding), so a prompt can say where ("at the top left"); the DiT's tokens always carry theirs.
    position_embedding: the UNet adds a learned per-pixel embedding (zero at the start) to its first
        feature map, so that it knows where in the image each feature is. A convolutional network sees
        every place alike (only the borders tell them apart), so a condition that arrives as a vector
        (a label, the pooled prompt) can say "red" but hardly "at the top left". With it, the condition
        vector is also read out as a coarse 4x4 layout added to that map. The DiT always has one.
    spatial_condition, edge_detector, sketch_stroke_width: an edge map concatenated to the input
        (condition/edges.py SketchFields), with a flag channel that is 0 where it is absent.
    audio_encoder, audio_net, audio_set: a spoken clip's embedding (condition/audio.py AudioFields) from a
        frozen copy of the audio encoder, mapped by a small MLP into the vector added to the noise-level
        embedding (docs/audio.md).
    latent, autoencoder: latent diffusion (Rombach et al. 2022; docs/latent.md). `latent` names an autoencoder
        run (models/autoencoder.py) when a run is created: runs.new_run_config copies its config into
        `autoencoder` (kept here, so the run rebuilds from its own folder) and records the run's folder in
        `latent`, from which the training copies the weights once, at its start, into this model's frozen
        `autoencoder` (they then travel in every checkpoint). The diffusion then runs on the latents
        (latent_channels x image_size / f on a side: shaped by `net_shape`); image_size and channels stay
        the images'. None: pixel space.
    adapter: a ControlNet-style adapter (models/adapter.py AdapterConfig; docs/conditions.md): the run is an
        already trained run (its base, whose config fields these are) with the spatial condition of the
        adapter's kind added through a trainable copy of the UNet's input and middle blocks, the base's own
        network frozen. runs/adapter.py makes such a config from the base. None: no adapter.
    level_channels, stem_channels: the UNet's explicit width per level (one per channel_mult entry) and of its
        first feature map, in place of base_channels * channel_mult and base_channels: what a pruned network
        has (`pixelforge compress --prune`, compress/prune.py). Empty and 0 (the default): those products.
        base_channels still sets the noise-level embedding's width (4 * base_channels), which pruning keeps.
    lowres: a super-resolution model (an upscaler; condition/lowres.py LowresConfig: scale and filters;
        docs/upscale.md): its condition is the low-resolution image brought back to image_size, `channels`
        channels of Cond.spatial beside the flag channel, and the diffusion models the residual x - that image
        (what the filter cannot restore), so the sample is that image plus the residual drawn. None: no upscaler.
    distill: a distilled few-step model (models/distill.py DistillConfig; docs/distill.md): the network is a
        student of the teacher run it names, of the same config, trained to sample in distill.steps_out DDIM
        steps on the nested schedule; while it trains, the teacher is read from its run, frozen and never saved
        with it. None: a model trained on data.
    """

    image_size: int = 32
    channels: int = 3
    num_classes: int = 0
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()  # the middle block always has attention
    dropout: float = 0.0
    label_dropout: float = 0.1
    label_lr_scale: float = 1.0
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    P_mean: float = 0.2
    P_std: float = 1.2
    backbone: str = "unet"
    patch_size: int = 2
    depth: int = 6
    num_heads: int = 4
    hidden_size: int = 0
    text_vector: bool = True
    cross_attn_position: bool = True
    position_embedding: bool = False
    latent: str = ""
    autoencoder: AutoencoderConfig | dict | None = None
    adapter: AdapterConfig | dict | None = None
    lowres: LowresConfig | dict | None = None
    distill: DistillConfig | dict | None = None
    level_channels: tuple[int, ...] = ()
    stem_channels: int = 0

    # Size fields and their valid ranges (limits.py); hidden_size 0 means 4 * base_channels.
    BOUNDS: ClassVar[dict] = {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "base_channels": WIDTH,
        "channel_mult": (LEVELS, CHANNEL_MULT), "num_res_blocks": (1, BLOCKS[1]),
        "attn_resolutions": ((0, 16), IMAGE_SIZE), "patch_size": (1, 64), "depth": DEPTH,
        "num_heads": HEADS, "hidden_size": (0, 2 * WIDTH[1]), "level_channels": ((0, LEVELS[1]), WIDTH),
        "stem_channels": (0, WIDTH[1]), **TEXT_BOUNDS,
    }

    def __post_init__(self):
        check_bounds(self, self.BOUNDS)  # also turns JSON's lists into tuples
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES)}")
        self._check_latent()
        side, what = self.net_shape[1], "image_size" if self.autoencoder is None else "the latent side"
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.backbone == "unet" and side % factor:
            raise ValueError(
                f"{what} {side} must be divisible by {factor} for channel_mult {self.channel_mult}"
            )
        if self.level_channels and len(self.level_channels) != len(self.channel_mult):
            raise ValueError(f"level_channels {list(self.level_channels)} must give one width per level of channel_mult "
                             f"{list(self.channel_mult)} (or be empty: base_channels * channel_mult)")
        if self.backbone == "dit" and (self.level_channels or self.stem_channels):
            raise ValueError("level_channels and stem_channels shape a UNet; this model's backbone is 'dit'")
        if self.backbone == "dit":
            width = self.hidden_size or 4 * self.base_channels
            if min(self.patch_size, self.depth, self.num_heads) < 1 or side % self.patch_size:
                raise ValueError(f"the DiT needs patch_size, depth, num_heads >= 1 and {what} divisible by "
                                 f"patch_size; got {self.patch_size}, {self.depth}, {self.num_heads}, {side}")
            if width % 4 or width % self.num_heads:  # 4: the 2D sin-cos position embedding uses quarters
                raise ValueError(f"the DiT width {width} (hidden_size, or 4 * base_channels when 0) must be divisible "
                                 f"by 4 and by num_heads {self.num_heads}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0 < self.label_lr_scale <= 1000:
            raise ValueError(f"label_lr_scale must be above 0 and at most 1000, got {self.label_lr_scale}")
        for name in ("text_vector", "cross_attn_position", "position_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_text_fields(self)
        check_sketch_fields(self)
        check_audio_fields(self)
        if self.autoencoder is not None and self.spatial_condition:
            raise ValueError("spatial_condition (--condition edges) works in pixel space only: an edge map at the image "
                             "size does not fit a latent diffusion run's latents; train it without latent")
        self._check_adapter()
        self._check_lowres()
        self._check_distill()

    def _check_distill(self) -> None:
        """distill None or a DistillConfig on a pixel-space model conditioned on labels or nothing."""
        object.__setattr__(self, "distill", distill_config(self.distill))
        if self.distill is None:
            return
        other = [name for name, given in (("a text encoder", self.text_dim), ("a spatial condition", self.spatial_channels),
                                          ("an audio encoder", self.audio_dim), ("an autoencoder (latent)", self.autoencoder),
                                          ("an adapter", self.adapter)) if given]
        if other:
            raise ValueError(f"distill: only pixel-space models conditioned on labels (or on nothing) are distilled; this "
                             f"one has {', '.join(other)}")

    def _check_adapter(self) -> None:
        """adapter None, or an AdapterConfig on a UNet in pixel space whose kind is the spatial condition."""
        object.__setattr__(self, "adapter", adapter_config(self.adapter))  # kept frozen and hashable
        if self.adapter is None:
            return
        if self.backbone != "unet":
            raise ValueError(f"adapter: a ControlNet-style adapter copies a UNet's input blocks; this model's backbone "
                             f"is {self.backbone!r}")
        if self.autoencoder is not None:
            raise ValueError("adapter: works in pixel space only (an edge map at the image size does not fit a latent "
                             "diffusion run's latents)")
        if self.spatial_condition != self.adapter.kind:
            raise ValueError(f"adapter kind {self.adapter.kind!r} needs spatial_condition {self.adapter.kind!r} (its "
                             f"detector and stroke width), got {self.spatial_condition!r}")

    def _check_lowres(self) -> None:
        """lowres None or a LowresConfig whose scale divides image_size, in pixel space, without an edge map."""
        object.__setattr__(self, "lowres", lowres_config(self.lowres))
        if self.lowres is None:
            return
        low_side(self.image_size, self.lowres)
        if self.spatial_condition:
            raise ValueError(f"lowres (an upscaler) and spatial_condition {self.spatial_condition!r} both use the spatial "
                             "input: an upscaler's condition is its low-resolution image alone")
        if self.autoencoder is not None:
            raise ValueError("lowres (an upscaler) works in pixel space only: train it without latent")

    @property
    def spatial_channels(self) -> int:
        """Channels of Cond.spatial this config takes: the low-resolution image's (channels) for an upscaler,
        else the sketch fields' (1 for edges, 0 for none)."""
        return self.channels if self.lowres is not None else SketchFields.spatial_channels.fget(self)

    def _check_latent(self) -> None:
        """latent a string; autoencoder None or the fields of an AutoencoderConfig of the same images."""
        check_latent_fields(self)

    @property
    def net_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the denoiser sees: the image's in pixel space, the latent's with an autoencoder."""
        return latent_shape(self)

    def unused_fields(self) -> tuple[str, ...]:
        """The fields this config's backbone ignores (`pixelforge info` leaves them out)."""
        conditioned = self.num_classes or self.text_dim or self.spatial_channels or self.audio_dim
        unused = (() if conditioned else ("label_dropout",)) + (() if self.num_classes else ("label_lr_scale",))
        unused += unused_text_fields(self) + unused_sketch_fields(self)
        unused += unused_audio_fields(self)
        if self.autoencoder is None:
            unused += ("latent", "autoencoder")
        if self.adapter is None:
            unused += ("adapter",)
        if self.lowres is None:
            unused += ("lowres",)
        if self.distill is None:
            unused += ("distill",)
        if not self.text_dim:
            unused += ("text_vector", "cross_attn_position")
        if self.backbone == "dit":
            return (unused + ("channel_mult", "num_res_blocks", "attn_resolutions", "position_embedding", "level_channels",
                              "stem_channels")
                    + (("base_channels",) if self.hidden_size else ()) + (("cross_attn_position",) if self.text_dim else ()))
        unused += () if self.level_channels else ("level_channels",)
        unused += () if self.stem_channels else ("stem_channels",)
        return unused + ("patch_size", "depth", "num_heads", "hidden_size")


def make_backbone(config: DiffusionConfig) -> nn.Module:
    """The network F(x_in, c_noise, labels) that config.backbone names, on inputs of config.net_shape (the
    latents of a latent diffusion model); a text-conditioned one also cross-attends to prompt tokens of its
    own embedding width."""
    channels, side, _ = config.net_shape
    if config.backbone == "dit":
        width = config.hidden_size or 4 * config.base_channels
        return DiT(
            image_size=side,
            in_channels=channels,
            patch_size=config.patch_size,
            hidden_size=width,
            depth=config.depth,
            num_heads=config.num_heads,
            dropout=config.dropout,
            num_classes=config.num_classes,
            context_dim=width if config.text_dim else 0,
            spatial_channels=spatial_input_channels(config),
        )
    return make_unet(config, spatial_channels=0 if config.adapter is not None else spatial_input_channels(config))


def make_unet(config: DiffusionConfig, *, spatial_channels: int = 0, encoder_only: bool = False) -> UNet:
    """The UNet config describes, taking `spatial_channels` beside x (an adapter's base takes none: its
    condition comes through the ControlNet); encoder_only: its input and middle blocks alone."""
    channels, side, _ = config.net_shape
    return UNet(
        image_size=side,
        in_channels=channels,
        base_channels=config.base_channels,
        channel_mult=config.channel_mult,
        num_res_blocks=config.num_res_blocks,
        attn_resolutions=config.attn_resolutions,
        dropout=config.dropout,
        num_classes=config.num_classes,
        context_dim=4 * config.base_channels if config.text_dim else 0,
        cross_attn_position=config.cross_attn_position,
        spatial_channels=spatial_channels,
        position_embedding=config.position_embedding,
        encoder_only=encoder_only,
        level_channels=config.level_channels,
        stem_channels=config.stem_channels,
    )


def make_adapter(config: DiffusionConfig, base: UNet) -> ControlNet:
    """The ControlNet of an adapter run on its base UNet: a copy of its input and middle blocks that takes the
    edge map and its flag channel (spatial_input)."""
    return ControlNet(base, make_unet(config, encoder_only=True), hint_channels=spatial_input_channels(config),
                      hint_widths=config.adapter.hint_channels)


def spatial_input_channels(config: DiffusionConfig) -> int:
    """Channels the backbone takes beside x: the spatial condition's and one flag channel (1 where the
    condition is given, 0 where absent: a blank edge map is a valid condition too); 0 without one."""
    return config.spatial_channels + 1 if config.spatial_channels else 0


def spatial_input(cond: Cond | None, channels: int, x: torch.Tensor) -> torch.Tensor | None:
    """The backbone's extra input channels (B, channels + 1, H, W) for x (B, C, H, W): Cond.spatial where
    present (zeros where absent or not given) and the flag channel; None for a model without (channels 0)."""
    if not channels:
        return None
    b, _, h, w = x.shape
    if cond is None or cond.spatial is None:
        return x.new_zeros(b, channels + 1, h, w)
    if tuple(cond.spatial.shape) != (b, channels, h, w):
        raise ValueError(f"Cond.spatial must be ({b}, {channels}, {h}, {w}) for this model (an edge map at the image "
                         f"size), got {tuple(cond.spatial.shape)}")
    flag = cond.present.to(x.device, x.dtype).reshape(b, 1, 1, 1)  # (B, 1, 1, 1)
    spatial = cond.spatial.to(x.device, x.dtype) * flag  # (B, channels, H, W), zeros where absent
    return torch.cat([spatial, flag.expand(b, 1, h, w)], dim=1)


class DiffusionModel(FamilyModule):
    """Denoiser D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM sec. 5), trained with the EDM loss."""

    Config = DiffusionConfig
    family = "diffusion"
    default_lr = 5e-4  # the CLI's --lr when not given; the rate the bundled model was trained with
    capabilities = ("guidance", "edit")
    inputs = ("labels", "text", "spatial", "audio")  # the conditions it can take (see FamilyModule.takes)
    # The keyword options sample() takes beyond n, cond and seeds, with their ranges and defaults: the
    # API, CLI and server offer and check exactly these, and record them in every image's settings.
    option_specs = (
        OptionSpec("sampler", "choice", "heun", choices=tuple(SAMPLERS), help="ODE/SDE solver"),
        OptionSpec("steps", "int", 18, min=1, max=200, help="solver steps (Heun uses two network evaluations a step)"),
        OptionSpec("guidance", "float", 1.0, min=0.0, max=20.0, help="classifier-free guidance scale (1: none)"),
        OptionSpec("schedule", "choice", "karras", choices=tuple(SCHEDULES), help="noise-level schedule"),
        OptionSpec("rho", "float", 7.0, min=1.0, max=20.0,
                   help="the karras and nested schedules' rho: lower spends more of the steps at high noise levels"),
    )
    sample_options = option_defaults(option_specs)
    # What compress/ exports: network(x_in, c_noise, cond), the conditioning modules and the backbone;
    # the EDM preconditioning, guidance and the sampler stay in Python around it.
    network_call = NetworkCall("network", ("x_in", "c_noise"), ("net", "text_cond"))
    # The options edit() takes beyond those of sample(), declared once like them.
    edit_option_specs = (
        OptionSpec("strength", "float", 0.6, min=0.0, max=1.0,
                   help="how far the input is noised: 1 starts from sigma_max (a new image), 0 returns the input"),
        OptionSpec("resample", "int", 1, min=1, max=20,
                   help="inpainting: RePaint passes per step (1: none; U > 1 jumps back U - 1 times)"),
    )

    def __init__(self, config: DiffusionConfig, optim: OptimConfig | None = None, *, seed: int = 0):
        super().__init__(seed)  # self.train_generator draws: noise levels, noise, label dropout
        self.config = config
        if config.lowres is not None:  # an upscaler: Generator.upscale, and the trainer's low-res | sample | original grids
            # it does not edit: img2img would need the low-resolution image its samples are conditioned on
            self.capabilities = (*(c for c in self.capabilities if c != "edit"), "upscale")
        self.optim_config = optim or OptimConfig()
        with seeded_init(seed):  # weight initialisation only; training randomness uses self.train_generator
            self.net = make_backbone(config)
            # prompt -> a vector added to the noise-level embedding and tokens for cross-attention
            self.text_cond = make_text_conditioner(config, self.net.emb_dim if config.text_vector else 0, self.net.emb_dim)
            # latent diffusion: the frozen first stage, its weights copied in at the run's start (frozen_parts)
            self.autoencoder = None if config.autoencoder is None else make_first_stage(config.autoencoder).requires_grad_(False)
            # audio: the frozen encoder (its weights copied in at the run's start, frozen_parts) and the trained
            # map from its embedding to a vector beside the label's; built last, so other models draw as before
            self.audio_net = AudioEncoder(config.audio_net).requires_grad_(False) if config.audio_dim else None
            self.audio_cond = AudioConditioner(config.audio_dim, self.net.emb_dim) if config.audio_dim else None
            # a ControlNet-style adapter: built last, so the base's modules draw the weights they always drew
            self.adapter = None if config.adapter is None else make_adapter(config, self.net)
        if self.adapter is not None:
            # the base is frozen: its weights are copied from the base run when the run starts (frozen_parts)
            # and never trained; the adapter alone is (optimizers, and the trainer's EMA follows requires_grad)
            self.net.requires_grad_(False)
            if self.text_cond is not None:
                self.text_cond.requires_grad_(False)
            self.network_call = NetworkCall("network", ("x_in", "c_noise"), ("net", "text_cond", "adapter"))
        # a distilled model's teacher while it trains: built and read from the teacher run when a distillation starts
        # (reference_parts), and kept out of the module tree, so it is in no state_dict (the run's weights are the
        # student's alone), no optimiser and no EMA; None when sampling
        object.__setattr__(self, "teacher", None)
        if self.autoencoder is not None:
            # LDM's scale_factor, fixed from the latents of the first training batch and kept from then on (a
            # buffer, so checkpoints and exported weights carry it); 0 until that batch is seen. LDM takes
            # 1 / std, unit variance for its DDPM; EDM's preconditioning expects data of std sigma_data (pixels
            # in [-1, 1] have about 0.5), so the latents are scaled to that: sigma_data / std.
            self.register_buffer("latent_scale", torch.tensor(0.0))
            self._latent_cache = LatentCache()  # the training images' latents, encoded once each

    # --- latent diffusion ----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam over the weights that train: a latent model's frozen autoencoder and an audio model's frozen
        encoder are left out, and an adapter run trains its adapter alone."""
        if self._optimizer is None and self.adapter is not None:
            self._optimizer = make_adam(self.adapter.parameters(), self.optim_config, self.default_betas)
        if self._optimizer is None:
            trained = [(name, p) for name, p in self.named_parameters() if not name.startswith(("autoencoder.", "audio_net."))]
            labels = {id(p) for m in self.modules() if isinstance(m, LabelEmbedding) for p in m.parameters()}
            scale = self.config.label_lr_scale if self.config.num_classes else 1.0
            if scale != 1.0 and labels:  # the label embedding in a group of its own, at its own rate
                groups = [{"params": [p for _, p in trained if id(p) not in labels]},
                          {"params": [p for _, p in trained if id(p) in labels], "lr_scale": scale,
                           "lr": self.optim_config.lr * scale}]
                self._optimizer = make_adam(groups, self.optim_config, self.default_betas)
            elif self.autoencoder is not None or self.audio_net is not None:
                self._optimizer = make_adam([p for _, p in trained], self.optim_config, self.default_betas)
        return super().optimizers()

    def frozen_parts(self) -> tuple[tuple, ...]:
        """(run, module name in that run, own module[, SHA-256 the run's weights file must have]): the
        autoencoder run's `net`, copied into `autoencoder` when a run starts (runs/latent.py), the audio encoder
        folder's `net`, copied into `audio_net`; an adapter run's base network and text conditioner; none
        without them."""
        if self.adapter is not None:
            a = self.config.adapter
            parts = [(a.base_path, "net", self.net, a.base_sha256)]
            if self.text_cond is not None:
                parts.append((a.base_path, "text_cond", self.text_cond, a.base_sha256))
            return tuple(parts)
        parts = ()
        if self.autoencoder is not None and self.config.latent:
            parts += ((self.config.latent, "net", self.autoencoder),)
        if self.audio_net is not None and self.config.audio_encoder:  # an encoder folder holds its weights as net.*
            parts += ((self.config.audio_encoder, "net", self.audio_net),)
        return parts

    def reference_parts(self) -> tuple[tuple, ...]:
        """(run, module name in that run, own module, SHA-256 the run's weights file must have): frozen parts read
        from their run whenever a training starts or resumes and never saved (runs/latent.py
        load_reference_parts): a distilled model's teacher network; none otherwise."""
        d = self.config.distill
        if d is None:
            return ()
        if self.teacher is None:  # its own copy of the network, frozen: the teacher's config without the record
            teacher = DiffusionModel(dataclasses.replace(self.config, distill=None)).requires_grad_(False).eval()
            object.__setattr__(self, "teacher", teacher.to(self.device))
        return ((d.teacher_path, "net", self.teacher.net, d.teacher_sha256),)

    @torch.no_grad()
    def encode_audio(self, waves: torch.Tensor) -> torch.Tensor:
        """Prepared clips (B, T) at the encoder's rate (condition/audio.py prepare_clip) -> Cond.audio (B, D)."""
        from ..condition.audio import embed_waves

        if self.audio_net is None:
            raise ValueError("this model takes no audio (it was not trained with --condition audio)")
        return embed_waves(self.audio_net, waves)

    def copied_parts(self) -> tuple[tuple, ...]:
        """(run, module name in that run, own module): parts a new run copies from another run at its start and
        then trains; only the tensors of the own module's names are taken. An adapter's trainable copy of its
        base's input and middle blocks (ControlNet's initialisation from the locked network's weights)."""
        if self.config.distill is not None:  # the student starts as the teacher (Salimans & Ho, Algorithm 2)
            d = self.config.distill
            return ((d.teacher_path, "net", self.net, d.teacher_sha256),)
        if self.adapter is None:
            return ()
        return ((self.config.adapter.base_path, "net", self.adapter.copy),)

    @property
    def net_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoiser's input: the image's, or the latent's with an autoencoder."""
        return self.config.net_shape

    def _scale(self) -> torch.Tensor:
        """The latent scale; 1 before the first training batch has fitted it."""
        return torch.where(self.latent_scale > 0, self.latent_scale, torch.ones_like(self.latent_scale))

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w): the mean of q(z|x) (deterministic,
        and with LDM's tiny KL weight the posterior's std is small beside the data's spread) times the scale."""
        mean, _ = self.autoencoder.eval().encode(x.to(self.device, torch.float32))
        return mean * self._scale()

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """What the solver ends with -> images (n, C, H, W) in [-1, 1]: decoded latents, or x itself."""
        if self.autoencoder is None:
            return x.clamp(-1, 1)
        with torch.no_grad():
            return self.autoencoder.eval().decode(x / self._scale()).clamp(-1, 1)

    @torch.no_grad()
    def _training_latents(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch's latents; the first batch also fixes the scale, sigma_data / std of its latents
        (over every process's share)."""
        mean = self._latent_cache.means(self.autoencoder, x)  # (B, c, h, w), each image encoded once a run
        if float(self.latent_scale) == 0.0:
            std = all_gather_cat(mean).float().std()
            if not bool(torch.isfinite(std)) or float(std) <= 0:
                raise ValueError(f"the autoencoder's latents of the first batch have std {float(std)}: it cannot "
                                 "be used for latent diffusion (train it longer, or check its run)")
            self.latent_scale.fill_(self.config.sigma_data / float(std))
        return mean * self._scale()

    # --- EDM ---------------------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """D(x; sigma): x (B, C, H, W) noisy, sigma (B,) -> denoised estimate, preconditioned in fp32."""
        sd = self.config.sigma_data
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log().flatten() / 4
        F_x = self.network(c_in * x, c_noise, cond)
        return c_skip * x + c_out * F_x

    def network(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """F(x_in, c_noise; cond): the conditioning modules and the backbone, x_in (B, C, H, W) -> (B, C, H, W).
        The one network call of sampling, which a compressed run replaces (compress/: an ONNX graph)."""
        labels = cond.labels if cond is not None else None
        vector, tokens, mask = text_condition(self.text_cond, cond, x_in.shape[0], x_in.device)  # all None without text
        if self.audio_cond is not None:  # (B, emb_dim): the clip's embedding mapped, or the learned "no audio"
            heard = self.audio_cond(cond, x_in.shape[0], x_in.device)
            vector = heard if vector is None else vector + heard
        spatial = spatial_input(cond, self.config.spatial_channels, x_in)  # None without a spatial condition
        if self.adapter is not None:  # the edge map (and its flag) steers the frozen base through the ControlNet
            control = self.adapter(x_in, c_noise, labels, vector=vector, tokens=tokens, token_mask=mask, hint=spatial)
            return self.net(x_in, c_noise, labels, vector=vector, tokens=tokens, token_mask=mask, control=control)
        return self.net(x_in, c_noise, labels, vector=vector, tokens=tokens, token_mask=mask, spatial=spatial)

    def example_call_inputs(self, method: str, b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Example arguments of `network` for a batch of b (compress/: export and parity), on the CPU: x_in
        (B, *net_shape) at unit scale, c_noise (B,) over the training range ln(sigma) / 4."""
        x_in = torch.randn(b, *self.net_shape, generator=generator)
        c_noise = (torch.rand(b, generator=generator) * 10 - 6.2).div(4)  # ln(0.002)..ln(80), / 4
        return {"x_in": x_in, "c_noise": c_noise}

    def per_sample_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """EDM loss (eq. 2 with lambda = 1 / c_out^2), one value per image: (B,); a distilled model's is
        progressive distillation's against its teacher (distill_loss)."""
        cfg = self.config
        if cfg.distill is not None:
            return self.distill_loss(x, cond, generator)
        b = x.shape[0]
        rnd = torch.randn(b, device=x.device, generator=generator)
        sigma = (rnd * cfg.P_std + cfg.P_mean).exp()
        noise = torch.randn(x.shape, device=x.device, generator=generator) * sigma.reshape(-1, 1, 1, 1)
        base = self.lowres_base(cond, x)  # an upscaler diffuses the residual over its upsampled input
        if base is not None:
            x = x - base
        cond = cond.drop(cfg.label_dropout, generator)  # draws only when a condition is given
        weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
        denoised = self.denoise(x + noise, sigma, cond)
        return weight * (denoised - x).square().mean(dim=(1, 2, 3))

    def distill_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        """Progressive distillation's per-sample loss (B,) for x (B, C, H, W): the frozen teacher's guided steps
        of its sampler over the nested grid are the target of this model's DDIM step (models/distill.py)."""
        cfg, d = self.config, self.config.distill
        if self.teacher is None:
            raise ValueError(f"distillation of {d.teacher}: its teacher is read when the training starts "
                             "(runs.latent.load_reference_parts); this model has none")
        teacher = self.teacher.to(x.device)  # moved with the model once: it is outside the module tree
        grid = self._sigmas("nested", d.teacher_steps).to(x.device)  # (steps_out * span + 1,)
        cond = cond.drop(cfg.label_dropout, generator)  # a dropped sample learns the teacher's unguided step
        return progressive_distillation_loss(self.denoise, teacher.guided_denoiser(d.guidance), get_sampler(d.teacher_sampler),
                                             x, cond, grid, d.span, cfg.sigma_data, generator)

    def training_step(self, x: torch.Tensor, cond: Cond, step: int) -> dict[str, float]:
        """One optimiser update on a batch x (B, C, H, W) in [-1, 1]; returns figures to log."""
        self.train()
        if self.autoencoder is not None:
            x = self._training_latents(x)  # (B, c, h, w), encoded under no_grad: the autoencoder stays frozen
        loss = self.parallel(self.per_sample_loss, x, cond, self.train_generator).mean()
        grad_norm = self.update(self.optimizers()["net"], loss, step)
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
        self.eval()
        return self.per_sample_loss(x if self.autoencoder is None else self.encode_latents(x), cond, generator)

    def guided_denoiser(self, guidance: float, negative: Cond | None = None) -> Callable:
        """Classifier-free guidance: D_uncond + w (D_cond - D_uncond), both halves in one batch.

        negative: what the unconditional half is conditioned on instead of the empty condition (a
        negative prompt, say); the same fields and batch as the condition.
        """

        def denoiser(x, sigma, cond):
            if guidance == 1.0 or cond is None or not cond.given_fields() or not self.takes():
                return self.denoise(x, sigma, cond)
            other = cond.empty() if negative is None else negative
            both = self.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([cond, other]))
            d_cond, d_uncond = both.chunk(2)
            return d_uncond + guidance * (d_cond - d_uncond)

        return denoiser

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        sampler: str = "heun",
        steps: int = 18,
        guidance: float = 1.0,
        schedule: str = "karras",
        rho: float = 7.0,
        callback=None,
        negative: Cond | None = None,
    ) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]; image i uses seed + i (or seeds[i]) and nothing else.

        negative: the condition guidance steers away from (e.g. a negative prompt), instead of none."""
        self.eval()
        cfg = self.config
        seeds = check_seeds(n, seed, seeds)
        sigmas = self._sigmas(schedule, steps, rho)
        solver = get_sampler(sampler)
        gen = PerSampleGenerator(seeds, self.device)
        x = gen.randn(self._sample_shape(cond)) * cfg.sigma_max  # (n, C, H, W), or the latent's (n, c, h, w)
        cond = cond.to(self.device) if cond is not None else None
        negative = negative.to(self.device) if negative is not None else None
        base = self.lowres_base(cond, x)  # (n, C, H, W): an upscaler's upsampled input, or None
        out = solver(self.guided_denoiser(guidance, negative), x, sigmas, cond=cond, generator=gen, callback=callback)
        return self.to_images(out if base is None else out + base)

    def _sample_shape(self, cond: Cond | None) -> tuple[int, int, int]:
        """(C, H, W) of what sample() draws: net_shape, but an upscaler's that of its given input, which may be of
        another size than image_size (the UNet is convolutional: post-processing upscales images of any size whose
        sides the UNet's levels divide), unless it has a learned per-pixel position embedding."""
        cfg = self.config
        if cfg.lowres is None or cond is None or cond.spatial is None or cond.spatial.ndim != 4:
            return self.net_shape
        c, h, w = cond.spatial.shape[1:]
        if (h, w) == (cfg.image_size, cfg.image_size):
            return self.net_shape
        factor = 2 ** (len(cfg.channel_mult) - 1) if cfg.backbone == "unet" else 0
        if not factor or cfg.position_embedding or h % factor or w % factor:
            raise ValueError(f"this upscaler makes {cfg.image_size}x{cfg.image_size} images (a "
                             + ("UNet with a position embedding" if factor else "DiT") + " of that size)"
                             + (f" or of sides divisible by {factor}" if factor and not cfg.position_embedding else "")
                             + f", not {w}x{h}")
        return int(c), int(h), int(w)

    def lowres_base(self, cond: Cond | None, x: torch.Tensor) -> torch.Tensor | None:
        """An upscaler's upsampled low-resolution input (B, C, H, W) for x (B, C, H, W), Cond.spatial as given
        (before any dropout): what its diffusion's residual is added to; None for other models. A clear error
        when an upscaler is not given one."""
        if self.config.lowres is None:
            return None
        if cond is None or cond.spatial is None or tuple(cond.spatial.shape) != tuple(x.shape):
            got = "none" if cond is None or cond.spatial is None else str(tuple(cond.spatial.shape))
            raise ValueError(f"an upscaler samples from a low-resolution image: it needs Cond.spatial of shape "
                             f"{tuple(x.shape)} (the image brought back to the model's size), got {got}: upscale images with "
                             "`pixelforge upscale RUN IMAGE... -o OUT` (Generator.upscale)")
        return cond.spatial.to(x.device, x.dtype)

    def _sigmas(self, schedule: str, steps: int, rho: float = 7.0) -> torch.Tensor:
        """The named schedule of `steps` steps from sigma_max down to 0, on the model's device; rho shapes the
        karras and nested schedules (loglinear has none)."""
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        cfg = self.config
        shaped = {"rho": rho} if schedule in RHO_SCHEDULES else {}
        return SCHEDULES[schedule](steps, cfg.sigma_min, cfg.sigma_max, **shaped).to(self.device)

    @torch.no_grad()
    def edit(
        self,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        strength: float = 0.6,
        cond: Cond | None = None,
        seed: int = 0,
        seeds: list[int] | None = None,
        sampler: str = "heun",
        steps: int = 18,
        guidance: float = 1.0,
        schedule: str = "karras",
        rho: float = 7.0,
        resample: int = 1,
        callback=None,
        negative: Cond | None = None,
    ) -> torch.Tensor:
        """Image to image: SDEdit (Meng et al. 2022) and, with a mask, inpainting (RePaint, Lugmayr et al.
        2022); image (n, C, H, W) in [-1, 1] -> (n, C, H, W) in [-1, 1].

        SDEdit: x = image + sigma_start * noise, then the sampler runs the tail of the schedule from
        sigma_start down to 0 (sampling.truncate_sigmas: strength s runs the last round(s * steps) of
        the steps, so s = 1 starts at sigma_max and s = 0 returns the input unchanged). Image i's noise
        comes from seeds[i] (default seed + i), as in sample().
        mask: (n, 1, H, W), 1 where the image is repainted and 0 where it is kept. It wraps the denoiser
        (the samplers stay unchanged): in the kept region the denoised estimate is the input itself, so
        each solver step moves that region's x to the input noised to the next sigma with the start's
        noise (RePaint's replacement of the known region at every step; exactly so for the ODE solvers,
        with fresh noise of the right level for the ancestral one) and it ends equal to the input.
        resample: RePaint's resampling (Algorithm 1, jump length 1), a small loop around the solver: each
        step runs U times, the U - 1 repeats after noising x back up from the step's end to its start
        with fresh noise, which lets the repainted region agree with the kept one (the solver runs one
        step at a time there, so dpmpp_2m takes its first-order step). Without a mask it is ignored. cond, guidance and negative work as in sample().
        A latent model edits the image's latents (the mean of q(z|x), scaled), with the mask max-pooled to
        the latent grid (a latent cell is repainted where any of its pixels is), and decodes the result; the
        kept pixels are then the input's own (the decoder only approximates them), and strength 0 returns
        the input's reconstruction where no mask is given.
        """
        self.eval()
        cfg = self.config
        if cfg.lowres is not None:
            raise ValueError("an upscaler does not edit images: upscale them (pixelforge upscale, Generator.upscale)")
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        if image.ndim != 4 or tuple(image.shape[1:]) != shape:
            raise ValueError(f"edit needs images of shape (n, {', '.join(map(str, shape))}), got {tuple(image.shape)}")
        if mask is not None and (mask.ndim != 4 or mask.shape[0] != image.shape[0] or mask.shape[1] != 1
                                 or mask.shape[2:] != image.shape[2:]):
            raise ValueError(f"the mask must have shape ({image.shape[0]}, 1, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(mask.shape)}")
        if not isinstance(resample, int) or resample < 1:
            raise ValueError(f"resample must be an integer of at least 1, got {resample!r}")
        seeds = check_seeds(image.shape[0], seed, seeds)
        sigmas = truncate_sigmas(self._sigmas(schedule, steps, rho), strength)
        solver = get_sampler(sampler)
        gen = PerSampleGenerator(seeds, self.device)
        image = image.to(self.device, torch.float32)
        pixels, pixel_mask = image, mask  # (n, C, H, W), (n, 1, H, W) or None
        if self.autoencoder is not None:
            image = self.encode_latents(image)  # (n, c, h, w)
            mask = None if mask is None else F.adaptive_max_pool2d(mask.to(self.device, torch.float32), image.shape[-2:])
        out = self._edit_solve(image, mask, sigmas, solver, gen, cond=cond, negative=negative, guidance=guidance,
                               resample=resample, callback=callback)
        if self.autoencoder is None:
            return out.clamp(-1, 1)
        out = self.to_images(out)
        if pixel_mask is None:
            return out
        keep = 1 - pixel_mask.to(self.device, torch.float32)  # (n, 1, H, W)
        return keep * pixels + (1 - keep) * out

    def _edit_solve(self, image: torch.Tensor, mask: torch.Tensor | None, sigmas: torch.Tensor, solver, gen,
                    *, cond, negative, guidance: float, resample: int, callback) -> torch.Tensor:
        """edit()'s sampling in the denoiser's space: image (n, C, H, W) and mask (n, 1, H, W) there."""
        x = image + gen.randn(tuple(image.shape[1:])) * sigmas[0]  # (n, C, H, W) at sigma_start
        cond = cond.to(self.device) if cond is not None else None
        negative = negative.to(self.device) if negative is not None else None
        denoiser = self.guided_denoiser(guidance, negative)
        if mask is None:
            return solver(denoiser, x, sigmas, cond=cond, generator=gen, callback=callback)
        keep = 1 - mask.to(self.device, torch.float32)  # (n, 1, H, W): 1 on the known region

        def inpainting(x, sigma, cond):
            return keep * image + (1 - keep) * denoiser(x, sigma, cond)

        if resample == 1:
            return solver(inpainting, x, sigmas, cond=cond, generator=gen, callback=callback)
        total = len(sigmas) - 1
        for i in range(total):
            for u in range(resample):
                if u:  # jump back: from sigma_{i+1} up to sigma_i with fresh noise, then step down again
                    x = x + (sigmas[i] ** 2 - sigmas[i + 1] ** 2).sqrt().to(x.dtype) * gen.randn_like(x)
                x = solver(inpainting, x, sigmas[i:i + 2], cond=cond, generator=gen)
            if callback is not None:
                callback(i, total, x, x)
        return x
