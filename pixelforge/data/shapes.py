"""A procedurally drawn data set of coloured shapes with captions and ground-truth attributes.

Every image is one filled shape (circle, square, triangle, diamond, star or cross) of one of three
sizes, at one of nine places, on a plain background. The attributes of image `i` come from its own
random generator seeded with `(seed, i)`, so image `i` is the same whatever `n` is, and a caption
states every attribute ("a small red circle at the top left on a white background"). Shapes are
drawn at 4x the output side and downsampled with Lanczos filtering, which antialiases their edges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixelforge.data.types import ImageSet

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 210),
    "yellow": (245, 205, 20),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "pink": (240, 110, 170),
    "brown": (130, 80, 35),
    "cyan": (20, 190, 210),
}

BACKGROUNDS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (225, 215, 185),
}

# Half the shape's extent (its circumradius), as a fraction of the image side.
SIZES = {"small": 0.12, "medium": 0.19, "large": 0.27}

# Name of each of the nine places -> (column, row) in a 3x3 grid, and the phrase the caption uses.
POSITIONS = {
    "top left": ((0, 0), "at the top left"),
    "top": ((1, 0), "at the top"),
    "top right": ((2, 0), "at the top right"),
    "left": ((0, 1), "on the left"),
    "centre": ((1, 1), "in the centre"),
    "right": ((2, 1), "on the right"),
    "bottom left": ((0, 2), "at the bottom left"),
    "bottom": ((1, 2), "at the bottom"),
    "bottom right": ((2, 2), "at the bottom right"),
}

_GRID = (0.25, 0.5, 0.75)  # centre of a place along one axis, as a fraction of the side
_JITTER = 0.04  # uniform jitter of the centre around its place, as a fraction of the side
_MARGIN = 0.02  # the whole shape stays at least this far (fraction of the side) from the border
_SUPERSAMPLE = 4


def shape_attributes(index: int, *, size: int = 32, seed: int = 0) -> dict:
    """The ground truth of image `index` of the set drawn with `seed`, in output pixels.

    x, y: the shape's centre, with the image spanning [0, size] on each axis (pixel (i, j) covers
    [i, i+1) x [j, j+1), so the centre lies in pixel (int(x), int(y))). radius: circumradius.
    """
    rng = np.random.default_rng((seed, index))
    def pick(options):
        options = list(options)
        return options[int(rng.integers(len(options)))]

    shape = pick(SHAPES)
    colour = pick(COLOURS)
    background = pick(BACKGROUNDS)
    size_name = pick(SIZES)
    position = pick(POSITIONS)
    return place_shape(shape, colour, size_name, position, background, jitter=random_jitter(rng), size=size)


def place_shape(shape: str, colour: str, size_name: str, position: str, background: str, *,
                jitter: tuple[float, float] = (0.0, 0.0), size: int = 32) -> dict:
    """The attributes (as `shape_attributes` returns them) of one given combination, its centre moved
    from its place by `jitter` (fractions of the side; the data set draws each in [-0.04, 0.04]).
    Draw it with `draw_shape`: any combination, including those the bundled set never draws."""
    for name, value, valid in (("shape", shape, SHAPES), ("colour", colour, COLOURS), ("size", size_name, SIZES),
                               ("position", position, POSITIONS), ("background", background, BACKGROUNDS)):
        if value not in valid:
            raise ValueError(f"{name}: unknown value {value!r}; valid: {', '.join(valid)}")
    r = SIZES[size_name]
    (col, row), phrase = POSITIONS[position]
    lo, hi = r + _MARGIN, 1.0 - r - _MARGIN  # keep the shape inside the image
    fx = min(max(_GRID[col] + jitter[0], lo), hi)
    fy = min(max(_GRID[row] + jitter[1], lo), hi)
    return {
        "shape": shape,
        "colour": colour,
        "colour_rgb": COLOURS[colour],
        "size": size_name,
        "radius": r * size,
        "position": position,
        "x": fx * size,
        "y": fy * size,
        "background": background,
        "background_rgb": BACKGROUNDS[background],
        "caption": f"a {size_name} {colour} {shape} {phrase} on a {background} background",
    }


def random_jitter(rng: np.random.Generator) -> tuple[float, float]:
    """A centre's jitter as the data set draws it: uniform in [-0.04, 0.04] of the side on each axis."""
    jx, jy = rng.uniform(-_JITTER, _JITTER, size=2)
    return float(jx), float(jy)


# Other wordings of each value for the captions' variants (the first of each is the captions' own).
# Kept apart from the paraphrases that pixelforge.metrics.adherence evaluates with, so adherence to
# other wordings is still measured on words and sentence forms a model never saw in training.
_VARY_SIZE = {"small": ("small", "smallish", "miniature", "compact"),
              "medium": ("medium", "average-sized", "middle-sized", "moderate-sized"),
              "large": ("large", "giant", "enormous", "oversized")}
_VARY_SHAPE = {"circle": ("circle", "round dot", "circular shape"), "square": ("square", "square shape", "box"),
               "triangle": ("triangle", "triangular shape", "three-sided shape"),
               "diamond": ("diamond", "lozenge", "diamond shape"), "star": ("star", "five-pointed star", "star shape"),
               "cross": ("cross", "cross shape", "pair of crossed bars")}
_VARY_COLOUR = {name: (name, f"{name}-coloured", f"bright {name}") for name in COLOURS}
_VARY_BACKGROUND = {"white": ("white", "pure white", "blank white"), "black": ("black", "pitch-black", "dark black"),
                    "gray": ("gray", "neutral gray", "ash-gray"), "beige": ("beige", "sandy beige", "light tan")}
_VARY_PLACE = {
    "top left": ("at the top left", "towards the top left", "up in the left corner", "in the northwest corner",
                 "in the upper-left quarter", "high on the left"),
    "top": ("at the top", "along the top edge", "high up in the centre", "at the top centre", "in the upper centre"),
    "top right": ("at the top right", "towards the top right", "up in the right corner", "in the northeast corner",
                  "in the upper-right quarter", "high on the right"),
    "left": ("on the left", "at the left edge", "halfway down on the left", "left of centre"),
    "centre": ("in the centre", "centred", "at the centre of the picture", "in the central area"),
    "right": ("on the right", "at the right edge", "halfway down on the right", "right of centre"),
    "bottom left": ("at the bottom left", "towards the bottom left", "down in the left corner",
                    "in the southwest corner", "in the lower-left quarter", "low on the left"),
    "bottom": ("at the bottom", "along the bottom edge", "low down in the centre", "at the bottom centre",
               "in the lower centre"),
    "bottom right": ("at the bottom right", "towards the bottom right", "down in the right corner",
                     "in the southeast corner", "in the lower-right quarter", "low on the right"),
}
_VARY_TEMPLATES = (
    "a {size} {colour} {shape} {place} on a {background} background",
    "{place}, a {size} {colour} {shape} over a {background} backdrop",
    "a {colour} {shape}, {size}, {place}; the background is {background}",
    "picture of a {size} {colour} {shape} {place}, {background} backdrop",
    "on a {background} canvas: one {size} {colour} {shape} {place}",
    "a {size} {colour} {shape} {place} with {background} behind it",
    "render one {colour} {shape} of {size} size {place}, {background} backdrop",
    "{background} backdrop; {place} sits a {size} {colour} {shape}",
    "an image showing a {size} {colour} {shape} {place} over {background}",
    "{size} {colour} {shape}, {place}, {background} scene",
    "show me a {colour} {shape} {place}. it is {size}. backdrop: {background}",
    "there is a {size} {colour} {shape} {place}; everything else is {background}",
    "{place} there is a {colour} {shape} ({size}) on plain {background}",
    "illustration: {size} {colour} {shape} placed {place}, {background} surroundings",
)
CAPTION_VARIANTS = 4  # variants per image that caption_variants draws by default, besides the caption


def caption_variants(attributes: dict, count: int = CAPTION_VARIANTS, *, seed: int = 0) -> list[str]:
    """`count` other wordings of the caption of a combination, drawn with `seed`: each says every
    attribute, with its own sentence form and words (none of them the adherence checker's paraphrases)."""
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    a = attributes
    return [pick(_VARY_TEMPLATES).format(size=pick(_VARY_SIZE[a["size"]]), colour=pick(_VARY_COLOUR[a["colour"]]),
                                         shape=pick(_VARY_SHAPE[a["shape"]]), place=pick(_VARY_PLACE[a["position"]]),
                                         background=pick(_VARY_BACKGROUND[a["background"]]))
            for _ in range(count)]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred at (cx, cy) with circumradius r (y grows downwards)."""
    def ring(radii: list[float], start_deg: float) -> list[tuple[float, float]]:
        step = 2 * math.pi / len(radii)
        a0 = math.radians(start_deg)
        return [(cx + q * math.cos(a0 + k * step), cy + q * math.sin(a0 + k * step)) for k, q in enumerate(radii)]

    if shape == "square":
        return ring([r] * 4, 45)
    if shape == "diamond":
        return ring([r] * 4, 90)
    if shape == "triangle":  # equilateral, pointing up; its centroid is (cx, cy)
        return ring([r] * 3, -90)
    if shape == "star":  # five points, inner radius 0.45 r
        return ring([r, 0.45 * r] * 5, -90)
    if shape == "cross":  # a plus sign whose arms are 0.7 r wide
        w = 0.35 * r
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def draw_shape(attributes: dict, size: int = 32) -> Image.Image:
    """Render one image (RGB, size x size) from its attributes (see `shape_attributes`)."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), tuple(attributes["background_rgb"]))
    draw = ImageDraw.Draw(image)
    cx, cy, r = (attributes[k] * _SUPERSAMPLE for k in ("x", "y", "radius"))
    fill = tuple(attributes["colour_rgb"])
    if attributes["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_outline(attributes["shape"], cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def make_shapes(n: int = 3000, size: int = 32, seed: int = 0, variants: int = 0) -> tuple[ImageSet, list[dict]]:
    """Draw n images; returns the set (labels index SHAPES, captions from the attributes) and the attributes.
    variants: other wordings of each caption to draw (caption_variants); none by default, as the bundled
    set has none (`--caption-variants N` asks for them: embedding four per image costs a text run about
    80 s more the first time, before the embeddings are cached)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    attributes = [shape_attributes(i, size=size, seed=seed) for i in range(n)]
    images = np.stack([np.asarray(draw_shape(a, size)) for a in attributes])  # (N, H, W, 3)
    image_set = ImageSet(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (N, 3, H, W) uint8
        labels=torch.tensor([SHAPES.index(a["shape"]) for a in attributes], dtype=torch.int64),
        class_names=list(SHAPES),
        captions=[a["caption"] for a in attributes],
        source="shapes",
        # drawn from their own stream, (seed, i, 1), so the images are those of a set without variants
        caption_variants=[caption_variants(a, variants, seed=(seed, i, 1)) for i, a in enumerate(attributes)]
        if variants > 0 else None,
    )
    return image_set, attributes
