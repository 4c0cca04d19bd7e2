"""The run config: everything needed to rebuild a model and its data pipeline, saved as config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..data import validate_config
from ..data.types import DataConfig
from ..models import OptimConfig, get_family
from ..models.limits import check_range
from ..models.optim import adam_betas

RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop itself (the family's own settings live in its model config).

    Counts are in optimiser steps. ema_decay applies per step after a warm-up (decay grows as
    (1 + step) / (10 + step) until it reaches ema_decay). patience counts validations without a
    better validation loss before stopping early (0 never stops early). eval_every: sample-quality
    figures (FID, KID) every K steps when an evaluator is given (0: never). early_stop_on: the figure
    that patience watches, "val_loss" or "fid" (lower is better for both).
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

    def __post_init__(self):
        # upper bounds where a number decides memory (a batch, a sample grid, validation or evaluation images)
        for name, high in (("batch_size", 65_536), ("sample_count", 1024), ("val_images", 1_000_000),
                           ("eval_samples", 1_000_000)):
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


@dataclass(frozen=True)
class RunConfig:
    family: str
    model: dict  # the family's Config fields
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = RUN_FORMAT_VERSION
    package_version: str = __version__

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
        return json.dumps(dataclasses.asdict(self), indent=2)

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


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object of fields, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
