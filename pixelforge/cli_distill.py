"""`pixelforge distill`: a thin shell over pixelforge.distillation (docs/distill.md)."""

from __future__ import annotations

import sys


DEFAULT = "default: a distillation's own (docs/distill.md)"


def add_distill(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a diffusion run into a few-step sampler (progressive distillation)",
        description="Train a student of the diffusion run RUN that samples in STEPS network evaluations (DDIM on the "
        "nested schedule, the teacher's guidance folded in): progressive distillation (Salimans & Ho 2022), the "
        "teacher frozen. Writes a run folder that sample, evaluate, edit and serve take like any other; running "
        "the same command again resumes it (docs/distill.md).",
    )
    p.add_argument("run", metavar="RUN", help="the teacher: run folder, run name, or bundled model")
    p.add_argument("--steps-out", type=int, default=4, help="the distilled sampler's steps, its network evaluations per image (1..16)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--name", default=None, help="the run's name under --runs-dir (default RUN-distilled-STEPS)")
    where.add_argument("-o", "--out", default=None, help="the run's folder, instead of a name under --runs-dir")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, default=None,
                        help="optimiser steps of the distillation (default 1000)")
    length.add_argument("--minutes", type=float, default=None, help="a time budget for the whole distillation instead")
    p.add_argument("--max-minutes", type=float, default=None, help="stop this call after this long (rerun to continue)")
    p.add_argument("--span", type=int, default=2,
                   help="teacher steps per student step (2..8; 2: progressive distillation's halving)")
    p.add_argument("--teacher-sampler", default=None,
                   help="the teacher's solver: heun, euler, ddim or dpmpp_2m (default: its own sampler)")
    p.add_argument("--guidance", type=float, default=None,
                   help="the teacher's guidance, folded into the student (default: the teacher's own)")
    # unset training settings take a distillation's defaults (distillation.py DISTILL_DEFAULTS, docs/distill.md)
    p.add_argument("--batch-size", type=int, default=None, help=DEFAULT)
    p.add_argument("--lr", type=float, default=None, help=DEFAULT)
    p.add_argument("--warmup", type=int, default=None, dest="warmup_steps", help="warm-up steps; " + DEFAULT)
    p.add_argument("--ema-decay", type=float, default=None, help=DEFAULT)
    for name in ("log_every", "val_every", "val_images", "sample_every", "ckpt_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=DEFAULT)
    p.add_argument("--seed", type=int, default=None, help="the distillation's random streams (default 0)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_distill)


def cmd_distill(a) -> int:
    from .distillation import distill
    from .train.lock import RunLockedError

    settings = {k: getattr(a, k) for k in ("span", "teacher_sampler", "guidance", "batch_size", "lr", "warmup_steps",
                                           "ema_decay", "log_every", "val_every", "val_images", "sample_every",
                                           "ckpt_every", "seed")}
    settings = {k: v for k, v in settings.items() if v is not None}  # unset: the library's default
    try:
        result = distill(a.run, a.steps_out, name=a.name, out=a.out, runs_dir=a.runs_dir, iterations=a.iterations,
                         minutes=a.minutes, max_minutes=a.max_minutes, device=a.device, progress=not a.quiet, **settings)
    except RunLockedError as e:
        print(f"pixelforge distill: error: {e}", file=sys.stderr)
        return 1
    print(f"{result.stopped} at step {result.step}: {result.run_dir}")
    print(f"sample it: pixelforge sample {result.run_dir} (its default: {a.steps_out} steps)")
    return 130 if result.stopped == "interrupted" else 0
