"""The inputs of upscaling with a super-resolution model (an upscaler run, models/diffusion.py `lowres`): image files
(or PIL images, or an upload's bytes) checked, read, converted to the model's channels and fitted to its input
size; and such a model as post-processing's upscaler (post.Upscaler). docs/upscale.md."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from PIL import Image

from .edit import EditInput, image_tensor, read_input

if TYPE_CHECKING:
    from .api import Generator

INPUT_INFO_KEY = "pixelforge_input"  # an upscaled image's .info entry holding the low-resolution image it was made from


def input_file_name(digest: str) -> str:
    """The name of an input's copy beside the images upscaled from it: input-<first 16 hex of its SHA-256>.png."""
    return f"input-{digest[:16]}.png"


def read_lowres(item: EditInput, channels: int) -> tuple[Image.Image, str, str]:
    """(the image in the model's mode, L or RGB, its SHA-256, its name for messages). A file is checked as data
    folders are (edit.read_input: zero-byte, truncated, not an image, decompression bomb), with a ValueError naming
    it. The SHA-256 is that of the decoded pixels in that mode (mode, size, bytes), so the lossless copy written
    beside an output hashes the same as the file it came from."""
    im, _, what = read_input(item, "image")
    im = im.convert("L" if channels == 1 else "RGB")
    digest = hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()
    return im, digest, what


def lowres_tensor(im: Image.Image, side: int, channels: int, name: str) -> torch.Tensor:
    """(C, side, side) in [-1, 1]: an input of the model's low-resolution side as it is; of another size resized
    (Lanczos) with a warning naming both sizes (edit.image_tensor)."""
    return image_tensor(im, side, channels, name)


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given and, for a folder, its files (sorted, hidden ones left out); a clear error for a path that
    is neither or a folder with none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise ValueError(f"{p}: the folder holds no files")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def model_upscaler(g: "Generator", *, seed: int = 0) -> Callable[[list[Image.Image], int], list[Image.Image]]:
    """The upscaler g (a super-resolution run) as post-processing's Upscaler, (images, factor) -> images: each image,
    at its own size (the network is convolutional; sides times the scale must suit its levels, checked by the model),
    converted to the model's channels, brought to factor times its size by the model's `up` filter and sampled with
    seed `seed` and the model's default options (the same pixels every time), then converted back to its own mode.
    The factor must be the model's scale."""

    def upscale(images: list[Image.Image], factor: int) -> list[Image.Image]:
        from .condition import Cond
        from .condition.lowres import upsample
        from .images import to_pil

        g.check_upscaler()
        cfg = g.model.config
        if factor != cfg.lowres.scale:
            raise ValueError(f"the upscaler {g.name} enlarges {cfg.lowres.scale}x, but the upscale factor asked is "
                             f"{factor}: ask --upscale {cfg.lowres.scale}, or leave --upscaler out for Lanczos")
        out = []
        for im in images:  # one at a time: images of one call may differ in size
            a = np.asarray(im.convert("L" if cfg.channels == 1 else "RGB"), dtype=np.float32)
            low = torch.from_numpy(a.reshape(im.height, im.width, cfg.channels)).permute(2, 0, 1)[None] / 127.5 - 1
            spatial = upsample(low, (im.height * factor, im.width * factor), cfg.lowres)  # (1, C, H, W)
            x = g.model.sample(1, Cond(spatial=spatial), seeds=[seed], **g.sample_options).cpu()
            out.append(to_pil(x)[0].convert(im.mode))
        return out

    return upscale
