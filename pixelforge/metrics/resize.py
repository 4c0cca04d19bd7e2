"""Resizing images for a feature extractor the way clean-fid does (Parmar et al. 2022)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_for_features(images, size: int, *, to_rgb: bool = False) -> np.ndarray:
    """(N, C, H, W) uint8 images (torch or numpy) -> (N, C, size, size) float32, values in [0, 255].

    Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation": FID
    changes noticeably with the resizing routine used to bring images to the extractor's input size.
    Several library resizes (torch `interpolate` and TensorFlow's without antialiasing, OpenCV's
    when shrinking) skip the low-pass filter, so fine detail aliases into patterns the extractor
    sees, and quantising the resized image back to uint8 adds further error; the same images then
    score differently depending on the code path. As in clean-fid, each channel is resized on its
    real values with Pillow's antialiased bicubic filter in 32-bit float mode ("F"), clipped to
    [0, 255] (bicubic overshoots near edges) and kept as float32, not rounded to uint8.

    to_rgb=True repeats a single channel three times for extractors that expect RGB; three-channel
    input is returned as is. Images are resized one by one, so a result never depends on the batch.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {x.dtype}; "
                         "convert [-1, 1] images with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)")
    if x.ndim != 4:
        raise ValueError(f"images must be a 4-D (N, C, H, W) batch, got shape {x.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    n, c = x.shape[:2]
    if to_rgb and c not in (1, 3):
        raise ValueError(f"to_rgb needs 1 or 3 channels, got {c}")
    out = np.empty((n, c, size, size), dtype=np.float32)
    for i in range(n):
        for j in range(c):
            channel = Image.fromarray(x[i, j].astype(np.float32))  # (H, W) float32 -> Pillow mode "F"
            out[i, j] = np.asarray(channel.resize((size, size), Image.BICUBIC)).clip(0, 255)
    if to_rgb and c == 1:
        out = np.repeat(out, 3, axis=1)
    return out
