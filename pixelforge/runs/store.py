"""Finding runs on disk: a run folder, a run name under the runs directory, or a bundled model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .checkpoint import file_hash, list_checkpoints, load_checkpoint, read_tensors, tensor_shapes

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_MODEL = "mnist-diffusion"


def default_runs_dir() -> Path:
    return Path(os.environ.get("PIXELFORGE_RUNS", "runs"))


_RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")  # 255: the longest file name most file systems take


def check_run_name(name: str) -> str:
    """A run name is a plain folder name under the runs directory (1 to 255 letters, digits, '-', '_'
    or '.'), so no name can put a run elsewhere; returns it, or raises a ValueError saying what is allowed."""
    if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"run name {name!r} is not a plain name: use 1 to 255 letters, digits, '-', '_' and '.' only "
            "(no '/' or '\\', not '.' or '..'); to keep runs in another folder, set the runs folder (--runs-dir)"
        )
    return name


def bundled_models() -> list[str]:
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").exists())


def resolve_run(name_or_path: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path:
    """A folder holding config.json, else runs_dir/NAME, else a bundled model NAME; a clear error otherwise."""
    p = Path(name_or_path)
    if (p / "config.json").is_file():
        return p
    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if (runs / str(name_or_path) / "config.json").is_file():
        return runs / str(name_or_path)
    if (BUNDLED_MODELS_DIR / str(name_or_path) / "config.json").is_file():
        return BUNDLED_MODELS_DIR / str(name_or_path)
    raise FileNotFoundError(
        f"no run or model named {str(name_or_path)!r}: not a folder with config.json, not in {runs}/, "
        f"and not a bundled model (bundled: {', '.join(bundled_models()) or 'none'})"
    )


def weights_file(run_dir: Path) -> Path:
    """The file sampling reads: an exported model.safetensors, else the newest checkpoint."""
    exported = run_dir / "model.safetensors"
    if exported.is_file():
        return exported
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet: train it first (pixelforge train ... --name {run_dir.name})")
    return ckpts[-1].with_suffix(".safetensors")


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a run (what sampling uses)."""
    path = weights_file(run_dir)
    if path.name == "model.safetensors":
        return read_tensors(path)
    parts, _ = load_checkpoint(path.with_suffix(""))
    if "ema" not in parts:
        raise ValueError(f"{path}: no EMA weights (tensors named ema/...) in this checkpoint")
    return parts["ema"]


def weights_shapes(run_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights load_weights returns, read from the file's header alone."""
    path = weights_file(run_dir)
    shapes = tensor_shapes(path)
    if path.name == "model.safetensors":
        return shapes
    return {k.partition("/")[2]: v for k, v in shapes.items() if k.startswith("ema/")}


def network_file(run_dir: Path) -> Path:
    """The file that holds a run's network: a compressed run's ONNX graph where it has one, else weights_file."""
    graph = run_dir / "model.onnx"
    return graph if graph.is_file() else weights_file(run_dir)


def weights_hash(run_dir: Path) -> str:
    """The hash of the file that holds a run's network (network_file)."""
    return file_hash(network_file(run_dir))


def export_run(run_dir: Path, out_dir: Path) -> Path:
    """Copy what sampling needs into out_dir: config.json (with every model field of this version written
    out), classes.json, metrics.csv, the newest sample grid, and the EMA weights alone as model.safetensors
    (no optimiser state: a fraction of the size)."""
    import shutil

    from .checkpoint import atomic_save_tensors

    from .checkpoint import atomic_write_text
    from .config import RunConfig

    # every field of this version written out, defaults included: the exported model keeps meaning the same
    # model when a later version adds a field or changes a default (a run made before the field lacks it)
    config = RunConfig.load(run_dir / "config.json").resolved().to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", config)
    for name in ("classes.json", "metrics.csv", "sample_defaults.json"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out_dir / name)
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        shutil.copyfile(grids[-1], out_dir / "samples.png")
    atomic_save_tensors(load_weights(run_dir), out_dir / "model.safetensors")
    return out_dir
