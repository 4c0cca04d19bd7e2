"""Checkpoints as safetensors + JSON: written to a temporary name and renamed, never pickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_target

FORMAT_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_target(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged or hostile one (a header too large, cut short, or
    declaring shapes that overflow) is a ValueError naming the file, not a crash."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name and shape from a safetensors file's header, reading no tensor data; a damaged
    header is a ValueError naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None


def check_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """The tensors a file holds must be exactly the model's, shape for shape: else a ValueError naming
    the file and the first tensor concerned."""
    for kind, names in (("lacks", sorted(set(expected) - set(found))), ("has an unexpected", sorted(set(found) - set(expected)))):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise ValueError(f"{path} {kind} tensor {names[0]}{more}: the weights are not those of the model config.json describes")
    for name, shape in found.items():
        if tuple(shape) != tuple(expected[name]):
            raise ValueError(f"{path}: tensor {name} has shape {tuple(shape)}, but the model config.json describes "
                             f"needs {tuple(expected[name])}")


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """model.load_state_dict(tensors) after check_shapes, so a mismatch names the file and the tensor."""
    check_shapes({k: tuple(v.shape) for k, v in tensors.items()}, state_shapes(model), path)
    model.load_state_dict(tensors)


def file_hash(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256: identifies the weights a picture came from."""
    return file_sha256(path)[:12]


def file_sha256(path: Path) -> str:
    """The file's SHA-256, 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten_state(obj, prefix: str, tensors: dict[str, torch.Tensor]):
    """Split a nested state (an optimiser's state_dict, say) into named tensors and a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unflatten_state(skel, tensors: dict[str, torch.Tensor]):
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            items = [unflatten_state(v, tensors) for v in skel["__list__"]]
            return tuple(items) if skel.get("tuple") else items
    return skel


def save_checkpoint(ckpt_dir: Path, step: int, parts: dict[str, dict[str, torch.Tensor]], state: dict, *, keep: int = 3) -> Path:
    """Write checkpoints/step_XXXXXXX.safetensors (+ .json) and drop all but the newest `keep`.

    parts: name -> flat tensor dict (model, ema, optim.<name>, rng); state: JSON-able trainer state.
    The JSON is written after the tensors, so a checkpoint counts only once both are complete.
    """
    tensors = {f"{part}/{k}": v for part, d in parts.items() for k, v in d.items()}
    base = ckpt_dir / f"step_{step:07d}"
    atomic_save_tensors(tensors, base.with_suffix(".safetensors"), {"format_version": str(FORMAT_VERSION)})
    meta = {"format_version": FORMAT_VERSION, "step": step, **state}
    atomic_write_text(base.with_suffix(".json"), json.dumps(meta, indent=1))
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return base.with_suffix(".safetensors")


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (both files present), oldest first, as paths without suffix."""
    if not ckpt_dir.is_dir():
        return []
    bases = [p.with_suffix("") for p in ckpt_dir.glob("step_*.json") if p.with_suffix(".safetensors").exists()]
    return sorted(bases, key=lambda p: p.name)


def load_checkpoint(base: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Inverse of save_checkpoint: (parts, state). Refuses an unknown format version clearly."""
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{base.with_suffix('.json')}: not valid JSON ({e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{base}: checkpoint format version {version} is not supported (this version reads {FORMAT_VERSION})")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_tensors(base.with_suffix(".safetensors")).items():
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = value
    return parts, meta
