"""Write the bundled data sets as one folder of 32x32 RGB PNGs, one sub-folder (class) per set: the
training data of the bundled `base-32` diffusion model and `ae-32` autoencoder (their MODEL.md in
pixelforge/assets/models/).

Only bundled sets go in (emoji, shapes, textures, mnist), so the base model never sees a user's kind
of photo. Each set is resized to 32x32 with Pillow's Lanczos filter (textures and emoji from 64x64,
MNIST from 28x28) and grey sets are written as RGB (R = G = B). Every set is capped at `--per-set`
images (the first ones of the bundled order), so no set outweighs the others by more than that.

Usage:
    .venv/bin/python scripts/make_base_data.py OUT_FOLDER [--per-set 3600] [--sets emoji,textures,mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixelforge.data.bundled import load_bundled

SETS = ("emoji", "shapes", "textures", "mnist")
SIDE = 32


def set_pictures(name: str, per_set: int, indices: list[int] | None = None) -> list[Image.Image]:
    """Up to per_set images of bundled set `name` as the folder holds them: SIDExSIDE RGB pictures, in the
    bundled order; `indices` (into those first per_set) picks some of them (tests/test_latent.py takes the
    held-out images of the bundled ae-32 so)."""
    images = load_bundled(name).images[:per_set].numpy()  # (N, C, H, W) uint8
    pictures = []
    for i in range(len(images)) if indices is None else indices:
        pixels = images[i].transpose(1, 2, 0)  # (H, W, C)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
        if picture.size != (SIDE, SIDE):
            picture = picture.resize((SIDE, SIDE), Image.LANCZOS)
        pictures.append(picture)
    return pictures


def write_set(name: str, out: Path, per_set: int) -> int:
    """Write up to per_set images of bundled set `name` to out/name/NNNNN.png; returns how many."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    pictures = set_pictures(name, per_set)
    for i, picture in enumerate(pictures):
        picture.save(folder / f"{i:05d}.png")
    return len(pictures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write (created; existing files of the same names are replaced)")
    p.add_argument("--per-set", type=int, default=3600, help="at most this many images from each set (default 3600)")
    p.add_argument("--sets", default=",".join(SETS),
                   help=f"comma-separated bundled sets to write (default {','.join(SETS)}; the GAN base model "
                        "leaves out shapes, the set its benchmark scores on)")
    a = p.parse_args(argv)
    if a.per_set < 1:
        p.error(f"--per-set {a.per_set}: give 1 or more")
    sets = [name.strip() for name in a.sets.split(",") if name.strip()]
    unknown = [name for name in sets if name not in SETS]
    if unknown or not sets:
        p.error(f"--sets {a.sets}: {'unknown ' + ', '.join(unknown) if unknown else 'no set named'}; "
                f"choose among {', '.join(SETS)}")
    for name in sets:
        count = write_set(name, a.out, a.per_set)
        print(f"{name}: {count} images -> {a.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
