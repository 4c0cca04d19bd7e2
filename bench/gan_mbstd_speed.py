"""The cost of D's minibatch standard deviation: training-step time of the planner's latent GAN with and without it.

Both models are what a budget run on shapes in ae-32's latents trains (bench/latent_cache.py MODEL_FIELDS: width
64, depth 3, DiffAugment translation), one with mbstd_group 0 and one with --group, on the shapes set with every
image's latents cached first, as in a run after its first pass. Then --rounds rounds, each of --steps steps of one
model and then the other (latent_cache.interleaved_seconds: a load that changes during the run touches both);
printed: the median seconds a step of each and their ratio.

Usage:
    .venv/bin/python bench/gan_mbstd_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for _p in (str(BENCH.parent), str(BENCH)):  # run from a checkout without `pip install -e .`; sibling bench modules
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from latent_cache import MODEL_FIELDS, interleaved_seconds  # noqa: E402  (bench/latent_cache.py)
from pixelforge.condition import Cond  # noqa: E402
from pixelforge.data import load_dataset, to_model  # noqa: E402
from pixelforge.device import pick_device  # noqa: E402
from pixelforge.models.family import set_precision  # noqa: E402
from pixelforge.runs import build_model, new_run_config  # noqa: E402
from pixelforge.runs.latent import load_frozen_parts  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="steps of each model per round")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--group", type=int, default=4, help="mbstd_group of the model with it")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16" if torch.backends.mkldnn.is_available() else "fp32")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    models = {}
    for g in (0, a.group):
        cfg = new_run_config("shapes", model="gan", image_size=32, model_fields={**MODEL_FIELDS["gan"], "mbstd_group": g})
        models[g] = build_model(cfg, device)
        load_frozen_parts(models[g])
        set_precision(models[g], a.precision)
    data = load_dataset(cfg.data, progress=False)
    images = to_model(data.images, cfg.data)  # (N, 3, 32, 32) in [-1, 1]
    labels = torch.as_tensor(data.labels)
    for model in models.values():  # every image's latents cached, as after a run's first pass
        model._latent_cache.means(model.autoencoder, images.to(device))

    def batch(i: int) -> tuple[torch.Tensor, Cond]:  # the i-th batch of a pass over the set, wrapping round
        idx = torch.arange(i * a.batch, (i + 1) * a.batch) % len(images)
        return images[idx].to(device), Cond(labels=labels[idx].to(device))

    seconds = interleaved_seconds(models, batch, a.rounds, a.steps, device)
    median = {g: statistics.median(s) for g, s in seconds.items()}
    print(f"latent GAN training step on shapes, width 64, depth 3, batch {a.batch}, {a.precision}, "
          f"{torch.get_num_threads()} thread(s), {device}, {a.rounds} interleaved rounds of {a.steps} steps")
    for g, s in seconds.items():
        print(f"  mbstd_group={g}: median {median[g] * 1000:.1f} ms a step (rounds: {', '.join(f'{x * 1000:.0f}' for x in s)})")
    print(f"  with / without: {median[a.group] / median[0]:.2f}x")
    return median


if __name__ == "__main__":
    main()
