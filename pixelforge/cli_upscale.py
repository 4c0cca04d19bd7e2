"""`pixelforge upscale RUN IMAGES... -o OUT`: a thin shell over Generator.upscale (docs/upscale.md)."""

from __future__ import annotations

from pathlib import Path


def cmd_upscale(a) -> int:
    from . import api
    from .cli import _check_out, _marks, _post, _progress_bar, _sampling_options, _warnings_printed
    from .upscale import image_files

    _check_out(a)
    post = _post(a)
    files = image_files(a.images)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(f"{f} and {stems[f.stem]} would both be written as {f.stem}.png")
        stems[f.stem] = f
    g = api.load(a.run, device=a.device, runs_dir=a.runs_dir)
    g.check_upscaler()  # before any file is read
    g.resolve_options(**_sampling_options(a))  # a bad option fails here, before the progress bar
    bar, cb = _progress_bar(len(files), f"upscaling with {g.name}")
    with _warnings_printed("upscale"):
        try:
            images = g.upscale(files, seed=a.seed, batch_size=a.batch_size, callback=cb, watermark=_marks(a), post=post,
                               **_sampling_options(a))
        finally:
            bar.close()
    paths = api.save_images(images, Path(a.out), grid=False, watermark=_marks(a), names=list(stems))
    scale = g.model.config.lowres.scale
    print(f"{len(paths['images'])} images upscaled {scale}x in {a.out}/ (their inputs beside them, for `sample --from`)")
    return 0


def add_upscale(sub) -> None:
    from .cli import (MAX_SEED, _add_out_options, _add_post_options, _add_sampling_options, _add_watermark_options, _Help,
                      _int_range)

    p = sub.add_parser(
        "upscale",
        help="upscale images with a super-resolution model (a run trained with --model upscale)",
        description="Upscale each IMAGE (a file, or every file of a folder) with a super-resolution diffusion model: "
        "an input of the model's input size (its image size / scale) becomes one of its image size; another size is "
        "resized (Lanczos) first, with a warning naming both sizes. Image i uses seed + i, so the same seed gives the "
        "same pixels. Each output OUT/<input name>.png records its settings and the input's SHA-256, and a lossless "
        "copy of the input is written beside it, so `pixelforge sample --from OUT/NAME.png` regenerates it. Train a "
        "model with `pixelforge train DATA --model upscale --scale 2` (docs/upscale.md).",
        formatter_class=_Help,
    )
    p.add_argument("run", metavar="RUN", help="an upscaler: run folder, run name, or bundled model (mnist-upscale, once "
                   "scripts/make_upscale.sh has made it)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="low-resolution image files (any common format) or folders")
    _add_out_options(p, required=True, metavar="OUT")
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=_int_range(1), default=64, help="images the model upscales at once")
    p.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS)")
    p.add_argument("--device", default="auto")
    _add_sampling_options(p)
    _add_post_options(p)
    _add_watermark_options(p)
    p.set_defaults(func=cmd_upscale)
