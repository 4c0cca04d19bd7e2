"""Training steps in fp32, bf16 autocast and bf16 autocast + channels_last, and whether bf16 trains alike.

Speed: whole training steps (`training_step`: EDM loss, backward, clipping, Adam) of two diffusion UNets,
  the README's default config (DiffusionConfig defaults, 32x32 RGB, 10 classes, batch 64) and the bundled
  shapes-text model's (its config.json: cross-attention to 32 prompt tokens, batch 32; the prompts are
  random embeddings, which costs the same as real ones), each variant its own copy of the same weights.
  Windows are interleaved (fp32, bf16, bf16+CL, fp32, ...) so that other load on the machine falls on all
  alike; each window's wall time (perf_counter) and CPU time of this process (process_time) are recorded,
  and the median window of each is reported with its ratio to fp32. On a machine where other programs
  take most of the CPU the CPU-time figures are the reliable ones (one thread: CPU time is the work done).
Curve (--curve): the same short training run (pixelforge.train's loop: data, augmentation, EMA,
  validation) of a tiny model on a bundled set in fp32 and in bf16; its per-step losses are smoothed
  (a moving average over --smooth steps) and compared: mean absolute difference of the smoothed curves,
  relative to the fp32 curve's mean, and each run's final validation loss.

Usage:
    .venv/bin/python bench/train_precision.py --threads 1                 # speed, both configs
    .venv/bin/python bench/train_precision.py --threads 1 --curve         # plus the loss curves
    .venv/bin/python bench/train_precision.py --quick --curve             # smoke run, figures mean nothing
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

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
from pixelforge.precision import bf16_support

VARIANTS = ("fp32", "bf16", "bf16+channels_last")
SHAPES_TEXT = Path(pixelforge.__file__).parent / "assets" / "models" / "shapes-text" / "config.json"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configs(quick: bool) -> dict[str, tuple[DiffusionConfig, int]]:
    """name -> (model config, batch)."""
    default = DiffusionConfig(image_size=32, channels=3, num_classes=10)
    shapes = json.loads(SHAPES_TEXT.read_text())
    text = DiffusionConfig(**shapes["model"])
    if quick:
        return {"default": (DiffusionConfig(image_size=8, channels=3, num_classes=10, base_channels=8, channel_mult=(1, 2),
                                            num_res_blocks=1), 2)}
    return {"default": (default, 64), "shapes-text": (text, int(shapes["train"]["batch_size"]))}


def make_batch(config: DiffusionConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(0)
    s = config.image_size
    x = torch.rand(batch, config.channels, s, s, generator=gen) * 2 - 1  # (B, C, H, W) in [-1, 1]
    fields = {}
    if config.num_classes:
        fields["labels"] = torch.randint(0, config.num_classes, (batch,), generator=gen)  # (B,)
    if config.text_dim:
        fields["text"] = torch.randn(batch, config.text_dim, generator=gen)  # (B, D) pooled prompt
        fields["text_tokens"] = torch.randn(batch, config.text_tokens, config.text_dim, generator=gen)  # (B, T, D)
        fields["text_mask"] = torch.arange(config.text_tokens)[None] < torch.randint(4, 16, (batch, 1), generator=gen)
    return x.to(device), Cond(**fields).to(device)


def bench_speed(name: str, config: DiffusionConfig, batch: int, device: torch.device, args) -> dict:
    base = DiffusionModel(config, OptimConfig(), seed=0).to(device)
    x, cond = make_batch(config, batch, device)
    models, inputs = {}, {}
    for variant in VARIANTS:
        m = copy.deepcopy(base)
        set_precision(m, "fp32" if variant == "fp32" else "bf16")
        xin = x
        if variant.endswith("channels_last"):
            m = m.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        models[variant], inputs[variant] = m, xin
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    step = 0
    for window in range(args.warmup_windows + args.windows):
        for variant in VARIANTS:
            synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                figures = models[variant].training_step(inputs[variant], cond, step + i)
            synchronize(device)
            if window >= args.warmup_windows:
                wall[variant].append((time.perf_counter() - w0) / args.steps)
                cpu[variant].append((time.process_time() - c0) / args.steps)
            losses[variant] = figures["loss"]
        step += args.steps
    rows = []
    for variant in VARIANTS:
        w, c = statistics.median(wall[variant]), statistics.median(cpu[variant])
        rows.append({"variant": variant, "wall_s_per_step": w, "cpu_s_per_step": c, "images_per_s_wall": batch / w,
                     "images_per_s_cpu": batch / c, "windows_wall": wall[variant], "windows_cpu": cpu[variant],
                     "last_loss": losses[variant]})
    for row in rows:
        row["speedup_wall"] = rows[0]["wall_s_per_step"] / row["wall_s_per_step"]
        row["speedup_cpu"] = rows[0]["cpu_s_per_step"] / row["cpu_s_per_step"]
    params = sum(p.numel() for p in base.parameters())
    return {"config": name, "batch": batch, "parameters": params, "rows": rows}


def smoothed(values: list[float], k: int) -> list[float]:
    """Trailing moving average over up to k values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def bench_curve(args, device: torch.device) -> dict:
    from pixelforge.api import train

    runs = Path(tempfile.mkdtemp(prefix="train-precision-"))
    out = {"data": args.curve_data, "steps": args.curve_steps, "batch": args.curve_batch, "runs": {}}
    model_fields = {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1}
    for precision in ("fp32", "bf16"):
        c0, w0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the training's own lines stay out of --json's output
            result = train(args.curve_data, name=f"curve-{precision}", runs_dir=runs, device=str(device), progress=False,
                           steps=args.curve_steps, batch_size=args.curve_batch, image_size=args.curve_size,
                           log_every=args.curve_steps, val_every=args.curve_steps, sample_every=args.curve_steps,
                           ckpt_every=args.curve_steps, precision=precision, model_fields=model_fields)
        with open(result.run_dir / "metrics.csv", newline="") as f:
            val = [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]
        losses = [result.losses[s] for s in sorted(result.losses)]
        out["runs"][precision] = {"losses": losses, "final_val_loss": val[-1], "cpu_s": time.process_time() - c0,
                                  "wall_s": time.perf_counter() - w0}
    a = smoothed(out["runs"]["fp32"]["losses"], args.smooth)
    b = smoothed(out["runs"]["bf16"]["losses"], args.smooth)
    out["smooth"] = args.smooth
    out["mean_abs_diff_smoothed"] = statistics.fmean(abs(p - q) for p, q in zip(a, b))
    out["relative_to_fp32_mean"] = out["mean_abs_diff_smoothed"] / statistics.fmean(a)
    out["model_fields"] = model_fields
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the figures: 1)")
    p.add_argument("--windows", type=int, default=3, help="timed windows per variant, interleaved (default 3)")
    p.add_argument("--warmup-windows", type=int, default=1, help="untimed windows first (default 1)")
    p.add_argument("--steps", type=int, default=2, help="training steps per window (default 2)")
    p.add_argument("--configs", default=None, help="comma-separated subset of: default, shapes-text (none: only --curve)")
    p.add_argument("--curve", action="store_true", help="also the fp32 vs bf16 loss curves of a short run")
    p.add_argument("--curve-data", default="mnist", help="bundled set of the curve run (default mnist)")
    p.add_argument("--curve-steps", type=int, default=300)
    p.add_argument("--curve-batch", type=int, default=32)
    p.add_argument("--curve-size", type=int, default=16, help="image side of the curve run (default 16)")
    p.add_argument("--smooth", type=int, default=25, help="moving-average window of the curves (default 25)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, 1 window, 1 step, 6-step curves")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.warmup_windows, args.steps = 1, 0, 1
        args.curve_steps, args.curve_batch, args.curve_size, args.smooth, args.curve_data = 6, 4, 8, 3, "digits"
    for name in ("windows", "steps", "curve_steps", "curve_batch", "smooth"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    native, found = bf16_support(device)
    result = {"torch": torch.__version__, "pixelforge": pixelforge.__version__, "device": str(device),
              "threads": torch.get_num_threads(), "bf16_native": native, "bf16_found": found, "quick": args.quick,
              "windows": args.windows, "steps_per_window": args.steps, "speed": []}
    if args.quick and not args.json:
        print("[--quick smoke run: figures are not meaningful]")
    chosen = configs(args.quick)
    names = [] if args.configs == "none" else args.configs.split(",") if args.configs else list(chosen)
    for name in names:
        if name not in chosen:
            sys.exit(f"error: --configs {name!r}: choose from {', '.join(chosen)}")
        config, batch = chosen[name]
        result["speed"].append(bench_speed(name, config, batch, device, args))
        if not args.json:
            print_speed(result["speed"][-1])
    if args.curve:
        result["curve"] = bench_curve(args, device)
        if not args.json:
            print_curve(result["curve"])
    if args.json:
        print(json.dumps(result, indent=2))
    return result


def print_speed(r: dict) -> None:
    print(f"{r['config']}: batch {r['batch']}, {r['parameters'] / 1e6:.2f}M parameters")
    head = f"  {'variant':<20} {'img/s (cpu)':>11} {'x fp32':>7} {'img/s (wall)':>12} {'x fp32':>7} {'last loss':>10}"
    print(head)
    for row in r["rows"]:
        print(f"  {row['variant']:<20} {row['images_per_s_cpu']:11.1f} {row['speedup_cpu']:7.2f} "
              f"{row['images_per_s_wall']:12.1f} {row['speedup_wall']:7.2f} {row['last_loss']:10.4f}")


def print_curve(c: dict) -> None:
    print(f"curve: {c['data']} at {c.get('steps')} steps, batch {c['batch']}, {c['model_fields']}")
    for p, r in c["runs"].items():
        print(f"  {p:<5} final val loss {r['final_val_loss']:.4f}  last smoothed loss "
              f"{smoothed(r['losses'], c['smooth'])[-1]:.4f}  cpu {r['cpu_s']:.0f} s")
    print(f"  mean |fp32 - bf16| of the {c['smooth']}-step moving averages: {c['mean_abs_diff_smoothed']:.4f} "
          f"({c['relative_to_fp32_mean']:.1%} of the fp32 curve's mean)")


if __name__ == "__main__":
    main()
