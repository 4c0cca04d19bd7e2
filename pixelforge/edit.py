"""The inputs of image editing: an image or mask file (or PIL image) checked, read and fitted to a model."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from .data.folder import check_bytes, check_file, to_rgb_or_l

EditInput = Union[str, os.PathLike, Image.Image, bytes]


INFO_KEYS = {"image": "pixelforge_image", "mask": "pixelforge_mask"}  # an edit's .info entries holding its inputs


def copy_file_name(what: str, digest: str) -> str:
    """The name of an edit input's lossless copy beside the images made from it: image-<first 16 hex of its
    SHA-256>.png or mask-<...>.png (what: "image" or "mask")."""
    return f"{what}-{digest[:16]}.png"


def pixels_sha256(im: Image.Image) -> str:
    """The SHA-256 of an image's mode, size and pixel bytes: the same for a file and its lossless copy."""
    return hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()


def read_input(item: EditInput, what: str) -> tuple[Image.Image, str, str]:
    """(image in mode "RGB" or "L", its SHA-256, its name for messages). A file is checked as data folders
    are (data.folder.check_file: zero-byte, truncated, not an image, decompression bomb), with a ValueError
    naming it and why. bytes are an image file's contents (an upload), checked the same way. The SHA-256 is
    that of the decoded pixels (pixels_sha256), whatever the input's form, so an upload records the hash its
    file would and the lossless copy written beside an edit hashes the same as the file it came from.
    what: "image" or "mask", for messages."""
    if isinstance(item, Image.Image):
        im, name = to_rgb_or_l(item), f"the {what}"
    elif isinstance(item, bytes):
        im, reason = check_bytes(item)
        if im is None:
            raise ValueError(f"the {what}: {reason}")
        name = f"the {what}"
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        im, reason = check_file(path)
        if im is None:
            raise ValueError(f"{what} {path}: {reason}")
        name = f"{what} {path}"
    else:
        raise ValueError(f"the {what} must be a file path, an image file's bytes or a PIL image, got {type(item).__name__}")
    return im, pixels_sha256(im), name


def _fit(im: Image.Image, size: int, resample: Image.Resampling, name: str) -> Image.Image:
    """im at size x size; a warning says when it was resized (and stretched, when not square)."""
    if im.size == (size, size):
        return im
    w, h = im.size
    warnings.warn(f"{name} is {w}x{h}: resized to the model's {size}x{size}"
                  + (" (stretched: it is not square)" if w != h else ""), stacklevel=3)
    return im.resize((size, size), resample)


def image_tensor(im: Image.Image, size: int, channels: int, name: str) -> torch.Tensor:
    """(C, size, size) in [-1, 1]: converted to the model's channels (grayscale <-> RGB), resized with
    Lanczos when of another size."""
    im = _fit(im.convert("L" if channels == 1 else "RGB"), size, Image.Resampling.LANCZOS, name)
    a = np.asarray(im, dtype=np.float32).reshape(size, size, channels)
    return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1  # (C, H, W)


def mask_tensor(im: Image.Image, size: int, name: str) -> torch.Tensor:
    """(1, size, size) of 0 and 1: white marks what is repainted, as in common image editors; grey is
    binarised at 50 % and a mask of another size is resized with nearest neighbour."""
    im = _fit(im.convert("L"), size, Image.Resampling.NEAREST, name)
    a = np.asarray(im, dtype=np.uint8) >= 128
    return torch.from_numpy(a).to(torch.float32)[None]  # (1, H, W)
