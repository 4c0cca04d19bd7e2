"""A distilled few-step run against its teacher: FID at each sampler setting, the same seeds and labels.

Method: every variant (a run and its sampling options) draws --n images with seeds 0..n-1 and labels
balanced over the classes; FID against the held-out validation split of the teacher's data set (the images
training never saw), with the same extractor (the MNIST classifier for digits, Inception otherwise), as
bench/compress.py computes it (its held_out_features). Each variant's images are kept in --work-dir under a
name made of the run's weights hash and the options, so a rerun (another variant added, say) samples only
what is new. NFE: network evaluations per image (guidance doubles the batch, not the count).

Usage:
    .venv/bin/python bench/distill.py --teacher mnist-diffusion --student mnist-distilled --n 500
    .venv/bin/python bench/distill.py --teacher mnist-diffusion --only teacher-50   # one variant
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

import torch
from safetensors.torch import load_file, save_file

from pixelforge.data import DataConfig, load_dataset, split_indices
from pixelforge.metrics import feature_stats, frechet_distance
from pixelforge.metrics.evaluate import balanced_labels, extract_features, to_uint8
from pixelforge.metrics.features import load_extractor
from pixelforge.progress import image_bar
from pixelforge.runs.store import resolve_run, weights_hash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress import held_out_features  # noqa: E402  (bench/compress.py: one definition of the held-out statistics)


def variants(teacher: str, student: str | None, steps_out: int) -> list[tuple[str, str, dict, int]]:
    """(name, run, sampling options, NFE) of every variant measured."""
    rows = [
        ("teacher-50", teacher, {"sampler": "heun", "steps": 50, "schedule": "karras"}, 99),
        (f"teacher-ddim-{steps_out}", teacher, {"sampler": "ddim", "steps": steps_out, "schedule": "karras"}, steps_out),
        (f"teacher-ddim-{steps_out}-nested", teacher, {"sampler": "ddim", "steps": steps_out, "schedule": "nested"},
         steps_out),
        # the distillation's teacher (span 2): Heun over the nested grid of twice the steps, the student's ceiling
        (f"teacher-heun-{2 * steps_out}-nested", teacher, {"sampler": "heun", "steps": 2 * steps_out, "schedule": "nested"},
         4 * steps_out - 1),
    ]
    if student:
        rows.append((f"distilled-{steps_out}", student, {}, steps_out))
    return rows


def images_of(run: str, options: dict, n: int, work: Path, device: str):
    """(n, C, H, W) uint8 images of `run` with `options`, seeds 0..n-1, balanced labels; kept in work."""
    key = hashlib.sha256(json.dumps([weights_hash(resolve_run(run)), sorted(options.items()), n]).encode()).hexdigest()[:16]
    path = work / f"{Path(run).name}-{key}.safetensors"
    if path.is_file():
        return load_file(path)["images"], 0.0
    g = pixelforge.load(run, device=device, moderation=None)
    bar, cb = image_bar(n, f"{Path(run).name} {options or 'defaults'}")
    t0 = time.perf_counter()
    images, _ = g.generate_tensor(n, labels=balanced_labels(n, g.num_classes), seed=0, callback=cb, **options)
    seconds = time.perf_counter() - t0
    bar.close()
    images = to_uint8(images)
    work.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(path))
    return images, seconds


def real_floor(g, extractor, real, n: int) -> float:
    """FID of n real digits drawn from the training split (seed 0; the set comes in class order) against the
    held-out ones: about what a model as good as the data would score at this n, the figures' floor."""
    cfg = g.config.data
    data = load_dataset(DataConfig(source=cfg.source, image_size=cfg.image_size, channels=cfg.channels,
                                   val_fraction=0.0), progress=False)
    train, _ = split_indices(len(data.images), cfg.val_fraction, cfg.split_seed)
    drawn = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]]
    mu, sigma = feature_stats(extract_features(extractor, data.images[drawn]))
    return float(frechet_distance(mu, sigma, real[0], real[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="mnist-diffusion")
    p.add_argument("--student", default=None, help="the distilled run (pixelforge distill TEACHER -o STUDENT)")
    p.add_argument("--steps-out", type=int, default=4)
    p.add_argument("--n", type=int, default=500, help="images per variant")
    p.add_argument("--only", nargs="*", default=None, help="measure these variants alone")
    p.add_argument("--work-dir", default="bench-distill", help="where the images are kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the table here")
    a = p.parse_args()
    load_before = os.getloadavg()
    work = Path(a.work_dir)
    g = pixelforge.load(a.teacher, device=a.device, moderation=None)
    extractor = load_extractor("auto", data_source=g.config.data.source, device=a.device)
    real = held_out_features(g, extractor, a.device)
    rows = []
    for name, run, options, nfe in variants(a.teacher, a.student, a.steps_out):
        if a.only and name not in a.only:
            continue
        images, seconds = images_of(run, options, a.n, work, a.device)
        mu, sigma = feature_stats(extract_features(extractor, images))
        rows.append({"variant": name, "run": run, "options": options, "nfe": nfe,
                     "fid": float(frechet_distance(mu, sigma, real[0], real[1])), "seconds": seconds})
    floor = real_floor(g, extractor, real, a.n)
    print(f"\nFID of {a.n} samples (seeds 0-{a.n - 1}, balanced labels) vs {real[2]} held-out images ({extractor.name})")
    print("| variant | run | options | NFE | FID | FID vs teacher-50 |")
    print("|---|---|---|---|---|---|")
    ref = next((r["fid"] for r in rows if r["variant"] == "teacher-50"), None)
    for r in rows:
        ratio = f"{r['fid'] / ref:.2f}" if ref else "-"
        print(f"| {r['variant']} | {r['run']} | {r['options'] or 'run defaults'} | {r['nfe']} | {r['fid']:.3f} | {ratio} |")
    print(f"| real digits | {a.n} of the training split | - | - | {floor:.3f} | - |")
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f}; {os.cpu_count()} CPUs")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "real_floor": floor, "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
