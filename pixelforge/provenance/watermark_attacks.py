"""What images meet on the web, as functions PIL image -> PIL image: the attacks the watermark's tests and
bench/watermark.py measure it against. Each keeps the image's mode; geometry changes are not undone (a
resized image stays small, a cropped one stays cropped): the detector has to find the mark as it is."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

Attack = Callable[[Image.Image], Image.Image]


def jpeg(quality: int) -> Attack:
    """Re-encoded as JPEG at this quality (Pillow's encoder, 4:2:0 chroma subsampling)."""

    def attack(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert(im.mode)

    return attack


def resize(factor: float) -> Attack:
    """Scaled by factor (bicubic; antialiased when shrinking, as Pillow's resize is)."""
    return lambda im: im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.BICUBIC)


def centre_crop(fraction: float) -> Attack:
    """The centre kept, `fraction` of each side cut away (0.1: the central 90% x 90%)."""

    def attack(im: Image.Image) -> Image.Image:
        dw, dh = round(im.width * fraction / 2), round(im.height * fraction / 2)
        return im.crop((dw, dh, im.width - dw, im.height - dh))

    return attack


def rotate(degrees: float) -> Attack:
    """Turned counter-clockwise about the centre on the same canvas (bilinear; the corners filled black)."""
    return lambda im: im.rotate(degrees, resample=Image.BILINEAR)


def brightness(factor: float) -> Attack:
    return lambda im: ImageEnhance.Brightness(im).enhance(factor)


def contrast(factor: float) -> Attack:
    return lambda im: ImageEnhance.Contrast(im).enhance(factor)


def gaussian_noise(sigma: float, seed: int = 0) -> Attack:
    """Gaussian noise of standard deviation sigma (of the 0..1 range) on every channel, from its own seed."""

    def attack(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32)
        noisy = a + np.random.default_rng(seed).normal(0.0, sigma * 255.0, a.shape)
        return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), im.mode)

    return attack


def chain(*attacks: Attack) -> Attack:
    def attack(im: Image.Image) -> Image.Image:
        for a in attacks:
            im = a(im)
        return im

    return attack


ATTACKS: dict[str, Attack] = {
    "none": lambda im: im,
    "jpeg90": jpeg(90),
    "jpeg70": jpeg(70),
    "jpeg50": jpeg(50),
    "resize0.5": resize(0.5),
    "resize0.75": resize(0.75),
    "crop10": centre_crop(0.10),
    "crop25": centre_crop(0.25),
    "rotate2": rotate(2.0),
    "brightness1.2": brightness(1.2),
    "contrast1.2": contrast(1.2),
    "noise0.02": gaussian_noise(0.02),
    "resize0.5+jpeg70": chain(resize(0.5), jpeg(70)),
}
