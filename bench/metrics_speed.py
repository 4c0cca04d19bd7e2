"""Evaluation speed: feature-extraction images/s per extractor, and the time to evaluate 10,000 samples.

Method (bench/README.md has the long form):
1. Extraction rate. Each available extractor (the shipped MNIST classifier; the FID Inception
   network when its weights are installed) is loaded, warmed up untimed, then timed on
   --domain-images / --inception-images bundled MNIST digits (batch --batch-size, as evaluation uses).
2. Evaluation, measured. `evaluate_images` on --n-fake fake images against --n-real real digits with
   the MNIST classifier and a cold real-statistics cache, timed end to end; the extractor's
   `features` and the metric functions are wrapped with timers for the split. By default the fake
   images are stand-ins (real digits plus Gaussian noise, sigma 16): their figures are meaningless
   and sampling time is not included. --generate samples them from the bundled model instead and
   times that separately (slow on a CPU).
3. Evaluation with Inception, extrapolated features plus measured metrics: its feature time is
   (n_fake + n_real) / the rate measured in step 1, not measured; its metric time is measured on
   random stand-in features of Inception's shape (2048-d; metric cost depends on shapes only).

Usage:
    .venv/bin/python bench/metrics_speed.py                # 10,000 stand-in fakes vs 5,000 real
    .venv/bin/python bench/metrics_speed.py --json > metrics_speed.json
    .venv/bin/python bench/metrics_speed.py --generate     # fakes from the bundled model (slow)
    .venv/bin/python bench/metrics_speed.py --quick        # smoke run; figures are not meaningful
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

import pixelforge.metrics.evaluate as mev
from pixelforge.data.bundled import load_bundled
from pixelforge.device import pick_device
from pixelforge.metrics.evaluate import EvalOptions, balanced_labels, compute_figures, evaluate_images, to_uint8
from pixelforge.metrics.features import ExtractorNotAvailable, load_extractor

BUNDLED_MODEL = "mnist-diffusion"
STAND_IN_SIGMA = 16.0
FULL_SIZES = {"domain_images": 2000, "inception_images": 32, "n_fake": 10_000, "n_real": 5000,
              "kid_subsets": EvalOptions.kid_subsets}
QUICK_SIZES = {"domain_images": 500, "inception_images": 4, "n_fake": 1000, "n_real": 500, "kid_subsets": 10}
# Metric functions evaluate_images calls, by the name it imports them under -> the row they count in.
METRIC_PARTS = {
    "feature_stats": "FID",
    "frechet_distance": "FID",
    "kernel_inception_distance": "KID",
    "precision_recall": "precision/recall",
    "inception_score_from_logits": "IS",
}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def timed_metrics(totals: dict):
    """Wrap the metric functions pixelforge.metrics.evaluate calls with timers adding into totals
    (seconds per row of METRIC_PARTS); the originals are put back on exit."""
    originals = {name: getattr(mev, name) for name in METRIC_PARTS}

    def wrap(fn, part):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[part] = totals.get(part, 0.0) + time.perf_counter() - start
        return timed

    try:
        for name, part in METRIC_PARTS.items():
            setattr(mev, name, wrap(originals[name], part))
        yield totals
    finally:
        for name, fn in originals.items():
            setattr(mev, name, fn)


def extraction_rate(extractor, images: torch.Tensor, *, batch_size: int, warmup: torch.Tensor) -> dict:
    """Untimed warm-up (lazy initialisation, TorchScript profiling runs), then one timed pass."""
    for _ in range(2):
        extractor.features(warmup, batch_size=batch_size)
    synchronize(extractor.device)
    start = time.perf_counter()
    extractor.features(images, batch_size=batch_size)
    synchronize(extractor.device)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds}


def stand_in_fakes(real: torch.Tensor, n: int) -> torch.Tensor:
    """n real digits (cycling through the set) plus Gaussian pixel noise, seed 0: images of the
    right kind and size at no sampling cost."""
    idx = torch.arange(n) % len(real)
    noise = torch.randn((n, *real.shape[1:]), generator=torch.Generator().manual_seed(0))
    return (real[idx].float() + STAND_IN_SIGMA * noise).round().clamp(0, 255).to(torch.uint8)


def generated_fakes(n: int, device: str, steps: int | None, batch_size: int) -> tuple[torch.Tensor, dict]:
    """n images from the bundled model, labels balanced over its classes, and how long they took."""
    g = pixelforge.load(BUNDLED_MODEL, device=device)
    options = {"steps": steps} if steps is not None and "steps" in g.sample_options else {}
    start = time.perf_counter()
    images, settings = g.generate_tensor(n, labels=balanced_labels(n, g.num_classes), seed=0,
                                         batch_size=batch_size, **options)
    seconds = time.perf_counter() - start
    used = {k: settings[0][k] for k in g.sample_options if k in settings[0]}
    return to_uint8(images), {"model": BUNDLED_MODEL, "options": used, "images": n, "seconds": seconds,
                              "images_per_s": n / seconds}


def measured_evaluation(fake: torch.Tensor, real: torch.Tensor, extractor, options: EvalOptions) -> dict:
    """evaluate_images end to end with a cold real-statistics cache, split into parts by timers."""
    feature_seconds = {"features, real": 0.0, "features, fake": 0.0}
    features = extractor.features

    def timed_features(images, **kwargs):
        start = time.perf_counter()
        try:
            return features(images, **kwargs)
        finally:
            # real_features hands evaluate_images' `real` tensor straight to the extractor.
            feature_seconds["features, real" if images is real else "features, fake"] += time.perf_counter() - start

    extractor.features = timed_features  # this instance only
    metric_seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as cache, timed_metrics(metric_seconds):
            start = time.perf_counter()
            figures = evaluate_images(fake, real, extractor, options=options, cache_dir=cache)
            synchronize(extractor.device)
            total = time.perf_counter() - start
    finally:
        del extractor.features
    parts = {**feature_seconds, **metric_seconds}
    parts["other (hashing, cache write)"] = total - sum(parts.values())
    return {"parts": parts, "total_s": total, "feature_s": sum(feature_seconds.values()),
            "metric_s": sum(metric_seconds.values()), "figures": {k: figures[k] for k in ("fid", "kid", "is")}}


def inception_metric_time(n_fake: int, n_real: int, dim: int, options: EvalOptions) -> dict:
    """compute_figures on random non-negative features of shape (n, dim): the metric cost of an
    Inception evaluation (matrix products and decompositions whose cost depends on shapes only)."""
    rng = np.random.default_rng(0)
    fake = np.abs(rng.standard_normal((n_fake, dim)))
    real = np.abs(rng.standard_normal((n_real, dim)))
    seconds: dict[str, float] = {}
    with timed_metrics(seconds):
        start = time.perf_counter()
        compute_figures(fake, real, options=options)
        total = time.perf_counter() - start
    return {"parts": seconds, "metric_s": total}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain-images", type=int, default=None, help="images timed with the MNIST classifier (default 2000)")
    p.add_argument("--inception-images", type=int, default=None, help="images timed with Inception (default 32)")
    p.add_argument("--n-fake", type=int, default=None, help="fake images in the evaluation (default 10000)")
    p.add_argument("--n-real", type=int, default=None, help="real digits in the evaluation, at most 5000 (default 5000)")
    p.add_argument("--kid-subsets", type=int, default=None,
                   help=f"KID subsets (default {EvalOptions.kid_subsets}, as evaluate uses)")
    p.add_argument("--batch-size", type=int, default=EvalOptions.batch_size, help="extraction batch (default 64)")
    p.add_argument("--generate", action="store_true",
                   help=f"sample the fake images from the bundled {BUNDLED_MODEL} (timed) instead of stand-ins")
    p.add_argument("--gen-steps", type=int, default=None, help="with --generate: sampler steps (default: the model's)")
    p.add_argument("--no-inception", action="store_true", help="skip the Inception rows")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 500 domain and 4 Inception images, 1000 fake vs 500 real, 10 KID subsets "
                        "(sizes given explicitly still apply)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    # Sizes not given on the command line: the full run's, or --quick's smaller ones.
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.domain_images, args.inception_images, args.kid_subsets, args.batch_size) < 1:
        p.error("--domain-images, --inception-images, --kid-subsets and --batch-size must be at least 1")
    if args.n_fake < 10 or not 2 <= args.n_real <= 5000:
        p.error("--n-fake must be at least 10 (one per IS split) and --n-real between 2 and 5000 (the bundled digits)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    options = EvalOptions(kid_subsets=args.kid_subsets, batch_size=args.batch_size)
    digits = load_bundled("mnist").images  # (5000, 1, 28, 28) uint8, sorted by class
    digits = digits[torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))]

    extractors = []
    domain = load_extractor("mnist-classifier", device=device)
    extractors.append({"key": "mnist-classifier", "name": domain.name, "dim": domain.dim,
                       **extraction_rate(domain, digits[:args.domain_images], batch_size=args.batch_size,
                                         warmup=digits[:args.batch_size])})
    inception = None
    if not args.no_inception:
        try:
            inception = load_extractor("inception", device=device)
        except ExtractorNotAvailable as e:
            extractors.append({"key": "inception", "name": None, "unavailable": str(e).splitlines()[0]})
        else:
            extractors.append({"key": "inception", "name": inception.name, "dim": inception.dim,
                               **extraction_rate(inception, digits[:args.inception_images], batch_size=args.batch_size,
                                                 warmup=digits[:2])})

    real = digits[:args.n_real]
    generation = None
    if args.generate:
        fake, generation = generated_fakes(args.n_fake, args.device, args.gen_steps, args.batch_size)
        fake_source = f"sampled from the bundled {BUNDLED_MODEL} ({generation['options']}); sampling timed separately"
    else:
        fake = stand_in_fakes(digits, args.n_fake)
        fake_source = (f"stand-ins: real digits + Gaussian noise (sigma {STAND_IN_SIGMA:g}); sampling not included, "
                       "figures meaningless")
    domain_eval = {"extractor": domain.name, "measured": True, **measured_evaluation(fake, real, domain, options)}
    if generation is not None:
        domain_eval["with_generation_s"] = domain_eval["total_s"] + generation["seconds"]

    inception_eval = None
    rate = next((e.get("images_per_s") for e in extractors if e["key"] == "inception"), None)
    if rate:
        metrics = inception_metric_time(args.n_fake, args.n_real, inception.dim, options)
        feature_s = (args.n_fake + args.n_real) / rate
        inception_eval = {
            "extractor": inception.name,
            "measured": False,
            "feature_s_extrapolated": feature_s,
            "feature_note": f"({args.n_fake} + {args.n_real}) images / {rate:.2f} images/s measured on "
                            f"{args.inception_images} images: extrapolated, not measured",
            "metric_s_measured": metrics["metric_s"],
            "metric_parts": metrics["parts"],
            "total_s": feature_s + metrics["metric_s"],
        }

    result = {
        "torch": torch.__version__,
        "pixelforge": pixelforge.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        # KID draws subsets of at most the smaller set's size.
        "eval_options": {"kid_subsets": options.kid_subsets,
                         "kid_subset_size": min(options.kid_subset_size, args.n_fake, args.n_real),
                         "pr_k": options.pr_k, "is_splits": options.is_splits},
        "quick": args.quick,
        "extraction": extractors,
        "n_fake": args.n_fake,
        "n_real": args.n_real,
        "fake_images": fake_source,
        "generation": generation,
        "evaluation_domain": domain_eval,
        "evaluation_inception": inception_eval,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result


def print_table(r: dict) -> None:
    dev = r["device"] + (f" ({r['device_name']})" if r["device_name"] else "")
    print("pixelforge evaluation speed" + ("  [--quick smoke run: figures are not meaningful]" if r["quick"] else ""))
    print(f"  torch {r['torch']} | device {dev} | threads {r['threads']} | extraction batch {r['batch_size']}")
    print()
    print("Feature extraction (measured)")
    head = f"{'extractor':<58} {'dim':>5} {'images':>7} {'seconds':>9} {'images/s':>10}"
    print(head)
    print("-" * len(head))
    for e in r["extraction"]:
        if e.get("unavailable"):
            print(f"{e['key']:<58} not available: {e['unavailable']}")
            continue
        print(f"{e['name']:<58} {e['dim']:>5} {e['images']:>7} {e['seconds']:>9.3f} {e['images_per_s']:>10.1f}")
    print()

    d = r["evaluation_domain"]
    o = r["eval_options"]
    print(f"Evaluation of {r['n_fake']} fake vs {r['n_real']} real digits, {d['extractor']} (measured, cold cache)")
    print(f"  fake images: {r['fake_images']}")
    print(f"  KID {o['kid_subsets']} subsets x {o['kid_subset_size']} | precision/recall k {o['pr_k']} | "
          f"IS {o['is_splits']} splits")
    head = f"{'part':<34} {'seconds':>9}"
    print(head)
    print("-" * len(head))
    if r["generation"]:
        g = r["generation"]
        print(f"{'sampling (not part of evaluate)':<34} {g['seconds']:>9.2f}   {g['images_per_s']:.1f} images/s")
    for part, s in d["parts"].items():
        note = "   paid once per data set and extractor, then cached" if part == "features, real" else ""
        print(f"{part:<34} {s:>9.2f}{note}")
    print(f"{'= features':<34} {d['feature_s']:>9.2f}")
    print(f"{'= metrics':<34} {d['metric_s']:>9.2f}")
    print(f"{'= evaluate_images total':<34} {d['total_s']:>9.2f}")
    if "with_generation_s" in d:
        print(f"{'= with sampling':<34} {d['with_generation_s']:>9.2f}")
    print()

    i = r["evaluation_inception"]
    if i is None:
        print("Evaluation with Inception: not estimated (weights not installed, or --no-inception)")
        return
    print(f"Evaluation of {r['n_fake']} fake vs {r['n_real']} real with {i['extractor']}: EXTRAPOLATED features")
    print(f"  features: {i['feature_note']}")
    print("  metrics: measured on random stand-in features of Inception's shape (2048-d)")
    head = f"{'part':<34} {'seconds':>9}"
    print(head)
    print("-" * len(head))
    print(f"{'features (extrapolated)':<34} {i['feature_s_extrapolated']:>9.0f}   = {i['feature_s_extrapolated'] / 3600:.2f} h")
    for part, s in i["metric_parts"].items():
        print(f"{part + ' (measured)':<34} {s:>9.2f}")
    print(f"{'= total (mostly extrapolated)':<34} {i['total_s']:>9.0f}   = {i['total_s'] / 3600:.2f} h")


if __name__ == "__main__":
    main()
