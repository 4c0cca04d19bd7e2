"""Prompt adherence on the shapes domain: read each image's attributes and compare them with its prompt.

The shapes set (pixelforge/data/shapes.py) is drawn by this project, so its attributes can be read
back with the same drawing code: the background is the border's colour, the shape's colour the
median of the pixels far from it, its place the cell of the 3x3 grid holding the centroid of its
coverage, and its kind and size the rendered template (every kind at every size, drawn at that
centroid) nearest to the coverage map. `parse_prompt` reads the captions' phrasing and common
paraphrases; `adherence` reports, per attribute, the share of images that obey their prompt.
`held_out_prompts` phrases attribute combinations that the bundled shapes set never draws.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from pixelforge.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, draw_shape

ATTRIBUTES = ("shape", "colour", "size", "position", "background")

# A pixel belongs to the shape when it is at least this far (RGB distance, 0..441) from the background.
_FOREGROUND_DISTANCE = 40.0
# Cell boundaries of the 3x3 grid, halfway between the places' centres (0.25, 0.5, 0.75 of the side).
_CELL_EDGES = (0.375, 0.625)
_CELLS = {cell: name for name, (cell, _) in POSITIONS.items()}


# ---------------------------------------------------------------------------------------------------
# Reading an image


def _to_rgb(image) -> np.ndarray:
    """A PIL image, an (H, W, 3) uint8 array, or a (3, H, W) tensor (uint8, or float in [-1, 1])
    -> (H, W, 3) float64 in 0..255."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float64)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        x = image.detach().to("cpu")
        x = x.double() if x.dtype == torch.uint8 else (x.double().clamp(-1, 1) + 1) * 127.5
        array = x.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        array = image.astype(np.float64)
    else:
        raise ValueError(f"image: expected a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    if array.shape[0] != array.shape[1] or array.shape[0] < 8:
        raise ValueError(f"image: expected a square image of at least 8x8 pixels, got {array.shape[1]}x{array.shape[0]}")
    return array


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def _mixing_colour(pixels: np.ndarray, bg: np.ndarray) -> str:
    """The palette colour whose mixes with the background explain the pixels (P, 3) best."""
    names = list(COLOURS)
    errors = []
    for name in names:
        axis = np.array(COLOURS[name], dtype=np.float64) - bg  # (3,)
        t = np.clip(((pixels - bg) @ axis) / max(float(axis @ axis), 1e-9), 0.0, 1.0)  # (P,)
        errors.append(float(np.median(np.linalg.norm(pixels - bg - t[:, None] * axis, axis=1))))
    return names[int(np.argmin(errors))]


def _template(shape: str, size_name: str, cx: float, cy: float, side: int) -> np.ndarray:
    """Coverage (side, side) in 0..1 of a shape drawn by the data set's own renderer."""
    attributes = {"shape": shape, "x": cx, "y": cy, "radius": SIZES[size_name] * side,
                  "colour_rgb": (255, 255, 255), "background_rgb": (0, 0, 0)}
    return np.asarray(draw_shape(attributes, side).convert("L"), dtype=np.float64) / 255.0


def read_shape(image) -> dict[str, str | None]:
    """The attributes of one shapes image: {"shape", "colour", "size", "position", "background"}.

    image: a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor (uint8, or float in [-1, 1]),
    square, any side. An image with no pixel far from its background reads as a background only
    (the other attributes None).
    """
    rgb = _to_rgb(image)  # (S, S, 3)
    side = rgb.shape[0]
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (4S - 4, 3)
    bg = np.median(border, axis=0)  # (3,)
    result: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    result["background"] = _nearest(bg, BACKGROUNDS)

    distance = np.linalg.norm(rgb - bg, axis=2)  # (S, S)
    far = distance >= _FOREGROUND_DISTANCE
    if not far.any():
        return result
    # The shape's most distinct pixels, away from antialiased edges; their median is the colour the
    # coverage is measured against, and the palette colour whose mixes with the background explain
    # them best is the one read (a blurred shape has few pure pixels).
    core = distance >= max(_FOREGROUND_DISTANCE, 0.5 * float(np.percentile(distance[far], 90)))
    fg = np.median(rgb[core], axis=0)  # (3,)
    result["colour"] = _mixing_colour(rgb[core], bg)

    # Coverage: each pixel as a mix of background and shape colour, projected on the line between them.
    axis = fg - bg
    alpha = np.clip(((rgb - bg) @ axis) / max(float(axis @ axis), 1e-9), 0.0, 1.0)  # (S, S)
    # Only the shape's own pixels count: the connected region of far pixels that holds the most
    # coverage, widened by a pixel for its antialiased rim, so stray noisy pixels elsewhere (in a
    # generated image) do not pull the centroid.
    regions, count = ndimage.label(far)
    if count > 1:
        weight = ndimage.sum(alpha, regions, index=np.arange(1, count + 1))  # (count,)
        far = regions == 1 + int(np.argmax(weight))
    alpha = np.where(ndimage.binary_dilation(far, iterations=1), alpha, 0.0)
    total = float(alpha.sum())
    if float(axis @ axis) < (0.5 * _FOREGROUND_DISTANCE) ** 2 or total <= 1e-6:
        # The shape's pixels have no common colour apart from the background's: no place, kind or
        # size to read.
        return result
    centres = np.arange(side) + 0.5  # pixel i covers [i, i + 1)
    cx = float((alpha.sum(0) * centres).sum()) / total
    cy = float((alpha.sum(1) * centres).sum()) / total
    col, row = (int(np.searchsorted(_CELL_EDGES, v / side)) for v in (cx, cy))
    result["position"] = _CELLS[(col, row)]

    errors = {
        (shape, size_name): float(np.square(_template(shape, size_name, cx, cy, side) - alpha).sum())
        for shape in SHAPES for size_name in SIZES
    }
    result["shape"], result["size"] = min(errors, key=errors.get)
    return result


# ---------------------------------------------------------------------------------------------------
# Reading a prompt

_SHAPE_WORDS = {
    "circle": "circle", "circles": "circle", "disc": "circle", "discs": "circle", "disk": "circle",
    "disks": "circle", "dot": "circle", "dots": "circle", "ball": "circle",
    "square": "square", "squares": "square", "box": "square",
    "triangle": "triangle", "triangles": "triangle",
    "diamond": "diamond", "diamonds": "diamond", "rhombus": "diamond", "lozenge": "diamond",
    "star": "star", "stars": "star",
    "cross": "cross", "crosses": "cross", "plus": "cross",
}
_COLOUR_WORDS = {name: name for name in COLOURS} | {
    "crimson": "red", "scarlet": "red", "violet": "purple", "turquoise": "cyan", "aqua": "cyan",
}
_BACKGROUND_WORDS = {name: name for name in BACKGROUNDS} | {"grey": "gray", "cream": "beige"}
_SIZE_WORDS = {
    "small": "small", "tiny": "small", "little": "small", "smaller": "small",
    "medium": "medium", "mid": "medium", "middling": "medium", "moderate": "medium",
    "large": "large", "big": "large", "huge": "large", "bigger": "large", "larger": "large",
}
_ROW_WORDS = {"top": 0, "upper": 0, "above": 0, "bottom": 2, "lower": 2, "below": 2}
_COL_WORDS = {"left": 0, "right": 2}
_CENTRE_WORDS = {"centre", "center", "middle", "central", "centred", "centered"}
# "on (a|the|plain...) black (background)", "against black", "black background", "backdrop"
_BACKGROUND_PHRASE = re.compile(
    r"\b(?:on|against|over)\s+(?:an?\s+|the\s+)?(?:plain\s+|solid\s+)?(\w+)\b|\b(\w+)\s+(?:background|backdrop)\b"
)


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt states, named as in the shapes set: a subset of
    {"shape", "colour", "size", "position", "background"}.

    Understands the captions ("a small red circle at the top left on a white background") and
    paraphrases: big/large, small/tiny, upper/top, lower/bottom, middle/centre/center, grey/gray,
    "on black", "with a black background", "top-left corner"...
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt: expected a string, got {type(text).__name__}")
    lowered = text.lower().replace("-", " ")
    words = re.findall(r"[a-z]+", lowered)
    stated: dict[str, str] = {}

    background_words = [m.group(1) or m.group(2) for m in _BACKGROUND_PHRASE.finditer(lowered)]
    background_words = [w for w in background_words if w in _BACKGROUND_WORDS]
    loose = [w for w in words if w in _BACKGROUND_WORDS]
    if background_words:
        stated["background"] = _BACKGROUND_WORDS[background_words[0]]
    elif len({_BACKGROUND_WORDS[w] for w in loose}) == 1:
        stated["background"] = _BACKGROUND_WORDS[loose[0]]

    colours = [_COLOUR_WORDS[w] for w in words if w in _COLOUR_WORDS]
    if colours:
        stated["colour"] = colours[0]
    else:
        # "a white star on black": a colour the set never uses is still a stated colour (never obeyed).
        others = [w for w in loose if _BACKGROUND_WORDS[w] != stated.get("background")]
        if others:
            stated["colour"] = _BACKGROUND_WORDS[others[0]]
    shapes = [_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS]
    if shapes:
        stated["shape"] = shapes[0]
    sizes = [_SIZE_WORDS[w] for w in words if w in _SIZE_WORDS]
    if sizes:
        stated["size"] = sizes[0]

    rows = [_ROW_WORDS[w] for w in words if w in _ROW_WORDS]
    cols = [_COL_WORDS[w] for w in words if w in _COL_WORDS]
    if rows or cols:
        stated["position"] = _CELLS[(cols[0] if cols else 1, rows[0] if rows else 1)]
    elif any(w in _CENTRE_WORDS for w in words):
        stated["position"] = "centre"
    return stated


# ---------------------------------------------------------------------------------------------------
# Adherence


def adherence(images, prompts: Sequence[str], *, callback: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Share of images that obey their prompt, per attribute, over the images whose prompt states it.

    images: (N, 3, H, W) tensor (uint8, or float in [-1, 1]) or a sequence of images `read_shape`
    takes; prompts: N strings. Keys: the attributes some prompt states, and "all": the share of
    images (among those whose prompt states anything) that obey every attribute their prompt states.
    callback(done, N) is called after each image (a progress bar).
    """
    if len(images) != len(prompts):
        raise ValueError(f"adherence: {len(images)} images but {len(prompts)} prompts; give one prompt per image")
    obeyed: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    every: list[bool] = []
    for done, (image, prompt) in enumerate(zip(images, prompts), 1):
        stated = parse_prompt(prompt)
        if stated:
            seen = read_shape(image)
            ok = {a: seen[a] == v for a, v in stated.items()}
            for a, v in ok.items():
                obeyed[a].append(v)
            every.append(all(ok.values()))
        if callback is not None:
            callback(done, len(prompts))
    shares = {a: float(np.mean(v)) for a, v in obeyed.items() if v}
    if every:
        shares["all"] = float(np.mean(every))
    return shares


# ---------------------------------------------------------------------------------------------------
# Held-out prompts


def held_out_combinations(n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Every attribute combination (shape, colour, size, position, background) that the shapes set
    drawn with n images and this seed never draws; by default the bundled set's n (3000) and seed (0).

    Each value alone is seen often in training; these combinations are not, so adherence on them
    measures how a model composes attributes.
    """
    from pixelforge.data.bundled import bundled_info

    count = bundled_info("shapes").count if n is None else n
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"n: {count!r} is not valid; use an integer >= 1")
    return [dict(zip(ATTRIBUTES, c)) for c in _held_out(count, seed)]


@functools.lru_cache(maxsize=4)
def _held_out(n: int, seed: int) -> tuple[tuple[str, ...], ...]:
    from pixelforge.data.shapes import shape_attributes

    drawn = {tuple(shape_attributes(i, seed=seed)[a] for a in ATTRIBUTES) for i in range(n)}
    combos = itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)
    return tuple(c for c in combos if c not in drawn)


# Paraphrases of each value; the first of each is the captions' own word.
_SAY_SIZE = {"small": ("small", "tiny", "little"), "medium": ("medium", "medium-sized", "mid-sized"),
             "large": ("large", "big", "huge")}
_SAY_SHAPE = {"circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",),
              "diamond": ("diamond", "rhombus"), "star": ("star",), "cross": ("cross", "plus sign")}
_SAY_BACKGROUND = {"white": ("white",), "black": ("black",), "gray": ("gray", "grey"), "beige": ("beige", "cream")}
_SAY_PLACE = {
    "top left": ("in the upper left", "in the top-left corner"),
    "top": ("near the top", "at the top middle"),
    "top right": ("in the upper right", "in the top-right corner"),
    "left": ("on the left side", "at the middle left"),
    "centre": ("in the middle", "at the center"),
    "right": ("on the right side", "at the middle right"),
    "bottom left": ("in the lower left", "in the bottom-left corner"),
    "bottom": ("near the bottom", "at the bottom middle"),
    "bottom right": ("in the lower right", "in the bottom-right corner"),
}
PARAPHRASE_TEMPLATES = (
    "a {size} {colour} {shape} {place}, on {background}",
    "a {size} {colour} {shape} {place} with a {background} background",
    "{background} background, {size} {colour} {shape} {place}",
    "draw a {colour} {shape} that is {size}, {place}, against {background}",
)


def caption_of(attributes: dict[str, str]) -> str:
    """The captions' own phrasing of a combination (as pixelforge/data/shapes.py writes it)."""
    a = attributes
    return f"a {a['size']} {a['colour']} {a['shape']} {POSITIONS[a['position']][1]} on a {a['background']} background"


def paraphrase(attributes: dict[str, str], rng: np.random.Generator, *, nouns: bool = False) -> str:
    """A phrasing of the combination other than the captions', chosen with `rng`: other sentence forms
    and other words for the size, the place and the background. The shape keeps the captions' noun
    unless `nouns` is set, which names it with a word no training wording uses ("disc", "rhombus",
    "plus sign") where the shape has one."""
    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    a = attributes
    names = _SAY_SHAPE[a["shape"]]
    return pick(PARAPHRASE_TEMPLATES).format(
        size=pick(_SAY_SIZE[a["size"]]), colour=a["colour"], shape=pick(names[1:]) if nouns and len(names) > 1 else names[0],
        place=pick(_SAY_PLACE[a["position"]]), background=pick(_SAY_BACKGROUND[a["background"]]),
    )


# Shapes with a name besides the captions' (`paraphrase(..., nouns=True)`).
OTHER_NOUN_SHAPES = tuple(shape for shape, names in _SAY_SHAPE.items() if len(names) > 1)


def held_out_prompts(count: int, *, seed: int = 0, paraphrased: bool = True,
                     nouns: bool = False) -> list[tuple[str, dict[str, str]]]:
    """`count` (prompt, attributes) pairs over combinations the bundled shapes set never draws, chosen
    with `seed`; paraphrased=False phrases them as the captions do. nouns=True (paraphrased only): only
    the combinations whose shape has another name (OTHER_NOUN_SHAPES), named with it.

    The frozen text encoder itself does not always know those names: all-MiniLM-L6-v2 puts "a rhombus"
    nearer "a square" than "a diamond", and "a plus sign" nearer "a star" than "a cross" (cosine of the
    sentence vectors), so a model that learns the shapes' names from captions that never use these
    words cannot be expected to follow them; they are a separate kind for that reason.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: {count!r} is not valid; use an integer >= 1")
    if nouns and not paraphrased:
        raise ValueError("nouns=True names the shapes otherwise than the captions do: it needs paraphrased=True")
    combos = held_out_combinations()
    if nouns:
        combos = [c for c in combos if c["shape"] in OTHER_NOUN_SHAPES]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(combos), size=count, replace=count > len(combos))
    return [(paraphrase(combos[i], rng, nouns=nouns) if paraphrased else caption_of(combos[i]), combos[i])
            for i in chosen.tolist()]
