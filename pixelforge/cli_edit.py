"""`pixelforge edit`: img2img and inpainting with a diffusion, VAE or VQ-VAE run."""

from __future__ import annotations

from .cli import (MAX_SAMPLES, MAX_SEED, _add_out_options, _add_post_options, _add_sampling_options, _add_watermark_options, _check_out,
                  _Help, _int_range, _marks, _note_unmarked, _out_dir, _post, _progress_bar, _sampling_options,
                  _warnings_printed)


def add_edit(sub):
    p = sub.add_parser(
        "edit",
        help="edit an image with a diffusion, VAE or VQ-VAE model: img2img (--strength) and inpainting (--mask)",
        description="Noise the input image to the level --strength gives and sample back down (SDEdit); with "
        "--mask, repaint only the mask's white part and keep the black part (inpainting). The image is converted "
        "to the model's channels and, if of another size, resized with a warning. Writes PNGs carrying their "
        "settings (with the SHA-256 of the image and the mask) and a grid. A VAE moves the image's latent towards a "
        "prior draw by --strength, a VQ-VAE redraws that share of its codes; both add the decoded change to the input "
        "(within the mask). GAN, PixelCNN and transformer models cannot edit.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder, run name, or bundled model (default: the bundled model)")
    p.add_argument("--image", required=True, metavar="IN.png", help="the image to edit (any common format)")
    p.add_argument("--mask", default=None, metavar="MASK.png", help="inpainting: white marks what to repaint, "
                   "black what to keep (binarised at 50%%, resized with nearest neighbour)")
    p.add_argument("--strength", type=float, default=None,
                   help="how far the input is noised, 0..1: 0 returns it, 1 draws a new image (default 0.6)")
    p.add_argument("--resample", type=int, default=None,
                   help="inpainting: RePaint passes per step, 1..20 (default 1: none)")
    p.add_argument("-n", type=_int_range(1, MAX_SAMPLES), default=1, help=f"edits of the image, one per seed (1..{MAX_SAMPLES})")
    p.add_argument("--label", default=None, help="class index or name (class-conditional models)")
    p.add_argument("--prompt", default=None, help="text prompt (text-conditioned models)")
    p.add_argument("--negative-prompt", default=None, help="what guidance (--guidance above 1) steers away from")
    _add_sampling_options(p)
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0, help="edit i uses seed + i")
    p.add_argument("--batch-size", type=_int_range(1), default=64)
    _add_out_options(p)
    p.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS)")
    p.add_argument("--device", default="auto")
    _add_post_options(p)
    _add_watermark_options(p)
    p.set_defaults(func=cmd_edit)


def cmd_edit(a) -> int:
    from . import api
    from .runs import DEFAULT_MODEL

    _check_out(a)
    post = _post(a)
    g = api.load(a.run or DEFAULT_MODEL, device=a.device, runs_dir=a.runs_dir)
    options = _sampling_options(a)
    options.update({k: v for k, v in {"strength": a.strength, "resample": a.resample}.items() if v is not None})
    bars: list = []  # the bar starts with the first step, after the files are read: a bad file prints one line

    def cb(done: float, n: int) -> None:
        if not bars:
            bars.append(_progress_bar(a.n, f"editing with {g.name}"))
        bars[0][1](done, n)

    with _warnings_printed("edit"):
        try:
            images = g.edit([a.image] * a.n, mask=a.mask, label=a.label, prompt=a.prompt,
                            negative_prompt=a.negative_prompt, seed=a.seed, batch_size=a.batch_size, callback=cb,
                            watermark=_marks(a), post=post, **options)
        finally:
            for bar, _ in bars:
                bar.close()
    out = _out_dir(a, g.name)  # made only now, so a call that fails leaves no empty folder
    paths = api.save_images(images, out, prefix="edit-", watermark=_marks(a))
    print(f"{len(paths['images'])} edited images in {out}/  grid: {paths['grid']}")
    _note_unmarked(images, "edit")
    return 0
