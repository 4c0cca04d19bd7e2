"""A folder of colour photo crops, made offline from photos that ship inside scikit-image.

Three classes, each from one photo of skimage.data (in the package's own data folder: nothing is fetched):
`cat` (chelsea.png), `tissue` (immunohistochemistry, ihc.png) and `galaxies` (hubble_deep_field.jpg).
`--photos second` makes a second folder of other photos, to check that a choice made on the first holds:
`astronaut` (astronaut.png), `coffee` (coffee.png) and `rocket` (rocket.jpg).
Each class gets CROPS_PER_CLASS crops: a random square of side uniform in [MIN_SIDE, MAX_SIDE] px (clipped to
the photo) at a random place, resized to SIDE x SIDE with Pillow's LANCZOS, written as OUT/<class>/NNN.png.
numpy's default_rng(seed) draws every side and place, so the same seed writes the same bytes. None of these
photos is in a bundled data set (`textures` uses brick, grass and gravel): bench/time_to_quality.py trains
on photos no bundled model has seen (nor are astronaut, coffee and rocket).

Usage:
    .venv/bin/python bench/photos.py /tmp/photos            # 510 PNGs of 64x64 in three class folders
    .venv/bin/python bench/photos.py /tmp/photos --seed 1
    .venv/bin/python bench/photos.py /tmp/photos2 --photos second   # astronaut, coffee, rocket
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# class name -> the skimage.data function of its photo
PHOTOS = {"cat": "chelsea", "tissue": "immunohistochemistry", "galaxies": "hubble_deep_field"}
# the sets of photos a folder is made from: PHOTOS, and a second set for checking a choice made on the first
PHOTO_SETS = {"first": PHOTOS, "second": {"astronaut": "astronaut", "coffee": "coffee", "rocket": "rocket"}}
CROPS_PER_CLASS = 170
MIN_SIDE, MAX_SIDE = 64, 160  # crop side in px, inclusive, before clipping to the photo
SIDE = 64  # written images are SIDE x SIDE


def load_photo(function: str) -> np.ndarray:
    """A skimage.data photo as (H, W, 3) uint8."""
    import skimage.data

    photo = np.asarray(getattr(skimage.data, function)())
    if photo.ndim != 3 or photo.shape[2] < 3:
        raise ValueError(f"skimage.data.{function}() is not a colour photo (shape {photo.shape})")
    return np.ascontiguousarray(photo[..., :3].astype(np.uint8))


def crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` random square crops of `photo` (H, W, 3), each resized to SIDE x SIDE."""
    h, w = photo.shape[:2]
    image = Image.fromarray(photo)
    out = []
    for _ in range(count):
        side = min(int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), h, w)  # clipped to the photo
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        out.append(image.resize((SIDE, SIDE), Image.Resampling.LANCZOS, box=(x, y, x + side, y + side)))
    return out


def make_photos(out: str | Path, *, seed: int = 0, per_class: int = CROPS_PER_CLASS, photos: str = "first") -> Path:
    """Write the crops of the photo set `photos` (PHOTO_SETS) to out/<class>/NNN.png and return `out`.
    Deterministic for a given seed."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if photos not in PHOTO_SETS:
        raise ValueError(f"photos must be one of {', '.join(PHOTO_SETS)}, got {photos!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for name, function in PHOTO_SETS[photos].items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(crops(load_photo(function), per_class, rng)):
            crop.save(folder / f"{i:03d}.png", optimize=False)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write <class>/NNN.png into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=CROPS_PER_CLASS)
    p.add_argument("--photos", choices=sorted(PHOTO_SETS), default="first",
                   help="which photos: first (cat, tissue, galaxies; the benchmark's folder) or second (astronaut, "
                        "coffee, rocket)")
    a = p.parse_args(argv)
    if a.per_class < 1:
        p.error("--per-class must be at least 1")
    out = make_photos(a.out, seed=a.seed, per_class=a.per_class, photos=a.photos)
    names = PHOTO_SETS[a.photos]
    print(f"wrote {a.per_class * len(names)} images of {SIDE}x{SIDE} to {out} ({', '.join(names)})")
    return out


if __name__ == "__main__":
    main()
