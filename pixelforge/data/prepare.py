"""Turning a folder or a bundled set into prepared tensors (cached), plus the split and the per-batch transforms."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folder import (
    CAPTIONS_FILE,
    DataError,
    FolderScan,
    TOO_SMALL,
    iter_checked,
    no_usable_message,
    reason_kind,
    scan_folder,
    skip_summary,
    smallest_side,
    to_rgb_or_l,
    too_small_reason,
)
from . import folder as _folder
from .types import DataConfig, ImageSet

# Bump when what is stored, or how images are prepared, changes: old cache entries are then ignored.
CACHE_VERSION = 1

VALID_CHANNELS = (1, 3)
VALID_CROPS = ("center", "random", "none")
RANDOM_CROP_MARGIN = 1.125  # "random" keeps a border of 12.5 % to crop from at training time
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024  # as the model configs' image_size (models/limits.py): a whole set is held in memory


# ---------------------------------------------------------------------------------------------------
# Configuration


MAX_CAPTION_VARIANTS = 64  # other wordings per image that caption_variants may ask for


def validate_config(cfg: DataConfig) -> None:
    """Raise DataError naming the field and its valid values when a DataConfig cannot be used."""
    if not isinstance(cfg.source, str) or not cfg.source.strip():
        raise DataError("data source: expected a folder path or a bundled data set name, got an empty value")
    if cfg.channels not in VALID_CHANNELS:
        raise DataError(f"channels: {cfg.channels!r} is not valid; choose 1 (grayscale) or 3 (RGB)")
    if cfg.crop not in VALID_CROPS:
        raise DataError(f"crop: {cfg.crop!r} is not valid; choose one of {', '.join(VALID_CROPS)}")
    if (not isinstance(cfg.image_size, int) or isinstance(cfg.image_size, bool)
            or not MIN_IMAGE_SIZE <= cfg.image_size <= MAX_IMAGE_SIZE):
        raise DataError(f"image_size: {cfg.image_size!r} is not valid; use an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    if not 0 <= cfg.val_fraction < 1:
        raise DataError(f"val_fraction: {cfg.val_fraction!r} is not valid; use 0 <= val_fraction < 1")
    if not isinstance(cfg.allow_upscale, bool):
        raise DataError(f"allow_upscale: {cfg.allow_upscale!r} is not valid; use true or false")
    n = cfg.caption_variants
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CAPTION_VARIANTS):
        raise DataError(f"caption_variants: {n!r} is not valid; use an integer in 0..{MAX_CAPTION_VARIANTS} "
                        "(or leave it unset: the wordings the data gives)")
    if not isinstance(cfg.sketches, str):
        raise DataError(f"sketches: {cfg.sketches!r} is not valid; use a folder path, or \"\" for none")


def min_side(cfg: DataConfig) -> int:
    """The shortest side a folder image needs to be kept: half of image_size, or 0 with allow_upscale."""
    return 0 if cfg.allow_upscale else smallest_side(cfg.image_size)


def skipped_note(skipped: list[tuple[str, str]], cfg: DataConfig) -> str:
    """One line for the training log: how many files were left out and why, and how to see them."""
    line = f"{skip_summary(skipped)}; `pixelforge data check {cfg.source} --image-size {cfg.image_size}` lists them"
    if any(reason_kind(r) == TOO_SMALL for _, r in skipped):
        line += " (--allow-upscale trains on the too-small ones)"
    return line


def prepared_side(cfg: DataConfig) -> int:
    """Side of the stored square images: image_size, or a margin larger for random crops."""
    if cfg.crop == "random":
        return round(cfg.image_size * RANDOM_CROP_MARGIN)
    return cfg.image_size


# ---------------------------------------------------------------------------------------------------
# One image


def prepare_image(img: Image.Image, cfg: DataConfig) -> np.ndarray:
    """Convert to L or RGB per cfg.channels and resize with antialiasing per cfg.crop.

    Returns (C, S, S) uint8 with S = prepared_side(cfg). "center" and "random" scale the short side to S
    and keep the centred square ("random" crops further at training time); "none" squashes to S x S.
    """
    validate_config(cfg)
    img = to_rgb_or_l(img)
    mode = "L" if cfg.channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    side = prepared_side(cfg)
    w, h = img.size
    box = None
    if cfg.crop != "none":
        # Resizing only the centred square region is a short-side resize plus centre crop in one
        # resampling, with sub-pixel-exact centring.
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    # LANCZOS antialiases when shrinking; reducing_gap first reduces big photos by an integer factor,
    # which is much faster and, at a gap of 3, indistinguishable from a full Lanczos resize.
    img = img.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    a = np.asarray(img)  # (S, S) or (S, S, 3)
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, S, S)


# ---------------------------------------------------------------------------------------------------
# A data set


def load_dataset(cfg: DataConfig, *, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 shortest: int | None = None) -> ImageSet:
    """Load a folder or a bundled data set, prepared per cfg; cached so a second call decodes nothing.

    cache_dir: where prepared sets are stored; by default "prepared" under $PIXELFORGE_CACHE or
    ~/.cache/pixelforge. Unusable files (and bad captions.jsonl lines, as "captions.jsonl:LINE") are
    listed in ImageSet.skipped; a source with no usable image raises DataError saying why.
    Folder images with a side below `shortest` px are skipped as too small (default min_side(cfg):
    half of image_size unless cfg.allow_upscale); bundled sets are kept whole, at the size asked for.
    """
    validate_config(cfg)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = Path(cfg.source).expanduser()
    if not path.exists():
        names = _bundled_names()
        if cfg.source in names:
            return _with_variants(_load_bundled_set(cfg, cache, progress), cfg)
        listed = ", ".join(sorted(names)) or "none available"
        raise DataError(
            f"data source {cfg.source!r}: no such folder, and not a bundled data set (bundled: {listed})"
        )

    scan = scan_folder(path)
    if scan.error is not None:
        raise DataError(no_usable_message(str(scan.root), scan.error, []))
    shortest = min_side(cfg) if shortest is None else shortest
    key = _folder_cache_key(scan, cfg, shortest)
    cached = _read_cache(cache, key, cfg)
    if cached is not None and cached.files is not None:  # (an entry from before file names were kept: again)
        return _with_variants(cached, cfg)

    side = prepared_side(cfg)
    out = np.empty((len(scan.files), cfg.channels, side, side), dtype=np.uint8)  # (N_files, C, S, S)
    n = 0
    labels: list[int] = []
    captions: list[str | None] = []
    variants: list[list[str]] = []
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for entry, image, reason in iter_checked(scan, progress=progress, desc=f"preparing {scan.root.name}"):
        if image is not None:
            reason = too_small_reason(image.size, shortest)
            if reason is not None:
                image.close()
                image = None
        if image is None:
            skipped.append((entry.path, reason))
            continue
        out[n] = prepare_image(image, cfg)
        image.close()
        labels.append(-1 if entry.class_index is None else entry.class_index)
        captions.append(scan.captions.get(entry.path))
        variants.append(scan.caption_variants.get(entry.path, []))
        files.append(entry.path)
        n += 1
    if n == 0:
        raise DataError(no_usable_message(str(scan.root), None, skipped))
    skipped += [(f"{CAPTIONS_FILE}:{line}", what) for line, what in scan.caption_errors]

    class_names: list[str] = []
    label_tensor = None
    if scan.labelled:
        # Keep only classes with at least one usable image: a model should not get labels it never sees.
        used = sorted(set(labels))
        remap = {old: new for new, old in enumerate(used)}
        class_names = [scan.class_names[i] for i in used]
        label_tensor = torch.tensor([remap[i] for i in labels], dtype=torch.int64)  # (N,)

    result = ImageSet(
        images=torch.from_numpy(out[:n]),  # (N, C, S, S) uint8
        labels=label_tensor,
        class_names=class_names,
        captions=captions if scan.captions else None,
        source=str(scan.root.resolve()),
        skipped=skipped,
        caption_variants=variants if any(variants) else None,
        files=files,
    )
    _write_cache(cache, key, result)
    return _with_variants(result, cfg)


def _with_variants(data: ImageSet, cfg: DataConfig) -> ImageSet:
    """The set with the caption variants cfg asks for (DataConfig.caption_variants): applied after the
    prepared-data cache, which stores what the source gives, so one cache entry serves every setting."""
    n = cfg.caption_variants
    if n is None:
        return data
    if n == 0 or data.captions is None:
        data.caption_variants = None
        return data
    from .bundled import bundled_caption_variants

    drawn = bundled_caption_variants(cfg.source, n) if data.source == cfg.source else None
    if drawn is not None and len(drawn) == len(data):
        data.caption_variants = drawn
    elif data.caption_variants is not None:
        data.caption_variants = [list(v[:n]) for v in data.caption_variants]
    return data


def _bundled_names() -> dict[str, str]:
    # Imported lazily: bundled sets are optional, and their module may pull in more than a folder needs.
    try:
        from .bundled import BUNDLED
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.bundled":
            raise
        return {}
    return dict(BUNDLED)


def _load_bundled_set(cfg: DataConfig, cache: Path, progress: bool) -> ImageSet:
    from tqdm import tqdm

    from .bundled import load_bundled

    raw = load_bundled(cfg.source)  # native resolution, (N, C, H, W) uint8
    n, c, h, w = raw.images.shape
    side = prepared_side(cfg)
    if c == cfg.channels and h == w == side:
        return raw  # already what the model sees
    # Keyed by content, so a changed bundled set (a new pixelforge version) never reuses stale pixels.
    digest = hashlib.sha256(raw.images.contiguous().numpy().tobytes()).hexdigest()
    key = _hash({"format": CACHE_VERSION, "bundled": cfg.source, "content": digest, **_prep_fields(cfg)})
    cached = _read_cache(cache, key, cfg)
    if cached is not None:
        cached.caption_variants = raw.caption_variants  # the code's, not an older cache entry's
        return cached
    src = raw.images.numpy()
    out = np.empty((n, cfg.channels, side, side), dtype=np.uint8)  # (N, C, S, S)
    for i in tqdm(range(n), desc=f"preparing {cfg.source}", unit="img", disable=not progress, dynamic_ncols=True):
        # The same Pillow path as folder images, so a bundled set and its exported folder match.
        pil = Image.fromarray(src[i, 0]) if c == 1 else Image.fromarray(np.ascontiguousarray(src[i].transpose(1, 2, 0)))
        out[i] = prepare_image(pil, cfg)
    result = ImageSet(
        images=torch.from_numpy(out),
        labels=raw.labels,
        class_names=list(raw.class_names),
        captions=raw.captions,
        source=raw.source or cfg.source,
        skipped=list(raw.skipped),
        caption_variants=raw.caption_variants,
    )
    _write_cache(cache, key, result)
    return result


# ---------------------------------------------------------------------------------------------------
# Cache: <key>.safetensors (images, labels) + <key>.json (names, captions, skipped, source); never pickle.


def default_cache_dir() -> Path:
    base = os.environ.get("PIXELFORGE_CACHE") or Path.home() / ".cache" / "pixelforge"
    return Path(base).expanduser() / "prepared"


def _prep_fields(cfg: DataConfig) -> dict:
    # Only what changes the stored pixels; hflip and the split act later.
    return {"image_size": cfg.image_size, "channels": cfg.channels, "crop": cfg.crop}


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _folder_cache_key(scan: FolderScan, cfg: DataConfig, shortest: int) -> str:
    return _hash(
        {
            "format": CACHE_VERSION,
            "source": str(scan.root.resolve()),
            "files": [[f.path, f.size, f.mtime_ns] for f in scan.files],
            "captions": scan.captions_stat,
            "max_pixels": _folder.MAX_PIXELS,
            "min_side": shortest,
            **_prep_fields(cfg),
        }
    )


def _read_cache(cache: Path, key: str, cfg: DataConfig) -> ImageSet | None:
    from safetensors.torch import load_file

    meta_path, data_path = cache / f"{key}.json", cache / f"{key}.safetensors"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_VERSION or meta.get("key") != key:
            return None
        tensors = load_file(str(data_path))
        images = tensors["images"]
        side = prepared_side(cfg)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (cfg.channels, side, side):
            return None
        return ImageSet(
            images=images,
            labels=tensors.get("labels"),
            class_names=list(meta["class_names"]),
            captions=meta["captions"],
            source=meta["source"],
            skipped=[(str(p), str(r)) for p, r in meta["skipped"]],
            caption_variants=meta.get("caption_variants"),
            files=meta.get("files"),
        )
    except Exception:  # noqa: BLE001 - any damaged cache entry just means preparing again
        return None


def _write_cache(cache: Path, key: str, result: ImageSet) -> None:
    from safetensors.torch import save_file

    tensors = {"images": result.images.contiguous()}
    if result.labels is not None:
        tensors["labels"] = result.labels.contiguous()
    meta = {
        "format": CACHE_VERSION,
        "key": key,
        "class_names": result.class_names,
        "captions": result.captions,
        "caption_variants": result.caption_variants,
        "source": result.source,
        "skipped": [list(s) for s in result.skipped],
        "files": result.files,
    }
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Tensors first, sidecar last: an entry counts only when both are there, and each file appears
        # whole through os.replace, so a crash never leaves half an entry that looks complete.
        _atomic_write(cache / f"{key}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        _atomic_write(cache / f"{key}.json", lambda tmp: tmp.write_text(json.dumps(meta), encoding="utf-8"))
    except OSError as e:
        warnings.warn(f"could not cache the prepared data set in {cache}: {e}", stacklevel=3)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Split and per-batch transforms


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed train/validation split: (train indices, val indices), disjoint, covering range(n), each sorted.

    The validation share is round(n * val_fraction), at least 1 when val_fraction > 0 and n >= 2, and
    never all of the data.
    """
    if n < 0:
        raise DataError(f"split: n must be >= 0, got {n}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction: {val_fraction!r} is not valid; use 0 <= val_fraction < 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _check_batch(batch: torch.Tensor, cfg: DataConfig) -> int:
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != batch.shape[-2]:
        raise DataError(
            f"expected a (B, C, S, S) uint8 batch of square images, got {tuple(batch.shape)} {batch.dtype}"
        )
    side = int(batch.shape[-1])
    if side < cfg.image_size:
        raise DataError(f"batch side {side} is smaller than image_size {cfg.image_size}; prepare the data again")
    return side


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(127.5).sub_(1.0)  # uint8 0..255 -> float [-1, 1]


def to_model(batch_uint8: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """(B, C, S, S) uint8 -> (B, C, image_size, image_size) float in [-1, 1], centre crop when S is larger."""
    side = _check_batch(batch_uint8, cfg)
    size = cfg.image_size
    o = (side - size) // 2
    return _to_unit_range(batch_uint8[..., o : o + size, o : o + size])


def augment(batch_uint8: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """Training-time version of to_model: random crop (crop="random") and random horizontal flip (hflip).

    All randomness comes from `generator` (which may live on another device than the batch).
    """
    side = _check_batch(batch_uint8, cfg)
    size = cfg.image_size
    b = batch_uint8.shape[0]
    device = batch_uint8.device
    if cfg.crop == "random" and side > size:
        oy, ox = torch.randint(0, side - size + 1, (2, b), generator=generator, device=generator.device).to(device)
        steps = torch.arange(size, device=device)
        rows = (oy[:, None] + steps)[:, :, None]  # (B, size, 1)
        cols = (ox[:, None] + steps)[:, None, :]  # (B, 1, size)
        # Advanced indices separated by a slice put their broadcast dims first: (B, size, size, C).
        x = batch_uint8[torch.arange(b, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    else:
        o = (side - size) // 2
        x = batch_uint8[..., o : o + size, o : o + size]
    if cfg.hflip:
        flip = torch.rand(b, generator=generator, device=generator.device).to(device) < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return _to_unit_range(x.contiguous())
