"""The run config: everything needed to rebuild a model and its data pipeline, saved as config.json; a new
run's config from a data set and settings, with the library's defaults; the model a config describes."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..compress.config import CompressConfig
from ..data import describe_source, validate_config
from ..data.types import DataConfig
from ..fields import from_fields
from ..models import OptimConfig, get_family
from ..models.limits import check_model_size, check_range
from ..models.optim import adam_betas
from ..precision import check_precision
from .upscale import UPSCALE_MODEL

RUN_FORMAT_VERSION = 1
MAX_MINUTES = 525_600  # a year: the largest time budget (train.minutes) a config may hold


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop itself (the family's own settings live in its model config).

    Counts are in optimiser steps. ema_decay applies per step after a warm-up (decay grows as
    (1 + step) / (10 + step) until it reaches ema_decay). patience counts validations without a
    better validation loss before stopping early (0 never stops early). eval_every: sample-quality
    figures (FID, KID) every K steps when an evaluator is given (0: never). early_stop_on: the figure
    that patience watches, "val_loss" or "fid" (lower is better for both).

    minutes: a time budget for the whole run (None: none). The run then ends when its training time,
    metrics.csv's elapsed_s summed over every call that trained it, reaches this many minutes, and
    `steps` is only the number of steps the budget was expected to allow (train/budget.py plans both).

    batch_size is the effective batch of one optimiser step, whatever runs it: split over the processes
    of a distributed training (torchrun) and, with grad_accum > 1, into that many micro-batches in each
    process, whose gradients add up before the step (it must divide evenly: docs/distributed.md).

    precision: "fp32" (the default), "bf16" (each loss computed under bf16 autocast where the hardware has
    native bfloat16; weights, optimiser state, EMA and checkpoints stay fp32) or "auto" (bf16 where a
    training step is measured at least 1.15x faster in it, else fp32: docs/precision.md) or "fp16" (fp16
    autocast and a gradient scaler per optimiser, on CUDA; fp32 elsewhere, with a warning). A run's
    checkpoints record what it trained in, and a resumed run goes on in that.
    """

    steps: int = 10_000
    batch_size: int = 64
    ema_decay: float = 0.999
    log_every: int = 25
    val_every: int = 500
    val_images: int = 256
    patience: int = 0
    eval_every: int = 0
    eval_samples: int = 256
    eval_extractor: str = "auto"
    early_stop_on: str = "val_loss"
    sample_every: int = 1000
    sample_count: int = 16
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    grad_accum: int = 1
    precision: str = "fp32"
    minutes: float | None = None

    def __post_init__(self):
        check_precision(self.precision, "train.precision")
        # upper bounds where a number decides memory (a batch, a sample grid, validation or evaluation images)
        for name, high in (("batch_size", 65_536), ("sample_count", 1024), ("val_images", 1_000_000),
                           ("eval_samples", 1_000_000), ("grad_accum", 1024)):
            check_range(f"train.{name}", getattr(self, name), 0 if name == "val_images" else 1, high)
        for name in ("steps", "batch_size", "log_every", "val_every", "sample_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.patience < 0:
            raise ValueError("train.eval_every and train.patience must not be negative")
        if self.early_stop_on not in ("val_loss", "fid", "kid"):
            raise ValueError(f"train.early_stop_on must be val_loss, fid or kid, got {self.early_stop_on!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.minutes is not None and (isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float))
                                         or not 0 < self.minutes <= MAX_MINUTES):  # NaN fails the comparison too
            raise ValueError(f"train.minutes (--minutes) must be a number of minutes above 0 and at most {MAX_MINUTES:,} "
                             f"(or null: no time budget), got {self.minutes!r}")


@dataclass(frozen=True)
class RunConfig:
    family: str
    model: dict  # the family's Config fields
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = RUN_FORMAT_VERSION
    package_version: str = __version__
    compress: CompressConfig | None = None  # a compressed variant of another run (compress/), else None

    def model_config(self):
        return get_family(self.family).Config(**self.model)

    def resolved(self) -> "RunConfig":
        """The same run with every model field written out, defaults included (and Adam's betas, the
        family's unless set): a run folder's config.json then keeps meaning the same model when a later
        version changes a default."""
        model = json.loads(json.dumps(dataclasses.asdict(self.model_config())))  # tuples -> lists, as JSON has them
        beta1, beta2 = adam_betas(self.optim, get_family(self.family).default_betas)
        return dataclasses.replace(self, model=model, optim=dataclasses.replace(self.optim, beta1=beta1, beta2=beta2))

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if self.compress is None:  # only compressed runs carry the section
            del d["compress"]
        return json.dumps(d, indent=2)

    @staticmethod
    def from_dict(d: dict, *, where: str = "config") -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a run config must be a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != RUN_FORMAT_VERSION:
            raise ValueError(f"{where}: run format version {version} is not supported (this version reads {RUN_FORMAT_VERSION})")
        if not isinstance(d.get("model"), dict):
            raise ValueError(f"{where}: model must be an object of the family's config fields")
        try:
            d = get_family(str(d.get("family"))).upgrade_config(d)  # folders of earlier versions
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            cfg = RunConfig(
                family=d["family"],
                model=dict(d["model"]),
                data=_build(DataConfig, d["data"], f"{where}: data"),
                optim=_build(OptimConfig, d.get("optim", {}), f"{where}: optim"),
                train=_build(TrainConfig, d.get("train", {}), f"{where}: train"),
                format_version=version,
                package_version=d.get("package_version", "unknown"),
                compress=_build(CompressConfig, d["compress"], f"{where}: compress") if d.get("compress") is not None else None,
            )
        except KeyError as e:
            raise ValueError(f"{where}: missing field {e}") from None
        _build(get_family(cfg.family).Config, cfg.model, f"{where}: model")  # validate now, not mid-run
        try:
            validate_config(cfg.data)
        except ValueError as e:
            raise ValueError(f"{where}: data: {e}") from None
        return cfg

    @staticmethod
    def load(path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return RunConfig.from_dict(d, where=str(path))


def new_run_config(
    data: str | os.PathLike,
    *,
    model: str = "diffusion",
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool = True,
    text: bool = False,
    text_encoder: str | None = None,
    condition: str | None = None,
    edge_detector: str | None = None,
    sketches: str | os.PathLike | None = None,
    audio_encoder: str | None = None,
    audio_set: str | None = None,
    crop: str = DataConfig.crop,
    hflip: bool = DataConfig.hflip,
    val_fraction: float = DataConfig.val_fraction,
    allow_upscale: bool = DataConfig.allow_upscale,
    caption_variants: int | None = DataConfig.caption_variants,
    lr: float | None = None,
    warmup_steps: int = OptimConfig.warmup_steps,
    grad_clip: float = OptimConfig.grad_clip,
    lr_scaling: str = OptimConfig.lr_scaling,
    lr_base_batch: int = OptimConfig.lr_base_batch,
    cooldown: float = 0.0,
    steps: int = TrainConfig.steps,
    batch_size: int = TrainConfig.batch_size,
    ema_decay: float = TrainConfig.ema_decay,
    log_every: int = TrainConfig.log_every,
    val_every: int = TrainConfig.val_every,
    patience: int = TrainConfig.patience,
    eval_every: int = TrainConfig.eval_every,
    eval_samples: int = TrainConfig.eval_samples,
    eval_extractor: str = TrainConfig.eval_extractor,
    early_stop_on: str = TrainConfig.early_stop_on,
    sample_every: int = TrainConfig.sample_every,
    ckpt_every: int = TrainConfig.ckpt_every,
    seed: int = TrainConfig.seed,
    grad_accum: int = TrainConfig.grad_accum,
    precision: str = TrainConfig.precision,
    minutes: float | None = TrainConfig.minutes,
    model_fields: Mapping[str, object] | None = None,
    scale: int | None = None,
) -> RunConfig:
    """The config of a new run of family `model` on `data` (a folder of images or a bundled set name),
    every field checked; what `pixelforge train` and `pixelforge.train` start a run with.

    image_size, channels: default to the data's own (native for bundled sets; 32 and RGB for folders).
    labels: condition on the data's classes where it has some (False: unconditional).
    text, text_encoder: condition on the data's captions with a pretrained text encoder (a name or a
        folder; default all-MiniLM-L6-v2; giving one implies text), loaded here to read its width.
    condition, edge_detector: "edges" conditions on edge maps of the training images, made by the named
        detector (default "canny"; giving one implies edges); the data is loaded here to measure its
        subjects' stroke width, to which a user's drawing is normalised (condition/edges.py).
    sketches: a folder with a sketch drawn for each image of the data folder (same relative path and name,
        any image extension): the edge maps of the run in place of a detector's (implies condition "edges";
        not with edge_detector). Its drawings are taken as they are (stroke width 0, no detector), and so is
        a drawing given to the trained model. Every image must have its sketch (checked here).
        "audio" (or giving audio_encoder and audio_set, which it needs) conditions on spoken digits: the audio
        encoder folder's embedding of a training clip of each image's digit (condition/audio.py, docs/audio.md).
    lr: Adam's peak rate, default the family's `default_lr`. seed: the training seed and the split's.
    cooldown: the share of the run's steps (a budget's: its expected steps) at its end over which the rate falls
        linearly to 0 (OptimConfig.cooldown_steps, cooldown_end); 0: none.
    minutes: a time budget for the run (TrainConfig.minutes); the settings it decides are planned by
        train/budget.py's plan_run, which calls this with them.
    model "upscale", scale: an upscaler (a diffusion run conditioned on each image's low-resolution version,
        downsampled by scale, default 2; runs/upscale.py): unconditional on the data's classes, its
        sigma_data measured on the data. model_fields' "lowres" may set its filters.
    model_fields: fields of the family's model config ({"base_channels": 16, "channel_mult": (1, 2)}), over
        those the data and text settings give (a dict of their own: the VQ-VAE's ema_decay is not train's).
        A diffusion model's "latent" (an autoencoder run: a folder, a run name under $PIXELFORGE_RUNS or
        ./runs, or a bundled model) also sets "autoencoder" to that run's model config (runs/latent.py).
    The other settings are DataConfig's, OptimConfig's and TrainConfig's fields, with their defaults.
    """
    upscaler = model == UPSCALE_MODEL
    if scale is not None and not upscaler:
        raise ValueError(f"scale (--scale) is the upscaling factor of --model upscale, not of {model} models")
    if upscaler:
        model, labels = "diffusion", False
    family = get_family(model)
    native = describe_source(str(data))  # {"image_size", "channels", "num_classes", ...}
    image_size = native["image_size"] if image_size is None else image_size
    channels = native["channels"] if channels is None else channels
    fields = {f.name for f in dataclasses.fields(family.Config)}
    shape = {"image_size": image_size, "channels": channels, "num_classes": native["num_classes"] if labels else 0}
    model_config = {k: v for k, v in shape.items() if k in fields}
    if text or text_encoder:
        from ..condition.text import DEFAULT_TEXT_ENCODER, load_text_encoder

        if "text_encoder" not in fields:
            raise ValueError(f"{model} models take no text: train them without text (--text) or a text encoder")
        name = text_encoder or DEFAULT_TEXT_ENCODER
        model_config.update(text_encoder=name, text_dim=load_text_encoder(name).dim)
    data_config = DataConfig(source=str(data), image_size=image_size, channels=channels, crop=crop, hflip=hflip,
                             val_fraction=val_fraction, split_seed=seed, allow_upscale=allow_upscale,
                             caption_variants=caption_variants)
    if sketches is not None:
        if edge_detector is not None:
            raise ValueError("sketches (--sketches) are the edge maps themselves: give no edge detector (--edge-detector)")
        data_config = dataclasses.replace(data_config, sketches=str(Path(sketches).expanduser().resolve()))
    if condition == "audio" or audio_encoder is not None or audio_set is not None:
        model_config.update(_audio_fields(model, fields, audio_encoder, audio_set))
    elif condition is not None or edge_detector is not None or sketches is not None:
        model_config.update(_sketch_fields(model, fields, condition or "edges", edge_detector or "canny", data_config))
    if upscaler:
        from .upscale import upscale_fields

        model_config.update(upscale_fields((model_fields or {}).get("lowres"), scale, data_config))
        model_fields = {k: v for k, v in (model_fields or {}).items() if k != "lowres"}
    for key, value in (model_fields or {}).items():
        if key not in fields:
            raise ValueError(f"model field {key!r} does not apply to {model} models; their fields: {', '.join(sorted(fields))}")
        model_config[key] = value
    if model_config.get("latent") and "autoencoder" not in (model_fields or {}):  # latent diffusion: runs/latent.py
        from .latent import autoencoder_fields

        model_config.update(autoencoder_fields(str(model_config["latent"]), image_size, channels))
    cfg = RunConfig(
        family=model,
        model=model_config,
        data=data_config,
        optim=OptimConfig(lr=family.default_lr if lr is None else lr, warmup_steps=warmup_steps, grad_clip=grad_clip,
                          lr_scaling=lr_scaling, lr_base_batch=lr_base_batch, **cooldown_settings(cooldown, steps)),
        train=TrainConfig(steps=steps, batch_size=batch_size, ema_decay=ema_decay, log_every=log_every, val_every=val_every,
                          patience=patience, eval_every=eval_every, eval_samples=eval_samples, eval_extractor=eval_extractor,
                          early_stop_on=early_stop_on, sample_every=sample_every, ckpt_every=ckpt_every, seed=seed,
                          grad_accum=grad_accum, precision=precision, minutes=minutes),
    )
    return RunConfig.from_dict(json.loads(cfg.to_json()))  # validates every field now, not mid-run


def cooldown_settings(cooldown: float, steps: int) -> dict:
    """OptimConfig's cool-down fields for a share `cooldown` of a run of `steps` steps: the rate falls to 0 over its
    last round(cooldown * steps) steps ({} for 0: none)."""
    if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not 0 <= cooldown < 1:
        raise ValueError(f"cooldown (--cooldown) must be a share of the run's steps in [0, 1), got {cooldown!r}")
    return {"cooldown_steps": round(cooldown * steps), "cooldown_end": steps} if cooldown else {}


def _audio_fields(model: str, fields: set[str], encoder: str | None, audio_set: str | None) -> dict:
    """The model config fields of a spoken-digit condition (condition/audio.py audio_fields), with clear errors
    for a family without audio or a missing encoder or set."""
    from ..condition.audio import audio_fields

    if "audio_net" not in fields:
        raise ValueError(f"{model} models take no audio: train a diffusion model with --condition audio")
    if not encoder or not audio_set:
        raise ValueError("--condition audio needs both --audio-encoder DIR (pixelforge audio-encoder) and --audio-set DIR "
                         "(scripts/make_spoken_digits.py)")
    return audio_fields(encoder, audio_set)


def _sketch_fields(model: str, fields: set[str], condition: str, detector: str, data: DataConfig) -> dict:
    """The model config fields of an edge-map condition: the detector, and the stroke width of the data's
    subjects at the model's size, measured on the prepared images (loaded and cached here, so the
    training finds them ready)."""
    from ..condition.edges import PAIRED, paired_sketch_files, require_edge_detector, stroke_width
    from ..data import load_dataset, to_model

    if condition != "edges":
        raise ValueError(f"condition {condition!r} is not known; choose edges or audio")
    if "spatial_condition" not in fields:
        raise ValueError(f"{model} models take no edge maps: train a diffusion model with --condition edges")
    if data.sketches:  # drawn by hand: no detector, and a drawing's centre lines are the map
        loaded = load_dataset(data, progress=False)
        if loaded.files is None:
            raise ValueError(f"sketches (--sketches) pair with the images of a data folder; {data.source} is a bundled set")
        paired_sketch_files(data.sketches, loaded.files)  # a clear error now for a missing sketch
        return {"spatial_condition": condition, "edge_detector": PAIRED, "sketch_stroke_width": 0.0}
    require_edge_detector(detector)  # a clear error for an unknown name, or one not installed
    images = load_dataset(data, progress=False).images
    images = images[:: max(1, len(images) // 1000)][:1000]  # 1,000 spread over the set (class folders come in order)
    centred = ((to_model(images, data) + 1) * 127.5).round().to(torch.uint8)  # (N, C, size, size): what the model sees
    return {"spatial_condition": condition, "edge_detector": detector, "sketch_stroke_width": stroke_width(centred)}


def build_model(cfg: RunConfig, device: torch.device, *, where: str = "config.json"):
    """The run's model on `device`, after counting its parameters without allocating any (a config
    from an untrusted folder may describe more than memory holds); `where` names the config in errors."""
    family = get_family(cfg.family)
    check_model_size(family, cfg.model_config(), f"{where}: model")
    return family(cfg.model_config(), cfg.optim, seed=cfg.train.seed).to(device)


def _build(cls, d: dict, where: str):
    if isinstance(d, cls):  # from_fields keeps an instance; a run config's parts come as JSON objects
        raise ValueError(f"{where} must be an object of fields, got {d!r}")
    return from_fields(cls, d, where)
