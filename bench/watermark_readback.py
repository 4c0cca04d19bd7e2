"""The watermark on the hardest images the project produces (docs/watermark.md, "Images that cannot carry a mark").

Samples --n images from the bundled shapes-text model at each of --steps sampling steps (busy, noisy 32x32 images)
and --edits edits at 4 steps and strength 0.6, all unmarked, then marks each with the default settings and counts:
  - needed: images whose mark, after the JPEG q50 check (watermark.WatermarkConfig.verify), does not read back
    as it is, so that the read-back strengthening (READBACK_MIN_PSNR) had to act;
  - rescued at each floor of that strengthening (--floors): read back at some strength down to the floor, and the
    strength reached;
  - unmarked: not read back even at the floor (recorded as "watermark": false);
  - found: of the images marked, how many the detector (detect(), with its search) finds with their payload.

    .venv/bin/python bench/watermark_readback.py                  # 32 per step count at 2, 3, 4 steps; 32 edits
    .venv/bin/python bench/watermark_readback.py --n 8 --edits 8  # quicker
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import pixelforge  # noqa: F401

from pixelforge.provenance.marks import generation_id, make_payload, model_id
from pixelforge.provenance.watermark import READBACK_MIN_PSNR, UnmarkableImage, WatermarkConfig, detect, embed_with_psnr


def images(n: int, steps: list[int], edits: int) -> dict[str, list]:
    g = pixelforge.load("shapes-text", device="auto")
    groups = {f"sample, {s} steps": g.generate(n, seed=1000 * s, steps=s, prompt="a red circle", watermark=False)
              for s in steps}
    if edits:
        source = g.generate(1, seed=7, steps=20, prompt="a red circle", watermark=False)[0]
        groups["edit, 4 steps, strength 0.6"] = g.edit([source] * edits, strength=0.6, seed=0, steps=4,
                                                       prompt="a blue square", watermark=False)
    return groups


def measure(group: list, floors: list[float]) -> dict:
    row: dict = {"images": len(group), "needed": 0, "floors": {}}
    per_floor = {f: collections.Counter() for f in floors}
    reached = {f: [] for f in floors}
    for im in group:
        s = im.info.get("pixelforge") or {}
        payload = make_payload(model_id(s), generation_id(s))
        try:
            embed_with_psnr(im, payload, WatermarkConfig(readback_min_psnr=WatermarkConfig().psnr))
            continue  # read back after the JPEG check: the strengthening never acts
        except UnmarkableImage:
            row["needed"] += 1
        for f in floors:
            try:
                marked, psnr = embed_with_psnr(im, payload, WatermarkConfig(readback_min_psnr=f))
            except UnmarkableImage:
                per_floor[f]["unmarked"] += 1
                continue
            d = detect(marked)
            per_floor[f]["rescued"] += 1
            per_floor[f]["found"] += int(d.detected and d.payload == payload)
            reached[f].append(psnr)
    for f in floors:
        row["floors"][f] = {**{k: per_floor[f][k] for k in ("rescued", "found", "unmarked")},
                            "psnr_reached": sorted(collections.Counter(reached[f]).items())}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32, help="samples per step count")
    p.add_argument("--steps", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--edits", type=int, default=32)
    p.add_argument("--floors", type=float, nargs="+", default=[36.0, 34.0, READBACK_MIN_PSNR, 30.0])
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = {name: measure(group, a.floors) for name, group in images(a.n, a.steps, a.edits).items()}
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(f"| images | N | needed | " + " | ".join(f"floor {f:g} dB: rescued / unmarked (found)" for f in a.floors) + " |")
    print("|---|---|---|" + "---|" * len(a.floors))
    for name, r in result.items():
        cells = [f"{x['rescued']} / {x['unmarked']} ({x['found']})" for x in r["floors"].values()]
        print(f"| {name} | {r['images']} | {r['needed']} | " + " | ".join(cells) + " |")
    for name, r in result.items():
        x = r["floors"][READBACK_MIN_PSNR] if READBACK_MIN_PSNR in r["floors"] else None
        if x:
            print(f"{name}: strength reached at the {READBACK_MIN_PSNR:g} dB floor (dB: images): "
                  + ", ".join(f"{p:g}: {k}" for p, k in x["psnr_reached"]))


if __name__ == "__main__":
    main()
