"""Sampling speed of a diffusion model: images/s for each sampler at several step counts.

Method (bench/README.md has the long form): one untimed warm-up call, then for each sampler and
step count, `model.sample(n, cond, sampler=..., steps=..., guidance=...)` timed end to end (the
median of --repeats calls). A forward hook on the network counts the network evaluations (NFE)
and the images each one sees, so the table states what was run rather than what was expected.

The model is the bundled "mnist-diffusion" when pixelforge/assets/models/mnist-diffusion exists,
otherwise (or with --untrained) an untrained default DiffusionConfig model at 32x32 RGB with
10 classes: speed does not depend on the weights.

Usage:
    .venv/bin/python bench/sample_speed.py                 # n 64, steps 10 20 50, guidance 1
    .venv/bin/python bench/sample_speed.py --guidance 2    # classifier-free guidance: 2x batch per evaluation
    .venv/bin/python bench/sample_speed.py --untrained --json
    .venv/bin/python bench/sample_speed.py --quick         # seconds-long smoke run
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

from pixelforge.condition import Cond
from pixelforge.device import pick_device
from pixelforge.models.diffusion import DiffusionConfig, DiffusionModel
from pixelforge.models.optim import OptimConfig
from pixelforge.sampling import SAMPLERS
from pixelforge.train.runs import BUNDLED_MODELS_DIR

BUNDLED = "mnist-diffusion"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def load_model(untrained: bool, device_name: str) -> tuple[DiffusionModel, str]:
    """The bundled model if present (and not --untrained), else an untrained default-config model."""
    if not untrained and (BUNDLED_MODELS_DIR / BUNDLED / "config.json").is_file():
        model = pixelforge.load(BUNDLED, device=device_name).model
        if not isinstance(model, DiffusionModel):
            raise ValueError(f"bundled {BUNDLED!r} is a {type(model).__name__}, not a DiffusionModel; use --untrained")
        return model, f"bundled {BUNDLED}"
    config = DiffusionConfig(image_size=32, channels=3, num_classes=10)
    model = DiffusionModel(config, OptimConfig(), seed=0).to(pick_device(device_name))
    model.eval().requires_grad_(False)
    return model, "untrained DiffusionConfig defaults"


class EvalCounter:
    """Counts network calls (NFE) and the images they process, via a forward pre-hook on model.net."""

    def __init__(self, net: torch.nn.Module):
        self.calls = 0
        self.images = 0
        self._handle = net.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.calls += 1
        self.images += inputs[0].shape[0]  # x_in (B, C, H, W)

    def reset(self) -> None:
        self.calls = self.images = 0


def time_sampler(model, counter: EvalCounter, cond, *, n: int, sampler: str, steps: int, guidance: float, repeats: int) -> dict:
    device = model.device
    times = []
    for _ in range(repeats):
        counter.reset()
        synchronize(device)
        start = time.perf_counter()
        model.sample(n, cond, seed=0, sampler=sampler, steps=steps, guidance=guidance)
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "sampler": sampler,
        "steps": steps,
        "nfe": counter.calls,  # per sample() call: heun 2*steps - 1, the others steps
        "eval_batch": counter.images // max(counter.calls, 1),
        "seconds": seconds,
        "repeat_seconds": times,
        "images_per_s": n / seconds,
        "seconds_per_image": seconds / n,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="images per sample() call, one batch (default 64)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="step counts (default 10 20 50)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help=f"samplers to time (default all: {' '.join(SAMPLERS)})")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight; != 1 doubles the batch per evaluation (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per cell, median reported (default 1)")
    p.add_argument("--untrained", action="store_true", help=f"use an untrained default-config model even if {BUNDLED} is bundled")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: n 4, steps 2 and 3")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps = 4, [2, 3]
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown:
        p.error(f"unknown sampler(s) {', '.join(unknown)}; choose from: {', '.join(SAMPLERS)}")
    if args.n < 1 or args.repeats < 1 or min(args.steps) < 1:
        p.error("--n, --repeats and every --steps value must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model, model_name = load_model(args.untrained, args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    device = model.device
    cfg = model.config
    # Labels 0, 1, 2, ... cycling over the classes; an unconditional model takes none.
    cond = Cond(labels=torch.arange(args.n, device=device) % cfg.num_classes) if cfg.num_classes else None
    counter = EvalCounter(model.net)

    # Warm-up: first calls pay for allocator growth, kernel selection and lazy initialisation.
    model.sample(args.n, cond, seed=0, sampler=args.samplers[0], steps=min(args.steps), guidance=args.guidance)
    synchronize(device)

    rows = [
        time_sampler(model, counter, cond, n=args.n, sampler=s, steps=k, guidance=args.guidance, repeats=args.repeats)
        for s in args.samplers
        for k in args.steps
    ]
    result = {
        "torch": torch.__version__,
        "pixelforge": pixelforge.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "model": model_name,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "num_classes": cfg.num_classes,
        "n": args.n,
        "guidance": args.guidance,
        "guided": args.guidance != 1.0 and cfg.num_classes > 0,
        "schedule": "karras",
        "repeats": args.repeats,
        "quick": args.quick,
        "results": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result


def print_table(r: dict) -> None:
    dev = r["device"] + (f" ({r['device_name']})" if r["device_name"] else "")
    print("pixelforge sampling speed" + ("  [--quick smoke run: figures are not meaningful]" if r["quick"] else ""))
    print(f"  torch {r['torch']} | device {dev} | threads {r['threads']}")
    print(f"  model: {r['model']}, {r['image_size']}x{r['image_size']}x{r['channels']}, {r['num_classes']} classes")
    guidance = f"guidance {r['guidance']:g}"
    if r["guidance"] != 1.0:
        guidance += " (conditional + unconditional halves in one batch)" if r["guided"] else " (ignored: the model is unconditional)"
    print(f"  n {r['n']} images per call | {guidance} | karras schedule | median of {r['repeats']} call(s)")
    print()
    head = f"{'sampler':<10} {'steps':>5} {'NFE':>5} {'eval batch':>10} {'seconds':>9} {'images/s':>10} {'s/image':>9}"
    print(head)
    print("-" * len(head))
    for row in r["results"]:
        print(
            f"{row['sampler']:<10} {row['steps']:>5} {row['nfe']:>5} {row['eval_batch']:>10} "
            f"{row['seconds']:9.3f} {row['images_per_s']:10.2f} {row['seconds_per_image']:9.4f}"
        )


if __name__ == "__main__":
    main()
