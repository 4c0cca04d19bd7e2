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


def read_input(item: EditInput, what: str) -> tuple[Image.Image, str, str]:
    """(image in mode "RGB" or "L", its SHA-256, its name for messages). A file is checked as data folders
    are (data.folder.check_file: zero-byte, truncated, not an image, decompression bomb), with a ValueError
    naming it and why; its SHA-256 is the file's bytes'. bytes are an image file's contents (an upload),
    checked and hashed the same way, so an upload records the hash its file would. A PIL image's SHA-256 is
    that of its mode, size and pixel bytes. what: "image" or "mask", for messages."""
    if isinstance(item, Image.Image):
        im = to_rgb_or_l(item)
        digest = hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()
        return im, digest, f"the {what}"
    if isinstance(item, bytes):
        im, reason = check_bytes(item)
        if im is None:
            raise ValueError(f"the {what}: {reason}")
        return im, hashlib.sha256(item).hexdigest(), f"the {what}"
    if not isinstance(item, (str, os.PathLike)):
        raise ValueError(f"the {what} must be a file path, an image file's bytes or a PIL image, got {type(item).__name__}")
    path = Path(item)
    im, reason = check_file(path)
    if im is None:
        raise ValueError(f"{what} {path}: {reason}")
    return im, hashlib.sha256(path.read_bytes()).hexdigest(), f"{what} {path}"


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
