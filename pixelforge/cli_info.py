"""`pixelforge info`: a run's config, progress, weights, data set and last metrics."""

from __future__ import annotations

import csv
import json


def cmd_info(a) -> int:
    import dataclasses

    from .api import read_class_names, run_sample_options
    from .models import get_family
    from .models.limits import check_model_size, parameter_count
    from .runs.checkpoint import check_shapes, list_checkpoints, state_shapes
    from .runs.config import RunConfig
    from .runs.store import resolve_run, weights_file, weights_hash, weights_shapes

    run_dir = resolve_run(a.run, a.runs_dir)
    cfg = RunConfig.load(run_dir / "config.json")
    model = cfg.model_config()
    family = get_family(cfg.family)
    # Counted on the meta device: an untrusted config allocates nothing, and a too large one is refused.
    shaped = check_model_size(family, model, f"{run_dir / 'config.json'}: model")
    try:
        if cfg.compress is None:  # a compressed run's files are checked when it loads (compress/load.py)
            check_shapes(weights_shapes(run_dir), state_shapes(shaped), weights_file(run_dir))
        weights = f"{weights_file(run_dir).name} (hash {weights_hash(run_dir)})"
        if cfg.compress is not None:
            weights += f"; compressed: {cfg.compress.variant} variant of {cfg.compress.source}"
    except FileNotFoundError as e:
        weights = f"none yet ({e})"
    print(f"run:      {run_dir}")
    print(f"family:   {cfg.family}   (package {cfg.package_version})")
    print(f"data:     {cfg.data.source}  ({cfg.data.image_size}x{cfg.data.image_size}, {cfg.data.channels} channel(s), crop {cfg.data.crop})")
    unused = set(model.unused_fields()) if hasattr(model, "unused_fields") else set()
    fields = {k: v for k, v in dataclasses.asdict(model).items() if k not in unused}
    adapter = fields.pop("adapter", None)
    autoencoder, latent = fields.pop("autoencoder", None), fields.pop("latent", None)
    print(f"model:    {parameter_count(shaped) / 1e6:.2f} M parameters; " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    if autoencoder:  # latent diffusion or a latent GAN: its network works in the autoencoder's latents
        shape = "x".join(str(n) for n in model.net_shape) if hasattr(model, "net_shape") else "its"
        print(f"latent:   {shape} latents of the autoencoder {latent} (frozen): "
              + ", ".join(f"{k}={v}" for k, v in autoencoder.items()))
    frozen = sum(p.numel() for p in shaped.parameters() if not p.requires_grad)
    if frozen:  # an adapter's base, latent diffusion's autoencoder: copied from another run and never trained
        print(f"trained:  {(parameter_count(shaped) - frozen) / 1e6:.2f} M parameters trainable, {frozen / 1e6:.2f} M frozen")
    if adapter:
        print(f"adapter:  {adapter['kind']} (ControlNet-style) on {adapter['base']}, its weights frozen (SHA-256 "
              f"{adapter['base_sha256'][:16]}... when the run was made)")
    length = f"{cfg.train.steps} steps" if cfg.train.minutes is None else \
        f"a {cfg.train.minutes:g}-minute budget (about {cfg.train.steps} steps planned)"
    print(f"train:    {length} x batch {cfg.train.batch_size}, lr {cfg.optim.lr}, EMA {cfg.train.ema_decay}")
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        try:
            meta = json.loads(ckpts[-1].with_suffix(".json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{ckpts[-1].with_suffix('.json')}: not valid JSON ({e})") from None
        if cfg.train.minutes is None:
            print(f"progress: step {meta.get('step', '?')} of {cfg.train.steps} ({meta.get('images_seen', 0):,} images seen)")
        else:
            elapsed = meta.get("elapsed_s")
            spent = elapsed / 60 if isinstance(elapsed, (int, float)) else 0.0  # absent from checkpoints of old versions
            print(f"progress: step {meta.get('step', '?')}, {spent:.1f} of {cfg.train.minutes:g} minutes spent "
                  f"({meta.get('images_seen', 0):,} images seen)")
    print(f"weights:  {weights}")
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with open(metrics, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            last = rows[-1]
            vals = [r["val_loss"] for r in rows if r.get("val_loss")]
            print(f"last:     step {last['step']}, loss {last.get('loss') or '-'}, img/s {last.get('img_per_s') or '-'}"
                  + (f", val_loss {vals[-1]}" if vals else ""))
    print("sampling: " + ", ".join(f"{k}={v}" for k, v in run_sample_options(run_dir, family.option_specs).items()))
    if getattr(model, "num_classes", 0):
        names_path = run_dir / "classes.json"
        names = read_class_names(names_path) if names_path.exists() else []
        print(f"classes:  {model.num_classes}" + (f" ({', '.join(names)})" if names else ""))
    return 0


def add_info(sub):
    p = sub.add_parser("info", help="print a run's config, progress, data set and last metrics")
    p.add_argument("run", metavar="RUN", help="run folder, run name, or bundled model")
    p.add_argument("--runs-dir", default=None)
    p.set_defaults(func=cmd_info)
