"""What caching a latent model's training latents gives (models/autoencoder.py LatentCache): training steps of a
model in the shipped autoencoder ae-32's latents on a bundled set, with the cache (each image encoded once, the
state after the first pass over the set) against encoding every batch (what a latent run did before), timed
interleaved round by round in one process so that a changing load touches both alike. Also the one-time cost:
how long filling the cache for the whole set takes.

    python bench/latent_cache.py                                # a latent GAN as --minutes plans it, shapes
    python bench/latent_cache.py --model diffusion --batch 32   # latent diffusion
    python bench/latent_cache.py --quick                        # a smoke run: its figures mean nothing
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

from pixelforge.condition import Cond  # noqa: E402
from pixelforge.data import load_dataset, to_model  # noqa: E402
from pixelforge.device import pick_device  # noqa: E402
from pixelforge.models.family import set_precision  # noqa: E402
from pixelforge.runs import build_model, new_run_config  # noqa: E402
from pixelforge.runs.latent import load_frozen_parts  # noqa: E402
from pixelforge.train.budget import LATENT_GAN_DEPTH, LATENT_GAN_MBSTD  # noqa: E402

MODEL_FIELDS = {  # what a budget run on shapes in ae-32's latents trains (docs/gan-budget.md, docs/latent.md)
    "gan": {"latent": "ae-32", "base_channels": 64, "depth": LATENT_GAN_DEPTH, "mbstd_group": LATENT_GAN_MBSTD,
            "diffaugment": "translation"},
    "diffusion": {"latent": "ae-32", "base_channels": 32},
}


class EncodeEveryBatch:
    """The former path, in the cache's place: the whole batch through the encoder on every step."""

    encoded = 0

    def means(self, first_stage, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return first_stage.eval().encode(x.to(torch.float32))[0].float()


def interleaved_seconds(models: dict, batch, rounds: int, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds a training step of each model, per round: after an untimed step each (first allocations), `rounds`
    rounds of `steps` steps of one model then the next, so a load that changes during the run touches all alike.
    batch(i) gives the i-th step's (images, cond)."""
    seconds: dict[str, list[float]] = {way: [] for way in models}
    for model in models.values():
        model.training_step(*batch(0), 0)
    for r in range(rounds):
        for way, model in models.items():
            start = time.perf_counter()
            for i in range(1 + r * steps, 1 + (r + 1) * steps):
                model.training_step(*batch(i), i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[way].append((time.perf_counter() - start) / steps)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODEL_FIELDS), default="gan")
    p.add_argument("--data", default="shapes", help="a bundled set or a folder of images (default: shapes)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="timed steps per way per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16" if torch.backends.mkldnn.is_available() else "fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 steps at batch 8, 64 images cached")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps, a.batch = 1, 2, 8
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    load_before = os.getloadavg()

    cfg = new_run_config(a.data, model=a.model, image_size=32, model_fields=MODEL_FIELDS[a.model])
    models = {way: build_model(cfg, device) for way in ("cached", "every batch")}
    data = load_dataset(cfg.data, progress=False)
    images = to_model(data.images[: 64 if a.quick else len(data.images)], cfg.data)  # (N, C, H, W) in [-1, 1]
    labels = torch.as_tensor(data.labels[: len(images)]) if data.labels is not None else None
    for model in models.values():
        load_frozen_parts(model)
        set_precision(model, a.precision)
    models["every batch"]._latent_cache = EncodeEveryBatch()

    def batch(i: int) -> tuple[torch.Tensor, Cond]:  # the i-th batch of a pass over the set, wrapping round
        idx = torch.arange(i * a.batch, (i + 1) * a.batch) % len(images)
        return images[idx].to(device), Cond(labels=None if labels is None else labels[idx].to(device))

    # the one-time cost: one pass over the set, which fills the cache (the first step also fixes the latents' scale)
    cache = models["cached"]._latent_cache
    start = time.perf_counter()
    cache.means(models["cached"].autoencoder, images.to(device))
    fill_s = time.perf_counter() - start
    filled = cache.encoded
    seconds = interleaved_seconds(models, batch, a.rounds, a.steps, device)
    median = {way: statistics.median(s) for way, s in seconds.items()}
    result = {"model": a.model, "model_fields": MODEL_FIELDS[a.model], "data": a.data, "images": len(images),
              "batch": a.batch, "precision": a.precision, "threads": torch.get_num_threads(), "device": str(device),
              "fill_s": fill_s, "cached_images": len(cache), "encoded_in_steps": cache.encoded - filled,
              "s_per_step": median, "rounds_s_per_step": {w: [round(x, 4) for x in s] for w, s in seconds.items()},
              "speedup": median["every batch"] / median["cached"],
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "quick": a.quick}
    if a.json:
        print(json.dumps(result))
        return result
    print(f"{a.model} in ae-32's latents on {a.data} ({len(images)} images), batch {a.batch}, {a.precision}, "
          f"{torch.get_num_threads()} thread(s), {device}" + ("  [--quick: figures mean nothing]" if a.quick else ""))
    print(f"  filling the cache (every image encoded alone, once): {fill_s:.1f} s for {len(cache)} images; "
          f"images encoded in the timed steps after it: {result['encoded_in_steps']}")
    for way in models:
        print(f"  {way:12s} {median[way] * 1000:7.1f} ms/step  {a.batch / median[way]:7.1f} img/s   "
              f"(rounds: {result['rounds_s_per_step'][way]})")
    print(f"  cached / every batch: {result['speedup']:.2f}x the steps per second")
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in result['load_average_after'])}")
    return result


if __name__ == "__main__":
    main()
