"""The distill verb of the API (`pixelforge distill`, pixelforge.distill): a diffusion run distilled into a few-step
sampler (progressive distillation, Salimans & Ho 2022; models/distill.py), trained by the training loop as a run of
its own whose config records its teacher. The run's model config is the teacher's with `distill` added; its data is
the teacher's; its sampling defaults (sample_defaults.json) are the distilled sampler: DDIM on the nested schedule
at steps_out steps, guidance 1 (the teacher's guidance is folded into the network). docs/distill.md."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .models import get_family
from .models.distill import SPAN, STEPS_OUT, STUDENT_SAMPLER, STUDENT_SCHEDULE, TEACHER_SAMPLERS
from .models.optim import OptimConfig
from .runs.adapter import _base_name
from .runs.checkpoint import atomic_write_text, file_sha256
from .runs.config import RunConfig, TrainConfig
from .runs.store import check_run_name, default_runs_dir, resolve_run, weights_file

DISTILL_FAMILY = "diffusion"
# A distillation's own training settings where none are given: it starts from the teacher's weights, so a low
# rate with a short warm-up; a short EMA (its runs are hundreds of steps, not thousands); a small batch, since
# each sample costs the teacher's steps too; validation, grids and checkpoints often enough for runs of minutes.
DISTILL_DEFAULTS = {"lr": 1e-4, "warmup_steps": 20, "batch_size": 16, "ema_decay": 0.99, "steps": 1000, "log_every": 10,
                    "val_every": 100, "val_images": 64, "sample_every": 200, "ckpt_every": 50}
_OPTIM_SETTINGS = {"lr", "warmup_steps", "grad_clip", "lr_scaling", "lr_base_batch"}
_TRAIN_SETTINGS = {f.name for f in dataclasses.fields(TrainConfig)}


def check_teacher(cfg: RunConfig, name: str, run_dir: Path) -> None:
    """A clear ValueError unless the run `cfg` (folder run_dir, named `name`) can be distilled: a diffusion run
    that is not a compressed variant (give its source) and takes labels or nothing (DiffusionConfig.distill)."""
    if cfg.family != DISTILL_FAMILY:
        raise ValueError(f"distill: {name} ({run_dir}) is a {cfg.family} run; only diffusion runs are distilled "
                         "(the other families sample in one pass, or one pass a pixel or token)")
    if cfg.compress is not None:
        raise ValueError(f"distill: {name} is a compressed variant of {cfg.compress.source}; distil that run instead")
    model = cfg.model_config()
    if model.lowres is not None:
        raise ValueError(f"distill: {name} is an upscaler; only generators (labels or no condition) are distilled")
    try:
        dataclasses.replace(model, distill={"teacher": name, "teacher_path": str(run_dir), "teacher_sha256": "-"})
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def new_distill_run_config(teacher: str | os.PathLike, steps_out: int = 4, *, runs_dir: str | os.PathLike | None = None,
                           span: int = 2, teacher_sampler: str | None = None, guidance: float | None = None,
                           **settings) -> RunConfig:
    """The config of a new run distilling the diffusion run `teacher` (a folder, a run name under runs_dir or a
    bundled model) into a sampler of steps_out steps (STEPS_OUT).

    span: teacher steps per student step (SPAN; 2: progressive distillation's halving). teacher_sampler and
    guidance: the teacher's solver and guidance scale, by default its own sampling defaults (Heun and the run's
    guidance); a distilled teacher (a further round) defaults to its own sampler, DDIM, at guidance 1, and its
    steps must be steps_out * span. settings: TrainConfig's fields (steps, batch_size, ema_decay, minutes, ...)
    and the optimiser's (lr, warmup_steps, grad_clip, lr_scaling, lr_base_batch), defaults DISTILL_DEFAULTS.
    A clear ValueError for anything else, a steps_out or span out of range, and a teacher that is not a
    pixel-space diffusion run conditioned on labels or nothing."""
    from .api import run_sample_options

    unknown = sorted(set(settings) - _OPTIM_SETTINGS - _TRAIN_SETTINGS)
    if unknown:
        raise ValueError(f"a distilled run takes its model and data from its teacher: {', '.join(unknown)} cannot be set "
                         "(its own settings: steps_out, span, teacher_sampler, guidance and the training's)")
    for field, value, (low, high) in (("steps_out", steps_out, STEPS_OUT), ("span", span, SPAN)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{field} must be a whole number in {low}..{high}, got {value!r}")
    run_dir = resolve_run(teacher, runs_dir)
    cfg = RunConfig.load(run_dir / "config.json")
    check_teacher(cfg, str(teacher), run_dir)
    weights = weights_file(run_dir)  # a run without a checkpoint yet: its FileNotFoundError says to train it
    own = run_sample_options(run_dir, get_family(DISTILL_FAMILY).option_specs)  # sample_defaults.json, checked
    model = json.loads(json.dumps(dataclasses.asdict(cfg.model_config())))  # every field, tuples as lists
    earlier = model.get("distill")
    if earlier is not None and earlier["steps_out"] != steps_out * span:
        raise ValueError(f"distill: {teacher} is distilled to {earlier['steps_out']} steps; a further round takes "
                         f"steps_out * span = {earlier['steps_out']} (e.g. --steps-out {earlier['steps_out'] // 2})")
    sampler = teacher_sampler or own["sampler"]
    if sampler not in TEACHER_SAMPLERS:
        raise ValueError(f"teacher sampler {sampler!r} is not one of: {', '.join(TEACHER_SAMPLERS)} (the deterministic ones)")
    model["distill"] = {"method": "progressive", "teacher": _base_name(run_dir, runs_dir),
                        "teacher_path": str(run_dir.resolve()), "teacher_sha256": file_sha256(weights),
                        "steps_out": steps_out, "span": span, "teacher_sampler": sampler,
                        "guidance": float(own["guidance"] if guidance is None else guidance)}
    values = {**DISTILL_DEFAULTS, **settings}
    optim = {k: v for k, v in values.items() if k in _OPTIM_SETTINGS}
    train = {k: v for k, v in values.items() if k in _TRAIN_SETTINGS}
    out = RunConfig(family=DISTILL_FAMILY, model=model, data=cfg.data, optim=OptimConfig(**optim), train=TrainConfig(**train))
    return RunConfig.from_dict(json.loads(out.to_json()), where="distilled run config")  # every field checked now


def student_sample_defaults(steps_out: int) -> dict:
    """A distilled run's sample_defaults.json: the distilled sampler at steps_out network evaluations."""
    return {"sampler": STUDENT_SAMPLER, "steps": steps_out, "schedule": STUDENT_SCHEDULE, "guidance": 1.0}


def distill(teacher: str | os.PathLike, steps_out: int = 4, *, name: str | None = None, out: str | os.PathLike | None = None,
            runs_dir: str | os.PathLike | None = None, iterations: int | None = None, minutes: float | None = None,
            max_minutes: float | None = None, device: str = "auto", progress: bool = True, **settings):
    """Distil the diffusion run `teacher` into a steps_out-step sampler, in the run folder `out` or
    RUNS_DIR/NAME (default NAME: TEACHER-distilled-STEPS); rerunning with the same folder resumes it.

    iterations: optimiser steps (default DISTILL_DEFAULTS' steps); minutes: a time budget for the whole
    distillation instead (train.minutes); max_minutes: a wall-clock limit for this call. settings: as
    new_distill_run_config takes them. Returns the training loop's TrainResult."""
    from .train.loop import train as train_loop

    if iterations is not None and minutes is not None:
        raise ValueError("give iterations (--iterations) or minutes (--minutes), not both")
    if name is not None and out is not None:
        raise ValueError("give the run a name (--name) or a folder (-o/--out), not both")
    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if out is not None:
        run_dir = Path(out)
    else:
        teacher_dir = resolve_run(teacher, runs_dir)
        run_dir = runs / check_run_name(name or f"{teacher_dir.name}-distilled-{steps_out}")
    saved = run_dir / "config.json"
    if saved.exists() and (run_dir / "checkpoints").is_dir():
        cfg = RunConfig.load(saved)
        d = getattr(cfg.model_config(), "distill", None)
        if d is None or d.steps_out != steps_out:
            what = "a run that is not distilled" if d is None else f"a distillation to {d.steps_out} steps"
            raise ValueError(f"{run_dir} holds {what}: choose another --name or -o for this one")
        if minutes is not None:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, minutes=minutes))
        if iterations is not None:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=iterations, minutes=None))
    else:
        length = {"minutes": minutes} if minutes is not None else {"steps": iterations} if iterations is not None else {}
        cfg = new_distill_run_config(teacher, steps_out, runs_dir=runs_dir, **length, **settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "sample_defaults.json", json.dumps(student_sample_defaults(steps_out)))
    return train_loop(cfg, run_dir, device=device, progress=progress,
                      max_seconds=max_minutes * 60 if max_minutes is not None else None)
