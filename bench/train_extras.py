"""Training extras measured: torch.compile against eager for a diffusion training step, and background batch
workers (--workers) against none for the real training loop; the machine's load printed beside each figure.

compile: two copies of the same model (the same weights), one with its networks compiled as `--compile`
compiles them (pixelforge.train.compiled.compiled_networks, nn.Module.compile). The compiled copy's first training
step (tracing and code generation) is timed alone; then windows of a few steps each, eager and compiled in turn
(which goes first alternates), so the machine's other load falls on both alike. Each window's wall-clock and
process CPU seconds per step are kept; the median window of each gives the ratio (eager time / compiled time:
above 1, compiled is faster). With one thread (OMP_NUM_THREADS=1) the CPU time is the step's own work, which a
loaded machine does not inflate as it does the wall clock.

workers: pixelforge's training loop itself (pixelforge.train.loop.train) on a bundled set, `steps` steps, with
--workers 0 and N in turn, several rounds; the loop's own images/s (metrics.csv, one row over all steps, setup
excluded) per run. Also the preparation of one step's batch alone (indices, crop/flip augmentation, conditions)
against a whole training step, which bounds what workers can hide.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_extras.py --json
    .venv/bin/python bench/train_extras.py --quick           # seconds-long smoke run (compile skipped)
    .venv/bin/python bench/train_extras.py --device cuda --config default --batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixelforge.condition import Cond
from pixelforge.data import DataConfig
from pixelforge.device import pick_device
from pixelforge.models.diffusion import DiffusionConfig, DiffusionModel
from pixelforge.models.optim import OptimConfig
from pixelforge.runs.config import RunConfig, TrainConfig

# network sizes: the README's default UNet, and the tiny one the tests train
CONFIGS = {"default": {}, "tiny": {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1}}


def machine_load() -> dict:
    """The 1-minute load average, the core count and, where Linux reports it, CPU pressure (the share of the
    last 10 s in which some runnable task waited for a core)."""
    load = {"loadavg_1min": os.getloadavg()[0], "cores": os.cpu_count()}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]  # some avg10=.. avg60=.. avg300=.. total=..
        load["cpu_pressure_avg10_pct"] = float(some.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return load


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_compile(args, device: torch.device) -> dict:
    from pixelforge.train.compiled import compiled_networks

    config = DiffusionConfig(image_size=args.image_size, channels=3, num_classes=10, **CONFIGS[args.config])
    eager = DiffusionModel(config, OptimConfig(), seed=0).to(device)
    compiled = copy.deepcopy(eager)
    for _, net in compiled_networks(compiled):
        net.compile()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=gen) * 2 - 1).to(device)
    cond = Cond(labels=torch.randint(0, 10, (args.batch_size,), generator=gen).to(device))
    steps = {"eager": 0, "compiled": 0}
    models = {"eager": eager, "compiled": compiled}

    def run(name: str, count: int):
        def go():
            for _ in range(count):
                models[name].training_step(x, cond, steps[name])
                steps[name] += 1
        return go

    before = machine_load()
    first_wall, first_cpu = timed(run("compiled", 1), device)  # tracing and code generation, then one step
    eager_first = timed(run("eager", 1), device)
    windows: dict[str, list[tuple[float, float]]] = {"eager": [], "compiled": []}
    for i in range(args.windows):
        for name in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            wall, cpu = timed(run(name, args.steps), device)
            windows[name].append((wall / args.steps, cpu / args.steps))
    after = machine_load()
    median = {name: (statistics.median(w for w, _ in ws), statistics.median(c for _, c in ws)) for name, ws in windows.items()}
    return {
        "config": args.config, "batch_size": args.batch_size, "image_size": args.image_size,
        "networks": [name for name, _ in compiled_networks(compiled)],
        "first_compiled_step_s": {"wall": first_wall, "cpu": first_cpu},
        "first_eager_step_s": {"wall": eager_first[0], "cpu": eager_first[1]},
        "windows_s_per_step": {name: [{"wall": w, "cpu": c} for w, c in ws] for name, ws in windows.items()},
        "median_s_per_step": {name: {"wall": w, "cpu": c} for name, (w, c) in median.items()},
        "speedup_compiled_over_eager": {"wall": median["eager"][0] / median["compiled"][0],
                                        "cpu": median["eager"][1] / median["compiled"][1]},
        "load_before": before, "load_after": after,
    }


def workers_run_config(args) -> RunConfig:
    steps = args.loop_steps
    return RunConfig(
        family="diffusion",
        model={"image_size": 24, "channels": 1, "num_classes": 10, **CONFIGS["tiny"]},
        # mnist's 28x28 digits, a random 24x24 crop and a flip per image: the augmentation workers would hide
        data=DataConfig(source="mnist", image_size=24, channels=1, crop="random", hflip=True, val_fraction=0.05),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(steps=steps, batch_size=args.loop_batch, log_every=steps, val_every=10 * steps,
                          sample_every=10 * steps, ckpt_every=10 * steps, val_images=0, seed=0),
    )


def bench_workers(args, device: torch.device) -> dict:
    from pixelforge.train.loop import train

    cfg = workers_run_config(args)
    root = Path(tempfile.mkdtemp(prefix="pixelforge-workers-"))
    cache = root / "cache"
    counts = sorted({0, args.workers})
    rates: dict[int, list[float]] = {w: [] for w in counts}
    before = machine_load()
    with contextlib.redirect_stdout(sys.stderr):  # the loop's own lines; stdout keeps the figures (--json)
        train(cfg, root / "warm", device=str(device), progress=False, cache_dir=cache)  # prepares the data cache
    for r in range(args.rounds):
        for w in (counts if r % 2 == 0 else counts[::-1]):
            run_dir = root / f"w{w}-r{r}"
            with contextlib.redirect_stdout(sys.stderr):
                train(cfg, run_dir, device=str(device), progress=False, cache_dir=cache, workers=w)
            with open(run_dir / "metrics.csv", newline="") as f:
                rows = [row for row in csv.DictReader(f) if row.get("img_per_s")]
            rates[w].append(float(rows[-1]["img_per_s"]))
    after = machine_load()
    prep = bench_batch_preparation(cfg, device, cache)
    return {
        "data": f"{cfg.data.source} {cfg.data.image_size}x{cfg.data.image_size}, crop {cfg.data.crop}, hflip",
        "batch_size": cfg.train.batch_size, "steps": cfg.train.steps,
        "images_per_s": {str(w): v for w, v in rates.items()},
        "median_images_per_s": {str(w): statistics.median(v) for w, v in rates.items()},
        "ratio_workers_over_none": statistics.median(rates[args.workers]) / statistics.median(rates[0]),
        "batch_preparation": prep, "load_before": before, "load_after": after,
    }


def bench_batch_preparation(cfg: RunConfig, device: torch.device, cache: Path) -> dict:
    """CPU seconds of one step's batch (indices, augmentation, conditions), and of a training step of the model
    on it: what a worker takes off the training's path, against what stays on it."""
    from pixelforge.data import load_dataset, split_indices
    from pixelforge.runs.config import build_model
    from pixelforge.train.loop import _batch_indices, _Conditions

    data = load_dataset(cfg.data, cache_dir=cache, progress=False)
    train_idx, _ = split_indices(len(data), cfg.data.val_fraction, cfg.data.split_seed)
    model = build_model(cfg, device)
    conds = _Conditions(data, model, cache, False, cfg.data)

    def batch(step: int):
        idx = _batch_indices(train_idx, step, cfg.train.batch_size, cfg.train.seed)
        return conds.augmented(data, idx, cfg.data, torch.Generator(device=device).manual_seed(step), device, step, 0)

    prep = [timed(lambda s=s: batch(s), device)[1] for s in range(20)]
    indices = [timed(lambda s=s: _batch_indices(train_idx, s, cfg.train.batch_size, 0), device)[1] for s in range(20)]
    per_image = [timed(lambda s=s: per_image_indices(train_idx, s, cfg.train.batch_size, 0), device)[1] for s in range(20)]
    x, cond = batch(0)
    step = [timed(lambda s=s: model.training_step(x, cond, s), device)[1] for s in range(5)]
    return {"batch_cpu_s": statistics.median(prep), "training_step_cpu_s": statistics.median(step[1:]),
            "share_of_step": statistics.median(prep) / statistics.median(step[1:]),
            "indices_cpu_s": statistics.median(indices), "per_image_indices_cpu_s": statistics.median(per_image)}


def per_image_indices(train_idx: torch.Tensor, step: int, batch: int, seed: int) -> torch.Tensor:
    """A step's indices as the loop computed them before it permuted each epoch once: the epoch's permutation
    made again for every image (the reference the loop's one-per-epoch indices are timed against)."""
    from pixelforge.train.loop import _epoch_perm

    n = len(train_idx)
    return train_idx[torch.stack([_epoch_perm(n, seed, pos // n)[pos % n] for pos in range(step * batch, (step + 1) * batch)])]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=tuple(CONFIGS), default="tiny", help="the UNet compiled (default tiny)")
    p.add_argument("--batch-size", type=int, default=32, help="images per compiled/eager step (default 32)")
    p.add_argument("--image-size", type=int, default=16, help="image side of the compile comparison (default 16)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed window (default 3)")
    p.add_argument("--windows", type=int, default=4, help="timed windows of each (default 4)")
    p.add_argument("--workers", type=int, default=2, help="the worker count compared with none (default 2)")
    p.add_argument("--loop-steps", type=int, default=30, help="training-loop steps per workers run (default 30)")
    p.add_argument("--loop-batch", type=int, default=64, help="training-loop batch (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="workers rounds, each a run with and one without (default 3)")
    p.add_argument("--skip", choices=("compile", "workers"), action="append", default=[], help="leave a part out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, compile skipped")
    args = p.parse_args(argv)
    if args.quick:
        args.skip.append("compile")
        args.loop_steps, args.rounds, args.loop_batch = 4, 1, 16
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if "compile" not in args.skip:
        out["compile"] = bench_compile(args, device)
    if "workers" not in args.skip:
        out["workers"] = bench_workers(args, device)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"device {out['device']}, torch {out['torch']}, {out['threads']} thread(s)")
    if "compile" in out:
        c = out["compile"]
        print(f"compile ({c['config']} UNet, batch {c['batch_size']}, {c['image_size']}x{c['image_size']}): first compiled "
              f"step {c['first_compiled_step_s']['wall']:.1f} s wall / {c['first_compiled_step_s']['cpu']:.1f} s CPU; "
              f"eager {c['median_s_per_step']['eager']['cpu']:.3f} s CPU per step, compiled "
              f"{c['median_s_per_step']['compiled']['cpu']:.3f}: x{c['speedup_compiled_over_eager']['cpu']:.2f} (CPU), "
              f"x{c['speedup_compiled_over_eager']['wall']:.2f} (wall); load {c['load_before']} -> {c['load_after']}")
    if "workers" in out:
        w = out["workers"]
        print(f"workers ({w['data']}, batch {w['batch_size']}, {w['steps']} steps): images/s {w['median_images_per_s']} "
              f"(x{w['ratio_workers_over_none']:.2f}); one batch {w['batch_preparation']['batch_cpu_s'] * 1e3:.1f} ms CPU = "
              f"{w['batch_preparation']['share_of_step']:.1%} of a step (its indices {w['batch_preparation']['indices_cpu_s'] * 1e3:.2f} "
              f"ms; {w['batch_preparation']['per_image_indices_cpu_s'] * 1e3:.2f} ms a permutation per image); "
              f"load {w['load_before']} -> {w['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
