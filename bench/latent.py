"""Latent against pixel diffusion (docs/latent.md): an autoencoder trained on a 32x32 RGB set for a few minutes
and its PSNR and SSIM on the held-out images, then the training images/s of a diffusion step in its latents
and of one in pixel space, the same UNet fields for both, timed interleaved in one process so that a changing
load touches both alike.

    python bench/latent.py                                  # shapes at 32x32, a 4-minute autoencoder
    python bench/latent.py --data emoji --ae-minutes 8
    python bench/latent.py --ae-run RUN                     # time against an autoencoder run already trained
    python bench/latent.py --quick                          # a smoke run: its figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pixelforge import api  # noqa: E402
from pixelforge.condition import Cond  # noqa: E402
from pixelforge.data import load_dataset, to_model  # noqa: E402
from pixelforge.evaluate import evaluate_reconstruction  # noqa: E402
from pixelforge.models.limits import parameter_count  # noqa: E402
from pixelforge.runs import build_model, new_run_config  # noqa: E402
from pixelforge.runs.latent import load_frozen_parts  # noqa: E402
from pixelforge.device import pick_device  # noqa: E402


def train_autoencoder(a) -> Path:
    """An autoencoder run trained for a.ae_minutes of wall-clock time (it checkpoints and stops)."""
    fields = {"base_channels": a.ae_base_channels}
    result = api.train(a.data, name=a.ae_name, runs_dir=a.runs_dir, device=a.device, model="autoencoder",
                       image_size=a.image_size, labels=False, steps=10**6, batch_size=a.batch_size,
                       max_minutes=a.ae_minutes, model_fields=fields, progress=not a.json)
    return result.run_dir


def time_steps(models: dict, x: torch.Tensor, *, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each model, `steps` steps per model per round, the models taking turns."""
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # one untimed step each: first allocations, the latent scale
        model.training_step(x, Cond(), 0)
    for r in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for i in range(steps):
                model.training_step(x, Cond(), 1 + r * steps + i)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            seconds[name].append((time.perf_counter() - start) / steps)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="shapes", help="a bundled set or a folder of images (default: shapes)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ae-minutes", type=float, default=4.0, help="wall-clock minutes of autoencoder training")
    p.add_argument("--ae-base-channels", type=int, default=32, help="the autoencoder's width")
    p.add_argument("--ae-run", default=None, help="an autoencoder run already trained (skips its training)")
    p.add_argument("--ae-name", default="bench-latent-ae", help="the name of the autoencoder run trained here")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--base-channels", type=int, default=32, help="the UNet width of both diffusion models")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="a smoke run (0.2 minutes of autoencoder, 1 round)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.ae_minutes, a.rounds, a.steps, a.batch_size = 0.2, 1, 1, 8
    load_before = os.getloadavg()

    ae_dir = Path(a.ae_run) if a.ae_run else train_autoencoder(a)
    reconstruction = evaluate_reconstruction(str(ae_dir), device=a.device, progress=not a.json)

    shape = {"base_channels": a.base_channels}
    configs = {
        "pixel": new_run_config(a.data, model="diffusion", image_size=a.image_size, labels=False, model_fields=shape),
        "latent": new_run_config(a.data, model="diffusion", image_size=a.image_size, labels=False,
                                 model_fields={**shape, "latent": str(ae_dir)}),
    }
    device = pick_device(a.device)
    models = {name: build_model(cfg, device) for name, cfg in configs.items()}
    load_frozen_parts(models["latent"])
    data = load_dataset(configs["pixel"].data, progress=False)
    x = to_model(data.images[: a.batch_size], configs["pixel"].data).to(device)  # (B, C, H, W) in [-1, 1]
    seconds = time_steps(models, x, rounds=a.rounds, steps=a.steps)
    load_after = os.getloadavg()

    rows = {}
    for name, model in models.items():
        median = statistics.median(seconds[name])
        trained = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("autoencoder."))
        rows[name] = {"img_per_s": a.batch_size / median, "s_per_step": median, "net_shape": list(model.net_shape),
                      "trained_parameters": trained, "parameters": parameter_count(model),
                      "rounds_s_per_step": [round(s, 4) for s in seconds[name]]}
    ratio = rows["latent"]["img_per_s"] / rows["pixel"]["img_per_s"]
    result = {"data": a.data, "image_size": a.image_size, "autoencoder": str(ae_dir),
              "reconstruction": reconstruction, "diffusion": rows, "latent_over_pixel": ratio,
              "batch_size": a.batch_size, "threads": torch.get_num_threads(), "device": str(device),
              "load_average_before": load_before, "load_average_after": load_after}
    if a.json:
        print(json.dumps(result))
        return 0
    ssim = "n/a" if reconstruction["ssim"] is None else f"{reconstruction['ssim']:.4f}"
    print(f"autoencoder {ae_dir}: held-out PSNR {reconstruction['psnr']:.2f} dB, SSIM {ssim} "
          f"({reconstruction['n']} images)")
    print(f"diffusion training, batch {a.batch_size}, {torch.get_num_threads()} thread(s), UNet base {a.base_channels}:")
    for name, row in rows.items():
        print(f"  {name:6s} net input {'x'.join(map(str, row['net_shape']))}: {row['img_per_s']:.1f} img/s "
              f"({row['trained_parameters']:,} trained parameters; per round {row['rounds_s_per_step']} s/step)")
    print(f"  latent / pixel: {ratio:.2f}x")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
