"""Denoising at the defaults of pixelforge.post on images of the bundled models' sizes: the error left.

Method: a clean test image (flat shapes on a light background, as the bundled models draw, at 28, 32 and 64
pixels, grayscale and colour) plus Gaussian noise of sigma --sigma grey levels (seeded), denoised by each
method at its default strength and at a few others; the RMSE to the clean image is printed (lower is better),
beside the noisy image's own. The defaults in pixelforge/post.py come from this table at sigma 15: NLM's
are the best of the strengths tried for each mode (with 3-pixel patches searched over 7x7, which removed more
noise than OpenCV's own 7 and 21 at every size); the bilateral filter keeps one value, 40, for both modes,
within 1.5 grey levels of the best strength tried in every row.

Usage:
    .venv/bin/python bench/post_denoise.py
    .venv/bin/python bench/post_denoise.py --sigma 25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pixelforge.post import DENOISE_DEFAULT_STRENGTH, apply_post


def clean(size: int, mode: str) -> Image.Image:
    im = Image.new("RGB", (size, size), (230, 220, 200))
    d = ImageDraw.Draw(im)
    d.ellipse((size * 0.2, size * 0.2, size * 0.7, size * 0.7), fill=(200, 40, 40))
    d.rectangle((size * 0.55, size * 0.5, size * 0.9, size * 0.9), fill=(30, 60, 180))
    return im.convert(mode)


def rmse(a: Image.Image, b: Image.Image) -> float:
    return float(np.sqrt(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigma", type=float, default=15.0, help="the added noise's standard deviation, in grey levels")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    strengths = (5, 10, 20, 40, 60)
    print(f"RMSE to the clean image after denoising (noise sigma {a.sigma:g}); * marks the default strength")
    print(f"{'size':>4} {'mode':>4} {'noisy':>6} {'method':>9} " + " ".join(f"{s:>6}" for s in strengths))
    for size in (28, 32, 64):
        for mode in ("L", "RGB"):
            c = clean(size, mode)
            rng = np.random.default_rng(a.seed)
            arr = np.asarray(c, np.float64)
            noisy = Image.fromarray(np.clip(arr + rng.normal(0, a.sigma, arr.shape), 0, 255).round().astype(np.uint8), mode)
            for method in DENOISE_DEFAULT_STRENGTH:
                default = DENOISE_DEFAULT_STRENGTH[method][mode]
                cells = []
                for s in sorted({*strengths, default}):
                    err = rmse(apply_post([noisy], {"denoise": method, "denoise_strength": s})[0], c)
                    cells.append(f"{err:5.1f}{'*' if s == default else ' '}")
                print(f"{size:>4} {mode:>4} {rmse(noisy, c):6.1f} {method:>9} " + " ".join(cells))


if __name__ == "__main__":
    main()
