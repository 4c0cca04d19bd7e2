"""Latent diffusion's first stage at a run's creation and start: the autoencoder run that a model config's
`latent` names gives its config when the run's config is made, and its weights once, when the run starts;
from then on the run holds both itself (config.json, checkpoints) and never reads that run again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from .checkpoint import check_shapes, file_sha256, load_state, state_shapes
from .store import load_weights, resolve_run, weights_file

AUTOENCODER_FAMILY = "autoencoder"


def autoencoder_fields(source: str, image_size: int, channels: int, runs_dir: str | Path | None = None) -> dict:
    """The model config fields of a latent diffusion run on the autoencoder run `source` (a run folder, a
    run name under runs_dir, or a bundled model): {"latent": its folder, "autoencoder": its model config}.
    A clear ValueError where it is not an autoencoder run of images of image_size and channels, or has no
    weights yet."""
    from .config import RunConfig

    run_dir = resolve_run(source, runs_dir)
    cfg = RunConfig.load(run_dir / "config.json")
    if cfg.family != AUTOENCODER_FAMILY:
        raise ValueError(f"latent {source!r}: {run_dir} is a {cfg.family} run; latent diffusion needs an autoencoder "
                         f"run (pixelforge train DATA --model autoencoder --name NAME)")
    weights_file(run_dir)  # a run without a checkpoint yet: its FileNotFoundError says to train it
    ae = cfg.model_config()
    if (ae.image_size, ae.channels) != (image_size, channels):
        raise ValueError(f"latent {source!r}: its autoencoder takes {ae.image_size}x{ae.image_size} images with "
                         f"{ae.channels} channel(s), this run's are {image_size}x{image_size} with {channels}: give "
                         "the same --image-size and --channels, or train an autoencoder for these")
    fields = json.loads(json.dumps(dataclasses.asdict(ae)))  # tuples -> lists, as config.json has them
    return {"latent": str(run_dir.resolve()), "autoencoder": fields}


def load_frozen_parts(model: nn.Module) -> list[str]:
    """Copy into each of model.frozen_parts() the weights of its module in its source run (that run's EMA
    weights, checked tensor by tensor against the module; where the part names a SHA-256, the source's weights
    file must have it), then into each of model.copied_parts() the tensors of its own names there (an adapter's
    trainable copy of its base); returns the source runs read. Called once, when a new run starts."""
    frozen = tuple(getattr(model, "frozen_parts", lambda: ())())
    copied = tuple(getattr(model, "copied_parts", lambda: ())())
    return _copy_parts(frozen, copied)


def load_reference_parts(model: nn.Module) -> list[str]:
    """Copy into each of model.reference_parts() the weights of its module in its source run, as
    load_frozen_parts does (the SHA-256 checked); returns the source runs read. These parts are kept out of the
    model's state (a distilled model's teacher), so a training reads them at every start, new or resumed."""
    return _copy_parts(tuple(getattr(model, "reference_parts", lambda: ())()), ())


def _copy_parts(frozen: tuple, copied: tuple) -> list[str]:
    """load_frozen_parts' work on the parts given: frozen ones whole, copied ones by their own tensor names."""
    sources: list[str] = []
    read: dict[Path, dict] = {}  # a source's weights, read once however many parts come from it
    for i, part in enumerate((*frozen, *copied)):
        source, name, module = part[:3]
        run_dir = resolve_run(source)
        path = weights_file(run_dir)
        if run_dir not in read:
            if len(part) > 3 and part[3] and file_sha256(path) != part[3]:
                raise ValueError(f"{path}: its SHA-256 is not the {part[3]} recorded when this run was made: the weights "
                                 f"of {source} changed since; make the run again (another --name) to build on them as they are")
            read[run_dir] = load_weights(run_dir)
            sources.append(str(run_dir))
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in read[run_dir].items() if k.startswith(prefix)}
        if i >= len(frozen):  # a trainable copy of some of the module's layers: those of its own names
            own = state_shapes(module)
            state = {k: v for k, v in state.items() if k in own}
        check_shapes({k: tuple(v.shape) for k, v in state.items()}, state_shapes(module), path)
        load_state(module, state, path)
    return sources
