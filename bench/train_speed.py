"""Training speed of the default diffusion UNet: images/s, FLOPs per image and the share of the
machine's measured fp32 peak that a training step achieves.

Method (bench/README.md has the long form):
  1. FLOPs per image: torch.utils.flop_counter.FlopCounterMode counts convolutions, matrix
     products and attention, (a) over one network forward and (b) over one whole training step
     (forward + backward + Adam update; the update adds no counted FLOPs). Elementwise work
     (GroupNorm, SiLU, Adam) is not counted, as is usual for "model FLOPs".
  2. Speed: a few warm-up steps, then timed steps in several windows; the median window gives
     images/s, and achieved GFLOP/s = training FLOPs per image * images/s.
  3. Peak: the faster of two fp32 products of N x N matrices in the same process and thread count,
     best of several trials each: torch.mm (the BLAS library torch links, MKL in the CPU wheels) and
     the same product as a 1x1 convolution (oneDNN on the CPU, cuDNN on CUDA). Both are kept because
     either library alone can miss the machine's peak: MKL's sgemm reaches half of what oneDNN does
     on an AMD CPU with AVX-512 (bench/README.md), which had put the training step above "100%".

Usage:
    .venv/bin/python bench/train_speed.py                    # batch 64, 32x32 RGB, 10 classes
    .venv/bin/python bench/train_speed.py --threads 2 --json
    .venv/bin/python bench/train_speed.py --channels-last    # adds the opt-in channels_last row
    .venv/bin/python bench/train_speed.py --quick            # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

from pixelforge.condition import Cond
from pixelforge.device import pick_device
from pixelforge.models.diffusion import DiffusionConfig, DiffusionModel
from pixelforge.models.optim import OptimConfig

TARGET_SHARE = 0.35  # achieved training GFLOP/s as a share of the measured fp32 peak
NUM_CLASSES = 10


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_attention_flops() -> dict:
    """FlopCounterMode formulas for the CPU attention kernels, which torch's registry leaves out.

    On CPU, F.scaled_dot_product_attention may dispatch to _scaled_dot_product_flash_attention_for_cpu
    (and its backward) instead of plain bmm; without these entries its FLOPs would silently count as
    zero. The counts are torch's own formulas for the CUDA kernels (2 matmuls forward, 5 backward).
    """
    try:
        from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
    except ImportError:
        return {}
    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    return int(counter.get_total_flops())


def make_batch(batch_size: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)  # (B,)
    return x.to(device), Cond(labels=labels.to(device))


def make_model(image_size: int, device: torch.device, channels_last: bool) -> DiffusionModel:
    # The default DiffusionConfig network; only the data shape and the class count are set.
    config = DiffusionConfig(image_size=image_size, channels=3, num_classes=NUM_CLASSES)
    model = DiffusionModel(config, OptimConfig(), seed=0).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def measure_flops(model: DiffusionModel, x: torch.Tensor, cond: Cond) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) for the whole batch."""
    sigma = torch.ones(x.shape[0], device=x.device)  # the noise level does not change the FLOPs
    with torch.no_grad():
        forward = count_flops(lambda: model.denoise(x, sigma, cond))
    train = count_flops(lambda: model.training_step(x, cond, 0))
    return forward, train


def time_training(model: DiffusionModel, x: torch.Tensor, cond: Cond, *, warmup: int, steps: int, windows: int) -> list[float]:
    """Seconds per step of each timed window (steps are split evenly over the windows)."""
    device = x.device
    for step in range(warmup):
        model.training_step(x, cond, step)
    synchronize(device)
    per_window = max(1, steps // windows)
    times = []
    step = warmup
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(per_window):
            model.training_step(x, cond, step)
            step += 1
        synchronize(device)
        times.append((time.perf_counter() - start) / per_window)
    return times


def best_gflops(fn, flops: float, device: torch.device, trials: int) -> float:
    """Best throughput of fn() in GFLOP/s over `trials` timed trials, after one untimed call."""
    fn()
    synchronize(device)
    # Repeat the call within a trial until it lasts ~0.1 s, so timer and launch costs vanish.
    start = time.perf_counter()
    fn()
    synchronize(device)
    reps = max(1, math.ceil(0.1 / max(time.perf_counter() - start, 1e-6)))
    best = math.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return flops / best / 1e9


@torch.no_grad()
def fp32_peak(size: int, device: torch.device, trials: int) -> dict:
    """fp32 GFLOP/s of a size x size x size product two ways: torch.mm, and a 1x1 convolution with
    size input and output channels over size pixels; "peak" is the faster."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    out = torch.empty(size, size, device=device)
    flops = 2 * size**3
    mm = best_gflops(lambda: torch.mm(a, b, out=out), flops, device, trials)
    h, w = (size // 32, 32) if size % 32 == 0 else (size, 1)
    x = a.T.contiguous().reshape(1, size, h, w)  # size channels at size pixels
    weight = b.T.contiguous().reshape(size, size, 1, 1)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # plain fp32, as torch.mm is
        conv = best_gflops(lambda: torch.nn.functional.conv2d(x, weight), flops, device, trials)
    return {"mm": mm, "conv1x1": conv, "peak": max(mm, conv), "source": "torch.mm" if mm >= conv else "1x1 convolution"}


def bench_path(name: str, args, device: torch.device, channels_last: bool, train_flops_per_image: float, peak: float) -> dict:
    model = make_model(args.image_size, device, channels_last)
    x, cond = make_batch(args.batch_size, args.image_size, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_training(model, x, cond, warmup=args.warmup, steps=args.steps, windows=args.windows)
    step_s = statistics.median(times)
    images_per_s = args.batch_size / step_s
    achieved = train_flops_per_image * images_per_s / 1e9
    return {
        "path": name,
        "seconds_per_step": step_s,
        "window_seconds_per_step": times,
        "images_per_s": images_per_s,
        "achieved_gflops": achieved,
        "share_of_peak": achieved / peak,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="images per training step (default 64)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps, split over the windows (default 10)")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported (default 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--peak-size", type=int, default=2048, help="matrix side for the fp32 matmul peak (default 2048)")
    p.add_argument("--peak-trials", type=int, default=5, help="matmul peak trials, best kept (default 5)")
    p.add_argument("--channels-last", action="store_true", help="also time the opt-in channels_last memory format")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: batch 2, 1 warm-up, 2 timed steps, 256 matmul")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.warmup, args.steps, args.windows = 2, 1, 2, 2
        args.peak_size, args.peak_trials = 256, 3
    for name in ("batch_size", "image_size", "steps", "windows", "peak_size", "peak_trials"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.steps < args.windows:
        p.error(f"--steps ({args.steps}) must be at least --windows ({args.windows})")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
        DiffusionConfig(image_size=args.image_size)  # validate the size before any work
    except ValueError as e:
        sys.exit(f"error: {e}")

    model = make_model(args.image_size, device, channels_last=False)
    x, cond = make_batch(args.batch_size, args.image_size, device)
    forward_flops, train_flops = measure_flops(model, x, cond)
    forward_per_image = forward_flops / args.batch_size
    train_per_image = train_flops / args.batch_size
    params = sum(p.numel() for p in model.net.parameters())
    del model

    peaks = fp32_peak(args.peak_size, device, args.peak_trials)
    peak = peaks["peak"]
    rows = [bench_path("fp32 (default)", args, device, False, train_per_image, peak)]
    if args.channels_last:
        rows.append(bench_path("fp32 channels_last (opt-in)", args, device, True, train_per_image, peak))
        rows[1]["speedup_vs_default"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]

    result = {
        "torch": torch.__version__,
        "pixelforge": pixelforge.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "model": "DiffusionConfig defaults (UNet), class-conditional",
        "image_size": args.image_size,
        "channels": 3,
        "num_classes": NUM_CLASSES,
        "parameters": params,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "windows": args.windows,
        "quick": args.quick,
        "forward_flops_per_image": forward_per_image,
        "train_flops_per_image": train_per_image,
        "train_to_forward": train_per_image / forward_per_image,
        "peak_matmul_size": args.peak_size,
        "peak_gflops": peak,
        "peak_source": peaks["source"],
        "peak_mm_gflops": peaks["mm"],
        "peak_conv1x1_gflops": peaks["conv1x1"],
        "results": rows,
        "target_share": TARGET_SHARE,
        "target_met": rows[0]["share_of_peak"] >= TARGET_SHARE,
    }
    if device.type == "cuda":
        # fp32 convolutions may run in TF32 while the matmul peak is plain fp32: record both switches.
        result["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        result["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result


def print_table(r: dict) -> None:
    dev = r["device"] + (f" ({r['device_name']})" if r["device_name"] else "")
    print("pixelforge training speed" + ("  [--quick smoke run: figures are not meaningful]" if r["quick"] else ""))
    print(f"  torch {r['torch']} | device {dev} | threads {r['threads']}")
    if "cudnn_allow_tf32" in r:
        print(f"  TF32: matmul {r['cuda_matmul_allow_tf32']}, cuDNN convolutions {r['cudnn_allow_tf32']}")
    print(
        f"  model: DiffusionConfig defaults, {r['image_size']}x{r['image_size']}x{r['channels']}, "
        f"{r['num_classes']} classes, {r['parameters'] / 1e6:.2f}M parameters"
    )
    print(f"  batch {r['batch_size']} | {r['warmup_steps']} warm-up steps | {r['timed_steps']} timed steps in {r['windows']} windows (median)")
    print()
    print("FLOPs per image (FlopCounterMode: convolutions, matmuls, attention)")
    print(f"  forward           {r['forward_flops_per_image'] / 1e9:10.3f} GFLOP")
    print(f"  training step     {r['train_flops_per_image'] / 1e9:10.3f} GFLOP  ({r['train_to_forward']:.2f}x forward)")
    size = r["peak_matmul_size"]
    print(f"fp32 peak           {r['peak_gflops']:10.1f} GFLOP/s  (the faster of two {size}x{size}x{size} products, best of trials:")
    print(f"                    torch.mm {r['peak_mm_gflops']:.1f}, as a 1x1 convolution {r['peak_conv1x1_gflops']:.1f})")
    print()
    head = f"{'path':<30} {'images/s':>10} {'s/step':>9} {'GFLOP/s':>9} {'of peak':>8}"
    print(head)
    print("-" * len(head))
    for row in r["results"]:
        line = (
            f"{row['path']:<30} {row['images_per_s']:10.2f} {row['seconds_per_step']:9.3f} "
            f"{row['achieved_gflops']:9.1f} {row['share_of_peak']:8.1%}"
        )
        if "speedup_vs_default" in row:
            line += f"  ({row['speedup_vs_default']:.2f}x default)"
        print(line)
    print()
    share = r["results"][0]["share_of_peak"]
    verdict = "met" if r["target_met"] else "not met"
    print(f"target: fp32 default path at >= {r['target_share']:.0%} of the fp32 peak -> {verdict} ({share:.1%})")


if __name__ == "__main__":
    main()
