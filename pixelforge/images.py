"""Tensor <-> PIL conversion, sample grids and PNGs that carry their generation settings."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .files import atomic_target

PNG_KEY = "pixelforge"  # tEXt key holding the JSON generation settings


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, C, H, W) in [-1, 1] -> N PIL images (L for 1 channel, RGB for 3), rounded to 8 bit."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        out.append(Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.transpose(a, (1, 2, 0)), "RGB"))
    return out


def make_grid(images: list[Image.Image], *, cols: int | None = None, pad: int = 2, scale: int = 1, bg: int = 255) -> Image.Image:
    """Tile images into one RGB grid (square-ish by default), each scaled by `scale` with nearest neighbour."""
    if not images:
        raise ValueError("no images to put in a grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    w, h = w * scale, h * scale
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (bg, bg, bg))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        tile = im.convert("RGB")
        if scale != 1:
            tile = tile.resize((w, h), Image.NEAREST)
        grid.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def labelled_rows(images: list[Image.Image], names: list[str], *, cols: int, pad: int = 2, scale: int = 1,
                  bg: int = 255) -> Image.Image:
    """A grid with one row per name (row r holds images[r * cols:(r + 1) * cols]) and each name
    written at the left of its row, e.g. one row of samples per class."""
    if len(images) != len(names) * cols:
        raise ValueError(f"{len(names)} rows of {cols} need {len(names) * cols} images, got {len(images)}")
    grid = make_grid(images, cols=cols, pad=pad, scale=scale, bg=bg)
    font = ImageFont.load_default()
    shown = [n if len(n) <= 20 else n[:19] + "…" for n in names]
    boxes = [ImageDraw.Draw(grid).textbbox((0, 0), n, font=font) for n in shown]  # (left, top, right, bottom)
    strip = max(b[2] for b in boxes) + 2 * pad + 2
    out = Image.new("RGB", (grid.width + strip, grid.height), (bg, bg, bg))
    out.paste(grid, (strip, 0))
    draw = ImageDraw.Draw(out)
    row_h = images[0].size[1] * scale
    for r, (name, box) in enumerate(zip(shown, boxes)):
        top = pad + r * (row_h + pad) + (row_h - (box[3] - box[1])) // 2 - box[1]
        draw.text((pad + 1, top), name, fill=(0, 0, 0), font=font)
    return out


def png_info(settings: dict | None) -> PngImagePlugin.PngInfo:
    """The PNG text chunk holding `settings` as JSON (none when settings is None)."""
    info = PngImagePlugin.PngInfo()
    if settings is not None:
        info.add_text(PNG_KEY, json.dumps(settings, sort_keys=True))
    return info


def _as_given(image: Image.Image) -> Image.Image:
    """The image without its own `encoderinfo` (generated images carry their settings there, and Pillow
    prefers it over save()'s arguments), so that the settings passed to save_png are the ones written."""
    return image.copy() if getattr(image, "encoderinfo", None) else image


def save_png(image: Image.Image, path: str | os.PathLike, settings: dict | None = None) -> Path:
    """Write a PNG atomically; `settings` go into a tEXt chunk as JSON so the image can be regenerated."""
    path = Path(path)
    with atomic_target(path, suffix=".png") as tmp:
        _as_given(image).save(tmp, format="PNG", pnginfo=png_info(settings))
    return path


def png_bytes(image: Image.Image, settings: dict | None = None) -> bytes:
    """The PNG file save_png would write, as bytes (for serving over HTTP)."""
    buf = io.BytesIO()
    _as_given(image).save(buf, format="PNG", pnginfo=png_info(settings))
    return buf.getvalue()


def read_settings(path: str | os.PathLike) -> dict:
    """The generation settings stored in a PNG by save_png; a clear error when there are none."""
    try:
        with Image.open(path) as im:
            text = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from None
    if text is None:
        raise ValueError(f"{path}: no pixelforge generation settings in this image's metadata")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: generation settings are not valid JSON ({e})") from None
