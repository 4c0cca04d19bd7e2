"""C2PA manifest cost per image (docs/provenance.md): bytes added, sign and verify milliseconds.

For each image kind (random RGB noise PNGs at --sides, which PNG cannot compress, the first as a JPEG too,
and the bundled model's sample grid, a real generated image), signs it --repeats times with a fresh local key (no thumbnail, as pixelforge
signs) and verifies the signed file as many times; prints the median times (wall and, for signing, this process's
CPU time, which a busy machine changes less), the size before and after, and
once the size the library's default thumbnail would have added. Then what signing adds to writing outputs: the
API's save_images of --outputs images of --output-side pixels (already watermarked, as generate returns them)
with manifests on and off, wall and CPU milliseconds per image (each file is fsynced), best of --rounds. Prints the load average beside the figures.

    .venv/bin/python bench/provenance_speed.py                 # sides 64 and 256, 20 repeats
    .venv/bin/python bench/provenance_speed.py --json
    .venv/bin/python bench/provenance_speed.py --quick         # smoke run; figures mean nothing
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pixelforge.provenance import c2pa_manifest  # noqa: E402
from pixelforge.provenance.c2pa_manifest import ModelInfo, ProvenanceSigner, sign_image, verify  # noqa: E402
from pixelforge.provenance.keys import CERT_ENV, KEY_ENV, create_keys  # noqa: E402
from pixelforge.runs import BUNDLED_MODELS_DIR  # noqa: E402

SETTINGS = {"model": "mnist-diffusion", "family": "diffusion", "checkpoint": "0123456789ab", "seed": 0,
            "sampler": "heun", "steps": 18, "guidance": 2.0, "label": 3, "version": pixelforge.__version__}


def images(sides: list[int]) -> dict[str, bytes]:
    out = {}
    for side in sides:
        buf = io.BytesIO()
        rng = np.random.default_rng(side)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        out[f"noise {side}x{side} RGB"] = buf.getvalue()
    buf = io.BytesIO()
    Image.open(io.BytesIO(out[f"noise {sides[0]}x{sides[0]} RGB"])).save(buf, "JPEG", quality=90)
    out[f"noise {sides[0]}x{sides[0]} RGB JPEG q90"] = buf.getvalue()
    grid = BUNDLED_MODELS_DIR / "mnist-diffusion" / "samples.png"
    out[f"bundled sample grid {'x'.join(map(str, Image.open(grid).size))}"] = grid.read_bytes()
    return out


def measure(data: bytes, signer: ProvenanceSigner, model: ModelInfo, repeats: int, folder: Path) -> dict:
    sign_ms, sign_cpu_ms, verify_ms = [], [], []
    path = folder / "signed"
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        signed = sign_image(data, model=model, settings=SETTINGS, signer=signer)
        sign_ms.append((time.perf_counter() - start) * 1e3)
        sign_cpu_ms.append((time.process_time() - cpu) * 1e3)
    path.write_bytes(signed)
    for _ in range(repeats):
        start = time.perf_counter()
        state = verify(path).state
        verify_ms.append((time.perf_counter() - start) * 1e3)
    return {"bytes": len(data), "signed_bytes": len(signed), "added_bytes": len(signed) - len(data),
            "sign_ms": round(statistics.median(sign_ms), 2), "sign_cpu_ms": round(statistics.median(sign_cpu_ms), 2),
            "verify_ms": round(statistics.median(verify_ms), 2),
            "state": state}


def save_cost(n: int, side: int, rounds: int, folder: Path) -> dict:
    """ms per image that save_images takes with and without manifests (the grid too), the best of `rounds`."""
    from pixelforge.api import save_images
    from pixelforge.provenance.marks import MarkSettings, mark_image

    rng = np.random.default_rng(side)
    images = [mark_image(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
                         settings={**SETTINGS, "seed": i}, marks=MarkSettings(watermark=False))
              for i in range(n)]
    ms: dict[bool, float] = {}
    cpu_ms: dict[bool, float] = {}
    for i, manifest in enumerate((False, True, False, True)):  # interleaved: a change in load hits both alike
        for r in range(rounds):
            start, cpu = time.perf_counter(), time.process_time()
            save_images(images, folder / f"{i}-{r}", watermark=MarkSettings(watermark=False, manifest=manifest))
            per = (time.perf_counter() - start) * 1e3 / (n + 1)  # n images and the grid
            per_cpu = (time.process_time() - cpu) * 1e3 / (n + 1)
            ms[manifest] = min(ms.get(manifest, per), per)
            cpu_ms[manifest] = min(cpu_ms.get(manifest, per_cpu), per_cpu)
    return {"images": n, "side": side, "ms_per_image_unsigned": round(ms[False], 2),
            "ms_per_image_signed": round(ms[True], 2), "added_ms_per_image": round(ms[True] - ms[False], 2),
            "cpu_ms_per_image_unsigned": round(cpu_ms[False], 2), "cpu_ms_per_image_signed": round(cpu_ms[True], 2),
            "added_cpu_ms_per_image": round(cpu_ms[True] - cpu_ms[False], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="64,256", help="sides of the noise images (default 64,256)")
    parser.add_argument("--repeats", type=int, default=20, help="signs and verifies per image (default 20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one 16x16 image, 2 repeats")
    parser.add_argument("--outputs", type=int, default=32, help="images save_images writes per round (default 32)")
    parser.add_argument("--output-side", type=int, default=32, help="their side in pixels (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="save_images rounds each way; the best counts (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sides = [16] if args.quick else [int(s) for s in args.sides.split(",")]
    repeats = 2 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        keys = create_keys(Path(tmp) / "keys")
        signer = ProvenanceSigner.from_files(keys.cert, keys.key)
        model = ModelInfo("mnist-diffusion", "diffusion", "0" * 64)
        sign_image(next(iter(images(sides).values())), model=model, settings=SETTINGS, signer=signer)  # warm-up
        rows = {name: measure(data, signer, model, repeats, Path(tmp)) for name, data in images(sides).items()}
        first = next(iter(images(sides).values()))
        saved = c2pa_manifest.SIGN_SETTINGS
        c2pa_manifest.SIGN_SETTINGS = {**saved, "builder": {"thumbnail": {"enabled": True}}}
        try:
            with_thumbnail = len(sign_image(first, model=model, settings=SETTINGS, signer=signer)) - len(first)
        finally:
            c2pa_manifest.SIGN_SETTINGS = saved
        os.environ[CERT_ENV], os.environ[KEY_ENV] = str(keys.cert), str(keys.key)  # save_images signs with it
        outputs = save_cost(2 if args.quick else args.outputs, args.output_side, 1 if args.quick else args.rounds,
                            Path(tmp))
    result = {"images": rows, "default_thumbnail_added_bytes": {next(iter(rows)): with_thumbnail},
              "save_images": outputs, "repeats": repeats, "cpus": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'image':<34} {'bytes':>8} {'signed':>8} {'added':>7} {'sign ms':>8} {'(CPU)':>7} {'verify ms':>9}  state")
    for name, r in rows.items():
        print(f"{name:<34} {r['bytes']:>8} {r['signed_bytes']:>8} {r['added_bytes']:>7} {r['sign_ms']:>8} "
              f"{r['sign_cpu_ms']:>7} {r['verify_ms']:>9}  {r['state']}")
    o = outputs
    print(f"save_images of {o['images']} {o['side']}x{o['side']} PNGs and their grid, ms an image (CPU ms): unsigned "
          f"{o['ms_per_image_unsigned']} ({o['cpu_ms_per_image_unsigned']}), signed {o['ms_per_image_signed']} "
          f"({o['cpu_ms_per_image_signed']}): signing adds {o['added_ms_per_image']} ({o['added_cpu_ms_per_image']})")
    print(f"the library's default thumbnail would add {with_thumbnail} bytes to the first image "
          f"(pixelforge turns it off); median of {repeats}; {result['cpus']} CPUs, load average "
          f"{result['load_average_1m']} (1 min)")


if __name__ == "__main__":
    main()
