"""Build the bundled "emoji" data set from the npm package emoji-datasource-twitter (Twemoji, 64x64).

Writes two files that are committed with the project and read by `pixelforge.data.bundled`:

    pixelforge/assets/datasets/emoji.webp  one RGB sprite sheet, 64x64 tiles in row-major order
    pixelforge/assets/datasets/emoji.json  count, tile, columns, class_names, labels, captions, ...

The sheet is lossless WebP rather than PNG because it is about a quarter smaller (7.0 MB against
9.5 MB for the same pixels); Pillow reads it back bit for bit.

Every emoji in package/emoji.json whose 64 px PNG exists is kept, skin-tone variations included;
the transparent PNGs are composited over white. Labels index the sorted list of categories and a
caption is the lowercased Unicode name ("red apple", "waving hand sign: medium skin tone").

Usage (needs npm and the npm registry, or a tarball fetched beforehand):

    python scripts/prepare_emoji.py                      # runs `npm pack` in a temporary folder
    python scripts/prepare_emoji.py --tarball FILE.tgz   # offline, from an `npm pack` tarball
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "emoji-datasource-twitter"
VERSION = "16.0.0"
TILE = 64
COLUMNS = 128  # 8192 px wide: WebP allows at most 16383 px a side
FORMAT_VERSION = 1
SHEET = "emoji.webp"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pixelforge" / "assets" / "datasets"

# Fitzpatrick modifiers as CLDR names them ("thumbs up: medium-light skin tone").
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def npm_pack(workdir: Path) -> Path:
    """Download the pinned package tarball with `npm pack` into workdir and return its path."""
    spec = f"{PACKAGE}@{VERSION}"
    result = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=workdir, check=True, capture_output=True, text=True
    )
    name = result.stdout.strip().splitlines()[-1]
    return workdir / name


def read_package(tarball: Path) -> tuple[list[dict], dict[str, bytes]]:
    """The entries of package/emoji.json and the 64 px PNG bytes by file name."""
    prefix = f"package/img/twitter/{TILE}/"
    pngs: dict[str, bytes] = {}
    entries = None
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            if member.name == "package/emoji.json":
                entries = json.load(tar.extractfile(member))
            elif member.name.startswith(prefix) and member.name.endswith(".png"):
                pngs[member.name[len(prefix):]] = tar.extractfile(member).read()
    if entries is None:
        raise ValueError(f"{tarball} has no package/emoji.json; is it an {PACKAGE} tarball?")
    return entries, pngs


def collect(entries: list[dict], pngs: dict[str, bytes]) -> list[dict]:
    """One record per image that exists: base emoji in sort order, each followed by its skin tones."""
    records = []
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        name = entry["name"].lower()
        variants = [(entry["image"], name, entry["unified"])]
        for key, variation in sorted((entry.get("skin_variations") or {}).items()):
            tones = ", ".join(SKIN_TONES[k] for k in key.split("-"))
            variants.append((variation["image"], f"{name}: {tones}", variation["unified"]))
        for image, caption, unified in variants:
            if image in pngs:
                records.append(
                    {
                        "image": image,
                        "caption": caption,
                        "unified": unified,
                        "category": entry["category"],
                        "subcategory": entry["subcategory"],
                    }
                )
    return records


def to_rgb_tile(png: bytes) -> np.ndarray:
    """Decode a transparent PNG and composite it over white: (TILE, TILE, 3) uint8."""
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    if rgba.size != (TILE, TILE):
        raise ValueError(f"expected a {TILE}x{TILE} image, got {rgba.size}")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def build(tarball: Path, out: Path) -> dict:
    entries, pngs = read_package(tarball)
    records = collect(entries, pngs)
    count = len(records)
    rows = -(-count // COLUMNS)
    sheet = np.full((rows * TILE, COLUMNS * TILE, 3), 255, dtype=np.uint8)  # unused tiles stay white
    for i, record in enumerate(records):
        r, c = divmod(i, COLUMNS)
        sheet[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = to_rgb_tile(pngs[record["image"]])

    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(sheet, "RGB").save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    sheet_bytes = buffer.getvalue()
    with Image.open(io.BytesIO(sheet_bytes)) as check:
        if not np.array_equal(np.asarray(check.convert("RGB")), sheet):
            raise RuntimeError("the WebP sheet does not decode to the same pixels")
    (out / SHEET).write_bytes(sheet_bytes)

    class_names = sorted({r["category"] for r in records})
    meta = {
        "format_version": FORMAT_VERSION,
        "source": f"npm:{PACKAGE}@{VERSION}",
        "licence": "graphics CC-BY 4.0 (Twemoji by Twitter, Inc. and other contributors); data MIT",
        "tile": TILE,
        "columns": COLUMNS,
        "count": count,
        "sheet": SHEET,
        "sheet_sha256": hashlib.sha256(sheet_bytes).hexdigest(),
        "class_names": class_names,
        "labels": [class_names.index(r["category"]) for r in records],
        "captions": [r["caption"] for r in records],
        "subcategories": [r["subcategory"] for r in records],
        "unified": [r["unified"] for r in records],
    }
    (out / "emoji.json").write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path, help="an `npm pack` tarball of the package (skips npm)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or npm_pack(Path(tmp))
        meta = build(tarball, args.out)
    sizes = {p: (args.out / p).stat().st_size for p in (SHEET, "emoji.json")}
    print(f"{meta['count']} emoji in {len(meta['class_names'])} categories from {meta['source']}")
    for name, size in sizes.items():
        print(f"  {args.out / name}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
