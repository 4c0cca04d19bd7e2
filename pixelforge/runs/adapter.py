"""An adapter run's config, made from its base: a ControlNet-style adapter (models/adapter.py) trained on top of
an already trained diffusion run whose network stays frozen. The run's model config is the base's, with the
spatial condition and the adapter added; its data is the base's (or another source of the same preprocessing);
the base's weights are copied in once, when the run starts (frozen_parts, runs/latent.py load_frozen_parts),
after their SHA-256 is checked against the one recorded here."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..data import validate_config
from ..models import get_family
from ..models.adapter import ADAPTER_KINDS
from ..models.optim import OptimConfig
from .checkpoint import file_sha256
from .config import RunConfig, TrainConfig, _sketch_fields, cooldown_settings
from .store import BUNDLED_MODELS_DIR, default_runs_dir, resolve_run, weights_file

ADAPTER_FAMILY = "diffusion"
# The settings of an adapter run that are its own: the training's and the optimiser's. Everything that shapes
# the model or its data is the base's.
_OPTIM_SETTINGS = {"lr", "warmup_steps", "grad_clip", "lr_scaling", "lr_base_batch"}
_TRAIN_SETTINGS = {f.name for f in dataclasses.fields(TrainConfig)}
# Model fields an adapter run may set: the condition dropout of its training (classifier-free guidance
# contrasts sketch and no sketch) and the adapter's own.
_MODEL_FIELDS = {"label_dropout", "hint_channels"}


def new_adapter_run_config(base: str | os.PathLike, kind: str = "edges", *, runs_dir: str | os.PathLike | None = None,
                           data: str | os.PathLike | None = None, edge_detector: str | None = None,
                           model_fields: dict | None = None, **settings) -> RunConfig:
    """The config of a new adapter run of `kind` (ADAPTER_KINDS) on the diffusion run `base` (a folder, a run
    name under runs_dir, or a bundled model); what `pixelforge train BASE --adapter edges` starts.

    data: the training images, by default the base's own data source; another source is prepared as the
    base's were (size, channels, crop; its held-out split by the same seed). edge_detector: the edge maps'
    detector (default canny); the stroke width a drawing is redrawn at is measured on the data, as for
    --condition edges. model_fields: label_dropout (default the base's) and hint_channels (AdapterConfig).
    settings: TrainConfig's fields (steps, batch_size, ema_decay, ..., minutes: a time budget, with no
    planning: the network is the base's) and the optimiser's (lr, warmup_steps, grad_clip, lr_scaling,
    lr_base_batch, cooldown as new_run_config takes it); the defaults are the library's, lr the diffusion
    family's. A clear ValueError for any other setting, and for a base that is not a trained pixel-space UNet diffusion run without a spatial
    condition (an adapter on an adapter, or on an edge run, is refused)."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter {kind!r} is not known; choose one of: {', '.join(ADAPTER_KINDS)}")
    cooldown = settings.pop("cooldown", 0.0)
    unknown = sorted(set(settings) - _OPTIM_SETTINGS - _TRAIN_SETTINGS)
    if unknown:
        raise ValueError(f"an adapter run takes its model and data from its base: {', '.join(unknown)} cannot be set "
                         f"(its own settings: data, edge_detector, label_dropout, hint_channels and the training's)")
    fields = dict(model_fields or {})
    unknown = sorted(set(fields) - _MODEL_FIELDS)
    if unknown:
        raise ValueError(f"model field(s) {', '.join(unknown)} are the base's in an adapter run; it sets only: "
                         f"{', '.join(sorted(_MODEL_FIELDS))}")
    base_dir = resolve_run(base, runs_dir)
    where = base_dir / "config.json"
    base_cfg = RunConfig.load(where)
    check_base(base_cfg, str(base), base_dir)
    weights = weights_file(base_dir)  # a run without a checkpoint yet: its FileNotFoundError says to train it
    model = json.loads(json.dumps(dataclasses.asdict(base_cfg.model_config())))  # every field, tuples as lists
    data_cfg = base_cfg.data if data is None else dataclasses.replace(base_cfg.data, source=str(data))
    try:
        validate_config(data_cfg)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None
    model.update(_sketch_fields(ADAPTER_FAMILY, set(model), kind, edge_detector or "canny", data_cfg))
    adapter = {"kind": kind, "base": _base_name(base_dir, runs_dir), "base_path": str(base_dir.resolve()),
               "base_sha256": file_sha256(weights)}
    if "hint_channels" in fields:
        adapter["hint_channels"] = fields.pop("hint_channels")
    model.update(fields, adapter=adapter)
    optim = {k: v for k, v in settings.items() if k in _OPTIM_SETTINGS}
    train = {k: v for k, v in settings.items() if k in _TRAIN_SETTINGS}
    optim.setdefault("lr", get_family(ADAPTER_FAMILY).default_lr)
    optim.update(cooldown_settings(cooldown, train.get("steps", TrainConfig.steps)))
    cfg = RunConfig(family=ADAPTER_FAMILY, model=model, data=data_cfg, optim=OptimConfig(**optim), train=TrainConfig(**train))
    return RunConfig.from_dict(json.loads(cfg.to_json()), where="adapter run config")  # every field checked now


def check_base(cfg: RunConfig, name: str, run_dir: Path) -> None:
    """A clear ValueError unless the run `cfg` (of folder run_dir, named `name`) can take an adapter: a diffusion
    run on a UNet, in pixel space, without a spatial condition or an adapter of its own."""
    if cfg.family != ADAPTER_FAMILY:
        raise ValueError(f"--adapter: {name} ({run_dir}) is a {cfg.family} run; an adapter trains on top of a "
                         f"diffusion run")
    if cfg.compress is not None:
        raise ValueError(f"--adapter: {name} is a compressed variant of {cfg.compress.source}; give that run instead")
    model = cfg.model_config()
    if model.adapter is not None:
        raise ValueError(f"--adapter: {name} is itself an adapter run (on {model.adapter.base}); train the adapter on "
                         f"its base, {model.adapter.base}")
    if model.spatial_condition:
        raise ValueError(f"--adapter: {name} was trained with --condition {model.spatial_condition}: it takes a "
                         f"sketch already (pixelforge sample {name} --sketch drawing.png); an adapter needs a base "
                         "without one")
    if model.backbone != "unet":
        raise ValueError(f"--adapter: {name} has a {model.backbone} backbone; a ControlNet-style adapter copies a "
                         "UNet's input blocks (train the base with --set backbone=unet)")
    if model.autoencoder is not None:
        raise ValueError(f"--adapter: {name} is a latent diffusion run; an adapter takes an edge map at the image "
                         "size, which works in pixel space only")


def _base_name(run_dir: Path, runs_dir: str | os.PathLike | None) -> str:
    """How the config names the base: a bundled model's or a run's plain name where it is one, else its folder."""
    parent = run_dir.resolve().parent
    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if parent in (BUNDLED_MODELS_DIR.resolve(), runs.resolve()):
        return run_dir.name
    return str(run_dir)
