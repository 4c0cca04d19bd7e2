"""A time budget as the knob of a training run (`pixelforge train DATA --minutes M`): the network size, batch,
warm-up, EMA length and cadence that M minutes on this machine allow, from a few timed steps.

The rule (docs/training-budget.md has the measurements behind it):

1. Time a training step of each candidate network (size_candidates: UNets of base width 16, 32 and 64) on
   this device at two batch sizes, with synthetic batches of the run's shape (measure_step_times), and fit
   seconds per step as a + b * batch: a CPU's time grows with the batch, a GPU's hardly does.
2. The steps a choice gets are the budget, less OVERHEAD_SHARE for validation, sample grids and checkpoints,
   over its seconds per step. Take the largest network that still gets MIN_STEPS steps at batch 64, else at
   batch 32; where none does, the smallest network at batch 16, which gets the most steps there are
   (plan_budget). A diffusion model, and a GAN in latents, take batch 64 over 32 only where it trains BATCH_GAIN
   times the images a second (a GPU's); on a CPU the same images in more steps train further. A batch is never
   larger than the training images. Where the batch taken lies above those timed (64), it is timed too and the
   choice made again with that point (_timed_where_chosen): a line drawn past the points can be far off.
3. From the steps expected: the learning-rate warm-up is 5% of them (at most 200, the default of a run of
   steps), EMA_SHARE of the run is what the EMA averages (ema_decay = 1 - 1 / (EMA_SHARE * steps), within
   [0.9, 0.9999]; 10% of 10,000 steps gives the default 0.999), and the run gets about 10 checkpoints, 5 sample
   grids, 20 validations and 200 rows of metrics, validations and grids fewer where they would take more than
   CADENCE_SHARE of the time each (plan_schedule).

4. Precision: a run that does not name one (or asks for "auto") is timed in fp32 and in bf16 autocast where
   the device has native bfloat16, each candidate in both, interleaved; it trains in bf16 where that is at
   least precision.MIN_SPEEDUP times as fast, and is planned with the step time of what it trains in.
5. Starting point: a run that names no --init-from starts from the bundled base model (BASE_MODELS) whose
   network fits it (a diffusion UNet of the same image side and channels, no text or sketch condition; a GAN
   of the same image side and channels in the very same autoencoder's latents, no text); the candidates are
   then that network alone. `init_from="none"` trains from scratch; a run named as
   --init-from fixes the network the same way.

6. A GAN: its candidates are GAN_WIDTHS (GANConfig.base_channels), chosen by the rule of step 2, and its DiffAugment
   policy is planned from the passes over the training set the steps make (gan_augment; docs/gan-budget.md).

Settings the user gives (the batch, the network's fields, the warm-up, ...) win over the plan's. The run then
trains until the budget is spent (TrainConfig.minutes; a resumed run continues until its training time over
every call reaches it), so the planned steps are an estimate, never a limit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..condition import Cond
from ..device import pick_device
from ..models import get_family
from ..models.family import set_precision
from ..models.limits import meta_model, parameter_count
from ..precision import MIN_SPEEDUP, bf16_available, bf16_support, fp16_support
from ..runs.checkpoint import atomic_write_text
from ..runs.config import RunConfig, TrainConfig, build_model, new_run_config

MIN_STEPS = 1500  # the steps the planner asks for where the budget allows them (docs/training-budget.md)
BATCHES = (64, 32)  # batch sizes the planner chooses from, largest first
FALLBACK_BATCH = 16  # the batch of a budget too short for MIN_STEPS at either
# A diffusion plan takes the larger batch only where it trains at least BATCH_GAIN times the images a second of the
# smaller one (a GPU's, whose step time hardly grows with the batch). Where the step time grows with the batch, as on
# a CPU, the same images in twice the steps train further: on the time-to-quality photos at 20 minutes on 2 cores,
# batch 32 (9,150 steps) scored FID 86.9 where batch 64 (4,830) scored 91.4, at 10 minutes 100.8 against 106.8,
# and 199.3 against 211.3 on a second folder (docs/training-budget.md, "Batch").
# A GAN in an autoencoder's latents weighs it too: on the shapes set at 20 minutes, seed 1 at batch 32 (18,500 steps)
# reached recall 0.278 and FID 106.6 where batch 64 (11,500) reached 0.111 and 120.8; over seeds 0-2 recall averaged
# 0.346 against 0.246 (docs/gan-budget.md, "Batch 32 in latents").
# Other families keep the largest batch that gets MIN_STEPS (the pixel GAN's budget was measured at batch 64).
BATCH_GAIN = 1.5
OVERHEAD_SHARE = 0.1  # share of the budget that validation, sample grids and checkpoints take
EMA_SHARE = 0.1  # share of the run the EMA weights average over
FORWARD_SHARE = 1 / 3  # a forward pass without gradients takes about a third of a training step's time
SAMPLE_EVALS = 35  # network evaluations of a sample grid: the family's default sampling, Heun with 18 steps
CADENCE_SHARE = 0.05  # validations, and sample grids, each take at most this share of the run
PROBE_BATCHES = (16, 32)  # batch sizes each candidate is timed at
PROBE_SHARE = 0.1  # the timing stops measuring larger networks once it has taken this share of the budget
PROBE_MIN_SECONDS = 0.5  # each timing repeats steps until they take this long (a GPU's step takes milliseconds)
PROBE_MIN_STEPS = 5  # and times at least this many steps (their median: one or two slow steps do not move it)
# The sampling a diffusion budget run's images get by default (written as its sample_defaults.json when it
# starts): Euler with 35 steps on the Karras schedule at rho 2, the same 35 network evaluations as the family's
# default (Heun with 18 steps at EDM's rho 7). A network trained for minutes denoises the lowest noise levels
# worst: Heun's second evaluation of each step and rho 7's crowding of the steps there both spend evaluations
# where they help least. Measured on the time-to-quality photos (docs/time-to-quality.md), on the same
# checkpoints after 5 / 10 / 20 minutes: FID 143.7 / 114.9 / 104.7 with this, 165.7 / 130.9 / 119.1 with Euler
# at rho 7, 179.2 / 141.5 / 126.3 with Heun at rho 7; at 10 minutes rho 5, 3 and 1.5 gave 129.1, 124.3, 125.3.
BUDGET_SAMPLING = {"sampler": "euler", "steps": 35, "rho": 2.0}
# The noise levels a budget run of a colour pixel-space diffusion UNet trains on (DiffusionConfig.P_mean: the mean of
# ln sigma), lower than the family's default 0.2, which was set on the digits (docs/families.md): at 0.2 the low noise
# levels, which draw the fine detail of photos, get the fewest of a short run's steps. Measured on the two
# time-to-quality photo folders after 10 minutes (docs/training-budget.md, "Noise levels"): FID 100.8 and 199.3 at
# 0.2, 88.5 and 173.9 at -0.4, 83.4 and 156.7 at -0.8; EDM's own -1.2 gave the second folder 159.7 but the first
# 110.6, and its samples kept to their class less (class agreement 0.677 against 0.947 at 0.2 on the first folder).
# -0.8 is the plan since its first-folder class agreement (0.847 there) came back with the label rate below: on a CPU
# without AVX-512, with BUDGET_LABEL_LR_SCALE, -0.8 scored 110.6 and 113.9 (two seeds; agreement 0.923, 0.907)
# against -0.4's 123.4 and 119.1 (0.913, 0.913), and the second folder 214.1 against 215.6.
BUDGET_P_MEAN = -0.8
# A budget run that starts from another model's weights begins with every class at that model's "no label" row
# (train/loop.py _init_from), and its label embedding then learns at BUDGET_LABEL_LR_SCALE times the run's rate
# (DiffusionConfig.label_lr_scale). On a 2-core CPU without AVX-512 (fp32, batch 16), 10 minutes on the first photo
# folder (docs/time-to-quality.md, "Without AVX-512") made 1,818 steps at the run's own rate: samples of their
# class 0.550 of the time, FID 134.0; at 10 times it, 2,070 steps: 0.913, FID 123.4.
BUDGET_LABEL_LR_SCALE = 10.0
# bundled models a budget run starts from where the network fits (assets/models/): the diffusion UNet's and the
# GAN's in ae-32's latents; start_fields says which fits a run
BASE_MODELS = ("base-32", "gan-base-32")
NO_INIT = "none"  # init_from (--init-from) that trains from scratch
# families a budget cannot plan, and why: their stages are counted in steps
STEP_COUNTED = {"transformer": "the VQ-VAE for stage1_steps, then the prior"}

# UNet sizes, smallest first: (base_channels, levels, num_res_blocks). The levels' widths are channel_mult
# (1, 2, 2, ...)[:levels], fewer where the image side cannot be halved that often.
UNET_SIZES = ((16, 2, 1), (32, 3, 1), (64, 3, 2))
SHAPE_FIELDS = ("base_channels", "channel_mult", "num_res_blocks")
GAN_SHAPE_FIELDS = ("base_channels", "depth", "mbstd_group", "z_dim")  # what fixes a GAN's weights' shapes

# A GAN's budget (docs/gan-budget.md): the widths (GANConfig.base_channels) it chooses from, smallest first, by the
# same rule as a UNet's size; and its augmentation. DiffAugment counters a discriminator memorising the training
# set, which takes many passes over it (StyleGAN2-ADA's overfitting starts after hundreds): a run that sees each
# image fewer than GAN_AUGMENT_EPOCHS times gets translation alone (StyleGAN2-ADA's p starts at 0 for the same
# reason; translation keeps every image's colours and whole content, which colour and cutout do not), a longer one
# the family's default policy. A GAN in an autoencoder's latents always gets translation alone: colour acts on a
# pixel's colours, which its latent channels are not, and cutout of half the side blanks half the latent grid.
GAN_WIDTHS = (16, 32, 64)
# A GAN in an autoencoder's latents (8x8 for a 32x32 image through ae-32) has one level of blocks in each
# network; its candidates get LATENT_GAN_DEPTH blocks per level (GANConfig.depth). On the shapes set, 6,000 steps
# at width 64 scored FID 142.1 at depth 1, 119.7 and 118.4 (two seeds) at depth 3 and 114.6 at depth 5, a step at
# depth 3 taking 1.2 to 1.4x the time of one at depth 1 (docs/gan-budget.md, "Deeper networks in latents").
LATENT_GAN_DEPTH = 3
# ... and D's minibatch standard deviation over groups of LATENT_GAN_MBSTD images (GANConfig.mbstd_group): in 20 minutes
# on shapes, seed 1 of the planner's latent GAN without it collapsed early (each class one image whatever its z) and
# ended at recall 0.072; with it no seed collapsed (docs/gan-budget.md, "Minibatch standard deviation").
LATENT_GAN_MBSTD = 4
# ... and learns at LATENT_GAN_LR, twice the family's default 5e-4 (GANModel.default_lr), unless --lr is given. On a CPU
# where 20 minutes buy about 6,500 steps (the AVX-512 machine on 2026-12-02), from gan-base-32 on shapes: seed 0 recall
# 0.161 and FID 111.7 at 1e-3 against 0.098 and 119.6 at 5e-4 (6,675 and 6,575 steps), seed 1 0.146 and 111.9 against
# 0.088 and 117.0 (6,240 and 6,900 steps, the same day). Where 20 minutes bought about 20,000 steps (2026-12-01, from
# scratch) the two rates were even: recall 0.283 against 0.281 over seeds 0 and 1 (docs/gan-budget.md, "A higher
# learning rate").
LATENT_GAN_LR = 1e-3
GAN_AUGMENT_EPOCHS = 100
GAN_SHORT_AUGMENT = "translation"
# A GAN budget run on images the bundled autoencoder takes (32x32 RGB), with labels or none, trains in its latents
# where it reconstructs the run's training images well (GAN_LATENT_PSNR over the first GAN_LATENT_PROBE), unless the
# run says otherwise (`--set latent=` for pixels, `--set latent=RUN` for another autoencoder). On the shapes set
# (ae-32: 32.5 dB) the latent plan beat the pixel plan at every budget: FID 183.1 / 134.7 / 120.0 against 195.3 /
# 153.3 / 151.0 at 2 / 5 / 10 minutes, recall 0.154 against 0.008 at 10. On the time-to-quality photos (22.9 dB)
# it did not: FID 239.7 against 235.5 at 10 minutes, with the decoder's wrong hues in every sample. No set between
# the two was measured, so the bound stays near the set where latents won: 2.5 dB under shapes' figure (emoji, 28.7
# dB, keep pixels; docs/gan-budget.md, "In latents where ae-32 fits").
GAN_LATENT = "ae-32"
GAN_LATENT_PSNR = 30.0
GAN_LATENT_PROBE = 256


@dataclass(frozen=True)
class StepTiming:
    """Measured seconds per training step of one candidate network: `points` ((batch, seconds), ...)."""

    model_fields: Mapping[str, object]  # the candidate's model config fields (base_channels, ...)
    parameters: int  # those the training updates
    points: tuple[tuple[int, float], ...]
    precision: str = "fp32"  # what the points were timed in: what the run trains in
    speedup: float | None = None  # fp32 seconds over bf16 seconds at the largest batch, where both were timed
    frozen: int = 0  # parameters it holds and never trains (a latent run's autoencoder, an adapter's base)

    def seconds_per_step(self, batch: int) -> float:
        """Seconds per step at `batch`: the time measured there, else the line a + b * batch (a, b >= 0) through
        the two measured points nearest it (the two smallest below them, the two largest above), or, from one
        point, proportional to the batch."""
        if not self.points:
            raise ValueError("a step timing needs at least one measured (batch, seconds) point")
        points = dict(sorted(self.points))  # batch -> seconds (a batch timed twice: its longer time)
        if batch in points:
            return points[batch]
        batches = list(points)
        if len(batches) == 1:
            return points[batches[0]] * batch / batches[0]
        above = next((i for i, b in enumerate(batches) if b > batch), len(batches))
        i = min(max(above, 1), len(batches) - 1)  # the pair (batches[i - 1], batches[i]) around or nearest batch
        (b0, t0), (b1, t1) = (batches[i - 1], points[batches[i - 1]]), (batches[i], points[batches[i]])
        slope = max((t1 - t0) / (b1 - b0), 0.0)
        intercept = max(t0 - slope * b0, 0.0)
        return intercept + slope * batch


@dataclass(frozen=True)
class BudgetPlan:
    """What a time budget allows: the network, the batch, the steps expected and the schedule they give."""

    minutes: float
    n_train: int  # training images
    model_fields: Mapping[str, object]
    parameters: int  # those the training updates
    batch_size: int
    seconds_per_step: float  # measured (fitted) at batch_size
    steps: int  # expected: the budget less OVERHEAD_SHARE over seconds_per_step
    warmup_steps: int
    ema_decay: float
    ckpt_every: int
    sample_every: int
    val_every: int
    log_every: int
    short: bool  # below MIN_STEPS even for the smallest network
    precision: str = "fp32"  # fp32 or bf16: what the step times were measured in
    speedup: float | None = None  # fp32 / bf16 step time where both were timed
    frozen: int = 0  # parameters the network holds and never trains (StepTiming.frozen)
    init_from: str | None = None  # the run or bundled model the run starts from (None: from scratch)
    precision_why: str = ""  # why only one precision was timed, where that is known (precision_reason)
    lr: float | None = None  # the learning rate the plan chose (LATENT_GAN_LR); None: the family's, or the one given

    def settings(self) -> dict:
        """The run settings of the plan, as new_run_config takes them."""
        return {"steps": self.steps, "batch_size": self.batch_size, "warmup_steps": self.warmup_steps,
                "ema_decay": self.ema_decay, "ckpt_every": self.ckpt_every, "sample_every": self.sample_every,
                "val_every": self.val_every, "log_every": self.log_every, "precision": self.precision,
                **({"lr": self.lr} if self.lr is not None else {})}


def size_candidates(image_size: int, given: Mapping[str, object] | None = None) -> list[dict]:
    """The UNet sizes a budget chooses from at this image side, smallest first: UNET_SIZES as model fields,
    each with the fields the user gave over it (duplicates made by those removed)."""
    out: list[dict] = []
    for base, levels, blocks in UNET_SIZES:
        while levels > 1 and (image_size % 2 ** (levels - 1) or image_size // 2 ** (levels - 1) < 4):
            levels -= 1  # every level halves the side: it must divide evenly and stay 4 pixels or more
        fields = {"base_channels": base, "channel_mult": (1, 2, 2, 2)[:levels], "num_res_blocks": blocks,
                  **(given or {})}
        if fields not in out:
            out.append(fields)
    return out


def gan_candidates(given: Mapping[str, object] | None = None, *, latent: bool = False) -> list[dict]:
    """The GAN widths a budget chooses from, smallest first: GAN_WIDTHS as model fields, or only the width given;
    in an autoencoder's latents (latent) each at LATENT_GAN_DEPTH blocks per level and with D's minibatch standard
    deviation over LATENT_GAN_MBSTD images, unless a depth or group is given."""
    given = given or {}
    widths = [given["base_channels"]] if "base_channels" in given else GAN_WIDTHS
    extra = {name: given.get(name, default) for name, default in (("depth", LATENT_GAN_DEPTH),
                                                                   ("mbstd_group", LATENT_GAN_MBSTD))
             if latent or name in given}
    return [{"base_channels": w, **extra} for w in widths]


def gan_augment(steps: int, batch: int, n_train: int, *, latent: bool = False) -> str:
    """The DiffAugment policy of a GAN budget run of about `steps` steps at `batch` on n_train images: translation
    alone below GAN_AUGMENT_EPOCHS passes over the set or in an autoencoder's latents (latent), else the family's
    default (GANConfig.diffaugment)."""
    from ..models.gan import GANConfig

    epochs = steps * batch / max(1, n_train)
    return GAN_SHORT_AUGMENT if latent or epochs < GAN_AUGMENT_EPOCHS else GANConfig.diffaugment


def expected_steps(timing: StepTiming, batch: int, minutes: float) -> int:
    """Steps a budget of `minutes` allows at `batch`, OVERHEAD_SHARE of it left for the rest."""
    return int(minutes * 60 * (1 - OVERHEAD_SHARE) / timing.seconds_per_step(batch) + 1e-6)  # 1e-6: 39999.99... is 40000


def _nice(x: float) -> int:
    """x rounded to two significant digits (a cadence of 160 steps rather than 164), at least 1."""
    if x < 10:
        return max(1, round(x))
    scale = 10 ** (int(math.log10(x)) - 1)
    return int(round(x / scale) * scale)


def plan_schedule(steps: int, batch: int = 64, *, val_images: int = TrainConfig.val_images,
                  sample_count: int = TrainConfig.sample_count) -> dict:
    """The warm-up, EMA decay and cadence of a run of about `steps` steps at `batch` (the rule in the module
    docstring). A validation or a sample grid costs a number of training steps' time (FORWARD_SHARE, SAMPLE_EVALS),
    so neither comes more often than takes CADENCE_SHARE of the run: a short run at a small batch validates
    less often than every 5% of it, or only where the budget ends."""
    validation = val_images / batch * FORWARD_SHARE  # (steps) 256 images through the network, without gradients
    grid = sample_count * SAMPLE_EVALS / batch * FORWARD_SHARE  # (steps)
    return {
        "warmup_steps": min(200, max(1, round(0.05 * steps))),
        "ema_decay": round(min(0.9999, max(0.9, 1 - 1 / (EMA_SHARE * steps))), 5),
        "ckpt_every": _nice(steps / 10),
        "sample_every": max(_nice(steps / 5), _nice(grid / CADENCE_SHARE)),
        "val_every": max(_nice(steps / 20), _nice(validation / CADENCE_SHARE)),
        "log_every": min(25, _nice(steps / 200)),
    }


def plan_budget(minutes: float, n_train: int, timings: Sequence[StepTiming], *, batch_size: int | None = None,
                batch_gain: float = BATCH_GAIN) -> BudgetPlan:
    """The plan for a budget of `minutes` on a set of n_train training images, from the candidates' measured
    step times: the largest network that gets MIN_STEPS at batch 64, else 32; where none does, the smallest
    network at batch 16. Of two batches that both get MIN_STEPS, the larger only where it trains batch_gain
    times the images a second of the smaller (0: always the larger). A given batch_size is the only batch
    considered."""
    if not timings:
        raise ValueError("a time budget needs the step time of at least one network; none was measured")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes (--minutes) must be above 0, got {minutes}")
    cap = max(1, n_train)  # a batch larger than the training set only repeats its images

    def batches(options: Sequence[int]) -> list[int]:
        return [min(b, cap) for b in ((batch_size,) if batch_size is not None else options)]

    def fits(t: StepTiming, b: int) -> bool:
        return expected_steps(t, b, minutes) >= MIN_STEPS

    def pays(t: StepTiming, b: int) -> bool:  # b trains batch_gain times the images a second of each smaller batch that fits
        rate = b / t.seconds_per_step(b)
        return all(rate >= batch_gain * o / t.seconds_per_step(o) for o in batches(BATCHES) if o < b and fits(t, o))

    by_size = sorted(timings, key=lambda t: t.parameters)
    choice = next(((t, b) for t in reversed(by_size) for b in batches(BATCHES) if fits(t, b) and pays(t, b)), None)
    short = choice is None
    if choice is None:
        choice = (by_size[0], batches((FALLBACK_BATCH,))[0])
    timing, batch = choice
    steps = max(1, expected_steps(timing, batch, minutes))
    return BudgetPlan(minutes=minutes, n_train=n_train, model_fields=dict(timing.model_fields), parameters=timing.parameters,
                      batch_size=batch, seconds_per_step=timing.seconds_per_step(batch), steps=steps, short=short,
                      precision=timing.precision, speedup=timing.speedup, frozen=timing.frozen, **plan_schedule(steps, batch))


# --- timing on this machine ------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _probe_batch(model, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, Cond]:
    """A synthetic batch of the model's shape and conditions: images (B, C, H, W) in [-1, 1] and a Cond with
    every field the model takes (the step's cost does not depend on the values)."""
    cfg, dev = model.config, model.device
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=generator) * 2 - 1
    fields: dict[str, torch.Tensor] = {}
    takes = model.takes()
    if "labels" in takes:
        fields["labels"] = torch.randint(0, cfg.num_classes, (batch,), generator=generator)
    if "text" in takes:
        fields.update(text=torch.randn(batch, cfg.text_dim, generator=generator),  # (B, D)
                      text_tokens=torch.randn(batch, cfg.text_tokens, cfg.text_dim, generator=generator),  # (B, T, D)
                      text_mask=torch.ones(batch, cfg.text_tokens, dtype=torch.bool))  # (B, T)
    if "spatial" in takes:
        fields["spatial"] = torch.zeros(batch, cfg.spatial_channels, cfg.image_size, cfg.image_size)  # (B, 1, H, W)
    return x.to(dev), Cond(**fields).to(dev)


def _time_steps(model, batch: int, step: int, clock: Callable[[], float]) -> tuple[float, int]:
    """(seconds per step, the next step number): training steps at `batch`, each timed alone, at least
    PROBE_MIN_STEPS of them and until they take PROBE_MIN_SECONDS (at most 100); their median. One slow step
    (another program's burst, a first allocation) moves the mean of the one or two steps that half a second
    holds on a CPU, but not the median of five. Measured on a 2-core CPU without AVX-512 (docs/training-budget.md,
    "How the step time is measured"): it narrows the spread between plans, not removes it."""
    x, cond = _probe_batch(model, batch, torch.Generator().manual_seed(batch))
    times: list[float] = []
    start = clock()
    while len(times) < PROBE_MIN_STEPS or (clock() - start < PROBE_MIN_SECONDS and len(times) < 100):
        before = clock()
        model.training_step(x, cond, step)
        _synchronize(model.device)
        times.append(clock() - before)
        step += 1
    return statistics.median(times), step


def timed_precisions(precision: str | None, device: torch.device) -> tuple[str, ...]:
    """The precisions a budget run's candidates are timed in: fp32 alone where bf16 is not native on `device`
    or fp32 is asked for, bf16 alone where it is asked for, both for "auto" (and for None: a budget run that
    names no precision trains in what is measured faster); fp16 alone where it is asked for on CUDA (fp32
    elsewhere, as such a run trains in fp32 there)."""
    if precision == "fp16":
        return ("fp16",) if fp16_support(device)[0] else ("fp32",)
    if precision == "fp32" or not bf16_available(device):
        return ("fp32",)
    return ("bf16",) if precision == "bf16" else ("fp32", "bf16")


def precision_reason(asked: str | None, chosen: str, device: torch.device) -> str:
    """Why a budget run timed only `chosen`, the precision it trains in, when `asked` (None: none asked) was
    what the user gave: as given, or what `device` lacks for the precision asked or for bf16's timing."""
    if asked == "fp16" and chosen != "fp16":
        return f"fp16 asked; {fp16_support(device)[1]}"
    if asked is not None and chosen == asked:
        return f"as given: --precision {asked}"
    native, where = bf16_support(device)
    if chosen == "fp32" and not native:
        return f"bf16 autocast not timed: not native here ({where})" + ("; bf16 asked" if asked == "bf16" else "")
    return ""


def measure_step_times(cfg: RunConfig, candidates: Sequence[Mapping[str, object]], device: torch.device, *,
                       minutes: float, n_train: int, batch_size: int | None = None,
                       precisions: Sequence[str] = ("fp32",),
                       clock: Callable[[], float] = time.perf_counter,
                       say: Callable[[str], None] = lambda text: None) -> list[StepTiming]:
    """Seconds per training step of each candidate network (model fields over cfg's) on `device`, timed on
    synthetic batches at PROBE_BATCHES (or at batch_size alone), after one untimed step.

    precisions: ("fp32",), ("bf16",), or both (timed_precisions), interleaved batch by batch so that other
    load falls on both alike; with both, a candidate's timing is bf16's where fp32's time over bf16's at the
    largest batch is at least MIN_SPEEDUP, else fp32's.

    Candidates are measured smallest first. Measuring stops at the first that cannot get MIN_STEPS even at
    the smallest batch (larger ones are slower still), at one the device has no memory for, and once the
    timing has taken PROBE_SHARE of the budget. The global random state is left as it was."""
    family = get_family(cfg.family)
    cap = max(1, n_train)
    batches = sorted({min(b, cap) for b in ((batch_size,) if batch_size is not None else PROBE_BATCHES)})
    started = clock()
    timings: list[StepTiming] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for fields in candidates:
            candidate = dataclasses.replace(cfg, model={**cfg.model, **fields})
            shell = meta_model(family, candidate.model_config())
            parameters = sum(p.numel() for p in shell.parameters() if p.requires_grad)
            frozen, shell = parameter_count(shell) - parameters, None
            try:
                model = build_model(candidate, device)
                # an untimed first step at the smallest batch in each precision: it pays one-time costs (CUDA's
                # lazy start-up and kernel choice, a CPU's first allocations, oneDNN's bf16 kernels) that the
                # steps of a run do not
                for precision in precisions:
                    set_precision(model, precision)
                    model.training_step(*_probe_batch(model, batches[0], torch.Generator().manual_seed(0)), 0)
                _synchronize(device)
                points: dict[str, list[tuple[int, float]]] = {p: [] for p in precisions}
                step = 1
                for batch in batches:
                    for precision in precisions:
                        set_precision(model, precision)
                        seconds, step = _time_steps(model, batch, step, clock)
                        points[precision].append((batch, seconds))
            except torch.OutOfMemoryError:
                say(f"time budget: a {cfg.family} network of {', '.join(f'{k} {v}' for k, v in fields.items()) or 'its size'} "
                    f"does not fit in {device}'s memory")
                break
            finally:
                model = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            speedup = points["fp32"][-1][1] / max(points["bf16"][-1][1], 1e-12) if len(points) == 2 else None
            chosen = "bf16" if speedup is not None and speedup >= MIN_SPEEDUP else precisions[0]
            timing = StepTiming(model_fields=dict(fields), parameters=parameters, points=tuple(points[chosen]),
                                precision=chosen, speedup=speedup, frozen=frozen)
            timings.append(timing)
            fastest = max(expected_steps(timing, b, minutes) for b in (*batches, min(FALLBACK_BATCH, cap)))
            if fastest < MIN_STEPS or clock() - started > PROBE_SHARE * minutes * 60:
                break
    say(f"time budget: timed {len(timings)} network size(s) on {device} in {clock() - started:.1f} s")
    return timings


def check_not_steps(steps: int | None) -> None:
    """A time budget decides the steps: refuse steps given with it."""
    if steps is not None:
        raise ValueError("minutes (--minutes) and steps (--steps) cannot both be given: a time budget decides the steps")


def start_fields(cfg: RunConfig, source: str, runs_dir: str | os.PathLike | None = None) -> dict | None:
    """The network fields of run or bundled model `source` (SHAPE_FIELDS, a GAN's GAN_SHAPE_FIELDS) where a new
    run of `cfg` can start from all of its weights, else None: both diffusion UNets of the same image side and
    channels, and cfg with no text or sketch condition (their layers would start untrained); or both GANs
    (gan_start_fields)."""
    from ..runs.store import resolve_run

    try:
        source_dir = resolve_run(source, runs_dir)
        other = RunConfig.load(source_dir / "config.json")
    except (FileNotFoundError, ValueError):
        return None
    mine, theirs = cfg.model_config(), other.model_config()
    if cfg.family == other.family == "gan":
        return gan_start_fields(mine, theirs, source_dir)
    if (cfg.family, other.family) != ("diffusion", "diffusion") or (mine.backbone, theirs.backbone) != ("unet", "unet"):
        return None
    # net_shape: the denoiser's (channels, side, side), a latent run's latents
    if (mine.image_size, mine.channels, mine.net_shape) != (theirs.image_size, theirs.channels, theirs.net_shape) \
            or mine.text_dim or mine.spatial_condition:
        return None
    return {k: getattr(theirs, k) for k in SHAPE_FIELDS}


def gan_start_fields(mine, theirs, source_dir: Path) -> dict | None:
    """GAN_SHAPE_FIELDS of GAN config `theirs` (the run in source_dir) where a GAN of config `mine` can start from
    its weights: images of the same side and channels, neither with a prompt, and both in pixels or both in the
    latents of the same autoencoder, the same weights tensor for tensor (the source's copy against the one `mine`
    names: G's output means nothing in another autoencoder's latents, however alike its config); else None."""
    from ..runs.store import load_weights, resolve_run

    if (mine.image_size, mine.channels) != (theirs.image_size, theirs.channels) or mine.text_dim or theirs.text_dim:
        return None
    if (mine.autoencoder is None) != (theirs.autoencoder is None):
        return None
    if mine.autoencoder is not None:
        if mine.autoencoder != theirs.autoencoder:
            return None
        try:
            ae = load_weights(resolve_run(mine.latent))
            copy = load_weights(source_dir)
        except (FileNotFoundError, ValueError):
            return None
        # the GAN holds the autoencoder run's `net` as `autoencoder` (GANModel.frozen_parts)
        own = {k.removeprefix("net."): v for k, v in ae.items() if k.startswith("net.")}
        theirs_ae = {k.removeprefix("autoencoder."): v for k, v in copy.items() if k.startswith("autoencoder.")}
        if own.keys() != theirs_ae.keys() or not all(torch.equal(own[k], theirs_ae[k]) for k in own):
            return None
    return {k: getattr(theirs, k) for k in GAN_SHAPE_FIELDS}


def pick_start(cfg: RunConfig, init_from: str | None, given_fields: Mapping[str, object],
               runs_dir: str | os.PathLike | None = None) -> tuple[str | None, dict | None]:
    """(what a budget run starts from, the network fields that fixes): init_from as given ("none": from
    scratch); where it is None, the first of BASE_MODELS that fits cfg (start_fields) and the network fields
    the user gave (given_fields) do not contradict."""
    if init_from == NO_INIT:
        return None, None
    if init_from is not None:
        return init_from, start_fields(cfg, init_from, runs_dir)
    for name in BASE_MODELS:
        fields = start_fields(cfg, name)
        if fields is not None and all(fields[k] == given_fields[k] for k in fields if k in given_fields):
            return name, fields
    return None, None


@dataclass(frozen=True)
class LatentChoice:
    """Whether a GAN budget run trains in GAN_LATENT's latents by default, and what decided it."""

    folder: str | None  # the bundled autoencoder's folder where it does, else None
    psnr: float  # its mean reconstruction PSNR (dB) over the images probed


def default_gan_latent(cfg: RunConfig, given_fields: Mapping[str, object], images: torch.Tensor,
                       train_idx: torch.Tensor, device: torch.device) -> LatentChoice | None:
    """Whether a GAN budget run of cfg trains in the bundled GAN_LATENT's latents by default, measured on the first
    GAN_LATENT_PROBE of its training images (`images`, the prepared set's uint8 (N, C, S, S), at `train_idx`):
    None where the question does not arise (not a GAN, a latent or autoencoder among the fields the user gave, a
    prompt condition, images of another size or channels than the autoencoder's, or no bundled autoencoder), else
    its mean reconstruction PSNR over them (metrics/reconstruction.py) and its folder where that reaches
    GAN_LATENT_PSNR. The bundled model's folder, not its name: a run of the user's called ae-32 is not what the
    default means."""
    import pixelforge
    from ..data import to_model
    from ..metrics.evaluate import to_uint8
    from ..metrics.reconstruction import reconstruction_figures
    from ..runs.store import BUNDLED_MODELS_DIR

    if cfg.family != "gan" or "latent" in given_fields or "autoencoder" in given_fields or cfg.model_config().text_dim:
        return None
    folder = BUNDLED_MODELS_DIR / GAN_LATENT
    try:
        ae = RunConfig.load(folder / "config.json").model_config()
    except (FileNotFoundError, ValueError):  # an install without the bundled model trains in pixels
        return None
    if (ae.image_size, ae.channels) != (cfg.data.image_size, cfg.data.channels) or len(train_idx) == 0:
        return None
    x = to_model(images[train_idx[:GAN_LATENT_PROBE]], cfg.data)  # (N, C, H, W) in [-1, 1], as the network sees them
    model = pixelforge.load(folder, device=str(device)).model
    with torch.no_grad():
        fake = to_uint8(model.reconstruct(x.to(device)))
    value = reconstruction_figures(to_uint8(x), fake)["psnr"]
    return LatentChoice(str(folder) if value >= GAN_LATENT_PSNR else None, round(value, 2))


def budget_noise(cfg: RunConfig, given_fields: Mapping[str, object]) -> dict:
    """{"P_mean": BUDGET_P_MEAN} for a budget run of the kind it was measured on (a diffusion UNet on colour images in
    pixel space, with labels or none: no text, edge map, audio, upscaling, adapter or latents), unless P_mean is
    given; else {}."""
    if cfg.family != "diffusion" or "P_mean" in given_fields:
        return {}
    m = cfg.model_config()
    measured = (m.backbone == "unet" and m.channels == 3 and m.autoencoder is None and not m.text_dim
                and not m.spatial_condition and m.audio_net is None and m.lowres is None and m.adapter is None)
    return {"P_mean": BUDGET_P_MEAN} if measured else {}


def budget_label_lr(cfg: RunConfig, given_fields: Mapping[str, object], start: str | None) -> dict:
    """{"label_lr_scale": BUDGET_LABEL_LR_SCALE} for a labelled diffusion budget run that starts from another
    model's weights (start, the plan's init_from), unless label_lr_scale is given; else {}."""
    if cfg.family != "diffusion" or start is None or "label_lr_scale" in given_fields:
        return {}
    return {"label_lr_scale": BUDGET_LABEL_LR_SCALE} if cfg.model_config().num_classes else {}


def latent_gan(cfg: RunConfig) -> bool:
    """Whether the run is a GAN in an autoencoder's latents (GANConfig.latent)."""
    return cfg.family == "gan" and cfg.model_config().autoencoder is not None


def steps_first(cfg: RunConfig) -> bool:
    """Whether a plan of this run weighs the larger batch's gain (BATCH_GAIN) rather than taking the largest batch that
    gets MIN_STEPS: diffusion, and a GAN in an autoencoder's latents."""
    return cfg.family == "diffusion" or latent_gan(cfg)


def plan_run(data: str | os.PathLike, minutes: float, *, device: str = "auto", progress: bool = True,
             init_from: str | None = None, runs_dir: str | os.PathLike | None = None,
             measure: Callable[..., list[StepTiming]] | None = None,
             say: Callable[[str], None] = lambda text: None, **settings) -> tuple[RunConfig, BudgetPlan]:
    """The config of a new run on `data` with a time budget of `minutes`, and the plan behind it: the
    settings are new_run_config's, those given winning over the plan's (model_fields field by field);
    `steps` is the plan's, and `precision` too where none or "auto" is given. init_from: as pick_start
    takes it (a run name looked up in runs_dir); the plan's init_from says what the run starts from. measure: measure_step_times, or what a
    test puts in its place."""
    from ..data import load_dataset, split_indices

    check_not_steps(settings.get("steps"))
    given_fields = dict(settings.pop("model_fields", None) or {})
    asked_precision = settings.pop("precision", None)
    asked_precision = None if asked_precision == "auto" else asked_precision

    def run_config(fields: Mapping[str, object]) -> RunConfig:  # the run before planning, every setting checked
        return new_run_config(data, **settings, model_fields=fields, minutes=minutes,
                              **({"precision": asked_precision} if asked_precision else {}))

    base = run_config(given_fields)
    if base.family in STEP_COUNTED:
        raise ValueError(f"minutes (--minutes): a {base.family} model trains in stages counted in steps "
                         f"({STEP_COUNTED[base.family]}); train it with --steps")
    dev = pick_device(device)
    dataset = load_dataset(base.data, progress=progress)
    train_idx = split_indices(len(dataset), base.data.val_fraction, base.data.split_seed)[0]
    n_train = len(train_idx)
    latent = default_gan_latent(base, given_fields, dataset.images, train_idx, dev)
    if latent is not None:
        say(f"time budget: {GAN_LATENT} reconstructs {min(n_train, GAN_LATENT_PROBE)} training images at "
            f"{latent.psnr:.1f} dB PSNR ({'at least' if latent.folder else 'under'} {GAN_LATENT_PSNR:g}): the GAN "
            f"trains in {'its latents' if latent.folder else 'pixels'}")
    if latent is not None and latent.folder:  # the run made again in the autoencoder's latents, as --set latent= does
        given_fields = {**given_fields, "latent": latent.folder}
        base = run_config(given_fields)
    start, start_shape = pick_start(base, init_from, given_fields, runs_dir)
    if start_shape is not None:  # the network of the weights it starts from
        candidates = [start_shape]
    elif base.family == "diffusion" and base.model_config().backbone == "unet":
        # sized for the side the UNet sees: the image's, or a latent diffusion run's latents
        candidates = size_candidates(base.model_config().net_shape[1],
                                     {k: v for k, v in given_fields.items() if k in SHAPE_FIELDS})
    elif base.family == "gan":  # its width, as a UNet's size
        candidates = gan_candidates(given_fields, latent=latent_gan(base))
    else:  # a DiT, and the other families, keep their given (or default) size; the plan picks the rest
        candidates = [{}]
    timings = (measure or measure_step_times)(base, candidates, dev, minutes=minutes, n_train=n_train,
                                              batch_size=settings.get("batch_size"),
                                              precisions=timed_precisions(asked_precision, dev), say=say)
    batch_gain = BATCH_GAIN if steps_first(base) else 0.0
    plan = plan_budget(minutes, n_train, timings, batch_size=settings.get("batch_size"), batch_gain=batch_gain)
    timings = _timed_where_chosen(plan, timings, measure or measure_step_times, base, dev, minutes=minutes,
                                  n_train=n_train, say=say)
    plan = dataclasses.replace(plan_budget(minutes, n_train, timings, batch_size=settings.get("batch_size"),
                                           batch_gain=batch_gain), init_from=start)
    if plan.speedup is None:
        plan = dataclasses.replace(plan, precision_why=precision_reason(asked_precision, plan.precision, dev))
    if base.family == "gan":
        plan = _with_gan_augment(plan, latent=latent_gan(base))
    if latent_gan(base):
        plan = dataclasses.replace(plan, lr=LATENT_GAN_LR)
    plan = dataclasses.replace(plan, model_fields={**plan.model_fields, **budget_noise(base, given_fields),
                                                   **budget_label_lr(base, given_fields, start)})
    given = {**settings, **({"precision": asked_precision} if asked_precision else {})}
    chosen = {**plan.settings(), **{k: v for k, v in given.items() if k in plan.settings()}}
    cfg = new_run_config(data, **{**settings, **chosen}, model_fields={**plan.model_fields, **given_fields},
                         minutes=minutes)
    return cfg, plan


def _timed_where_chosen(plan: BudgetPlan, timings: list[StepTiming], measure: Callable[..., list[StepTiming]],
                        cfg: RunConfig, device: torch.device, *, minutes: float, n_train: int,
                        say: Callable[[str], None]) -> list[StepTiming]:
    """timings, with the batch the plan took timed too where it lies above every batch timed (PROBE_BATCHES are 16 and
    32; the planner's 64 is not among them), so that no plan rests on a line drawn past its points. Above them the
    line can be far off: on a 2-core CPU a latent GAN's steps timed 0.10-0.12 s at 16 and 0.15 at 32 (the line:
    0.21-0.25 at 64) and took 0.30 s at 64 in the run; a plan whose two points came out nearly equal took 64 at an
    expected 0.13 s, 2.3x the images a second of 32, and made 1,940 of its 4,095 steps (docs/training-budget.md, "How
    the step time is measured"). The batch is timed alone and the plan is then made again with that point."""
    timing = next(t for t in timings if dict(t.model_fields) == dict(plan.model_fields))
    if plan.batch_size <= max(b for b, _ in timing.points):
        return timings
    (confirmed,) = measure(cfg, [dict(plan.model_fields)], device, minutes=minutes, n_train=n_train,
                           batch_size=plan.batch_size, precisions=(timing.precision,), say=say)
    measured = tuple((b, s) for b, s in confirmed.points if b == plan.batch_size)
    if not measured:
        return timings
    say(f"time budget: batch {plan.batch_size} timed too: {measured[0][1]:.3f} s a step (the line through the "
        f"smaller batches gave {plan.seconds_per_step:.3f})")
    timed = dataclasses.replace(timing, points=tuple(timing.points) + measured)
    return [timed if t is timing else t for t in timings]


def _with_gan_augment(plan: BudgetPlan, *, latent: bool = False) -> BudgetPlan:
    """A GAN's plan with its augmentation (gan_augment) among the model fields it chose."""
    policy = gan_augment(plan.steps, plan.batch_size, plan.n_train, latent=latent)
    return dataclasses.replace(plan, model_fields={**plan.model_fields, "diffaugment": policy})


def describe_plan(cfg: RunConfig, plan: BudgetPlan) -> list[str]:
    """The lines `pixelforge train --minutes` prints: what the budget chose (the run's config, so settings the
    user gave show as given, but the precision the plan's: what the run trains in, with the reason where one
    precision was timed) and the step time measured."""
    t, m = cfg.train, cfg.model_config()
    if cfg.family == "gan":
        shape = (f"GAN base width {m.base_channels}, depth {m.depth}, DiffAugment {m.diffaugment or 'off'}"
                 + (f", minibatch std over {m.mbstd_group}" if m.mbstd_group else "")
                 + (f", in the latents of {Path(m.latent).name} (--set latent= trains in pixels)" if m.latent else ""))
    elif cfg.family != "diffusion":
        shape = f"{cfg.family}, its default size or the one given"
    elif m.backbone == "unet":
        shape = (f"UNet base {m.base_channels}, channel_mult {','.join(map(str, m.channel_mult))}, "
                 f"{m.num_res_blocks} res block(s) per level")
    else:
        shape = f"DiT depth {m.depth}"
    epochs = f", about {t.steps * t.batch_size / plan.n_train:.1f} epochs of {plan.n_train:,} images"
    lines = [
        f"time budget {t.minutes:g} min:",
        f"  model     {plan.parameters:,} parameters" + (f" trained, {plan.frozen:,} frozen" if plan.frozen else "")
        + f" ({shape})",
        f"  batch     {t.batch_size}",
        f"  steps     about {t.steps:,} expected ({plan.seconds_per_step:.3g} s/step measured){epochs}",
        f"  lr        {cfg.optim.lr:g}, warm-up {cfg.optim.warmup_steps} step(s)"
        + (" (a latent GAN's budget rate; --lr wins)" if plan.lr is not None and cfg.optim.lr == plan.lr else "")
        + (f", falling to 0 over the last {cfg.optim.cooldown_steps:,} of the {cfg.optim.cooldown_end:,} expected (--cooldown)"
           if cfg.optim.cooldown_steps else ""),
        *([f"  noise     P_mean {cfg.model['P_mean']:g} (ln sigma's mean in training; the family's "
           f"{get_family('diffusion').Config.P_mean:g}): more steps at the low noise levels that draw fine detail"]
          if "P_mean" in plan.model_fields else []),
        *([f"  labels    learnt at {cfg.model['label_lr_scale']:g}x the rate (label_lr_scale): each class starts as "
           f"the start's \"no label\""] if "label_lr_scale" in plan.model_fields else []),
        f"  precision {plan.precision}" + (f" (a step measured {plan.speedup:.2f}x as fast in bf16 autocast as in fp32; "
                                        f"bf16 needs {MIN_SPEEDUP:.2f}x)" if plan.speedup is not None
                                        else f" ({plan.precision_why})" if plan.precision_why else ""),
        "  start     " + (f"from {plan.init_from}'s weights (--init-from none trains from scratch)" if plan.init_from
                           else "from scratch"),
        f"  ema       decay {t.ema_decay:g} (averages about {1 / max(1 - t.ema_decay, 1e-9):,.0f} steps)",
        f"  cadence   checkpoint every {t.ckpt_every} steps, samples every {t.sample_every}, "
        f"validation every {t.val_every}, metrics every {t.log_every}",
    ]
    if plan.short:
        network = "the network it starts from" if plan.init_from else "the smallest network"
        lines.append(f"  note      the budget allows fewer than {MIN_STEPS:,} steps even for {network}: "
                     "expect rough samples; give more minutes")
    return lines


def write_budget_sampling(cfg: RunConfig, run_dir: os.PathLike) -> bool:
    """Give a diffusion run trained to a budget (`--minutes`) BUDGET_SAMPLING as its sample_defaults.json, unless
    the run already has one (a user's own, or that of an earlier call); True where it wrote the file."""
    path = Path(run_dir) / "sample_defaults.json"
    if cfg.family != "diffusion" or cfg.train.minutes is None or path.exists():
        return False
    atomic_write_text(path, json.dumps(BUDGET_SAMPLING))
    return True
