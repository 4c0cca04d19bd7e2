"""The `pixelforge` command: a thin shell over the Python API (one sub-command per verb)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from . import __version__

EPILOG = """examples:
  pixelforge demo                                  # samples from the bundled model, no download
  pixelforge datasets                              # bundled data sets
  pixelforge data check ./my_images                # what a folder holds, which files are unusable
  pixelforge train mnist --model diffusion --name digits --steps 2000
  pixelforge sample digits -n 64 --label 3 --sampler heun --steps 18 --guidance 2 --seed 0 -o out/
  pixelforge sample --from out/seed000005-label3.png -o again/
  pixelforge info digits
"""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, an empty list, or off for a switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model on a folder of images or a bundled data set (resumes a run of the same name)",
        description="Train a generator. DATA is a folder of images (recursive; class sub-folders become labels; "
        "an optional captions.jsonl is kept) or a bundled data set name (see `pixelforge datasets`). Running it "
        "again with the same --name resumes from the last checkpoint; Ctrl-C saves a checkpoint and exits.",
        formatter_class=_Help,
    )
    p.add_argument("data", metavar="DATA", help="folder of images or bundled data set name")
    p.add_argument("--model", default="diffusion", help="model family: diffusion, gan, vae, vqvae, pixelcnn or transformer "
                   "(a token transformer over VQ-VAE codes, both stages trained by this one command)")
    p.add_argument("--name", required=True, help="run name: the run lives in RUNS_DIR/NAME")
    p.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps in total (default 10000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (Adam); default: the family's "
                   "(diffusion, gan, vqvae, transformer 5e-4; vae, pixelcnn 1e-3)")
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0: off)")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: native for bundled sets, 32 for folders)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grayscale or 3 RGB (default: from the data)")
    p.add_argument("--crop", choices=("center", "random", "none"), default="center", help="how images are fitted to a square")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (not for digits or text)")
    p.add_argument("--no-labels", action="store_true", help="train unconditionally even if the data has classes")
    m = p.add_argument_group("model shape (unset ones take the family's defaults; see docs/design.md)")
    m.add_argument("--base-channels", type=int, default=None, help="network width at full resolution (diffusion default 32)")
    m.add_argument("--channel-mult", default=None, help="width multipliers per resolution, e.g. 1,2,2")
    m.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per resolution")
    m.add_argument("--attn-resolutions", default=None, help="feature sides with self-attention, e.g. 16,8 (the middle always has it)")
    m.add_argument("--dropout", type=float, default=None)
    m.add_argument("--label-dropout", type=float, default=None, help="share of labels dropped for classifier-free guidance (diffusion default 0.1)")
    m.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other field of the family's model config, e.g. --set sigma_data=0.5 (repeatable)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--val-every", type=int, default=500, help="validation loss every K steps")
    p.add_argument("--patience", type=int, default=0, help="stop after this many evaluations of --early-stop-on without improvement (0: never)")
    p.add_argument("--eval-every", type=int, default=0, help="FID and KID of --eval-samples EMA samples every K steps, into metrics.csv (0: off)")
    p.add_argument("--eval-samples", type=int, default=256, help="samples per in-training evaluation (fixed seeds)")
    p.add_argument("--eval-extractor", default="auto", help="feature extractor for in-training evaluation (see pixelforge evaluate)")
    p.add_argument("--early-stop-on", choices=("val_loss", "fid", "kid"), default="val_loss", help="what --patience watches")
    p.add_argument("--sample-every", type=int, default=1000, help="sample grid every K steps (runs/NAME/samples/)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every K steps")
    p.add_argument("--log-every", type=int, default=25, help="metrics.csv row every K steps")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of images held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for this call: checkpoint and stop when it runs out (run again to continue)")
    p.add_argument("--init-from", default=None, metavar="RUN", help="start from another run's or a bundled model's weights (fine-tuning)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _model_fields(a, family, image_size: int, channels: int, num_classes: int) -> dict:
    """The family's model config from the data's shape, the shape flags given and --set FIELD=VALUE."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(family.Config)}
    model = {k: v for k, v in {"image_size": image_size, "channels": channels, "num_classes": num_classes}.items() if k in fields}
    flags = {
        "base_channels": a.base_channels,
        "channel_mult": _ints(a.channel_mult, "--channel-mult") if a.channel_mult is not None else None,
        "num_res_blocks": a.num_res_blocks,
        "attn_resolutions": _ints(a.attn_resolutions, "--attn-resolutions") if a.attn_resolutions is not None else None,
        "dropout": a.dropout,
        "label_dropout": a.label_dropout,
    }
    for key, value in flags.items():
        if value is None:
            continue
        if key not in fields:
            raise ValueError(f"--{key.replace('_', '-')} does not apply to {a.model} models")
        model[key] = value
    for item in a.set:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of: {', '.join(sorted(fields))}")
        try:
            model[key] = json.loads(text)
        except json.JSONDecodeError:
            model[key] = text  # a bare string such as --set backbone=dit
    return model


def cmd_train(a) -> int:
    from .data import DataConfig, describe_source
    from .models import OptimConfig, get_family
    from .train import RunConfig, TrainConfig, train
    from .train.runs import default_runs_dir

    runs_dir = Path(a.runs_dir) if a.runs_dir else default_runs_dir()
    run_dir = runs_dir / a.name
    saved = run_dir / "config.json"
    if saved.exists() and (run_dir / "checkpoints").is_dir():
        cfg = RunConfig.load(saved)
        if a.steps is not None and a.steps != cfg.train.steps:
            from dataclasses import replace

            cfg = replace(cfg, train=replace(cfg.train, steps=a.steps))
        print(f"run {run_dir} exists: resuming with its saved config (family {cfg.family}, {cfg.train.steps} steps)")
    else:
        family = get_family(a.model)
        native = describe_source(a.data)  # {"image_size", "channels", "num_classes"}
        image_size = a.image_size or native["image_size"]
        channels = a.channels or native["channels"]
        data = DataConfig(source=a.data, image_size=image_size, channels=channels, crop=a.crop, hflip=a.hflip,
                          val_fraction=a.val_fraction, split_seed=a.seed)
        model = _model_fields(a, family, image_size, channels, 0 if a.no_labels else native["num_classes"])
        cfg = RunConfig(
            family=a.model,
            model=model,
            data=data,
            optim=OptimConfig(lr=a.lr if a.lr is not None else family.default_lr, warmup_steps=a.warmup, grad_clip=a.grad_clip),
            train=TrainConfig(steps=a.steps or 10_000, batch_size=a.batch_size, ema_decay=a.ema_decay, log_every=a.log_every,
                              val_every=a.val_every, patience=a.patience, sample_every=a.sample_every,
                              eval_every=a.eval_every, eval_samples=a.eval_samples, eval_extractor=a.eval_extractor,
                              early_stop_on=a.early_stop_on,
                              ckpt_every=a.ckpt_every, seed=a.seed),
        )
        cfg = RunConfig.from_dict(json.loads(cfg.to_json()))  # validates every field now, not mid-run
    if cfg.train.early_stop_on != "val_loss" and not cfg.train.eval_every:
        raise ValueError(f"--early-stop-on {cfg.train.early_stop_on} needs --eval-every K to compute it")
    evaluator = _training_evaluator(cfg, a.device) if cfg.train.eval_every else None
    result = train(cfg, run_dir, device=a.device, init_from=a.init_from, progress=not a.quiet, evaluator=evaluator,
                   max_seconds=a.max_minutes * 60 if a.max_minutes else None)
    print(f"{result.stopped} at step {result.step}: {run_dir}")
    if result.last_checkpoint:
        print(f"checkpoint: {result.last_checkpoint}")
    print(f"samples: {run_dir / 'samples'}   metrics: {run_dir / 'metrics.csv'}")
    return 130 if result.stopped == "interrupted" else 0


def _training_evaluator(cfg, device: str):
    """FID/KID during training against the run's own data, with fast sampler settings (recorded here)."""
    from .evaluate import load_real
    from .metrics.evaluate import make_training_evaluator
    from .metrics.features import load_extractor

    ext = load_extractor(cfg.train.eval_extractor, data_source=cfg.data.source, device=device)
    real = load_real(cfg.data.source, extractor=ext, image_size=cfg.data.image_size, progress=False)
    print(f"in-training evaluation: {cfg.train.eval_samples} samples (dpmpp_2m, 12 steps) vs {len(real)} real images, "
          f"extractor {ext.name}")
    return make_training_evaluator(real, ext, n=cfg.train.eval_samples, num_classes=getattr(cfg.model_config(), "num_classes", 0),
                                   sample_options={"sampler": "dpmpp_2m", "steps": 12})


def _add_sample(sub):
    p = sub.add_parser(
        "sample",
        help="generate images from a run or a bundled model",
        description="Generate PNGs (each carrying its settings in its metadata) and a grid. Image i uses seed+i, "
        "so any single image can be regenerated alone; --from FILE.png regenerates one exactly.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder, run name, or bundled model (default: the bundled model)")
    p.add_argument("-n", type=int, default=16, help="number of images")
    p.add_argument("--label", default=None, help="class index or name (class-conditional models)")
    _add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("-o", "--out", default="out", help="output folder")
    p.add_argument("--from", dest="from_png", metavar="IMAGE.png", help="regenerate the image whose settings this PNG carries")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)


def _add_sampling_options(p) -> None:
    g = p.add_argument_group("sampling options (diffusion models; unset ones take the model's defaults)")
    g.add_argument("--sampler", default=None, help="euler, heun, dpmpp_2m, ddim or ancestral (default heun)")
    g.add_argument("--steps", type=int, default=None, help="sampler steps (default 18; Heun uses 2 evaluations a step)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 1: none)")
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
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def callback(done: float, n: int):
        bar.n = round(done, 2)
        bar.refresh()

    return bar, callback


def cmd_sample(a) -> int:
    from . import api

    out = Path(a.out)
    if a.from_png:
        image, s = api.regenerate(a.from_png, device=a.device, runs_dir=a.runs_dir)
        paths = api.save_images([image], out, grid=False)
        print(f"regenerated {a.from_png} (model {s['model']}, seed {s['seed']}): {paths['images'][0]}")
        return 0
    from .train.runs import DEFAULT_MODEL

    g = api.load(a.run or DEFAULT_MODEL, device=a.device, runs_dir=a.runs_dir)
    g.resolve_options(**_sampling_options(a))  # a bad option fails here, before the progress bar
    bar, cb = _progress_bar(a.n, f"sampling {g.name}")
    images = g.generate(a.n, label=a.label, seed=a.seed, batch_size=a.batch_size, callback=cb, **_sampling_options(a))
    bar.close()
    paths = api.save_images(images, out)
    print(f"{len(paths['images'])} images in {out}/  grid: {paths['grid']}")
    return 0


def cmd_demo(a) -> int:
    from . import api
    from .html import gallery_page
    from .train.runs import DEFAULT_MODEL

    g = api.load(a.model or DEFAULT_MODEL, device=a.device)
    per = a.per_class
    labels = [c for c in range(g.num_classes) for _ in range(per)] if g.num_classes else None
    n = len(labels) if labels else per * 10
    bar, cb = _progress_bar(n, f"sampling {g.name}")
    options = {k: v for k, v in {"steps": a.steps, "guidance": a.guidance}.items() if k in g.sample_options}
    images = g.generate(n, labels=labels, seed=a.seed, callback=cb, **options)
    bar.close()
    out = Path(a.out)
    paths = api.save_images(images, out)
    from .images import make_grid, save_png

    grid = save_png(make_grid(images, cols=per if labels else None, scale=max(1, 64 // images[0].size[0])), out / "grid.png")
    page = gallery_page(f"pixelforge demo: {g.name}", grid, paths["images"], [im.info["pixelforge"] for im in images], out / "index.html")
    print(f"grid: {grid.resolve()}")
    print(f"page: {page.resolve()}")
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="generate a grid and an HTML page with the bundled model (offline)",
                       formatter_class=_Help)
    p.add_argument("--model", default=None, help="run or bundled model (default: the bundled model)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (rows of the grid)")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="out/demo")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def cmd_info(a) -> int:
    from .train.checkpoint import list_checkpoints
    from .train.config import RunConfig
    from .train.runs import resolve_run, weights_file, weights_hash

    run_dir = resolve_run(a.run, a.runs_dir)
    cfg = RunConfig.load(run_dir / "config.json")
    print(f"run:      {run_dir}")
    print(f"family:   {cfg.family}   (package {cfg.package_version})")
    print(f"data:     {cfg.data.source}  ({cfg.data.image_size}x{cfg.data.image_size}, {cfg.data.channels} channel(s), crop {cfg.data.crop})")
    model = cfg.model_config()
    from .train.loop import build_model

    n_params = sum(p.numel() for p in build_model(cfg, __import__("torch").device("cpu")).parameters())
    print(f"model:    {n_params / 1e6:.2f} M parameters; " + ", ".join(f"{k}={v}" for k, v in cfg.model.items()))
    print(f"train:    {cfg.train.steps} steps x batch {cfg.train.batch_size}, lr {cfg.optim.lr}, EMA {cfg.train.ema_decay}")
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        meta = json.loads(ckpts[-1].with_suffix(".json").read_text())
        print(f"progress: step {meta['step']} of {cfg.train.steps} ({meta.get('images_seen', 0):,} images seen)")
    try:
        print(f"weights:  {weights_file(run_dir).name} (hash {weights_hash(run_dir)})")
    except FileNotFoundError as e:
        print(f"weights:  none yet ({e})")
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        rows = list(csv.DictReader(open(metrics)))
        if rows:
            last = rows[-1]
            vals = [r["val_loss"] for r in rows if r.get("val_loss")]
            print(f"last:     step {last['step']}, loss {last.get('loss') or '-'}, img/s {last.get('img_per_s') or '-'}"
                  + (f", val_loss {vals[-1]}" if vals else ""))
    from .api import Generator

    print("sampling: " + ", ".join(f"{k}={v}" for k, v in Generator(run_dir, device="auto").sample_options.items()))
    if getattr(model, "num_classes", 0):
        names_path = run_dir / "classes.json"
        names = json.loads(names_path.read_text()) if names_path.exists() else []
        print(f"classes:  {model.num_classes}" + (f" ({', '.join(names)})" if names else ""))
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="print a run's config, progress, data set and last metrics")
    p.add_argument("run", metavar="RUN", help="run folder, run name, or bundled model")
    p.add_argument("--runs-dir", default=None)
    p.set_defaults(func=cmd_info)


def cmd_data_check(a) -> int:
    from .data import check_folder, format_report

    report = check_folder(a.dir, progress=not a.quiet)
    print(format_report(report))
    return 0 if report.usable > 0 else 1


def cmd_datasets(a) -> int:
    from .data.bundled import describe_bundled

    print(describe_bundled())
    return 0


def cmd_evaluate(a) -> int:
    from . import evaluate as ev

    if a.cas:
        if not a.run:
            raise ValueError("--cas needs a RUN (a class-conditional run or bundled model)")
        result = ev.classification_accuracy(a.run, n_per_class=a.per_class, epochs=a.epochs, seed=a.seed,
                                            runs_dir=a.runs_dir, device=a.device, progress=not a.json,
                                            **_sampling_options(a))
        if a.json:
            print(json.dumps(result))
        else:
            print(f"classification accuracy score (trained on {result['n_train']} generated images, tested on "
                  f"{result['n_test']} real held-out ones): {result['cas']:.2%}")
            print(f"same classifier trained on {result['n_train']} real images:             {result['real_accuracy']:.2%}")
        return 0
    if a.fake:
        if not a.real:
            raise ValueError("--fake DIR needs --real DIR (or a bundled data set name) to compare with")
        figures = ev.evaluate_folders(a.fake, a.real, extractor=a.extractor, device=a.device,
                                      report=None if a.no_report else (a.report or Path(a.fake) / "report.html"),
                                      progress=not a.json)
    else:
        if not a.run:
            raise ValueError("name a RUN (run folder, run name or bundled model), or use --fake DIR --real DIR")
        figures = ev.evaluate_run(a.run, real=a.real, n=a.n, extractor=a.extractor, seed=a.seed, runs_dir=a.runs_dir,
                                  device=a.device, report=False if a.no_report else (a.report or True),
                                  progress=not a.json, **_sampling_options(a))
    if a.json:
        keys = ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "extractor", "n_fake", "n_real")
        print(json.dumps({**{k: figures[k] for k in keys}, "settings": figures["settings"]}))
        return 0
    print(f"extractor: {figures['extractor']}   fake: {figures['n_fake']}   real: {figures['n_real']}")
    print(f"FID        {figures['fid']:.4f}")
    print(f"KID        {figures['kid']:.5f} ± {figures['kid_std']:.5f}")
    if figures.get("is") is not None:
        print(f"IS         {figures['is']:.3f} ± {figures['is_std']:.3f}   (domain classifier: not comparable to published IS)")
    print(f"precision  {figures['precision']:.4f}")
    print(f"recall     {figures['recall']:.4f}")
    if figures.get("report"):
        print(f"report: {Path(figures['report']).resolve()}")
    return 0


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="FID, KID, precision/recall (and a domain IS with mnist-classifier) of a run or folder against real images; CAS",
        description="Measure a generator: sample RUN (labels balanced over its classes) and compare with real data "
        "(the run's own data set unless --real is given), or compare any folder of images with another (--fake DIR "
        "--real DIR). Writes report.html (figures, settings, grids, nearest real neighbours, metrics over training). "
        "Figures depend on the feature extractor: it is always printed beside them. The FID Inception network "
        "extracted 3.2 images/s on a 2-core CPU (bench/metrics_speed.py --quick --inception-images 64; README); "
        "the domain extractor (for digit data sets) thousands.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder, run name or bundled model")
    p.add_argument("--real", metavar="DATA", help="real images: folder or bundled data set (default: the run's data)")
    p.add_argument("--fake", metavar="DIR", help="evaluate this folder of images instead of sampling a run")
    p.add_argument("-n", type=int, default=10_000, help="number of samples to generate")
    p.add_argument("--extractor", default="auto", help="auto (domain classifier for digit sets, else inception), inception, mnist-classifier")
    _add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object (no progress output)")
    p.add_argument("--report", metavar="PATH", help="where report.html goes (default: in the run, or out/NAME/ for a bundled model)")
    p.add_argument("--no-report", action="store_true", help="print figures only")
    p.add_argument("--cas", action="store_true", help="classification accuracy score: train a classifier on generated images, test on real ones")
    p.add_argument("--per-class", type=int, default=200, help="with --cas: generated images per class")
    p.add_argument("--epochs", type=int, default=8, help="with --cas: classifier training epochs")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)


def cmd_serve(a) -> int:
    import os

    try:
        import uvicorn

        from .serve import create_app
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra (pip install 'pixelforge[serve]'): {e}") from None
    api_key = a.api_key or os.environ.get("PIXELFORGE_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {a.host} without an API key: anyone who can reach it can use it "
              "(set --api-key or $PIXELFORGE_API_KEY)", file=sys.stderr)
    app = create_app(a.run or None, api_key=api_key, max_queue=a.max_queue, workers=a.workers, job_timeout_s=a.job_timeout,
                     db_path=a.db, cors_origins=a.cors_origin, device=a.device, runs_dir=a.runs_dir)
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"serving {', '.join(app.state.generators)} at http://{host}:{a.port}/  "
          f"(API: http://{host}:{a.port}/api/v1, schema: /openapi.json; ratings in {app.state.ratings.path})")
    # Ctrl-C waits at most 5 s for open event streams before the workers are stopped
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning" if a.quiet else "info", timeout_graceful_shutdown=5)
    return 0


def _add_serve(sub):
    p = sub.add_parser(
        "serve",
        help="an HTTP API and a web page for generation and human ratings",
        description="Serve runs or bundled models over HTTP: the web page at /, the API under /api/v1 (schema at "
        "/openapi.json). Requests are queued and run by worker threads; a full queue answers 429. Listens on "
        "loopback only unless --host says otherwise.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="*", metavar="RUN", help="run folders, run names or bundled models (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set an API key then)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key", default=None, help="key every endpoint but health requires (default $PIXELFORGE_API_KEY, "
                   "better: other users can read command lines; none: open)")
    p.add_argument("--workers", type=int, default=1, help="generation jobs run at once")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait before requests get 429")
    p.add_argument("--job-timeout", type=float, default=300.0, help="seconds a job may run before it is stopped")
    p.add_argument("--db", default=None, help="ratings SQLite file (default RUNS_DIR/ratings.sqlite)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from this origin to call the API (repeatable; default: none)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="log warnings only, not every request")
    p.set_defaults(func=cmd_serve)


def cmd_ratings(a) -> int:
    from .serve.ratings import RatingsDB, find_evaluation, format_scores, scores
    from .train.runs import default_runs_dir

    path = Path(a.db) if a.db else (Path(a.runs_dir) if a.runs_dir else default_runs_dir()) / "ratings.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no ratings database at {path}: ratings are collected by `pixelforge serve` (Compare tab)")
    result = scores(RatingsDB(path).rows(), by=a.by, evaluation=lambda model: find_evaluation(model, a.runs_dir))
    print(json.dumps(result) if a.json else format_scores(result))
    return 0


def _add_ratings(sub):
    p = sub.add_parser(
        "ratings",
        help="scores from human ratings: Elo, Bradley-Terry strength and FID per model",
        description="Score the pairwise ratings collected by `pixelforge serve`: Elo (K=32, start 1000, in the order "
        "given) and Bradley-Terry strengths (MM algorithm), beside each model's newest FID (its evaluations.jsonl).",
        formatter_class=_Help,
    )
    p.add_argument("--db", default=None, help="ratings SQLite file (default RUNS_DIR/ratings.sqlite)")
    p.add_argument("--by", choices=("model", "settings"), default="model", help="score each model, or each model and sampling settings")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.add_argument("--runs-dir", default=None)
    p.set_defaults(func=cmd_ratings)


def cmd_export(a) -> int:
    from .train.runs import export_run, resolve_run

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_info(sub)
    _add_evaluate(sub)
    _add_serve(sub)
    _add_ratings(sub)
    d = sub.add_parser("data", help="data tools (check)")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    c = dsub.add_parser("check", help="list what a folder of images holds and which files are unusable, and why")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_data_check)
    e = sub.add_parser("export", help="write a run's sampling files (EMA weights, config) to a folder, e.g. to ship a model")
    e.add_argument("run", metavar="RUN")
    e.add_argument("out", metavar="OUT_DIR")
    e.add_argument("--runs-dir", default=None)
    e.set_defaults(func=cmd_export)
    ds = sub.add_parser("datasets", help="list the bundled data sets")
    ds.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not hasattr(a, "func"):
        parser.print_help()
        return 0 if a.command is None else 2
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"pixelforge {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
