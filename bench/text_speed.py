"""Text encoder speed and shapes-checker speed and accuracy (docs/text-and-adherence.md).

1. Text encoder: the time to load the default encoder, then prompts/s encoding --prompts shapes
   captions in batches of 64 (after one untimed batch) and 64 of them one at a time.
2. Shapes checker: `read_shape` on --images freshly drawn shapes (--side, --seed; the bundled set
   uses seed 0): images/s and the share read right per attribute.

Usage:
    .venv/bin/python bench/text_speed.py                   # 1 thread, 1024 prompts, 1000 images at 32x32
    .venv/bin/python bench/text_speed.py --side 64 --images 500 --seed 11 --json
    .venv/bin/python bench/text_speed.py --quick           # smoke run; figures are not meaningful
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixelforge.data.shapes import make_shapes, shape_attributes  # noqa: E402
from pixelforge.metrics.adherence import ATTRIBUTES, read_shape  # noqa: E402


def encoder_speed(n_prompts: int, device: str) -> dict[str, float]:
    start = time.perf_counter()
    from pixelforge.condition.text import TextEncoder
    from pixelforge.device import pick_device

    encoder = TextEncoder(device=pick_device(device))
    load_s = time.perf_counter() - start
    captions = [shape_attributes(i)["caption"] for i in range(n_prompts)]
    encoder.encode(captions[:64])  # warm-up, untimed
    start = time.perf_counter()
    encoder.encode(captions)
    batched = n_prompts / (time.perf_counter() - start)
    singles = captions[:64]
    start = time.perf_counter()
    for caption in singles:
        encoder.encode([caption])
    single = len(singles) / (time.perf_counter() - start)
    return {"load_s": round(load_s, 2), "batched_prompts_per_s": round(batched, 1),
            "single_prompts_per_s": round(single, 1)}


def checker_speed(n_images: int, side: int, seed: int) -> dict[str, float]:
    image_set, attributes = make_shapes(n_images, size=side, seed=seed)
    start = time.perf_counter()
    read = [read_shape(image) for image in image_set.images]
    rate = n_images / (time.perf_counter() - start)
    accuracy = {a: sum(r[a] == t[a] for r, t in zip(read, attributes)) / n_images for a in ATTRIBUTES}
    return {"images_per_s": round(rate, 1), **{f"accuracy_{a}": round(v, 4) for a, v in accuracy.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--device", default="auto", help="text encoder device: auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--prompts", type=int, default=1024, help="captions to encode (default 1024)")
    parser.add_argument("--images", type=int, default=1000, help="shapes images to read (default 1000)")
    parser.add_argument("--side", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the drawn shapes (default 123)")
    parser.add_argument("--skip-encoder", action="store_true", help="measure the checker only")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 64 prompts, 20 images")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.images = 64, 20
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"threads": args.threads}
    if not args.skip_encoder:
        result["encoder"] = encoder_speed(args.prompts, args.device)
    result["checker"] = {"side": args.side, "images": args.images, "seed": args.seed,
                         **checker_speed(args.images, args.side, args.seed)}
    if args.json:
        print(json.dumps(result))
        return
    for section, values in result.items():
        print(f"{section}: {values}")


if __name__ == "__main__":
    main()
