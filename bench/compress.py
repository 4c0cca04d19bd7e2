"""Compressed variants against fp32 eager: size on disk, images/s, peak memory and FID.

Method: each variant (pixelforge.compression.VARIANTS: fp32 eager, ONNX Runtime fp32 and int8, bf16; and
"pruned", fp32 eager with --prune of every level's channels removed, compress/prune.py) is written once with
`compress_run`; --other NAME=RUN adds a run measured as it is (a pruned run after its fine-tune). Speed and memory come from `bench_run`: every measurement in a fresh
process (peak resident memory of that process, Python and libraries included), the variants interleaved
in each of --repeats rounds so a changing machine load touches them alike, the median images/s taken and
divided by fp32 eager's of the same run. FID: --n-fid images of every variant with the same seeds,
labels balanced over the classes, the same sampler and steps, against the held-out validation split of the
run's data set (the images training never saw), with the same extractor (the MNIST classifier for digits,
Inception otherwise).

--models takes bundled models, run names (in --runs-dir) and run folders of any family that compresses
(diffusion, GAN, VAE, VQ-VAE); a family without sampler steps samples in one network call per batch.

Usage:
    .venv/bin/python bench/compress.py                              # the bundled digit model
    .venv/bin/python bench/compress.py --models mnist-diffusion shapes-text --n-fid 500 --repeats 3
    .venv/bin/python bench/compress.py --models vae-mnist --runs-dir runs   # a trained VAE run
    .venv/bin/python bench/compress.py --quick                      # seconds-long smoke run
    .venv/bin/python bench/compress.py --variants fp32 pruned --prune 0.5 --other ft50=runs/ft50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

from pixelforge.compress.config import PRUNED_VARIANT, VARIANTS
from pixelforge.compression import bench_run
from pixelforge.data import DataConfig, load_dataset, split_indices
from pixelforge.metrics import feature_stats, frechet_distance
from pixelforge.metrics.evaluate import balanced_labels, extract_features, to_uint8
from pixelforge.metrics.features import load_extractor
from pixelforge.progress import image_bar


def held_out_features(g, extractor, device) -> tuple:
    """(mu, sigma, count) of the run's validation split: the images of its data set training never saw."""
    cfg = g.config.data
    data = load_dataset(DataConfig(source=cfg.source, image_size=cfg.image_size, channels=cfg.channels,
                                   val_fraction=0.0), progress=False)
    _, val = split_indices(len(data.images), cfg.val_fraction, cfg.split_seed)
    feats = extract_features(extractor, data.images[val])
    mu, sigma = feature_stats(feats)
    return mu, sigma, len(val)


def fid_of(run_dir: Path, extractor, real, *, n: int, steps: int | None, device: str) -> float:
    g = pixelforge.load(run_dir, device=device, moderation=None)
    bar, cb = image_bar(n, f"FID samples {run_dir.name}")
    options = {"steps": steps} if steps else {}
    images, _ = g.generate_tensor(n, labels=balanced_labels(n, g.num_classes), seed=0, callback=cb, **options)
    bar.close()
    mu, sigma = feature_stats(extract_features(extractor, to_uint8(images)))
    return float(frechet_distance(mu, sigma, real[0], real[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-diffusion"])
    p.add_argument("--n-speed", type=int, default=64, help="images timed per measurement")
    p.add_argument("--n-fid", type=int, default=500)
    p.add_argument("--steps", type=int, default=None, help="sampler steps for every variant (default: the run's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs-dir", default=None, help="where run names in --models are looked up (default ./runs)")
    p.add_argument("--work-dir", default="bench-compress", help="where the variants are written (kept)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the table here")
    p.add_argument("--quick", action="store_true", help="n 8, 2 steps, one round: a smoke run")
    p.add_argument("--variants", nargs="+", default=[*VARIANTS, PRUNED_VARIANT],
                   help=f"of {', '.join(VARIANTS)}, {PRUNED_VARIANT} (a diffusion UNet's)")
    p.add_argument("--prune", type=float, default=0.3, help=f"the {PRUNED_VARIANT} variant's share of channels removed")
    p.add_argument("--other", nargs="*", default=[], metavar="NAME=RUN",
                   help="runs measured as they are beside the variants, e.g. a pruned run after its fine-tune")
    a = p.parse_args()
    if any("=" not in item for item in a.other):
        p.error("--other takes NAME=RUN items")
    others = dict(item.split("=", 1) for item in a.other)
    if a.quick:
        a.n_speed, a.n_fid, a.steps, a.repeats = 8, 16, 2, 1
    load_before = os.getloadavg()
    results = {}
    for model in a.models:
        work = Path(a.work_dir) / Path(model).name  # a run folder's name: never the folder itself
        rows = bench_run(model, variants=tuple(a.variants), n=a.n_speed, steps=a.steps, repeats=a.repeats, work_dir=work,
                         device=a.device, runs_dir=a.runs_dir, prune=a.prune, other_runs=others)
        g = pixelforge.load(work / "fp32", device=a.device, moderation=None)
        extractor = load_extractor("auto", data_source=g.config.data.source, device=a.device)
        real = held_out_features(g, extractor, a.device)
        for r in rows:
            r["fid"] = fid_of(Path(r["dir"]), extractor, real, n=a.n_fid, steps=r["steps"], device=a.device)
        ref = rows[0]
        steps = f"{ref['steps']} steps" if ref["steps"] else "one network call per batch"
        print(f"\n{model} ({g.config.family}): {a.n_speed} images timed, {steps}, median of {a.repeats} interleaved rounds; "
              f"FID of {a.n_fid} samples vs {real[2]} held-out images ({extractor.name})")
        print("| variant | size MB | size vs fp32 | images/s | speed vs fp32 | peak MiB | FID | FID vs fp32 |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['bytes'] / 1e6:.2f} | {r['bytes'] / ref['bytes']:.2f} | {r['images_per_s']:.2f} | "
                  f"{r['ratio']:.2f} | {r['peak_mib']:.0f} | {r['fid']:.3f} | {r['fid'] / ref['fid']:.2f} |")
        results[model] = rows
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f}; {os.cpu_count()} CPUs")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
