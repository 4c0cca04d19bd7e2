"""The cost of D's minibatch standard deviation: training-step time of the planner's latent GAN with and without it.

Both models (width 64, depth 3, DiffAugment translation, in the latents of the shipped autoencoder ae-32's
architecture with its weights left at their initialisation: only time is measured) train on the same 640 random
images in batches of 64 under bf16 autocast (fp32 where bf16 is not native), each image's latents cached after a
first pass as in a run. Then --rounds rounds, each of --steps steps of one model and then the other (interleaved,
so a load that changes during the run touches both); printed: the median seconds a step of each and their ratio.

Usage:
    .venv/bin/python bench/gan_mbstd_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from pixelforge.condition import Cond  # noqa: E402
from pixelforge.models import GANConfig, GANModel, OptimConfig  # noqa: E402
from pixelforge.precision import autocast, bf16_available  # noqa: E402

AE = ROOT / "pixelforge" / "assets" / "models" / "ae-32" / "config.json"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="steps of each model per round")
    p.add_argument("--group", type=int, default=4, help="mbstd_group of the model with it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = "bf16" if bf16_available(device) else "fp32"
    ae = json.loads(AE.read_text())["model"]
    models = {g: GANModel(GANConfig(image_size=32, channels=3, num_classes=6, base_channels=64, depth=3,
                                    diffaugment="translation", autoencoder=ae, mbstd_group=g), OptimConfig(lr=5e-4))
              for g in (0, args.group)}
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(640, 3, 32, 32, generator=gen) * 2 - 1  # (640, 3, 32, 32)
    labels = torch.randint(0, 6, (640,), generator=gen)

    def steps(model: GANModel, n: int, start: int) -> None:
        for i in range(start, start + n):
            j = i % 10
            with autocast(precision, device):
                model.training_step(data[j * 64:(j + 1) * 64], Cond(labels=labels[j * 64:(j + 1) * 64]), i)

    for model in models.values():
        steps(model, 10, 0)  # every image encoded once
    times: dict[int, list[float]] = {g: [] for g in models}
    for r in range(args.rounds):
        for g, model in models.items():
            t = time.perf_counter()
            steps(model, args.steps, 10 + r * args.steps)
            times[g].append((time.perf_counter() - t) / args.steps)
    median = {g: statistics.median(t) for g, t in times.items()}
    print(f"latent GAN training step, width 64, depth 3, batch 64, {precision}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    for g, t in times.items():
        print(f"  mbstd_group={g}: median {median[g] * 1000:.1f} ms a step (rounds: {', '.join(f'{x * 1000:.0f}' for x in t)})")
    print(f"  with / without: {median[args.group] / median[0]:.2f}x")
    return median


if __name__ == "__main__":
    main()
