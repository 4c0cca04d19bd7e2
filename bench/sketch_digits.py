"""How often a sketch-conditioned digit model draws the digit it was shown, for drawings made unlike its
training edges.

A drawing of digit d is given to the model (`Generator.generate(sketch=...)`, the path `sample --sketch`
takes: centre lines, redrawn at the training stroke width, then the model's edge detector); each generated
image is read by the bundled digit classifier (`pixelforge-mnist-classifier`, the extractor `evaluate` uses
for digits), and the share read as d is reported per kind of drawing:

- `mnist`: digits of the model's validation split (seed 0, 5 %: the images it never trained on), as dark
  strokes on white, enlarged to 224 px (Lanczos). The closest to what the model was trained on.
- `mnist-thin`: the same digits reduced to their centre lines at 224 px and drawn with a 2-px pen.
- `mnist-thick`: the same centre lines drawn with a 28-px pen (a marker on a small canvas).
- `digits`: the bundled `digits` set (scikit-learn's 8x8 handwritten digits: other writers, another
  scanner), enlarged to 224 px and thresholded at half grey: blocky strokes.
- `font`: the ten digits typed in each font found (DejaVu Sans, Serif, Mono, Bold, ExtraLight when the
  system has them; Pillow's built-in font always), filled glyphs on a 256-px canvas.
- `font-outline`: the same glyphs drawn as outlines only (hollow strokes, 3 px).

Each drawing gets `--per-drawing` images (seeds 0..k-1). The classifier's own accuracy on the real
validation digits is printed as the ceiling. `--no-sketch` also samples with the empty condition, the
floor: how often the classifier reads d when the model is given nothing.

Usage:
    .venv/bin/python bench/sketch_digits.py                    # the bundled mnist-sketch
    .venv/bin/python bench/sketch_digits.py --model RUN --runs-dir runs --per-drawing 4 --json
    .venv/bin/python bench/sketch_digits.py --quick            # smoke run; figures are not meaningful
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import pixelforge  # noqa: E402
from pixelforge.data.bundled import load_bundled  # noqa: E402
from pixelforge.data.prepare import split_indices  # noqa: E402
from pixelforge.metrics.features import DomainExtractor  # noqa: E402

CANVAS = 224
FONT_FILES = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSans-ExtraLight.ttf"]
FONT_DIRS = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/Library/Fonts"]
KINDS = ["mnist", "mnist-thin", "mnist-thick", "digits", "font", "font-outline"]


def _centre_lines(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize
    return skeletonize(mask)


def _pen(lines: np.ndarray, width: int) -> Image.Image:
    """Centre lines (H, W) bool drawn with a round pen of `width` px: dark on white."""
    import cv2
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
    ink = cv2.dilate(lines.astype(np.uint8), k) > 0
    return Image.fromarray(np.where(ink, 0, 255).astype(np.uint8), "L")


def _enlarged(grey: np.ndarray) -> np.ndarray:
    """(h, w) uint8 digit, white on black -> (CANVAS, CANVAS) float in [0, 1], Lanczos."""
    return np.asarray(Image.fromarray(grey, "L").resize((CANVAS, CANVAS), Image.LANCZOS), dtype=np.float32) / 255


def balanced(labels: torch.Tensor, pool: torch.Tensor, limit: int) -> list[int]:
    """Up to `limit` indices of `pool`, taken round-robin over the ten digits (in a seeded random order)."""
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))].tolist()
    by_digit = [[i for i in order if int(labels[i]) == d] for d in range(10)]
    out = [by_digit[d][k] for k in range(max(map(len, by_digit))) for d in range(10) if k < len(by_digit[d])]
    return out[:limit]


def mnist_drawings(kind: str, limit: int) -> list[tuple[Image.Image, int]]:
    data = load_bundled("mnist")
    _, val = split_indices(len(data.images), 0.05, 0)
    out = []
    for i in balanced(data.labels, val, limit):
        big = _enlarged(data.images[i, 0].numpy())
        d = int(data.labels[i])
        if kind == "mnist":
            out.append((Image.fromarray((255 - big * 255).round().astype(np.uint8), "L"), d))
        else:
            out.append((_pen(_centre_lines(big > 0.5), 2 if kind == "mnist-thin" else 28), d))
    return out


def sklearn_digits(limit: int) -> list[tuple[Image.Image, int]]:
    data = load_bundled("digits")
    out = []
    for i in balanced(data.labels, torch.arange(len(data.images)), limit):
        g = data.images[i, 0].numpy()
        big = _enlarged(g) > 0.5
        out.append((Image.fromarray(np.where(big, 0, 255).astype(np.uint8), "L"), int(data.labels[i])))
    return out


def fonts() -> list[tuple[str, ImageFont.FreeTypeFont]]:
    found = [("pillow-default", ImageFont.load_default(size=180))]
    for name in FONT_FILES:
        for d in FONT_DIRS:
            f = Path(d) / name
            if f.is_file():
                found.append((name.removesuffix(".ttf"), ImageFont.truetype(str(f), 180)))
                break
    return found


def font_drawings(outline: bool) -> list[tuple[Image.Image, int]]:
    out = []
    for _, font in fonts():
        for d in range(10):
            im = Image.new("L", (256, 256), 255)
            draw = ImageDraw.Draw(im)
            if outline:
                draw.text((128, 128), str(d), font=font, anchor="mm", fill=255, stroke_width=3, stroke_fill=0)
            else:
                draw.text((128, 128), str(d), font=font, anchor="mm", fill=0)
            out.append((im, d))
    return out


def drawings(kind: str, limit: int) -> list[tuple[Image.Image, int]]:
    if kind.startswith("mnist"):
        return mnist_drawings(kind, limit)
    if kind == "digits":
        return sklearn_digits(limit)
    return font_drawings(kind == "font-outline")


def read_digits(clf: DomainExtractor, images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N,) the classifier's digit."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    _, logits = clf.features(u8, with_logits=True)
    return np.asarray(logits).argmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist-sketch", help="a run name, run folder or bundled model")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--per-drawing", type=int, default=4, help="images generated from each drawing")
    p.add_argument("--limit", type=int, default=100, help="drawings per MNIST/digits kind")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance (default: the model's)")
    p.add_argument("--no-sketch", action="store_true", help="also sample with no sketch: the floor")
    p.add_argument("--device", default="auto")
    p.add_argument("--grid", default=None, help="write a PNG: each kind's first drawings and a sample of each")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="a few drawings, 1 image each: checks the script runs")
    a = p.parse_args()
    if a.quick:
        a.limit, a.per_drawing = 3, 1
    kinds = a.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    options = {k: v for k, v in (("steps", a.steps), ("guidance", a.guidance)) if v is not None}
    if a.quick:
        options.setdefault("steps", 4)
    g = pixelforge.load(a.model, device=a.device, runs_dir=a.runs_dir)
    clf = DomainExtractor(device=a.device)
    data = load_bundled("mnist")
    _, val = split_indices(len(data.images), 0.05, 0)
    ceiling = float((read_digits(clf, data.images[val].float() / 127.5 - 1) == data.labels[val].numpy()).mean())
    rows, grid_rows = [], []
    t0 = time.perf_counter()
    for kind in kinds:
        items = drawings(kind, a.limit)
        if a.quick:
            items = items[:3]
        sketches = [im for im, _ in items for _ in range(a.per_drawing)]
        digits = np.array([d for _, d in items for _ in range(a.per_drawing)])
        seeds = [s for _ in items for s in range(a.per_drawing)]
        images, _ = g.generate_tensor(len(sketches), sketch=sketches, seeds=seeds, **options)
        read = read_digits(clf, images)
        per_digit = {str(d): round(float((read[digits == d] == d).mean()), 3) for d in range(10) if (digits == d).any()}
        rows.append({"kind": kind, "drawings": len(items), "images": len(sketches),
                     "read_as_drawn": round(float((read == digits).mean()), 3), "per_digit": per_digit})
        grid_rows.append((items[:10], images[::a.per_drawing][:10]))
        print(f"{kind:13s} {len(items):4d} drawings {len(sketches):5d} images  read as drawn "
              f"{rows[-1]['read_as_drawn']:.3f}", file=sys.stderr)
    floor = None
    if a.no_sketch:
        n = 10 * a.per_drawing * (1 if a.quick else 10)
        images, _ = g.generate_tensor(n, seed=0, **options)
        counts = np.bincount(read_digits(clf, images), minlength=10) / n
        floor = {"images": n, "share_of_most_common_digit": round(float(counts.max()), 3),
                 "chance_of_a_given_digit": round(float(np.mean(counts)), 3)}
    result = {"model": a.model, "per_drawing": a.per_drawing, "options": options, "device": str(g.device),
              "classifier": clf.name, "classifier_on_real_validation_digits": round(ceiling, 3),
              "rows": rows, "no_sketch": floor, "seconds": round(time.perf_counter() - t0, 1),
              "load_average_after": list(os.getloadavg()), "quick": a.quick}
    if a.grid:
        _grid(grid_rows, a.grid)
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(f"model {a.model}; {a.per_drawing} image(s) per drawing; sampler options {options or 'the model defaults'}; "
          f"classifier {clf.name} (reads {ceiling:.3f} of the real validation digits right)")
    print(f"{'kind':13s} {'drawings':>8s} {'images':>7s} {'read as drawn':>14s}")
    for r in rows:
        print(f"{r['kind']:13s} {r['drawings']:8d} {r['images']:7d} {r['read_as_drawn']:14.3f}")
    if floor:
        print(f"no sketch: {floor['images']} images; the most common digit is {floor['share_of_most_common_digit']:.3f} "
              "of them (a model ignoring the sketch would score about 0.1 above)")
    print(f"{result['seconds']} s; load average after {result['load_average_after'][0]:.2f}")


def _grid(rows: list, path: str) -> None:
    """Per kind two rows: the drawings (as given) and one sample from each, 64 px cells."""
    cell = 64
    width = max(len(items) for items, _ in rows)
    sheet = Image.new("L", (width * cell, 2 * len(rows) * cell), 255)
    for r, (items, samples) in enumerate(rows):
        for c, ((im, _), s) in enumerate(zip(items, samples)):
            sheet.paste(im.convert("L").resize((cell, cell), Image.LANCZOS), (c * cell, 2 * r * cell))
            u8 = ((s.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].numpy()
            sheet.paste(Image.fromarray(u8, "L").resize((cell, cell), Image.NEAREST), (c * cell, (2 * r + 1) * cell))
    sheet.save(path)


if __name__ == "__main__":
    main()
