"""`pixelforge post` and the post-processing options `sample` and `edit` share: thin shells over pixelforge.post."""

from __future__ import annotations

from pathlib import Path

from .post import (COLOR_MATCH, COLOR_MATCH_GIVEN, DENOISE_STRENGTH_RANGE, SHARPEN_DEFAULT, SHARPEN_RADIUS, SHARPEN_RANGE,
                   UPSCALE_RANGE, PostError, PostSettings, as_post_settings, default_strengths)


def add_post_options(p) -> None:
    """The post-processing options of a parser. Values are taken as text and checked by PostSettings, which
    declares the ranges, so a bad value is one error line naming it (exit status 2)."""
    g = p.add_argument_group("post-processing (docs/post.md; applied in the order denoise, color, sharpen, upscale, "
                             "before the watermark)")
    g.add_argument("--denoise", nargs="?", const="nlm", default=None, metavar="nlm|bilateral",
                   help="denoise with OpenCV non-local means (nlm, also when no method is named) or a bilateral filter")
    g.add_argument("--denoise-strength", default=None, metavar="S",
                   help=f"denoising strength in grey levels, {DENOISE_STRENGTH_RANGE[0]:g}..{DENOISE_STRENGTH_RANGE[1]:g} "
                        f"(default: {default_strengths()})")
    g.add_argument("--color", default=None, metavar="auto|match:REF.png",
                   help="auto: grey-world white balance; match:REF.png: match each channel's histogram to REF.png's")
    g.add_argument("--sharpen", nargs="?", const=SHARPEN_DEFAULT, default=None, metavar="AMOUNT",
                   help=f"unsharp mask of radius {SHARPEN_RADIUS:g} px, amount {SHARPEN_RANGE[0]:g}..{SHARPEN_RANGE[1]:g} "
                        f"({SHARPEN_DEFAULT:g} when no amount is given)")
    g.add_argument("--upscale", default=None, metavar="FACTOR",
                   help=f"enlarge by an integer factor {UPSCALE_RANGE[0]}..{UPSCALE_RANGE[1]} (Lanczos, or --upscaler)")
    g.add_argument("--upscaler", default=None, metavar="RUN", help="with --upscale: a super-resolution model (a run "
                   "trained with --model upscale, e.g. the bundled mnist-upscale) upscales instead of Lanczos; --upscale must be its "
                   "scale (docs/upscale.md)")


def post_from_args(a) -> PostSettings | None:
    """The PostSettings the parsed post-processing options ask for (None: none); an error names the option as
    given on the command line (--denoise-strength, not denoise_strength)."""
    if a.color == COLOR_MATCH_GIVEN:  # a picture given as bytes is the server's and the API's; here it is a file
        raise ValueError(f"--color {COLOR_MATCH_GIVEN} needs its reference file: --color {COLOR_MATCH}REF.png")
    try:
        post = as_post_settings({"denoise": a.denoise, "denoise_strength": a.denoise_strength, "color": a.color,
                                 "sharpen": a.sharpen, "upscale": a.upscale, "upscaler": a.upscaler})
    except PostError as e:
        text = str(e)
        flag = "--" + e.field.replace("_", "-")
        raise ValueError(flag + text[len(e.field):] if text.startswith(e.field) else text) from None
    if post is not None and post.upscaler is not None:
        from .api import post_upscaler

        post_upscaler(post, device=getattr(a, "device", "auto"))  # not an upscaler, or another factor: fails before any work
    return post


def cmd_post(a) -> int:
    from . import api
    from .cli import _check_out, _marks
    from .progress import stage_bar

    post = post_from_args(a)
    if post is None:
        raise ValueError("name at least one step: --denoise, --color, --sharpen or --upscale")
    _check_out(a)
    with stage_bar(len(a.images), "post-processing") as bar:
        paths = api.post_files(a.images, Path(a.out), post, watermark=_marks(a),
                               callback=lambda done, total: bar.update(done - bar.n))
    steps = ", ".join(post.to_record()["order"])
    print(f"{len(paths)} images ({steps}) in {a.out}/")
    return 0


def add_post(sub) -> None:
    from .cli import _Help, _add_out_options, _add_watermark_options

    p = sub.add_parser(
        "post",
        help="post-process images: denoise, colour (white balance, histogram matching), sharpen, upscale",
        description="Post-process image files into OUTDIR, each as a PNG of the same name: the steps asked for run in "
        "the order denoise, color, sharpen, upscale (docs/post.md). A PNG pixelforge made keeps its settings, with the "
        "post-processing recorded, and is watermarked again on its new pixels; `sample --from` then regenerates it, "
        "post-processing included.",
        formatter_class=_Help,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any common format)")
    _add_out_options(p, required=True, metavar="OUTDIR")
    add_post_options(p)
    _add_watermark_options(p)
    p.set_defaults(func=cmd_post)
