"""Post-processing of generated and edited images: denoise, colour, sharpen, upscale (docs/post.md).

The steps always run in that order, each only where asked: denoise first (so sharpening does not amplify the
noise), then colour (white balance or histogram matching on the denoised pixels), then sharpen, then upscale
(last, so every other step works on the model's own pixels). Every entry point (the `post` command, the
`--denoise/--sharpen/--color/--upscale` options of `sample` and `edit`, `Generator.generate(post=...)` and
`edit(...)`, the server's job field "post" with its color_reference upload) goes through `PostSettings` and
`apply_post`. Generation applies it before the invisible watermark is embedded, so the mark is made on the final
pixels (api._with_settings).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageFilter

DENOISE_METHODS = ("nlm", "bilateral")
# Default strength per method and image mode, chosen on 28x28..64x64 images like the bundled models' with Gaussian
# noise of sigma 15 (docs/post.md has the measurement): NLM's h and the bilateral filter's sigmaColor, in grey
# levels (0..255). Colour NLM compares patches in CIELAB over three channels, so it needs about half the h.
DENOISE_DEFAULT_STRENGTH = {"nlm": {"L": 20.0, "RGB": 10.0}, "bilateral": {"L": 40.0, "RGB": 40.0}}
DENOISE_STRENGTH_RANGE = (1.0, 100.0)
# Non-local means windows for small images: OpenCV's defaults (7-pixel patches searched over 21x21) span most of
# a 28x28 image and blur it; 3-pixel patches searched over 7x7 removed more noise at every size measured.
NLM_TEMPLATE, NLM_SEARCH = 3, 7
BILATERAL_DIAMETER = 5  # pixels: the neighbourhood the bilateral filter averages over (also its sigmaSpace)
SHARPEN_DEFAULT = 1.0  # unsharp mask amount: 1.0 adds the full difference from the blurred image (Pillow's 100 %)
SHARPEN_RANGE = (0.1, 5.0)
SHARPEN_RADIUS = 1.0  # pixels: the Gaussian blur the unsharp mask subtracts; a small image's edges are 1-2 px wide
UPSCALE_RANGE = (2, 8)
COLOR_AUTO, COLOR_MATCH = "auto", "match:"
COLOR_MATCH_GIVEN = "match"  # color match to a picture given as its file's bytes (color_reference), not a path
ORDER = ("denoise", "color", "sharpen", "upscale")


class PostError(ValueError):
    """An invalid post-processing option; `field` names it (denoise, denoise_strength, sharpen, color, upscale)."""

    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field = field


def _number(field: str, value, lo: float, hi: float, *, integer: bool = False) -> float | int:
    """value (a number or its text) checked to lie in [lo, hi]; a PostError naming the field and the range."""
    kind = "an integer" if integer else "a number"
    where = f"{field} must be {kind} from {lo:g} to {hi:g}"
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise PostError(field, f"{where}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PostError(field, f"{where}, got {value!r}")
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise PostError(field, f"{where}, got {value!r}")
        value = int(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise PostError(field, f"{where}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class PostSettings:
    """Which post-processing steps to apply (None: skip that step); validated on construction.

    denoise: "nlm" (OpenCV non-local means) or "bilateral" (OpenCV bilateral filter).
    denoise_strength: NLM's h or the bilateral filter's sigmaColor, in grey levels, 1..100 (None: the default of
      the method for the image's mode, DENOISE_DEFAULT_STRENGTH). Only with denoise.
    color: "auto" (grey-world white balance), "match:REF" (histogram matching to the image file REF) or "match"
      (histogram matching to the picture in color_reference).
    sharpen: the unsharp mask's amount, 0.1..5 (1.0: Pillow's 100 %), radius SHARPEN_RADIUS px.
    upscale: an integer factor 2..8 (Lanczos, unless upscaler names a model).
    upscaler: a super-resolution model (a run trained with --model upscale: its folder, run name or bundled name)
      that upscales instead of Lanczos; upscale must then be its scale. Only with upscale. The entry points load it
      (api: Generator.upscale through upscale.model_upscaler) and pass it to apply_post.
    color_reference: the bytes of an image file (PNG, JPEG, ...), the reference of color "match": a picture held
      in memory (the server's upload) rather than a file named by a path. Only with color "match", which needs it.
    """

    denoise: str | None = None
    denoise_strength: float | None = None
    color: str | None = None
    sharpen: float | None = None
    upscale: int | None = None
    color_reference: bytes | None = field(default=None, repr=False)
    upscaler: str | None = None

    def __post_init__(self) -> None:
        if self.denoise is not None and self.denoise not in DENOISE_METHODS:
            raise PostError("denoise", f"denoise must be one of {', '.join(DENOISE_METHODS)}, got {self.denoise!r}")
        if self.denoise_strength is not None:
            if self.denoise is None:
                raise PostError("denoise_strength", "denoise_strength needs denoise (nlm or bilateral) to apply to")
            object.__setattr__(self, "denoise_strength", _number("denoise_strength", self.denoise_strength,
                                                                 *DENOISE_STRENGTH_RANGE))
        if self.color is not None:
            ok = isinstance(self.color, str) and (self.color in (COLOR_AUTO, COLOR_MATCH_GIVEN) or
                                                  (self.color.startswith(COLOR_MATCH) and len(self.color) > len(COLOR_MATCH)))
            if not ok:
                raise PostError("color", f"color must be {COLOR_AUTO} or {COLOR_MATCH}REF.png (a reference image file), "
                                         f"or {COLOR_MATCH_GIVEN} with the reference picture in color_reference, "
                                         f"got {self.color!r}")
        if self.color_reference is not None:
            if not isinstance(self.color_reference, (bytes, bytearray)):
                raise PostError("color_reference", "color_reference must be the bytes of an image file, got "
                                                   f"{type(self.color_reference).__name__}")
            if self.color != COLOR_MATCH_GIVEN:
                raise PostError("color_reference", f"color_reference is the reference picture of color "
                                                   f"{COLOR_MATCH_GIVEN!r}, but color is {self.color!r}: ask for color "
                                                   f"{COLOR_MATCH_GIVEN!r} or leave color_reference out")
            object.__setattr__(self, "color_reference", bytes(self.color_reference))  # a bytearray is not hashable
        elif self.color == COLOR_MATCH_GIVEN:
            raise PostError("color_reference", f"color {COLOR_MATCH_GIVEN!r} needs its reference picture in "
                                               f"color_reference (or name a file: {COLOR_MATCH}REF.png)")
        if self.sharpen is not None:
            object.__setattr__(self, "sharpen", _number("sharpen", self.sharpen, *SHARPEN_RANGE))
        if self.upscale is not None:
            object.__setattr__(self, "upscale", _number("upscale", self.upscale, *UPSCALE_RANGE, integer=True))
        if self.upscaler is not None:
            if not isinstance(self.upscaler, str) or not self.upscaler:
                raise PostError("upscaler", f"upscaler must name a super-resolution run or bundled model, got {self.upscaler!r}")
            if self.upscale is None:
                raise PostError("upscaler", "upscaler needs upscale (its factor) to apply to")

    @classmethod
    def from_dict(cls, d: dict, *, recorded: bool = False, color_reference: bytes | None = None) -> PostSettings:
        """From a JSON object (the API's dict, a job's "post"; recorded: a PNG's recorded "post", whose own
        entries order and color_reference_sha256 are then accepted): unknown keys are a PostError naming them.
        color_reference: the reference picture's file bytes for color "match" (JSON carries no bytes: the server
        decodes its upload and passes them here)."""
        if not isinstance(d, dict):
            raise PostError("post", f"post must be an object of post-processing options, got {type(d).__name__}")
        names = ("denoise", "denoise_strength", "color", "sharpen", "upscale", "upscaler")
        unknown = sorted(set(map(str, d)) - set(names) - ({"order", "color_reference_sha256"} if recorded else set()))
        if unknown:
            raise PostError(unknown[0], f"unknown post-processing option(s) {', '.join(unknown)}; "
                                        f"valid: {', '.join(names)}")
        return cls(**{k: d[k] for k in names if d.get(k) is not None}, color_reference=color_reference)

    @property
    def empty(self) -> bool:
        """Whether no step is asked for."""
        return self.denoise is None and self.color is None and self.sharpen is None and self.upscale is None

    def strength(self, mode: str) -> float | None:
        """The denoising strength used on an image of this mode (L or RGB): the one given, else the method's
        default for the mode (None without denoise)."""
        if self.denoise is None:
            return None
        if self.denoise_strength is not None:
            return self.denoise_strength
        return DENOISE_DEFAULT_STRENGTH[self.denoise][mode]

    @property
    def reference(self) -> Path | None:
        """The reference image file of color match:REF (None otherwise)."""
        if self.color is None or not self.color.startswith(COLOR_MATCH):
            return None
        return Path(self.color[len(COLOR_MATCH):])

    def to_record(self) -> dict:
        """The settings as an image records them (.info["pixelforge"]["post"]): the options given (a denoising
        strength left out took the default for the image's mode), the order the steps ran in and, for color
        match, the reference file's SHA-256 (of color_reference's bytes for "match": the picture itself is
        never recorded)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name != "color_reference" and getattr(self, f.name) is not None}
        if self.reference is not None:
            record["color_reference_sha256"] = hashlib.sha256(_reference_bytes(self.reference)).hexdigest()
        elif self.color_reference is not None:
            record["color_reference_sha256"] = hashlib.sha256(self.color_reference).hexdigest()
        record["order"] = [step for step in ORDER if record.get(step) is not None]
        return record


def as_post_settings(post: PostSettings | dict | None) -> PostSettings | None:
    """A PostSettings, a dict of its fields (PostSettings.from_dict) or None -> PostSettings, or None where no
    step is asked for; color match's reference (file or color_reference) is decoded once here, so a bad one is
    an error up front."""
    if post is None:
        return None
    if not isinstance(post, PostSettings):
        post = PostSettings.from_dict(post)
    _match_reference(post)  # a missing or unreadable reference fails here, before any work
    return None if post.empty else post


def check_record(record: dict, where: str) -> PostSettings:
    """A recorded "post" (a PNG's settings) -> PostSettings, checking that color match's reference file is the
    one recorded; a ValueError naming `where` (the PNG) otherwise."""
    if isinstance(record, dict) and record.get("color") == COLOR_MATCH_GIVEN:
        # The reference came as a picture (the server's color_reference upload), which neither the image nor the
        # server keeps: without it the image cannot be made again, and one made without the match would not be it.
        digest = record.get("color_reference_sha256")
        raise ValueError(f"{where} was colour-matched to a reference picture sent with its job (color_reference, "
                         f"SHA-256 {digest}), which is kept neither in the image nor on the server, so its "
                         "post-processing cannot be applied again: sample its recorded seed and options with "
                         "--color match:FILE, FILE being that picture, to make it again")
    try:
        post = PostSettings.from_dict(record, recorded=True)
    except PostError as e:
        raise ValueError(f"{where}: its recorded post-processing is not valid ({e})") from None
    ref = post.reference
    if ref is not None:
        wanted = record.get("color_reference_sha256")
        try:
            got = hashlib.sha256(_reference_bytes(ref)).hexdigest()
        except ValueError as e:
            raise ValueError(f"{where} was colour-matched to {ref}: {e}; put the reference back there to "
                             "regenerate the image") from None
        if wanted is not None and got != wanted:
            raise ValueError(f"{where} was colour-matched to {ref}, which has changed since (its SHA-256 differs "
                             "from the recorded one)")
    return post


def _reference_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PostError("color", f"color match reference {path}: cannot read it ({e.strerror or e})") from None


def _reference_image(path: Path) -> Image.Image:
    """The reference of color match:REF, checked as data files are (data.folder.check_file), in mode L or RGB."""
    from .data.folder import check_file

    image, reason = check_file(path)
    if image is None:
        raise PostError("color", f"color match reference {path}: {reason}")
    return image


def _match_reference(post: PostSettings) -> Image.Image | None:
    """The picture color match compares with, in mode L or RGB: the file of match:REF or the color_reference
    bytes, each decoded with the checks data files pass (data.folder); None without color match."""
    from .data.folder import check_bytes

    if post.reference is not None:
        return _reference_image(post.reference)
    if post.color_reference is None:
        return None
    image, reason = check_bytes(post.color_reference)
    if image is None:
        raise PostError("color_reference", f"color_reference: {reason}")
    return image


# --- the steps: each takes and returns a list of PIL images in mode L or RGB, keeping the mode ----------------

def denoise(images: list[Image.Image], method: str, strength: float) -> list[Image.Image]:
    """OpenCV non-local means (Buades et al. 2005; fastNlMeansDenoisingColored denoises RGB in CIELAB, the
    grayscale variant for L) or the bilateral filter (Tomasi and Manduchi 1998), strength in grey levels."""
    import cv2

    out = []
    for im in images:
        a = np.asarray(im)  # (H, W) or (H, W, 3) uint8
        if method == "nlm" and a.ndim == 3:
            # OpenCV's colour NLM expects BGR; the conversion to CIELAB it makes is order-sensitive
            bgr = np.ascontiguousarray(a[..., ::-1])
            d = cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, NLM_TEMPLATE, NLM_SEARCH)[..., ::-1]
        elif method == "nlm":
            d = cv2.fastNlMeansDenoising(np.ascontiguousarray(a), None, strength, NLM_TEMPLATE, NLM_SEARCH)
        else:
            d = cv2.bilateralFilter(np.ascontiguousarray(a), BILATERAL_DIAMETER, strength, BILATERAL_DIAMETER)
        out.append(Image.fromarray(np.ascontiguousarray(d), im.mode))
    return out


def grey_world(images: list[Image.Image]) -> list[Image.Image]:
    """Grey-world white balance (Buchsbaum 1980): each channel scaled so that its mean equals the mean of the
    three channel means, so the average colour becomes grey. Written here because OpenCV's implementation
    (xphoto.GrayworldWB) is in opencv-contrib only, which the headless OpenCV lacks. An L image is left as it is."""
    out = []
    for im in images:
        if im.mode != "RGB":
            out.append(im.copy())
            continue
        a = np.asarray(im, dtype=np.float64)  # (H, W, 3)
        means = a.reshape(-1, 3).mean(0)  # (3,)
        gains = means.mean() / np.maximum(means, 1e-6)  # a black channel stays black rather than dividing by 0
        out.append(Image.fromarray(np.clip(a * gains, 0, 255).round().astype(np.uint8), "RGB"))
    return out


def match_colors(images: list[Image.Image], reference: Image.Image) -> list[Image.Image]:
    """Histogram matching of each channel to the reference's (scikit-image exposure.match_histograms); the
    reference is converted to each image's mode first, so a grayscale image stays grayscale."""
    try:
        from skimage.exposure import match_histograms
    except ImportError:
        raise ValueError("color match needs scikit-image: pip install 'pixelforge[post]'") from None

    out = []
    for im in images:
        ref = np.asarray(reference.convert(im.mode))
        a = np.asarray(im)
        m = match_histograms(a, ref, channel_axis=-1 if a.ndim == 3 else None)
        out.append(Image.fromarray(np.clip(m, 0, 255).round().astype(np.uint8), im.mode))
    return out


def sharpen(images: list[Image.Image], amount: float) -> list[Image.Image]:
    """Unsharp mask (Pillow ImageFilter.UnsharpMask): image + amount x (image - Gaussian blur of radius
    SHARPEN_RADIUS), threshold 0 so every edge counts."""
    f = ImageFilter.UnsharpMask(radius=SHARPEN_RADIUS, percent=round(amount * 100), threshold=0)
    return [im.filter(f) for im in images]


def lanczos_upscale(images: list[Image.Image], factor: int) -> list[Image.Image]:
    """Each image `factor` times wider and taller, resampled with Pillow's Lanczos filter."""
    return [im.resize((im.width * factor, im.height * factor), Image.Resampling.LANCZOS) for im in images]


# The upscaler: a function (images, factor) -> images. Lanczos is the default; a super-resolution model (settings'
# upscaler) is another function of the same signature, upscale.model_upscaler, which the caller passes to apply_post.
Upscaler = Callable[[list[Image.Image], int], list[Image.Image]]
UPSCALER: Upscaler = lanczos_upscale


def apply_post(images: list[Image.Image], settings: PostSettings | dict | None,
               upscaler: Upscaler | None = None) -> list[Image.Image]:
    """The images post-processed as settings ask, in the order denoise, color, sharpen, upscale (new images;
    the inputs are left as they are, and so is their .info). Images in mode L stay L; RGB stay RGB.
    upscaler: the model settings.upscaler names, loaded by the caller (upscale.model_upscaler); without
    settings.upscaler the upscale step is UPSCALER (Lanczos)."""
    post = as_post_settings(settings)
    if post is None:
        return list(images)
    for im in images:
        if im.mode not in ("L", "RGB"):
            raise ValueError(f"post-processing takes images in mode L or RGB, got {im.mode}")
    out = list(images)
    if post.denoise is not None:
        out = [denoise([im], post.denoise, post.strength(im.mode))[0] for im in out]
    reference = _match_reference(post)
    if post.color == COLOR_AUTO:
        out = grey_world(out)
    elif reference is not None:
        out = match_colors(out, reference)
    if post.sharpen is not None:
        out = sharpen(out, post.sharpen)
    if post.upscaler is not None and upscaler is None:
        raise ValueError(f"upscaler {post.upscaler}: the model must be loaded by the caller (pixelforge.api does)")
    if post.upscale is not None:
        out = (upscaler if post.upscaler is not None else UPSCALER)(out, post.upscale)
    return out


# --- what entry points show of the options -----------------------------------------------------------------

def options_help() -> dict[str, str]:
    """field -> one line saying what it takes (the server's schema description)."""
    return {
        "denoise": f"one of {', '.join(DENOISE_METHODS)}",
        "denoise_strength": f"{DENOISE_STRENGTH_RANGE[0]:g}..{DENOISE_STRENGTH_RANGE[1]:g} grey levels (default: "
                            + default_strengths() + ")",
        "color": f"{COLOR_AUTO}, or {COLOR_MATCH_GIVEN} with the reference picture as the job's color_reference",
        "sharpen": f"{SHARPEN_RANGE[0]:g}..{SHARPEN_RANGE[1]:g}",
        "upscale": f"an integer {UPSCALE_RANGE[0]}..{UPSCALE_RANGE[1]}",
    }


@dataclass(frozen=True)
class PostOption:
    """One post-processing option as an entry point offers it (the server lists them for the web page's
    controls): its kind, inclusive range or choices, and the value it takes when asked for without one (the
    CLI's bare --denoise and --sharpen; None: it has no such value, as denoise_strength, whose default depends
    on the method and the image's mode)."""

    name: str
    kind: Literal["int", "float", "choice"]
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    default: float | str | None = None
    help: str = ""


def option_specs() -> tuple[PostOption, ...]:
    """Every option of PostSettings but color_reference (a picture, not a value), with the ranges declared above."""
    said = options_help()
    return (
        PostOption("denoise", "choice", choices=DENOISE_METHODS, default="nlm", help=said["denoise"]),
        PostOption("denoise_strength", "float", *DENOISE_STRENGTH_RANGE, help=said["denoise_strength"]),
        PostOption("color", "choice", choices=(COLOR_AUTO, COLOR_MATCH_GIVEN), help=said["color"]),
        PostOption("sharpen", "float", *SHARPEN_RANGE, default=SHARPEN_DEFAULT, help=said["sharpen"]),
        PostOption("upscale", "int", *UPSCALE_RANGE, help=said["upscale"]),
    )



def default_strengths() -> str:
    """The default denoising strengths, as help texts show them: "nlm 20 (grayscale) or 10 (colour), bilateral 40"."""
    parts = []
    for method, by_mode in DENOISE_DEFAULT_STRENGTH.items():
        if by_mode["L"] == by_mode["RGB"]:
            parts.append(f"{method} {by_mode['L']:g}")
        else:
            parts.append(f"{method} {by_mode['L']:g} (grayscale) or {by_mode['RGB']:g} (colour)")
    return ", ".join(parts)
