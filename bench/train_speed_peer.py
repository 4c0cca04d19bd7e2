"""Training images/s side by side with diffusers' UNet2DModel at equal parameter count, batch and image size.

Ours: the default DiffusionConfig UNet at 32x32 RGB, unconditional (as the peer), trained by its own
  `training_step` (EDM loss, backward, gradient clipping at 1, Adam), in fp32 and in bf16 autocast
  (pixelforge.models.family.set_precision, what `pixelforge train --precision bf16` does).
Peer: diffusers' UNet2DModel with DownBlock2D / UpBlock2D levels and its attention middle block (the
  layout of ours: attention in the middle only), its widths chosen as the candidate whose parameter count
  is closest to ours (within 10%, else the script stops), trained the way diffusers' unconditional
  training example (examples/unconditional_image_generation/train_unconditional.py) trains it: DDPMScheduler
  with 1000 steps, uniform timesteps, add_noise, plain epsilon-MSE, backward, clip_grad_norm_ 1, AdamW
  (lr 1e-4, betas 0.95/0.999, weight decay 1e-6), in fp32 and in bf16 autocast around forward and loss.
  The example's EMA is left out, as ours is (the training loop, not the step, updates our EMA).
Timing: the same batch every step (no data pipeline in either figure); one untimed window, then windows
  interleaved (ours fp32, ours bf16, peer fp32, peer bf16, ...) so other load on the machine falls on all
  alike; each window's wall time and this process's CPU time; medians. With one thread and a busy machine
  the CPU-time figures are the reliable ones.

Usage:
    .venv/bin/python bench/train_speed_peer.py --threads 1          # batch 64, 32x32 RGB
    .venv/bin/python bench/train_speed_peer.py --quick              # smoke run, figures mean nothing
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

from pixelforge.condition import Cond
from pixelforge.device import pick_device
from pixelforge.models.diffusion import DiffusionConfig, DiffusionModel
from pixelforge.models.family import set_precision
from pixelforge.models.optim import OptimConfig
from pixelforge.precision import autocast, bf16_support

GOAL = 1.5  # the roadmap's: our training images/s at least 1.5x the peer's at equal parameters and batch
TOLERANCE = 0.10  # parameter counts within 10%


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peer_candidates(image_size: int) -> list[dict]:
    """UNet2DModel settings in our layout: three levels (c, 2c, 2c), attention in the middle block only."""
    out = []
    for c in (24, 32, 40, 48):
        for layers in (1, 2):
            out.append({"sample_size": image_size, "in_channels": 3, "out_channels": 3, "layers_per_block": layers,
                        "block_out_channels": (c, 2 * c, 2 * c), "down_block_types": ("DownBlock2D",) * 3,
                        "up_block_types": ("UpBlock2D",) * 3, "norm_num_groups": 8})
    return out


def count(module_fn: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):  # counts without allocating
        return sum(p.numel() for p in module_fn().parameters())


def matched_peer(ours_params: int, image_size: int) -> tuple[dict, int]:
    from diffusers import UNet2DModel

    best = min(((cfg, count(lambda: UNet2DModel(**cfg))) for cfg in peer_candidates(image_size)),
               key=lambda pair: abs(pair[1] - ours_params))
    if abs(best[1] - ours_params) > TOLERANCE * ours_params:
        sys.exit(f"error: no UNet2DModel candidate within {TOLERANCE:.0%} of our {ours_params} parameters")
    return best


class PeerStep:
    """One training step as diffusers' unconditional example takes it (without accelerate and EMA)."""

    def __init__(self, config: dict, device: torch.device, seed: int = 0):
        from diffusers import DDPMScheduler, UNet2DModel

        torch.manual_seed(seed)
        self.model = UNet2DModel(**config).to(device).train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.precision = "fp32"
        self.device = device

    def __call__(self, clean: torch.Tensor) -> float:
        noise = torch.randn(clean.shape, generator=self.generator, device=clean.device)  # (B, C, H, W)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device,
                                  generator=self.generator).long()
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        with autocast(self.precision, self.device):
            out = self.model(noisy, timesteps).sample
            loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--windows", type=int, default=3, help="timed windows per path, interleaved (default 3)")
    p.add_argument("--steps", type=int, default=2, help="training steps per window (default 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the figures: 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, 16x16, 1 window of 1 step")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.image_size, args.windows, args.steps = 2, 16, 1, 1
    for name in ("batch_size", "image_size", "windows", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        import diffusers
    except ImportError:
        sys.exit("error: diffusers is not installed: pip install 'pixelforge[bench]'")
    device = pick_device(args.device)
    config = DiffusionConfig(image_size=args.image_size, channels=3, num_classes=0)
    ours = DiffusionModel(config, OptimConfig(), seed=0).to(device)
    ours_params = sum(p.numel() for p in ours.parameters())
    peer_config, peer_params = matched_peer(ours_params, args.image_size)

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=gen) * 2 - 1).to(device)  # (B, 3, H, W)
    no_cond = Cond()
    ours_bf16 = copy.deepcopy(ours)
    set_precision(ours_bf16, "bf16")
    peer_fp32 = PeerStep(peer_config, device)
    peer_bf16 = PeerStep(peer_config, device)
    peer_bf16.precision = "bf16"
    step_no = {"n": 0}

    def ours_step(model: DiffusionModel) -> Callable[[], float]:
        def run() -> float:
            step_no["n"] += 1
            return model.training_step(x, no_cond, step_no["n"])["loss"]
        return run

    paths = {"ours fp32": ours_step(ours), "ours bf16": ours_step(ours_bf16),
             "peer fp32": lambda: peer_fp32(x), "peer bf16": lambda: peer_bf16(x)}
    wall: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    for window in range(1 + args.windows):  # window 0: warm-up, untimed
        for name, fn in paths.items():
            synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                fn()
            synchronize(device)
            if window:
                wall[name].append((time.perf_counter() - w0) / args.steps)
                cpu[name].append((time.process_time() - c0) / args.steps)
    rows = {name: {"images_per_s_wall": args.batch_size / statistics.median(wall[name]),
                   "images_per_s_cpu": args.batch_size / statistics.median(cpu[name]),
                   "windows_wall": wall[name], "windows_cpu": cpu[name]} for name in paths}
    native, found = bf16_support(device)
    best = "ours bf16" if native and rows["ours bf16"]["images_per_s_cpu"] > rows["ours fp32"]["images_per_s_cpu"] else "ours fp32"
    ratios = {}
    for clock in ("cpu", "wall"):
        key = f"images_per_s_{clock}"
        ratios[clock] = {
            "fp32 / peer fp32": rows["ours fp32"][key] / rows["peer fp32"][key],
            f"{best} / peer fp32": rows[best][key] / rows["peer fp32"][key],
            "bf16 / peer bf16": rows["ours bf16"][key] / rows["peer bf16"][key],
        }
    result = {"torch": torch.__version__, "diffusers": diffusers.__version__, "pixelforge": pixelforge.__version__,
              "device": str(device), "threads": torch.get_num_threads(), "bf16_native": native, "bf16_found": found,
              "batch_size": args.batch_size, "image_size": args.image_size, "windows": args.windows,
              "steps_per_window": args.steps, "quick": args.quick, "ours_parameters": ours_params,
              "peer_parameters": peer_params, "peer_config": peer_config, "rows": rows, "our_best": best,
              "ratios": ratios, "goal": GOAL}
    if args.json:
        print(json.dumps(result, indent=2, default=list))
    else:
        print_table(result)
    return result


def print_table(r: dict) -> None:
    print("training images/s, ours vs diffusers UNet2DModel" + ("  [--quick: figures mean nothing]" if r["quick"] else ""))
    print(f"  torch {r['torch']}, diffusers {r['diffusers']} | device {r['device']} | threads {r['threads']} | "
          f"batch {r['batch_size']} | {r['image_size']}x{r['image_size']} RGB")
    pc = r["peer_config"]
    print(f"  ours: DiffusionConfig defaults, unconditional, {r['ours_parameters'] / 1e6:.3f}M parameters")
    print(f"  peer: UNet2DModel block_out_channels {tuple(pc['block_out_channels'])}, layers_per_block "
          f"{pc['layers_per_block']}, {r['peer_parameters'] / 1e6:.3f}M parameters "
          f"({r['peer_parameters'] / r['ours_parameters'] - 1:+.1%})")
    print(f"  {'path':<10} {'img/s (cpu)':>11} {'img/s (wall)':>12}")
    for name, row in r["rows"].items():
        print(f"  {name:<10} {row['images_per_s_cpu']:11.1f} {row['images_per_s_wall']:12.1f}")
    for clock, ratios in r["ratios"].items():
        print(f"  ratios ({clock} time): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    best = r["ratios"]["cpu"][f"{r['our_best']} / peer fp32"]
    print(f"goal: ours at least {r['goal']}x the peer -> {'met' if best >= r['goal'] else 'not met'} ({best:.2f}x, "
          f"{r['our_best']} vs peer fp32, CPU time)")


if __name__ == "__main__":
    main()
