"""An upscaler against Lanczos and bicubic (docs/upscale.md): PSNR and SSIM against the originals of images the model
never trained on, the held-out split of its run (split.json, or the same split made again from the run's data config:
a bundled model ships without split.json), each original downsampled by the run's own pipeline (condition/lowres.py:
its antialiased filter, rounded to 8 bits as a PNG holds it) and upscaled back by the model (image i with seed i),
by Pillow's Lanczos and by Pillow's bicubic. Prints a table with the command and the machine's load.

    python bench/upscale.py mnist-upscale
    python bench/upscale.py RUN --images 100 --steps 12 --runs-dir /tmp/runs
    python bench/upscale.py RUN --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pixelforge import api  # noqa: E402
from pixelforge.condition.lowres import downsample  # noqa: E402
from pixelforge.data import load_dataset, split_indices, to_model  # noqa: E402
from pixelforge.images import to_pil  # noqa: E402
from pixelforge.metrics.reconstruction import reconstruction_figures  # noqa: E402


def held_out(g: api.Generator) -> torch.Tensor:
    """The run's validation images (N, C, S, S) in [-1, 1]: split.json's where the run folder has one, else the split
    the training made from the same data config (split_indices is a function of n, val_fraction and split_seed)."""
    cfg = g.config.data
    data = load_dataset(cfg, progress=False)
    path = g.run_dir / "split.json"
    val = (torch.tensor(json.loads(path.read_text())["val"], dtype=torch.long) if path.is_file()
           else split_indices(len(data), cfg.val_fraction, cfg.split_seed)[1])
    if not len(val):
        raise SystemExit(f"{g.name}: its run holds no images out (val_fraction 0); nothing to measure on")
    return to_model(data.images[val], cfg)


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8, rounded as the PNGs would hold it."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_pils(images: list[Image.Image], channels: int) -> torch.Tensor:
    """PIL images -> (N, C, H, W) uint8."""
    import numpy as np

    a = np.stack([np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, channels) for im in images])
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="an upscaler run (folder, run name or bundled model)")
    p.add_argument("--images", type=int, default=250, help="at most this many held-out images (default 250)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = p.parse_args(argv)

    g = api.load(a.run, device=a.device, runs_dir=a.runs_dir, moderation=None)
    g.check_upscaler()
    cfg = g.model.config
    x = held_out(g)[: a.images]  # (N, C, S, S) in [-1, 1]
    real = as_uint8(x)
    low = to_pil(downsample(x, cfg.lowres))  # what a user would give: 8-bit images of the low side
    side = cfg.image_size
    options = {k: v for k, v in {"steps": a.steps, "sampler": a.sampler}.items() if v is not None}
    t0 = time.perf_counter()
    upscaled, settings = g.upscale_tensor(low, seeds=list(range(len(low))), **options)
    seconds = time.perf_counter() - t0
    rows = {
        "model": as_uint8(upscaled),
        "lanczos": from_pils([im.resize((side, side), Image.Resampling.LANCZOS) for im in low], cfg.channels),
        "bicubic": from_pils([im.resize((side, side), Image.Resampling.BICUBIC) for im in low], cfg.channels),
    }
    figures = {name: reconstruction_figures(real, fake) for name, fake in rows.items()}
    used = {k: settings[0][k] for k in g.sample_options}
    result = {
        "command": "python bench/upscale.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": g.name, "images": len(real), "size": f"{side // cfg.lowres.scale} -> {side}",
        "lowres": {"scale": cfg.lowres.scale, "down": cfg.lowres.down, "up": cfg.lowres.up},
        "sampling": used, "model_seconds": round(seconds, 1), "load_average": [round(v, 2) for v in os.getloadavg()],
        "figures": figures,
    }
    if a.json:
        print(json.dumps(result))
        return result
    print(f"$ {result['command']}")
    print(f"{g.name}: {len(real)} held-out images, {result['size']} px (down {cfg.lowres.down}, rounded to 8 bits); "
          f"model sampling {', '.join(f'{k} {v}' for k, v in used.items())}, seeds 0..{len(real) - 1}, "
          f"{seconds:.1f} s; load average {', '.join(map(str, result['load_average']))}")
    print("| upscaler | PSNR (dB) | SSIM |")
    print("|---|---|---|")
    for name, f in figures.items():
        ssim = "n/a" if f["ssim"] is None else f"{f['ssim']:.4f}"
        print(f"| {name} | {f['psnr']:.2f} | {ssim} |")
    return result


if __name__ == "__main__":
    main()
