"""The GAN on the bundled shapes set for a fixed number of steps, one setting changed per run: what holds it back,
without the noise a time budget adds (a budget buys fewer steps under load; a number of steps does not).

Each run is `pixelforge train shapes --model gan --steps STEPS --batch-size BATCH` with the planner's warm-up and
EMA for that many steps (pixelforge/train/budget.py plan_schedule), the width and augmentation a short budget
gets (base width 16, DiffAugment translation), bf16 where given, then the run's own arguments (`--run NAME ARGS`;
a later `--set` wins over an earlier one). Up to --workers runs train at once, one torch thread each. Then each
run is scored as bench/gan_budget.py scores a budget run: SAMPLES images from the EMA generator, Inception,
FID, KID and precision/recall (k = 3) against the set's first --real shapes, and a grid per run in --out.
`--reference` also scores 500 of the set's other shapes against the same ones: the ceiling of the figures; and
the same shapes with Gaussian noise, blurred and through the shipped autoencoder ae-32: what the figures punish.

Usage:
    .venv/bin/python bench/gan_steps.py --steps 1500 --run base "" --run lr1e-3 "--lr 1e-3" \\
        --run r1off "--set r1_gamma=0" --run noaug "--set diffaugment=" --reference
    .venv/bin/python bench/gan_steps.py --quick      # smoke run: figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# one budget run's helpers: a pixelforge call in a subprocess, the scorer, sampling through the public API, grids
from gan_budget import DATA, Scorer, class_grid, run_pixelforge, sample_run  # noqa: E402  (bench/gan_budget.py)
from time_to_quality import merge_results, read_metrics  # noqa: E402  (bench/time_to_quality.py)

from pixelforge.train.budget import GAN_SHORT_AUGMENT, plan_schedule  # noqa: E402

BASE_WIDTH = 16  # the width the budget planner picks for a short GAN run (docs/gan-budget.md)


def train_argv(name: str, steps: int, batch: int, runs_dir: Path, extra: list[str], precision: str,
               device: str = "auto") -> list[str]:
    """The `pixelforge` arguments of one run: the planner's schedule for `steps` at `batch`, then `extra`."""
    s = plan_schedule(steps, batch)
    return ["train", DATA, "--model", "gan", "--name", name, "--runs-dir", str(runs_dir), "--steps", str(steps),
            "--batch-size", str(batch), "--warmup", str(s["warmup_steps"]), "--ema-decay", str(s["ema_decay"]),
            "--ckpt-every", str(steps), "--sample-every", str(steps), "--val-every", str(steps), "--log-every", "25",
            "--precision", precision, "--device", device, "--set", f"base_channels={BASE_WIDTH}", "--set", f"diffaugment={GAN_SHORT_AUGMENT}",
            *extra]


def reference_sets(real: torch.Tensor, device: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Real shapes (N, 3, 32, 32) uint8 as they are and three ways a generator's output can miss them, each
    {name: (note, uint8 images)}: how far each moves the figures says what the figures reward. Gaussian noise of
    std 0.1 (on [-1, 1]) over the flat backgrounds, a 3x3 box blur, and the reconstructions of the shipped
    autoencoder ae-32 (what any generator that decodes through it can at best give)."""
    import torch.nn.functional as F

    import pixelforge

    x = real.float() / 127.5 - 1  # (N, 3, 32, 32) in [-1, 1]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    ae = pixelforge.load("ae-32", device=device).model
    recon = torch.cat([ae.reconstruct(x[i:i + 100]).cpu() for i in range(0, len(x), 100)])

    def u8(t: torch.Tensor) -> torch.Tensor:
        return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    return {"reference": ("", real), "reference+noise0.1": (", Gaussian noise of std 0.1", u8(x + 0.1 * noise)),
            "reference+blur3": (", a 3x3 box blur", u8(blurred)),
            "reference+ae-32": (", through the autoencoder ae-32", u8(recon))}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs=2, action="append", metavar=("NAME", "ARGS"), default=[],
                   help='a run: its name and its own `pixelforge train` arguments in one string ("" for none)')
    p.add_argument("--steps", type=int, default=1500, help="training steps of every run (default 1500)")
    p.add_argument("--batch", type=int, default=16, help="batch of every run unless its ARGS give one (default 16)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "auto"), help="default bf16")
    p.add_argument("--workers", type=int, default=2, help="runs trained at once, one thread each (default 2)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--real", type=int, default=1000, help="real images scored against, the set's first (default 1000)")
    p.add_argument("--reference", action="store_true", help="also score 500 of the set's other shapes: as they are, with noise, blurred and "
                   "through the autoencoder ae-32 (the ceiling of the figures and what they punish)")
    p.add_argument("--device", default="auto", help="where the runs train and are scored (default auto: CUDA when present)")
    p.add_argument("--work", default="/tmp/pixelforge-gan-steps", help="where the runs are kept")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gan_steps"), help="results.json and grids")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, 24 samples, 100 real; figures mean nothing")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.samples, a.real, a.run = 20, 24, 100, a.run or [["quick", ""]]
    if not a.run and not a.reference:
        p.error("give at least one --run NAME ARGS, or --reference")
    if len({name for name, _ in a.run}) != len(a.run):
        p.error("--run: every run needs its own name")
    for name, value in (("--steps", a.steps), ("--batch", a.batch), ("--workers", a.workers), ("--samples", a.samples)):
        if value < 1:
            p.error(f"{name} must be at least 1")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    runs_dir = work / "runs"
    out.mkdir(parents=True, exist_ok=True)
    print(f"GAN on {DATA}, {a.steps} steps per run, {len(a.run)} runs, {a.workers} at a time, one thread each"
          + ("  [--quick: figures mean nothing]" if a.quick else ""), flush=True)

    def train(run: list[str]) -> tuple[str, dict]:
        name, args = run
        argv_ = train_argv(name, a.steps, a.batch, runs_dir, shlex.split(args), a.precision, a.device)
        return name, {"command": ["pixelforge", *argv_], **run_pixelforge(argv_, threads=1)}

    with ThreadPoolExecutor(max(1, a.workers)) as pool:
        trained = dict(pool.map(train, a.run))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    scorer = Scorer(a.device, a.real)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": a.steps, "batch": a.batch,
            "samples": a.samples, "n_real": len(scorer.real), "extractor": "inception", "quick": a.quick}
    rows = {}
    if a.reference:
        from pixelforge.evaluate import load_real
        real = load_real(DATA, extractor=scorer.extractor, progress=False)
        for name, (note, images) in reference_sets(real[a.real:a.real + 500], a.device).items():
            rows[name] = {"name": name, "note": f"500 shapes after the first {a.real}{note}", **scorer(images)}
    for name, args in a.run:
        row = {"name": name, "args": args, **trained[name]}
        if row.pop("rc") != 0:
            print(f"{name}: failed: {row['error']}", flush=True)
        else:
            row.update(read_metrics(runs_dir / name))
            images, labels = sample_run(runs_dir / name, a.samples, a.device)
            row.update(scorer(images))
            class_grid(images, labels).save(out / f"{name}.png")
        rows[name] = row
    results = merge_results(out / "results.json", meta, rows)
    for name, r in rows.items():
        if "fid" in r:
            print(f"{name:24s} FID {r['fid']:7.1f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
                  f"pairs {r['pairs_covered']:.3f} ({r['backgrounds']} backgrounds, {r['colours']} colours)  "
                  f"{r.get('args', '')}")
    print(f"\nresults: {out / 'results.json'}" + ("  [--quick: figures mean nothing]" if a.quick else ""))
    return results


if __name__ == "__main__":
    main()
