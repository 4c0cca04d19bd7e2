"""Sampling speed of a PixelCNN: the cached sampler against full recomputation for every pixel.

Method: an untrained PixelCNNModel (its zero-initialised output layer given small random weights, so
the draws are not all uniform; speed does not depend on the weights) at the given shape; one untimed
warm-up call of each sampler at a small size, then `model.sample` (per-layer row and column buffers:
each feature computed once, O(H W L)) and `model.sample_full_recompute` (the whole network for each
of the H W pixels, O((H W)^2 L)) are timed end to end, device synchronised, median of --repeats calls.
The script also checks that both return the same images and prints the ratio.

Usage:
    .venv/bin/python bench/pixelcnn_sample_speed.py                     # 16x16 gray, n 16
    .venv/bin/python bench/pixelcnn_sample_speed.py --image-size 28 --hidden 64 --layers 8 --kernel 5
    .venv/bin/python bench/pixelcnn_sample_speed.py --quick             # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

from pixelforge.device import pick_device
from pixelforge.models.optim import OptimConfig
from pixelforge.models.pixelcnn import PixelCNNConfig, PixelCNNModel


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, image_size: int, device: torch.device) -> PixelCNNModel:
    cfg = PixelCNNConfig(image_size=image_size, channels=args.channels, hidden_channels=args.hidden,
                         num_layers=args.layers, kernel_size=args.kernel, output=args.output)
    model = PixelCNNModel(cfg, OptimConfig(), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.to(device).eval().requires_grad_(False)


def timed(fn, device, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--output", default="softmax256", choices=("softmax256", "logistic_mixture"))
    p.add_argument("--hidden", type=int, default=32, help="hidden_channels (default 32)")
    p.add_argument("--layers", type=int, default=5, help="num_layers (default 5)")
    p.add_argument("--kernel", type=int, default=3, help="kernel_size (default 3)")
    p.add_argument("--n", type=int, default=16, help="images per call, one batch (default 16)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 6x6, n 2")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.n = 6, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    warm = build(args, 4, device)
    warm.sample(args.n, seed=0)
    warm.sample_full_recompute(args.n, seed=0)
    model = build(args, args.image_size, device)
    cached_s, cached = timed(lambda: model.sample(args.n, seed=0), device, args.repeats)
    full_s, full = timed(lambda: model.sample_full_recompute(args.n, seed=0), device, args.repeats)
    result = {
        "torch": torch.__version__,
        "pixelforge": pixelforge.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": {k: getattr(model.config, k) for k in ("image_size", "channels", "hidden_channels", "num_layers", "kernel_size", "output")},
        "n": args.n,
        "cached_seconds": cached_s,
        "full_recompute_seconds": full_s,
        "speedup": full_s / cached_s,
        "same_images": bool(torch.equal(cached, full)),
        "quick": args.quick,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("pixelforge PixelCNN sampling speed" + ("  [--quick smoke run: figures are not meaningful]" if args.quick else ""))
        print(f"  torch {result['torch']} | device {result['device']} | threads {result['threads']} | n {args.n}")
        print("  " + ", ".join(f"{k}={v}" for k, v in result["config"].items()))
        print(f"  full recompute: {full_s:8.3f} s   ({args.n / full_s:7.2f} images/s)")
        print(f"  cached:         {cached_s:8.3f} s   ({args.n / cached_s:7.2f} images/s)")
        print(f"  speed-up {result['speedup']:.1f}x; same images: {result['same_images']}")
    return result


if __name__ == "__main__":
    main()
